//! A run-length-encoded bitmap over 128-bit ordinals `0..=last`.
//!
//! The bitmap is cut into 64-bit blocks, and consecutive identical blocks are kept as one *run*
//! (libnetwork's `bitmap` keeps 32-bit blocks the same way). An empty IPv6 /0 is one run, a /16
//! filled in address order is three, and a /16 filled at random is one run per block. Memory
//! and search cost follow the number of runs, never the number of ordinals.
//!
//! This module knows nothing about IP addresses, pools or storage: it is a value type, with no
//! locks and no I/O. `AddrSet` maps addresses onto it.

use super::Error;
use super::codec::{Reader, corrupt, put_varint};

/// Bits per block.
const BLOCK_BITS: u32 = 64;
/// Encoding tags, packed into the low two bits of each run's length varint.
const TAG_EMPTY: u128 = 0;
const TAG_FULL: u128 = 1;
const TAG_PARTIAL: u128 = 2;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    // Invariant: the highest valid ordinal; the bitmap has `(last >> 6) + 1` blocks.
    last: u128,
    // Invariant: `starts[0] == 0`, strictly increasing, every entry below the block count,
    // and `starts.len() == blocks.len() >= 1`. Run `i` ends where run `i + 1` starts.
    // Kept apart from `blocks` so a run costs 24 bytes rather than a padded 32.
    starts: Vec<u128>,
    // Invariant: no two neighbours are equal (runs are maximal), and the bits past `last` in
    // the final block are zero.
    blocks: Vec<u64>,
}

impl Bitmap {
    /// Returns an empty bitmap over the ordinals `0..=last`.
    #[must_use]
    pub fn new(last: u128) -> Self {
        Self {
            last,
            starts: vec![0],
            blocks: vec![0],
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
        self.blocks.len()
    }

    /// Returns the heap memory held by the bitmap, in bytes (allocated capacity, not length).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * size_of::<u128>() + self.blocks.capacity() * size_of::<u64>()
    }

    fn n_blocks(&self) -> u128 {
        (self.last >> 6) + 1
    }

    /// Index of the run holding block `block`.
    fn run_of(&self, block: u128) -> usize {
        // starts[0] == 0, so the partition point is at least 1.
        self.starts
            .partition_point(|&s| s <= block)
            .saturating_sub(1)
    }

    /// First block past run `i`.
    fn run_end(&self, i: usize) -> u128 {
        self.starts
            .get(i + 1)
            .copied()
            .unwrap_or_else(|| self.n_blocks())
    }

    /// Tells whether `ordinal` is in the set; ordinals past `last` never are.
    #[must_use]
    pub fn contains(&self, ordinal: u128) -> bool {
        if ordinal > self.last {
            return false;
        }
        let block = ordinal >> 6;
        (self.blocks[self.run_of(block)] >> bit_of(ordinal)) & 1 == 1
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
        let block = ordinal >> 6;
        let i = self.run_of(block);
        let old = self.blocks[i];
        let mask = 1u64 << bit_of(ordinal);
        let new = if set { old | mask } else { old & !mask };
        if new == old {
            return false;
        }
        self.replace_block(i, block, new);
        true
    }

    /// Replaces block `block`, which lies in run `i`, by `new`, keeping runs maximal.
    ///
    /// ```text
    /// run i alone          [ A ]            -> [ N ]          then merge with equal neighbours
    /// first block of run   [ A A A ]        -> [ N ][ A A ]   or grow the previous run if it is N
    /// last block of run    [ A A A ]        -> [ A A ][ N ]   or grow the next run if it is N
    /// middle of run        [ A A A ]        -> [ A ][ N ][ A ]
    /// ```
    fn replace_block(&mut self, i: usize, block: u128, new: u64) {
        let start = self.starts[i];
        let end = self.run_end(i);
        let old = self.blocks[i];
        let prev_is_new = i > 0 && self.blocks[i - 1] == new;
        let next_is_new = self.blocks.get(i + 1) == Some(&new);
        match (start == block, end == block + 1) {
            (true, true) => {
                self.blocks[i] = new;
                // Merge the next run first so that index `i` stays valid for the previous one.
                if next_is_new {
                    self.remove_run(i + 1);
                }
                if prev_is_new {
                    self.remove_run(i);
                }
            }
            (true, false) => {
                self.starts[i] = block + 1;
                if !prev_is_new {
                    self.starts.insert(i, block);
                    self.blocks.insert(i, new);
                }
            }
            (false, true) => {
                if next_is_new {
                    self.starts[i + 1] = block;
                } else {
                    self.starts.insert(i + 1, block);
                    self.blocks.insert(i + 1, new);
                }
            }
            (false, false) => {
                self.starts.splice(i + 1..i + 1, [block, block + 1]);
                self.blocks.splice(i + 1..i + 1, [new, old]);
            }
        }
    }

    fn remove_run(&mut self, i: usize) {
        self.starts.remove(i);
        self.blocks.remove(i);
    }

    /// Returns the lowest ordinal in `start..=end` that is not in the set.
    ///
    /// Costs one binary search plus at most a few runs: runs are maximal, so a run of full
    /// blocks is always followed by one with a free bit.
    #[must_use]
    pub fn first_clear(&self, start: u128, end: u128) -> Option<u128> {
        let end = end.min(self.last);
        if start > end {
            return None;
        }
        let last_block = end >> 6;
        let end_mask = high_mask(end);
        let mut block = start >> 6;
        let mut mask = low_mask(start);
        let mut i = self.run_of(block);
        loop {
            let bits = self.blocks[i];
            let run_end = self.run_end(i);
            if bits != u64::MAX {
                // Every block of the run is `bits`: only the first one (masked below `start`)
                // can come up empty, so at most two blocks are looked at.
                while block < run_end {
                    let mut free = !bits & mask;
                    if block == last_block {
                        free &= end_mask;
                    }
                    if free != 0 {
                        return Some((block << 6) | u128::from(free.trailing_zeros()));
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
            i += 1;
        }
    }

    /// Returns the lowest free ordinal at or after `cursor` in `start..=end`, wrapping around
    /// to `start`; a cursor outside the range starts at `start` (serial allocation).
    #[must_use]
    pub fn next_clear(&self, start: u128, end: u128, cursor: u128) -> Option<u128> {
        if cursor > start && cursor <= end {
            if let Some(found) = self.first_clear(cursor, end) {
                return Some(found);
            }
            return self.first_clear(start, cursor - 1);
        }
        self.first_clear(start, end)
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
        let (first_block, last_block) = (start >> 6, end >> 6);
        let (i0, i1) = (self.run_of(first_block), self.run_of(last_block));
        let (head_mask, tail_mask) = (low_mask(start), high_mask(end));
        if i0 == i1 {
            // One run: the first and last blocks are cut, the ones between count in full.
            let bits = self.blocks[i0];
            if first_block == last_block {
                return u128::from((bits & head_mask & tail_mask).count_ones());
            }
            let between =
                u128::from(bits.count_ones()).saturating_mul(last_block - first_block - 1);
            let edges = (bits & head_mask).count_ones() + (bits & tail_mask).count_ones();
            return between.saturating_add(u128::from(edges));
        }
        // The first run from `first_block`, whole runs between, the last run up to `last_block`.
        let head_bits = self.blocks[i0];
        let head_blocks = self.starts[i0 + 1] - first_block - 1;
        let mut total = u128::from((head_bits & head_mask).count_ones())
            .saturating_add(u128::from(head_bits.count_ones()).saturating_mul(head_blocks));
        for (span, &bits) in self.starts[i0 + 1..=i1]
            .windows(2)
            .zip(&self.blocks[i0 + 1..i1])
        {
            // A middle run leaves at least two blocks to others, so span < 2^122 and
            // 64 * span < 2^128: the product cannot overflow.
            total = total.saturating_add(u128::from(bits.count_ones()) * (span[1] - span[0]));
        }
        let tail_bits = self.blocks[i1];
        let tail_blocks = last_block - self.starts[i1];
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
        self.blocks.len() == 1 && self.blocks[0] == 0
    }

    /// Iterates over the runs, in block order.
    pub fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        (0..self.blocks.len()).map(|i| Run {
            start: self.starts[i],
            n_blocks: self.run_end(i) - self.starts[i],
            bits: self.blocks[i],
        })
    }

    /// Rebuilds a bitmap from its runs, as a store persisted them.
    ///
    /// # Errors
    /// `Error::Corrupt` unless the runs are in order, maximal, non-empty, cover exactly the
    /// blocks of `0..=last`, and leave the bits past `last` clear.
    pub fn from_runs(last: u128, runs: impl IntoIterator<Item = Run>) -> Result<Self, Error> {
        let mut bitmap = Self {
            last,
            starts: Vec::new(),
            blocks: Vec::new(),
        };
        let mut next: u128 = 0;
        for run in runs {
            bitmap.push_run(run, &mut next)?;
        }
        bitmap.check_complete(next)?;
        Ok(bitmap)
    }

    fn push_run(&mut self, run: Run, next: &mut u128) -> Result<(), Error> {
        if run.start != *next {
            return Err(corrupt("runs are not contiguous"));
        }
        if run.n_blocks == 0 {
            return Err(corrupt("empty run"));
        }
        if self.blocks.last() == Some(&run.bits) {
            return Err(corrupt("runs are not maximal"));
        }
        let end = run
            .start
            .checked_add(run.n_blocks)
            .filter(|&end| end <= self.n_blocks())
            .ok_or_else(|| corrupt("runs extend past the end of the bitmap"))?;
        self.starts.push(run.start);
        self.blocks.push(run.bits);
        *next = end;
        Ok(())
    }

    fn check_complete(&self, next: u128) -> Result<(), Error> {
        if next != self.n_blocks() {
            return Err(corrupt("runs do not cover the bitmap"));
        }
        let tail_bits = self.blocks.last().copied().unwrap_or(0);
        if tail_bits & !high_mask(self.last) != 0 {
            return Err(corrupt("bits set past the last ordinal"));
        }
        Ok(())
    }

    /// Appends the runs in the compact form `decode` reads: a run count, then per run one
    /// varint holding `n_blocks << 2 | tag` (empty, full or partial) and, for a partial block,
    /// its 8 bytes. A /16 at 50% random fill takes about 10 KB.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.blocks.len() as u128);
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
        // Each run takes at least one byte, which bounds the allocation below by the input.
        if n_runs == 0 || n_runs > r.remaining() as u128 {
            return Err(corrupt("implausible run count"));
        }
        let n_runs = usize::try_from(n_runs).map_err(|_| corrupt("implausible run count"))?;
        let mut bitmap = Self {
            last,
            starts: Vec::with_capacity(n_runs),
            blocks: Vec::with_capacity(n_runs),
        };
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
            let run = Run {
                start: next,
                n_blocks: word >> 2,
                bits,
            };
            bitmap.push_run(run, &mut next)?;
        }
        bitmap.check_complete(next)?;
        Ok(bitmap)
    }
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
        Count(u128, u128),
    }

    fn ops(last: u128) -> impl Strategy<Value = Vec<Op>> {
        let o = move || 0..=last;
        let op = prop_oneof![
            4 => o().prop_map(Op::Insert),
            2 => o().prop_map(Op::Remove),
            1 => (o(), o()).prop_map(|(a, b)| Op::FirstClear(a.min(b), a.max(b))),
            1 => (o(), o(), o()).prop_map(|(a, b, c)| Op::NextClear(a.min(b), a.max(b), c)),
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
                Op::Count(s, e) => {
                    assert_eq!(b.count_ones(s, e), model.range(s..=e).count() as u128);
                }
            }
        }
        assert_eq!(b.len(), model.len() as u128);
        assert_eq!(round_trip(&b), b);
        for w in b.blocks.windows(2) {
            assert_ne!(w[0], w[1], "runs stay maximal");
        }
    }

    proptest! {
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
    }
}
