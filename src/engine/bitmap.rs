//! A run-length-encoded bitmap over 128-bit ordinals `0..=last`.
//!
//! The bitmap is cut into 64-bit blocks, and consecutive identical blocks are kept as one *run*
//! (libnetwork's `bitmap` keeps 32-bit blocks the same way). An empty IPv6 /0 is one run, a /16
//! filled in address order is three, and a /16 filled at random is one run per block. Memory
//! and search cost follow the number of runs, never the number of ordinals.
//!
//! The runs live in a two-level list: leaves of at most `LEAF_MAX` runs, found by binary search
//! over each leaf's first block. A change touches one leaf, so it costs O(log n + LEAF_MAX)
//! whatever the number of runs, where one flat vector would move half of itself on every split
//! (430 µs per allocation with 400k runs; see BENCHMARKS.md).
//!
//! This module knows nothing about IP addresses, pools or storage: it is a value type, with no
//! locks and no I/O. `AddrSet` maps addresses onto it.

use super::Error;
use super::codec::{Reader, corrupt, put_varint};

/// Bits per block: the one place the block size is defined. Stores that keep runs as rows and
/// drivers that report which blocks a change touched use [`block_of`] and [`block_span`].
pub const BLOCK_BITS: u32 = 64;
const BLOCK_SHIFT: u32 = BLOCK_BITS.trailing_zeros();

/// The block holding `ordinal`.
#[must_use]
pub const fn block_of(ordinal: u128) -> u128 {
    ordinal >> BLOCK_SHIFT
}

/// The first and last ordinals of `block`.
#[must_use]
pub const fn block_span(block: u128) -> (u128, u128) {
    let first = block << BLOCK_SHIFT;
    (first, first | ((1 << BLOCK_SHIFT) - 1))
}
/// Encoding tags, packed into the low two bits of each run's length varint.
const TAG_EMPTY: u128 = 0;
const TAG_FULL: u128 = 1;
const TAG_PARTIAL: u128 = 2;
/// Most runs in a leaf: a leaf growing past it splits in two. Tests use tiny leaves so that
/// every property test crosses leaf boundaries.
#[cfg(not(test))]
const LEAF_MAX: usize = 256;
#[cfg(test)]
const LEAF_MAX: usize = 4;
/// Most runs added to a full leaf's capacity at a time.
const LEAF_GROW: usize = 16;
/// A leaf shrinking below this merges with a neighbour when both fit in one leaf.
#[cfg(not(test))]
const LEAF_MIN: usize = LEAF_MAX / 4;
#[cfg(test)]
const LEAF_MIN: usize = 2;

/// A maximal run of identical blocks, as handed to and from the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Index of the first block of the run (ordinal / 64).
    pub start: u128,
    /// Number of blocks in the run (at least one).
    pub n_blocks: u128,
    /// The block repeated over the run: bit `i` is ordinal `64 * block + i`.
    pub bits: u64,
}

/// A set of ordinals `0..=last`, stored as runs of identical 64-bit blocks.
#[derive(Debug, Clone)]
pub struct Bitmap {
    // Invariant: the highest valid ordinal; the bitmap has `block_of(last) + 1` blocks.
    last: u128,
    // Invariant: `firsts[k] == leaves[k].starts[0]`, so `firsts[0] == 0`.
    firsts: Vec<u128>,
    // Invariant: at least one leaf, none empty or longer than `LEAF_MAX`. Read in order, the
    // runs start at block 0 with strictly increasing starts below the block count; each run
    // ends where the next begins; no two neighbours are equal (runs are maximal); and the bits
    // past `last` in the final block are zero.
    leaves: Vec<Leaf>,
}

/// A slice of the run list. Starts and blocks are kept apart so a run costs 24 bytes rather
/// than a padded 32.
#[derive(Debug, Clone, Default)]
struct Leaf {
    starts: Vec<u128>,
    blocks: Vec<u64>,
}

impl Leaf {
    fn len(&self) -> usize {
        self.starts.len()
    }

    /// Makes room for `n` more runs: small leaves double, large ones grow by a few runs,
    /// since a half-empty leaf of 256 runs would waste 3 KB and a full one splits anyway.
    fn make_room(&mut self, n: usize) {
        if self.starts.capacity() - self.starts.len() < n {
            let more = self.starts.len().clamp(n, LEAF_GROW.max(n));
            self.starts.reserve_exact(more);
            self.blocks.reserve_exact(more);
        }
    }
}

/// The position of a run: leaf index and index inside the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    leaf: usize,
    idx: usize,
}

/// Two bitmaps are equal when they hold the same ordinals over the same range, however their
/// runs happen to be cut into leaves.
impl PartialEq for Bitmap {
    fn eq(&self, other: &Self) -> bool {
        self.last == other.last && self.runs().eq(other.runs())
    }
}

impl Eq for Bitmap {}

impl Bitmap {
    /// Returns an empty bitmap over the ordinals `0..=last`.
    #[must_use]
    pub fn new(last: u128) -> Self {
        Self {
            last,
            firsts: vec![0],
            leaves: vec![Leaf {
                starts: vec![0],
                blocks: vec![0],
            }],
        }
    }

    /// Returns the highest valid ordinal.
    #[must_use]
    pub fn last(&self) -> u128 {
        self.last
    }

    /// Returns the number of runs, the measure of this bitmap's size.
    #[must_use]
    pub fn n_runs(&self) -> usize {
        self.leaves.iter().map(Leaf::len).sum()
    }

    /// Returns the heap memory held by the bitmap, in bytes (allocated capacity, not length).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let leaves: usize = self
            .leaves
            .iter()
            .map(|l| {
                l.starts.capacity() * size_of::<u128>() + l.blocks.capacity() * size_of::<u64>()
            })
            .sum();
        leaves
            + self.leaves.capacity() * size_of::<Leaf>()
            + self.firsts.capacity() * size_of::<u128>()
    }

    fn n_blocks(&self) -> u128 {
        block_of(self.last) + 1
    }

    /// Position of the run holding block `block`.
    fn pos_of(&self, block: u128) -> Pos {
        // firsts[0] == 0 and starts[0] of each leaf is its first, so both partition points are
        // at least 1.
        let leaf = self
            .firsts
            .partition_point(|&f| f <= block)
            .saturating_sub(1);
        let idx = self.leaves[leaf]
            .starts
            .partition_point(|&s| s <= block)
            .saturating_sub(1);
        Pos { leaf, idx }
    }

    fn start(&self, p: Pos) -> u128 {
        self.leaves[p.leaf].starts[p.idx]
    }

    fn bits(&self, p: Pos) -> u64 {
        self.leaves[p.leaf].blocks[p.idx]
    }

    fn next(&self, p: Pos) -> Option<Pos> {
        if p.idx + 1 < self.leaves[p.leaf].len() {
            Some(Pos {
                leaf: p.leaf,
                idx: p.idx + 1,
            })
        } else if p.leaf + 1 < self.leaves.len() {
            Some(Pos {
                leaf: p.leaf + 1,
                idx: 0,
            })
        } else {
            None
        }
    }

    fn prev(&self, p: Pos) -> Option<Pos> {
        if p.idx > 0 {
            Some(Pos {
                leaf: p.leaf,
                idx: p.idx - 1,
            })
        } else if p.leaf > 0 {
            let leaf = p.leaf - 1;
            Some(Pos {
                leaf,
                idx: self.leaves[leaf].len() - 1,
            })
        } else {
            None
        }
    }

    /// First block past the run at `p`.
    fn run_end(&self, p: Pos) -> u128 {
        self.next(p)
            .map_or_else(|| self.n_blocks(), |n| self.start(n))
    }

    fn set_start(&mut self, p: Pos, start: u128) {
        self.leaves[p.leaf].starts[p.idx] = start;
        if p.idx == 0 {
            self.firsts[p.leaf] = start;
        }
    }

    /// Inserts a run before position `p` (`p.idx` may be the leaf's length: append), splitting
    /// the leaf when it grows past `LEAF_MAX`.
    fn insert_run(&mut self, p: Pos, start: u128, bits: u64) {
        let leaf = &mut self.leaves[p.leaf];
        leaf.make_room(1);
        leaf.starts.insert(p.idx, start);
        leaf.blocks.insert(p.idx, bits);
        if p.idx == 0 {
            self.firsts[p.leaf] = start;
        }
        if leaf.len() > LEAF_MAX {
            let half = leaf.len() / 2;
            let tail = Leaf {
                starts: leaf.starts.split_off(half),
                blocks: leaf.blocks.split_off(half),
            };
            leaf.starts.shrink_to_fit();
            leaf.blocks.shrink_to_fit();
            self.firsts.insert(p.leaf + 1, tail.starts[0]);
            self.leaves.insert(p.leaf + 1, tail);
        }
    }

    /// Removes the run at `p`, dropping its leaf when empty and merging a small leaf with a
    /// neighbour when both fit in one.
    fn remove_run(&mut self, p: Pos) {
        let leaf = &mut self.leaves[p.leaf];
        leaf.starts.remove(p.idx);
        leaf.blocks.remove(p.idx);
        if leaf.len() == 0 {
            self.leaves.remove(p.leaf);
            self.firsts.remove(p.leaf);
            return;
        }
        if p.idx == 0 {
            self.firsts[p.leaf] = leaf.starts[0];
        }
        if leaf.len() < LEAF_MIN {
            let fits = |k: usize| self.leaves[k].len() + self.leaves[k + 1].len() <= LEAF_MAX;
            if p.leaf + 1 < self.leaves.len() && fits(p.leaf) {
                self.merge_with_next(p.leaf);
            } else if p.leaf > 0 && fits(p.leaf - 1) {
                self.merge_with_next(p.leaf - 1);
            }
        }
    }

    fn merge_with_next(&mut self, k: usize) {
        let next = self.leaves.remove(k + 1);
        self.firsts.remove(k + 1);
        let leaf = &mut self.leaves[k];
        leaf.starts.extend(next.starts);
        leaf.blocks.extend(next.blocks);
    }

    /// Tells whether `ordinal` is in the set; ordinals past `last` never are.
    #[must_use]
    pub fn contains(&self, ordinal: u128) -> bool {
        if ordinal > self.last {
            return false;
        }
        (self.bits(self.pos_of(block_of(ordinal))) >> bit_of(ordinal)) & 1 == 1
    }

    /// Adds `ordinal`; returns false when it was already present or is past `last`.
    pub fn insert(&mut self, ordinal: u128) -> bool {
        self.update(ordinal, true)
    }

    /// Removes `ordinal`; returns false when it was not present.
    pub fn remove(&mut self, ordinal: u128) -> bool {
        self.update(ordinal, false)
    }

    fn update(&mut self, ordinal: u128, set: bool) -> bool {
        if ordinal > self.last {
            return false;
        }
        self.update_at(self.pos_of(block_of(ordinal)), ordinal, set)
    }

    /// As [`Bitmap::update`], with `p` the position of the run holding `ordinal`.
    fn update_at(&mut self, p: Pos, ordinal: u128, set: bool) -> bool {
        let block = block_of(ordinal);
        let old = self.bits(p);
        let mask = 1u64 << bit_of(ordinal);
        let new = if set { old | mask } else { old & !mask };
        if new == old {
            return false;
        }
        self.replace_block(p, block, new);
        true
    }

    /// Replaces block `block`, which lies in the run at `p`, by `new`, keeping runs maximal.
    ///
    /// ```text
    /// run alone            [ A ]            -> [ N ]          then merge with equal neighbours
    /// first block of run   [ A A A ]        -> [ N ][ A A ]   or grow the previous run if it is N
    /// last block of run    [ A A A ]        -> [ A A ][ N ]   or grow the next run if it is N
    /// middle of run        [ A A A ]        -> [ A ][ N ][ A ]
    /// ```
    ///
    /// Inserting or removing a run may split or merge leaves, so positions are looked up
    /// again by block after each such step.
    fn replace_block(&mut self, p: Pos, block: u128, new: u64) {
        let start = self.start(p);
        let next = self.next(p);
        let end = next.map_or_else(|| self.n_blocks(), |n| self.start(n));
        let old = self.bits(p);
        let prev_is_new = self.prev(p).is_some_and(|q| self.bits(q) == new);
        let next_is_new = next.is_some_and(|q| self.bits(q) == new);
        match (start == block, end == block + 1) {
            (true, true) => {
                self.leaves[p.leaf].blocks[p.idx] = new;
                if next_is_new {
                    let at = self.pos_of(end);
                    self.remove_run(at);
                }
                if prev_is_new {
                    let at = self.pos_of(block);
                    self.remove_run(at);
                }
            }
            (true, false) => {
                self.set_start(p, block + 1);
                if !prev_is_new {
                    self.insert_run(p, block, new);
                }
            }
            (false, true) => match next {
                Some(n) if next_is_new => self.set_start(n, block),
                _ => self.insert_run(
                    Pos {
                        idx: p.idx + 1,
                        ..p
                    },
                    block,
                    new,
                ),
            },
            (false, false) if self.leaves[p.leaf].len() + 2 <= LEAF_MAX => {
                // Both new runs in one move of the leaf's tail (a release in a long run of
                // full blocks takes this path).
                let leaf = &mut self.leaves[p.leaf];
                leaf.make_room(2);
                let at = p.idx + 1;
                leaf.starts.splice(at..at, [block, block + 1]);
                leaf.blocks.splice(at..at, [new, old]);
            }
            (false, false) => {
                self.insert_run(
                    Pos {
                        idx: p.idx + 1,
                        ..p
                    },
                    block + 1,
                    old,
                );
                let at = self.pos_of(block + 1);
                self.insert_run(at, block, new);
            }
        }
    }

    /// Iterates over the runs from position `p` on, as (first block, end block, bits).
    fn runs_from(&self, p: Pos) -> impl Iterator<Item = (u128, u128, u64)> + '_ {
        let n_blocks = self.n_blocks();
        self.leaves[p.leaf..]
            .iter()
            .enumerate()
            .flat_map(move |(k, leaf)| {
                let leaf_end = self.firsts.get(p.leaf + k + 1).copied().unwrap_or(n_blocks);
                let from = if k == 0 { p.idx } else { 0 };
                (from..leaf.len()).map(move |i| {
                    let end = leaf.starts.get(i + 1).copied().unwrap_or(leaf_end);
                    (leaf.starts[i], end, leaf.blocks[i])
                })
            })
    }

    /// Returns the lowest ordinal in `start..=end` that is not in the set.
    ///
    /// Costs one binary search plus at most a few runs: runs are maximal, so a run of full
    /// blocks is always followed by one with a free bit.
    #[must_use]
    pub fn first_clear(&self, start: u128, end: u128) -> Option<u128> {
        self.find_clear(start, end).map(|(_, o)| o)
    }

    /// As [`Bitmap::first_clear`], with the position of the run holding the ordinal found.
    fn find_clear(&self, start: u128, end: u128) -> Option<(Pos, u128)> {
        let end = end.min(self.last);
        if start > end {
            return None;
        }
        let last_block = block_of(end);
        let end_mask = high_mask(end);
        let mut block = block_of(start);
        let mut mask = low_mask(start);
        let mut p = self.pos_of(block);
        loop {
            let bits = self.bits(p);
            let next = self.next(p);
            let run_end = next.map_or_else(|| self.n_blocks(), |n| self.start(n));
            if bits != u64::MAX {
                // Every block of the run is `bits`: only the first one (masked below `start`)
                // can come up empty, so at most two blocks are looked at.
                while block < run_end {
                    let mut free = !bits & mask;
                    if block == last_block {
                        free &= end_mask;
                    }
                    if free != 0 {
                        let found = block_span(block).0 | u128::from(free.trailing_zeros());
                        return Some((p, found));
                    }
                    if block == last_block {
                        return None;
                    }
                    block += 1;
                    mask = u64::MAX;
                }
            }
            if run_end > last_block {
                return None;
            }
            block = run_end;
            mask = u64::MAX;
            p = next?;
        }
    }

    /// Returns the lowest free ordinal at or after `cursor` in `start..=end`, wrapping around
    /// to `start`; a cursor outside the range starts at `start` (serial allocation).
    #[must_use]
    pub fn next_clear(&self, start: u128, end: u128, cursor: u128) -> Option<u128> {
        self.find_next_clear(start, end, cursor).map(|(_, o)| o)
    }

    fn find_next_clear(&self, start: u128, end: u128, cursor: u128) -> Option<(Pos, u128)> {
        if cursor > start && cursor <= end {
            if let Some(found) = self.find_clear(cursor, end) {
                return Some(found);
            }
            return self.find_clear(start, cursor - 1);
        }
        self.find_clear(start, end)
    }

    /// Adds and returns the ordinal [`Bitmap::next_clear`] would return (`first_clear`'s
    /// when `cursor` is `None`), looking its run up once.
    pub fn insert_clear(&mut self, start: u128, end: u128, cursor: Option<u128>) -> Option<u128> {
        let (p, found) = match cursor {
            Some(cursor) => self.find_next_clear(start, end, cursor),
            None => self.find_clear(start, end),
        }?;
        self.update_at(p, found, true);
        Some(found)
    }

    /// Counts the ordinals of `start..=end` in the set.
    ///
    /// The count is exact up to `u128::MAX`; only a completely full bitmap over all 2^128
    /// ordinals (an IPv6 /0 with every address taken) saturates, at `u128::MAX`.
    #[must_use]
    pub fn count_ones(&self, start: u128, end: u128) -> u128 {
        let end = end.min(self.last);
        if start > end {
            return 0;
        }
        let (first_block, last_block) = (block_of(start), block_of(end));
        let (p0, p1) = (self.pos_of(first_block), self.pos_of(last_block));
        let (head_mask, tail_mask) = (low_mask(start), high_mask(end));
        if p0 == p1 {
            // One run: the first and last blocks are cut, the ones between count in full.
            let bits = self.bits(p0);
            if first_block == last_block {
                return u128::from((bits & head_mask & tail_mask).count_ones());
            }
            let between =
                u128::from(bits.count_ones()).saturating_mul(last_block - first_block - 1);
            let edges = (bits & head_mask).count_ones() + (bits & tail_mask).count_ones();
            return between.saturating_add(u128::from(edges));
        }
        // The first run from `first_block`, whole runs between, the last run up to `last_block`.
        let head_bits = self.bits(p0);
        let head_blocks = self.run_end(p0) - first_block - 1;
        let mut total = u128::from((head_bits & head_mask).count_ones())
            .saturating_add(u128::from(head_bits.count_ones()).saturating_mul(head_blocks));
        for k in p0.leaf..=p1.leaf {
            let leaf = &self.leaves[k];
            let from = if k == p0.leaf { p0.idx + 1 } else { 0 };
            let to = if k == p1.leaf { p1.idx } else { leaf.len() };
            if from >= to {
                continue;
            }
            // Run i ends at starts[i + 1], the leaf's last run at the next leaf's first block.
            let inner_to = if to == leaf.len() { to - 1 } else { to };
            total = total.saturating_add(sum_runs(
                &leaf.starts[from..=inner_to],
                &leaf.blocks[from..inner_to],
            ));
            if inner_to < to {
                let leaf_end = self.firsts.get(k + 1).copied().unwrap_or(self.n_blocks());
                let last_run = u128::from(leaf.blocks[inner_to].count_ones())
                    .saturating_mul(leaf_end - leaf.starts[inner_to]);
                total = total.saturating_add(last_run);
            }
        }
        let tail_bits = self.bits(p1);
        let tail_blocks = last_block - self.start(p1);
        total
            .saturating_add(u128::from(tail_bits.count_ones()).saturating_mul(tail_blocks))
            .saturating_add(u128::from((tail_bits & tail_mask).count_ones()))
    }

    /// Counts every ordinal in the set (saturating as [`Bitmap::count_ones`] does).
    #[must_use]
    pub fn len(&self) -> u128 {
        self.count_ones(0, self.last)
    }

    /// Tells whether no ordinal is in the set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leaves.len() == 1 && self.leaves[0].blocks == [0]
    }

    /// Iterates over the runs, in block order.
    pub fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.runs_from(Pos { leaf: 0, idx: 0 })
            .map(|(start, end, bits)| Run {
                start,
                n_blocks: end - start,
                bits,
            })
    }

    /// Iterates over the runs that overlap blocks `lo..=hi`, in block order.
    pub fn runs_overlapping(&self, lo: u128, hi: u128) -> impl Iterator<Item = Run> + '_ {
        self.runs_from(self.pos_of(lo))
            .take_while(move |&(start, _, _)| start <= hi)
            .map(|(start, end, bits)| Run {
                start,
                n_blocks: end - start,
                bits,
            })
    }

    /// Iterates over the ordinals in the set within `first..=last`, in order, lazily: a page of
    /// them costs what the page holds (runs of empty blocks are skipped whole), whatever the
    /// size of the set.
    pub fn ones(&self, first: u128, last: u128) -> impl Iterator<Item = u128> + '_ {
        let (lo, hi) = (block_of(first), block_of(last));
        self.runs_overlapping(lo, hi)
            .filter(|run| run.bits != 0)
            .flat_map(move |run| {
                let from = run.start.max(lo);
                let to = (run.start + (run.n_blocks - 1)).min(hi);
                (from..=to).flat_map(move |block| {
                    let base = block_span(block).0;
                    (0..BLOCK_BITS)
                        .filter(move |i| run.bits >> i & 1 == 1)
                        .map(move |i| base + u128::from(i))
                })
            })
            .skip_while(move |&o| o < first)
            .take_while(move |&o| o <= last)
    }

    /// Rebuilds a bitmap from its runs, as a store persisted them.
    ///
    /// # Errors
    /// `Error::Corrupt` unless the runs are in order, maximal, non-empty, cover exactly the
    /// blocks of `0..=last`, and leave the bits past `last` clear.
    pub fn from_runs(last: u128, runs: impl IntoIterator<Item = Run>) -> Result<Self, Error> {
        let mut builder = Builder::new(last);
        for run in runs {
            builder.push(run)?;
        }
        builder.finish()
    }

    /// Appends the runs in the compact form `decode` reads: a run count, then per run one
    /// varint holding `n_blocks << 2 | tag` (empty, full or partial) and, for a partial block,
    /// its 8 bytes. A /16 at 50% random fill takes about 9 KB.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.n_runs() as u128);
        for run in self.runs() {
            let tag = match run.bits {
                0 => TAG_EMPTY,
                u64::MAX => TAG_FULL,
                _ => TAG_PARTIAL,
            };
            // n_blocks <= 2^122, so the shift cannot lose bits.
            put_varint(out, (run.n_blocks << 2) | tag);
            if tag == TAG_PARTIAL {
                out.extend_from_slice(&run.bits.to_le_bytes());
            }
        }
    }

    /// Reads what [`Bitmap::encode`] wrote, for a bitmap over `0..=last`.
    ///
    /// # Errors
    /// `Error::Corrupt` on truncated, overlong or non-canonical input; never panics.
    pub(crate) fn decode(last: u128, r: &mut Reader<'_>) -> Result<Self, Error> {
        let n_runs = r.varint()?;
        // Each run takes at least one byte, which bounds the run count by the input.
        if n_runs == 0 || n_runs > r.remaining() as u128 {
            return Err(corrupt("implausible run count"));
        }
        let mut builder = Builder::new(last);
        let mut next: u128 = 0;
        for _ in 0..n_runs {
            let word = r.varint()?;
            let bits = match word & 3 {
                TAG_EMPTY => 0,
                TAG_FULL => u64::MAX,
                TAG_PARTIAL => match r.u64_le()? {
                    0 | u64::MAX => return Err(corrupt("partial block tagged as empty or full")),
                    bits => bits,
                },
                _ => return Err(corrupt("unknown run tag")),
            };
            let n_blocks = word >> 2;
            builder.push(Run {
                start: next,
                n_blocks,
                bits,
            })?;
            next = next.saturating_add(n_blocks);
        }
        builder.finish()
    }
}

/// Builds a bitmap from runs in order, checking every invariant on the way; leaves are filled
/// half-way so that later inserts do not split them at once.
struct Builder {
    bitmap: Bitmap,
    next: u128,
    last_bits: Option<u64>,
}

impl Builder {
    fn new(last: u128) -> Self {
        Self {
            bitmap: Bitmap {
                last,
                firsts: Vec::new(),
                leaves: Vec::new(),
            },
            next: 0,
            last_bits: None,
        }
    }

    fn push(&mut self, run: Run) -> Result<(), Error> {
        if run.start != self.next {
            return Err(corrupt("runs are not contiguous"));
        }
        if run.n_blocks == 0 {
            return Err(corrupt("empty run"));
        }
        if self.last_bits == Some(run.bits) {
            return Err(corrupt("runs are not maximal"));
        }
        let end = run
            .start
            .checked_add(run.n_blocks)
            .filter(|&end| end <= self.bitmap.n_blocks())
            .ok_or_else(|| corrupt("runs extend past the end of the bitmap"))?;
        let b = &mut self.bitmap;
        if b.leaves.last().is_none_or(|l| l.len() >= LEAF_MAX / 2) {
            b.firsts.push(run.start);
            b.leaves.push(Leaf::default());
        }
        if let Some(leaf) = b.leaves.last_mut() {
            leaf.starts.push(run.start);
            leaf.blocks.push(run.bits);
        }
        self.next = end;
        self.last_bits = Some(run.bits);
        Ok(())
    }

    fn finish(self) -> Result<Bitmap, Error> {
        let mut b = self.bitmap;
        // A loaded bitmap mostly stays as it is: no spare room (a change that needs some
        // grows the vector it changes).
        b.firsts.shrink_to_fit();
        b.leaves.shrink_to_fit();
        for leaf in &mut b.leaves {
            leaf.starts.shrink_to_fit();
            leaf.blocks.shrink_to_fit();
        }
        if self.next != b.n_blocks() {
            return Err(corrupt("runs do not cover the bitmap"));
        }
        if self.last_bits.unwrap_or(0) & !high_mask(b.last) != 0 {
            return Err(corrupt("bits set past the last ordinal"));
        }
        Ok(b)
    }
}

/// The runs a change rewrote: what a store that keeps runs as rows must write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunDelta {
    /// Starts of runs that no longer exist.
    pub removed: Vec<u128>,
    /// Runs that are new or changed (keyed by start).
    pub upserted: Vec<Run>,
}

impl RunDelta {
    /// Computes the runs that differ between `old` and `new` (two states of one bitmap) given
    /// the blocks whose bits changed. Only runs overlapping a changed block or its neighbours
    /// can differ: a split or merge reaches one block either side, no further.
    #[must_use]
    pub fn between(old: &Bitmap, new: &Bitmap, changed_blocks: &[u128]) -> Self {
        use std::collections::BTreeMap;
        let last_block = block_of(new.last());
        let mut before: BTreeMap<u128, Run> = BTreeMap::new();
        let mut after: BTreeMap<u128, Run> = BTreeMap::new();
        for &b in changed_blocks {
            let (lo, hi) = (b.saturating_sub(1), b.saturating_add(1).min(last_block));
            before.extend(old.runs_overlapping(lo, hi).map(|r| (r.start, r)));
            after.extend(new.runs_overlapping(lo, hi).map(|r| (r.start, r)));
        }
        Self {
            removed: before
                .keys()
                .filter(|s| !after.contains_key(s))
                .copied()
                .collect(),
            upserted: after
                .into_values()
                .filter(|r| before.get(&r.start) != Some(r))
                .collect(),
        }
    }

    /// Tells whether nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.upserted.is_empty()
    }
}

/// Counts the ones of whole runs: run `i` is `blocks[i]` repeated from `starts[i]` to
/// `starts[i + 1]` (so `starts` holds one more entry than `blocks`).
fn sum_runs(starts: &[u128], blocks: &[u64]) -> u128 {
    if starts.last().is_some_and(|&s| s < 1 << 57) {
        // Every span is below 2^57 blocks, so each product fits in 2^63 and so does the sum
        // (at most 64 * 2^57 ordinals): u64 arithmetic is exact and twice as fast.
        let mut total: u64 = 0;
        for (span, &bits) in starts.windows(2).zip(blocks) {
            #[allow(clippy::cast_possible_truncation)]
            let n_blocks = (span[1] - span[0]) as u64;
            total += u64::from(bits.count_ones()) * n_blocks;
        }
        return u128::from(total);
    }
    let mut total: u128 = 0;
    for (span, &bits) in starts.windows(2).zip(blocks) {
        // These runs leave at least two blocks to others, so a span is below 2^122 and
        // 64 * span below 2^128: the product cannot overflow.
        total = total.saturating_add(u128::from(bits.count_ones()) * (span[1] - span[0]));
    }
    total
}

fn bit_of(ordinal: u128) -> u32 {
    // The low six bits, always below 64: the truncation keeps all of them.
    #[allow(clippy::cast_possible_truncation)]
    let low = ordinal as u32;
    low % BLOCK_BITS
}

/// Mask of the bits at and above `ordinal`'s position in its block.
fn low_mask(ordinal: u128) -> u64 {
    u64::MAX << bit_of(ordinal)
}

/// Mask of the bits at and below `ordinal`'s position in its block.
fn high_mask(ordinal: u128) -> u64 {
    u64::MAX >> (BLOCK_BITS - 1 - bit_of(ordinal))
}

#[cfg(test)]
impl Bitmap {
    /// Asserts every structural invariant (test builds only).
    fn check_invariants(&self) {
        assert!(!self.leaves.is_empty());
        assert_eq!(self.firsts.len(), self.leaves.len());
        for (leaf, &first) in self.leaves.iter().zip(&self.firsts) {
            assert!(
                leaf.len() > 0 && leaf.len() <= LEAF_MAX,
                "leaf of {}",
                leaf.len()
            );
            assert_eq!(leaf.starts.len(), leaf.blocks.len());
            assert_eq!(leaf.starts[0], first);
        }
        // from_runs checks order, contiguity, maximality and the clear tail.
        let rebuilt = Self::from_runs(self.last, self.runs()).expect("runs are valid");
        assert_eq!(&rebuilt, self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn round_trip(b: &Bitmap) -> Bitmap {
        let mut buf = Vec::new();
        b.encode(&mut buf);
        let mut r = Reader::new(&buf);
        let back = Bitmap::decode(b.last(), &mut r).expect("decodes");
        r.finish().expect("consumes everything");
        let again = Bitmap::from_runs(b.last(), b.runs()).expect("runs rebuild");
        assert_eq!(again, *b);
        back
    }

    #[test]
    fn an_empty_bitmap_is_one_run_at_any_size() {
        for last in [0, 1, 63, 64, 65_535, u128::from(u64::MAX), u128::MAX] {
            let b = Bitmap::new(last);
            assert_eq!(b.n_runs(), 1);
            assert_eq!(b.len(), 0);
            assert!(b.is_empty());
            assert_eq!(b.first_clear(0, last), Some(0));
            assert_eq!(b.first_clear(last, last), Some(last));
            assert_eq!(round_trip(&b), b);
        }
    }

    #[test]
    fn splitting_and_merging_runs_keeps_them_maximal() {
        // 4 blocks; fill block 1 completely: [E][F][E E]... then clear, back to one run.
        let mut b = Bitmap::new(255);
        for o in 64..128 {
            assert!(b.insert(o));
        }
        let runs: Vec<_> = b.runs().map(|r| (r.start, r.n_blocks, r.bits)).collect();
        assert_eq!(runs, vec![(0, 1, 0), (1, 1, u64::MAX), (2, 2, 0)]);
        // Middle-of-run split: set a bit in block 2 of a fresh bitmap of 5 blocks.
        let mut m = Bitmap::new(5 * 64 - 1);
        assert!(m.insert(2 * 64 + 3));
        let runs: Vec<_> = m.runs().map(|r| (r.start, r.n_blocks)).collect();
        assert_eq!(runs, vec![(0, 2), (2, 1), (3, 2)]);
        assert!(m.remove(2 * 64 + 3));
        assert_eq!(m, Bitmap::new(5 * 64 - 1));
        for o in 64..128 {
            assert!(b.remove(o));
        }
        assert_eq!(b, Bitmap::new(255));
        assert!(!b.remove(7), "removing an absent ordinal reports false");
    }

    #[test]
    fn ordinals_past_last_are_never_members() {
        let mut b = Bitmap::new(2);
        assert!(!b.insert(3));
        assert!(!b.contains(3));
        assert_eq!(b.first_clear(0, 100), Some(0));
        for o in 0..=2 {
            assert!(b.insert(o));
        }
        assert_eq!(
            b.first_clear(0, 100),
            None,
            "padding bits are not free ordinals"
        );
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn the_top_of_the_u128_space_is_reachable() {
        let mut b = Bitmap::new(u128::MAX);
        assert!(b.insert(u128::MAX));
        assert!(b.insert(0));
        assert!(b.contains(u128::MAX));
        assert_eq!(b.len(), 2);
        assert_eq!(b.first_clear(u128::MAX, u128::MAX), None);
        assert_eq!(
            b.next_clear(0, u128::MAX, u128::MAX),
            Some(1),
            "wraps to the start"
        );
        assert_eq!(b.count_ones(1, u128::MAX - 1), 0);
        assert_eq!(round_trip(&b), b);
    }

    #[test]
    fn a_full_u128_space_saturates_its_count() {
        let full = Bitmap::from_runs(
            u128::MAX,
            [Run {
                start: 0,
                n_blocks: 1 << 122,
                bits: u64::MAX,
            }],
        )
        .expect("valid");
        assert_eq!(full.len(), u128::MAX, "2^128 saturates");
        assert_eq!(
            full.count_ones(1, u128::MAX),
            u128::MAX,
            "exactly 2^128 - 1"
        );
        assert_eq!(full.first_clear(0, u128::MAX), None);
    }

    #[test]
    fn corrupt_runs_are_rejected() {
        let run = |start, n_blocks, bits| Run {
            start,
            n_blocks,
            bits,
        };
        let cases = [
            vec![],
            vec![run(0, 2, 0)],
            vec![run(0, 1, 1), run(1, 1, 1), run(2, 2, 0)],
            vec![run(0, 1, 1), run(2, 3, 0)],
            vec![run(0, 0, 1), run(0, 4, 0)],
            vec![run(0, 5, 0)],
        ];
        for runs in cases {
            assert!(
                matches!(
                    Bitmap::from_runs(255, runs.clone()),
                    Err(Error::Corrupt { .. })
                ),
                "{runs:?}"
            );
        }
        // Bits past `last` (ordinal 200 in a bitmap of 0..=199).
        let bad_tail = vec![run(0, 3, 0), run(3, 1, 1 << 8)];
        assert!(Bitmap::from_runs(199, bad_tail).is_err());
    }

    #[test]
    fn decoding_garbage_never_panics() {
        let mut good = Vec::new();
        let mut b = Bitmap::new(65_535);
        for o in (0..65_536).step_by(3) {
            b.insert(o);
        }
        b.encode(&mut good);
        // Every truncation and every single-byte corruption either fails or decodes to a
        // valid bitmap that re-encodes identically.
        for cut in 0..good.len() {
            assert!(Bitmap::decode(65_535, &mut Reader::new(&good[..cut])).is_err());
        }
        for pos in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[pos] ^= 0x5a;
            if let Ok(d) = Bitmap::decode(65_535, &mut Reader::new(&bad)) {
                let mut again = Vec::new();
                d.encode(&mut again);
                assert_eq!(again.len(), bad.len());
            }
        }
    }

    /// A naive model: the set of ordinals.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128),
        Remove(u128),
        FirstClear(u128, u128),
        NextClear(u128, u128, u128),
        /// `insert_clear`: the first clear ordinal from the cursor on (from the start without
        /// one), wrapping, taken.
        InsertClear(u128, u128, Option<u128>),
        Count(u128, u128),
    }

    fn ops(last: u128) -> impl Strategy<Value = Vec<Op>> {
        let o = move || 0..=last;
        let op = prop_oneof![
            4 => o().prop_map(Op::Insert),
            2 => o().prop_map(Op::Remove),
            1 => (o(), o()).prop_map(|(a, b)| Op::FirstClear(a.min(b), a.max(b))),
            1 => (o(), o(), o()).prop_map(|(a, b, c)| Op::NextClear(a.min(b), a.max(b), c)),
            2 => (o(), o(), proptest::option::of(o()))
                .prop_map(|(a, b, c)| Op::InsertClear(a.min(b), a.max(b), c)),
            1 => (o(), o()).prop_map(|(a, b)| Op::Count(a.min(b), a.max(b))),
        ];
        proptest::collection::vec(op, 1..400)
    }

    fn check_against_model(last: u128, ops: &[Op]) {
        let mut b = Bitmap::new(last);
        let mut model = BTreeSet::new();
        for op in ops {
            match *op {
                Op::Insert(o) => assert_eq!(b.insert(o), model.insert(o)),
                Op::Remove(o) => assert_eq!(b.remove(o), model.remove(&o)),
                Op::FirstClear(s, e) => {
                    let want = (s..=e).find(|o| !model.contains(o));
                    assert_eq!(b.first_clear(s, e), want);
                }
                Op::NextClear(s, e, c) => {
                    let from = if c > s && c <= e { c } else { s };
                    let want = (from..=e).chain(s..from).find(|o| !model.contains(o));
                    assert_eq!(b.next_clear(s, e, c), want);
                }
                Op::InsertClear(s, e, c) => {
                    let from = c.filter(|&c| c > s && c <= e).unwrap_or(s);
                    let want = (from..=e).chain(s..from).find(|o| !model.contains(o));
                    assert_eq!(b.insert_clear(s, e, c), want);
                    model.extend(want);
                }
                Op::Count(s, e) => {
                    assert_eq!(b.count_ones(s, e), model.range(s..=e).count() as u128);
                }
            }
        }
        assert_eq!(b.len(), model.len() as u128);
        assert_eq!(round_trip(&b), b);
        b.check_invariants();
    }

    /// Applying the delta of each change to the previous runs gives the new runs, and the
    /// delta stays within a few runs of the change.
    fn check_deltas(last: u128, ops: &[Op]) {
        use std::collections::BTreeMap;
        let mut b = Bitmap::new(last);
        let mut rows: BTreeMap<u128, Run> = b.runs().map(|r| (r.start, r)).collect();
        for op in ops {
            let (Op::Insert(o) | Op::Remove(o)) = *op else {
                continue;
            };
            let old = b.clone();
            let changed = if matches!(op, Op::Insert(_)) {
                b.insert(o)
            } else {
                b.remove(o)
            };
            let blocks: Vec<u128> = if changed {
                vec![block_of(o)]
            } else {
                Vec::new()
            };
            let delta = RunDelta::between(&old, &b, &blocks);
            assert!(delta.removed.len() + delta.upserted.len() <= 6, "{delta:?}");
            for start in &delta.removed {
                rows.remove(start);
            }
            for run in &delta.upserted {
                rows.insert(run.start, *run);
            }
            let want: BTreeMap<u128, Run> = b.runs().map(|r| (r.start, r)).collect();
            assert_eq!(rows, want);
        }
    }

    proptest! {
        #[test]
        fn run_deltas_rebuild_the_runs(ops in ops(64 * 64 - 1)) {
            check_deltas(64 * 64 - 1, &ops);
        }

        #[test]
        fn small_bitmaps_match_the_model(ops in ops(300)) {
            check_against_model(300, &ops);
        }

        #[test]
        fn tiny_bitmaps_match_the_model(ops in ops(3)) {
            check_against_model(3, &ops);
        }

        #[test]
        fn block_aligned_bitmaps_match_the_model(ops in ops(511)) {
            check_against_model(511, &ops);
        }

        /// 64 blocks: enough runs to split and merge many leaves.
        #[test]
        fn many_run_bitmaps_match_the_model(ops in ops(64 * 64 - 1)) {
            check_against_model(64 * 64 - 1, &ops);
        }
    }
}
