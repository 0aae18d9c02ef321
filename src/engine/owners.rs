//! Who holds which address of a subnet: an owner — an orchestrator's name for what holds an
//! address, e.g. `<container id>/<ifname>` — and since when, per allocated ordinal, with an
//! index by owner, so that an owner asking a pool again finds the address it holds there in
//! O(log n).
//!
//! Allocations without an owner have no entry: they cost nothing here.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::{HashMap, OrdMap};

use super::addrset::OrdRange;

/// Longest owner, in bytes.
pub const MAX_OWNER_LEN: usize = 256;

/// An owner's name, checked: 1 to 256 bytes of UTF-8, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(Arc<str>);

impl Owner {
    /// Checks `name`.
    ///
    /// # Errors
    /// Why it is not an owner's name.
    pub fn new(name: &str) -> Result<Self, &'static str> {
        if name.is_empty() {
            Err("empty owner")
        } else if name.len() > MAX_OWNER_LEN {
            Err("owner longer than 256 bytes")
        } else if name.chars().any(char::is_control) {
            Err("owner with a control character")
        } else {
            Ok(Self(Arc::from(name)))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds an ordinal, and since when (Unix milliseconds, as the driver's clock said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: Owner,
    pub since_ms: u64,
}

/// The ordinals an owner holds in a subnet: nearly always one, kept inline.
#[derive(Debug, Clone)]
enum Held {
    One(u128),
    Many(BTreeSet<u128>),
}

impl Held {
    fn first_in(&self, first: u128, last: u128) -> Option<u128> {
        match self {
            Self::One(o) => (first..=last).contains(o).then_some(*o),
            Self::Many(set) => set.range(first..=last).next().copied(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        let (one, many) = match self {
            Self::One(o) => (Some(*o), None),
            Self::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn insert(&mut self, ordinal: u128) {
        match self {
            Self::One(o) if *o == ordinal => {}
            Self::One(o) => *self = Self::Many(BTreeSet::from([*o, ordinal])),
            Self::Many(set) => {
                set.insert(ordinal);
            }
        }
    }

    /// Removes `ordinal`; tells whether anything is left.
    fn remove(&mut self, ordinal: u128) -> bool {
        match self {
            Self::One(o) => *o != ordinal,
            Self::Many(set) => {
                set.remove(&ordinal);
                match (set.len(), set.first()) {
                    (0, _) => false,
                    (1, Some(&left)) => {
                        *self = Self::One(left);
                        true
                    }
                    _ => true,
                }
            }
        }
    }
}

/// The holders of a subnet's ordinals, in persistent maps (`imbl`'s B-tree and hash trie):
/// a copy costs nothing, and a change to a copy copies only the nodes on its path, whatever
/// the number of holders (the driver copies a subnet for every batch).
#[derive(Debug, Clone, Default)]
pub struct Owners {
    by_ordinal: OrdMap<u128, Holder>,
    // Invariant: exactly the inverse of `by_ordinal`.
    by_owner: HashMap<Owner, Held>,
}

impl PartialEq for Owners {
    fn eq(&self, other: &Self) -> bool {
        // The index follows from the map.
        self.by_ordinal == other.by_ordinal
    }
}

impl Eq for Owners {}

impl Owners {
    /// Rebuilds the holders from stored rows.
    #[must_use]
    pub fn from_rows(rows: impl IntoIterator<Item = (u128, Holder)>) -> Self {
        let mut owners = Self::default();
        for (ordinal, holder) in rows {
            owners.insert(ordinal, holder);
        }
        owners
    }

    /// The number of ordinals held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_ordinal.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_ordinal.is_empty()
    }

    /// Who holds `ordinal`, if anyone.
    #[must_use]
    pub fn holder(&self, ordinal: u128) -> Option<&Holder> {
        self.by_ordinal.get(&ordinal)
    }

    fn held(&self, owner: &Owner) -> Option<&Held> {
        self.by_owner.get(owner)
    }

    /// The lowest ordinal of `range` that `owner` holds: what an owner asking a pool again
    /// gets back.
    #[must_use]
    pub fn held_in(&self, owner: &Owner, range: OrdRange) -> Option<u128> {
        self.held(owner)?.first_in(range.first, range.last)
    }

    /// Every ordinal `owner` holds, in order.
    pub fn of<'a>(&'a self, owner: &Owner) -> impl Iterator<Item = u128> + 'a {
        self.held(owner).into_iter().flat_map(Held::iter)
    }

    /// Records that `holder` holds `ordinal` (replacing whoever held it).
    pub fn insert(&mut self, ordinal: u128, holder: Holder) {
        let owner = holder.owner.clone();
        if let Some(old) = self.by_ordinal.insert(ordinal, holder) {
            self.unindex(&old.owner, ordinal);
        }
        match self.by_owner.get_mut(&owner) {
            Some(held) => held.insert(ordinal),
            None => {
                self.by_owner.insert(owner, Held::One(ordinal));
            }
        }
    }

    /// Forgets who held `ordinal`; returns who it was.
    pub fn remove(&mut self, ordinal: u128) -> Option<Holder> {
        let old = self.by_ordinal.remove(&ordinal)?;
        self.unindex(&old.owner, ordinal);
        Some(old)
    }

    fn unindex(&mut self, owner: &Owner, ordinal: u128) {
        if let Some(held) = self.by_owner.get_mut(owner)
            && !held.remove(ordinal)
        {
            self.by_owner.remove(owner);
        }
    }

    /// The holders of `range`, in order of ordinal.
    pub fn in_range(&self, range: OrdRange) -> impl Iterator<Item = (u128, &Holder)> + '_ {
        self.by_ordinal
            .range(range.first..=range.last)
            .map(|(o, h)| (*o, h))
    }

    /// What changed from `before` to `after` within `range`, as a store writes it: each
    /// ordinal whose holder differs, with its new holder (`None`: no longer held).
    #[must_use]
    pub fn changes(before: &Self, after: &Self, range: OrdRange) -> Vec<(u128, Option<Holder>)> {
        let mut out = Vec::new();
        let mut a = before.in_range(range).peekable();
        let mut b = after.in_range(range).peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return out,
                (Some(&(oa, _)), None) => {
                    out.push((oa, None));
                    a.next();
                }
                (None, Some(&(ob, hb))) => {
                    out.push((ob, Some(hb.clone())));
                    b.next();
                }
                (Some(&(oa, ha)), Some(&(ob, hb))) => {
                    if oa < ob {
                        out.push((oa, None));
                        a.next();
                    } else if ob < oa {
                        out.push((ob, Some(hb.clone())));
                        b.next();
                    } else {
                        if ha != hb {
                            out.push((ob, Some(hb.clone())));
                        }
                        a.next();
                        b.next();
                    }
                }
            }
        }
    }

    /// The memory the holders take on the heap, roughly (entries, not the maps' slack).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.in_range(OrdRange {
            first: 0,
            last: u128::MAX,
        })
        .map(|(_, h)| size_of::<(u128, Holder)>() + size_of::<(Owner, Held)>() + h.owner.0.len())
        .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn owner(s: &str) -> Owner {
        Owner::new(s).unwrap()
    }

    fn holder(s: &str, since_ms: u64) -> Holder {
        Holder {
            owner: owner(s),
            since_ms,
        }
    }

    fn range(first: u128, last: u128) -> OrdRange {
        OrdRange { first, last }
    }

    #[test]
    fn owners_are_checked() {
        assert!(Owner::new("c0ffee/eth0").is_ok());
        assert!(Owner::new(&"x".repeat(256)).is_ok());
        assert_eq!(Owner::new(""), Err("empty owner"));
        assert_eq!(
            Owner::new(&"x".repeat(257)),
            Err("owner longer than 256 bytes")
        );
        assert_eq!(Owner::new("a\nb"), Err("owner with a control character"));
    }

    #[test]
    fn an_owner_finds_what_it_holds_in_a_range() {
        let mut o = Owners::default();
        o.insert(10, holder("a", 1));
        o.insert(200, holder("a", 2));
        o.insert(20, holder("b", 3));
        assert_eq!(o.held_in(&owner("a"), range(0, 255)), Some(10));
        assert_eq!(o.held_in(&owner("a"), range(11, 255)), Some(200));
        assert_eq!(o.held_in(&owner("a"), range(11, 199)), None);
        assert_eq!(o.held_in(&owner("c"), range(0, 255)), None);
        assert_eq!(o.of(&owner("a")).collect::<Vec<_>>(), [10, 200]);
        // Taken over: the index follows.
        o.insert(10, holder("b", 4));
        assert_eq!(o.of(&owner("a")).collect::<Vec<_>>(), [200]);
        assert_eq!(o.of(&owner("b")).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(o.remove(200).map(|h| h.since_ms), Some(2));
        assert_eq!(o.of(&owner("a")).count(), 0);
        assert!(o.held(&owner("a")).is_none(), "no empty sets kept");
        assert!(matches!(o.held(&owner("b")), Some(Held::Many(_))));
        o.remove(20);
        assert!(matches!(o.held(&owner("b")), Some(Held::One(10))));
        o.insert(20, holder("b", 3));
        assert_eq!(o.remove(200), None);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn a_copy_changes_apart_from_its_original() {
        let mut a = Owners::default();
        for o in 0..5_000u128 {
            a.insert(o * 3, holder(&format!("c{o}"), 1));
        }
        assert_eq!(a.len(), 5_000);
        let mut b = a.clone();
        b.insert(1, holder("new", 2));
        assert_eq!(b.remove(3 * 4_000).map(|h| h.owner), Some(owner("c4000")));
        // The original is untouched.
        assert_eq!(a.len(), 5_000);
        assert!(a.holder(1).is_none() && a.holder(12_000).is_some());
        assert_eq!(b.len(), 5_000);
        assert!(b.holder(1).is_some() && b.holder(12_000).is_none());
        // Ranges in order.
        let got: Vec<u128> = b.in_range(range(1_020, 1_040)).map(|(o, _)| o).collect();
        assert_eq!(got, [1_020, 1_023, 1_026, 1_029, 1_032, 1_035, 1_038]);
        // Undone, equal again; the index follows.
        b.remove(1);
        b.insert(12_000, holder("c4000", 1));
        assert_eq!(a, b);
        assert_eq!(
            b.held_in(&owner("c4000"), range(0, u128::MAX)),
            Some(12_000)
        );
        assert_eq!(b.held_in(&owner("new"), range(0, u128::MAX)), None);
        // No empty entry is kept.
        let mut c = Owners::from_rows([(7, holder("x", 1))]);
        assert_eq!(c.by_owner.len(), 1);
        c.remove(7);
        assert!(c.by_owner.is_empty() && c.by_ordinal.is_empty() && c.is_empty());
    }

    #[test]
    fn changes_are_what_differs_in_the_range() {
        let before = Owners::from_rows([
            (1, holder("a", 1)),
            (5, holder("b", 1)),
            (9, holder("c", 1)),
        ]);
        let after = Owners::from_rows([
            (1, holder("a", 1)),
            (5, holder("d", 2)),
            (7, holder("e", 2)),
        ]);
        assert_eq!(
            Owners::changes(&before, &after, range(0, 100)),
            vec![
                (5, Some(holder("d", 2))),
                (7, Some(holder("e", 2))),
                (9, None)
            ]
        );
        assert_eq!(Owners::changes(&before, &after, range(0, 4)), vec![]);
        assert_eq!(Owners::changes(&after, &after, range(0, 100)), vec![]);
        // Applied to `before`, the changes give `after`.
        let mut applied = before.clone();
        for (ordinal, h) in Owners::changes(&before, &after, range(0, u128::MAX)) {
            match h {
                Some(h) => applied.insert(ordinal, h),
                None => {
                    applied.remove(ordinal);
                }
            }
        }
        assert_eq!(applied, after);
    }
}
