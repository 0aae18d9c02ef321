//! One subnet: its pools (the one without sub-pool and the sub-pools), its address set, the
//! addresses it reserves, and its utilization, kept current on every change. The rules that
//! concern one subnet live here and nowhere else: a pool must exist to be used, a subnet
//! goes with its last pool, a subnet's pools may not repeat.

use std::net::IpAddr;
use std::sync::LazyLock;

use ipnet::IpNet;

use super::addrset::{AddrSet, OrdRange};
use super::error::Error;
use super::id::{PoolId, check_sub_pool};
use std::sync::Arc;

use super::owners::{Holder, Owner, Owners};
use super::request::AddressRequest;

/// How full a pool is. Exact 128-bit counts; see [`saturating_u64`] for the API boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utilization {
    /// Addresses of the subnet in use or reserved, shared by all pools of the subnet.
    pub allocated_in_subnet: u128,
    /// Addresses of the pool's sub-pool (the whole subnet without one) still free.
    pub free_in_range: u128,
    /// Free addresses over the union of the subnet's pools' ranges, overlaps counted once.
    pub free_in_union: u128,
}

/// Clamps a count to `u64` for APIs that carry 64-bit counts.
#[must_use]
pub fn saturating_u64(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The addresses a subnet reserves when it is created, and why.
///
/// IPv4: the network and broadcast addresses, except in a /31 (point-to-point, RFC 3021) or a
/// /32, which have none. IPv6: the first address, the subnet-router anycast address
/// (RFC 4291 section 2.6.1), always — as Docker does, even in a /127 or /128.
pub fn reserved_addresses(net: IpNet) -> impl Iterator<Item = (IpAddr, &'static str)> {
    // No vector: a release checks these on every call.
    let (first, second) = match net {
        IpNet::V4(n) if n.prefix_len() < 31 => (
            Some((IpAddr::V4(n.network()), "network address")),
            Some((IpAddr::V4(n.broadcast()), "broadcast address")),
        ),
        IpNet::V4(_) => (None, None),
        IpNet::V6(n) => (
            Some((IpAddr::V6(n.network()), "subnet-router anycast address")),
            None,
        ),
    };
    first.into_iter().chain(second)
}

/// One subnet: its pools (the one without sub-pool and the sub-pools), its address set, and
/// the allocated count of every range, kept current so utilization costs no counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    addrs: AddrSet,
    // Invariant: empty only once the subnet is deleted ([`Subnet::is_deleted`]). Keys: `None` is the pool
    // without a sub-pool, `Some(r)` a sub-pool inside the subnet of the same family. Each value
    // holds the key's ordinal range and how many of its addresses are in use.
    pools: PoolMap,
    // Invariant: the number of addresses in use in the whole subnet.
    n_allocated: u128,
    // Invariant: the outermost pool ranges (their union, as disjoint ranges in order), each
    // with the number of its addresses in use.
    union: Vec<Tally>,
    // Invariant: every ordinal held is in use in `addrs`. Shared between copies of the subnet
    // (the driver copies a subnet for each batch) and copied only when a holder changes, so
    // that allocations without an owner never pay for the owners a subnet holds.
    owners: Arc<Owners>,
}

/// An address handed out: fresh, or the one its owner already held in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub address: IpAddr,
    /// Whether the subnet changed (false: the owner's address, given back).
    pub fresh: bool,
}

/// A subnet's pools by sub-pool, in key order (`None` first, then by prefix): a sorted vector
/// sized to what it holds, since a subnet has one pool or a few — a B-tree's first node alone
/// would take about 750 bytes, most of a small pool's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PoolMap(Vec<(Option<IpNet>, Tally)>);

impl PoolMap {
    fn find(&self, key: Option<IpNet>) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(&key))
    }

    fn get(&self, key: Option<IpNet>) -> Option<&Tally> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    fn contains_key(&self, key: Option<IpNet>) -> bool {
        self.find(key).is_ok()
    }

    fn insert(&mut self, key: Option<IpNet>, tally: Tally) {
        match self.find(key) {
            Ok(i) => self.0[i].1 = tally,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (key, tally));
            }
        }
    }

    fn remove(&mut self, key: Option<IpNet>) {
        if let Ok(i) = self.find(key) {
            self.0.remove(i);
            self.0.shrink_to_fit();
        }
    }

    fn keys(&self) -> impl Iterator<Item = Option<IpNet>> + '_ {
        self.0.iter().map(|(k, _)| *k)
    }

    fn values(&self) -> impl Iterator<Item = &Tally> {
        self.0.iter().map(|(_, t)| t)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Tally> {
        self.0.iter_mut().map(|(_, t)| t)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The holders of a subnet without any, shared by every such subnet (a subnet copies it on
/// its first holder).
static NO_OWNERS: LazyLock<Arc<Owners>> = LazyLock::new(Arc::default);

/// A range and how many of its addresses are in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    range: OrdRange,
    n_allocated: u128,
}

impl Tally {
    fn contains(&self, ordinal: u128) -> bool {
        self.range.first <= ordinal && ordinal <= self.range.last
    }

    fn n_free(&self) -> u128 {
        free_of(self.range, self.n_allocated)
    }
}

/// Free addresses of `range` given `n_allocated` of them are in use, exact whenever the free
/// count fits in a `u128` (every range but an empty IPv6 /0, whose anycast address is reserved).
fn free_of(range: OrdRange, n_allocated: u128) -> u128 {
    if n_allocated == 0 {
        range.size()
    } else {
        (range.last - range.first).saturating_sub(n_allocated - 1)
    }
}

impl Subnet {
    /// Returns a new subnet holding one pool, `id`, with its reserved addresses in use.
    ///
    /// # Errors
    /// `InvalidSubPool` for a sub-pool that does not belong to the subnet.
    pub fn create(id: &PoolId) -> Result<Self, Error> {
        Self::with_pools(id.subnet(), [id.sub_pool()])
    }

    /// Returns a new subnet holding these pools, with its reserved addresses in use (as a
    /// store or a test sets one up; requests go through [`Subnet::create`] and
    /// [`Subnet::add_pool`]).
    ///
    /// # Errors
    /// `InvalidSubPool` for a sub-pool that does not belong to the subnet.
    pub fn with_pools(
        net: IpNet,
        pools: impl IntoIterator<Item = Option<IpNet>>,
    ) -> Result<Self, Error> {
        let mut addrs = AddrSet::new(net);
        for (addr, _) in reserved_addresses(addrs.net()) {
            addrs.insert(addr);
        }
        Self::from_parts(addrs, pools)
    }

    /// Reassembles a subnet from persisted parts.
    ///
    /// # Errors
    /// `InvalidSubPool` for a sub-pool that does not belong to the subnet.
    pub fn from_parts(
        addrs: AddrSet,
        pools: impl IntoIterator<Item = Option<IpNet>>,
    ) -> Result<Self, Error> {
        let n_allocated = addrs.count_in(addrs.range(None));
        let mut subnet = Self {
            addrs,
            pools: PoolMap::default(),
            n_allocated,
            union: Vec::new(),
            owners: Arc::clone(&NO_OWNERS),
        };
        for sub_pool in pools {
            check_sub_pool(subnet.net(), sub_pool)?;
            subnet.insert_pool(sub_pool);
        }
        Ok(subnet)
    }

    /// Adds the holders a store kept.
    ///
    /// # Errors
    /// `Corrupt` when one holds an address that is not in use.
    pub fn with_owners(mut self, owners: Owners) -> Result<Self, Error> {
        let bitmap = self.addrs.bitmap();
        let whole = self.addrs.range(None);
        if owners
            .in_range(whole)
            .any(|(ordinal, _)| !bitmap.contains(ordinal))
            || owners.len() != owners.in_range(whole).count()
        {
            return Err(Error::Corrupt {
                reason: "an owner holds an address that is not in use",
            });
        }
        self.owners = Arc::new(owners);
        Ok(self)
    }

    /// Returns who holds which address.
    #[must_use]
    pub fn owners(&self) -> &Owners {
        &self.owners
    }

    /// Returns the subnet's prefix.
    #[must_use]
    pub fn net(&self) -> IpNet {
        self.addrs.net()
    }

    /// Returns the memory the subnet holds, in bytes: its own size plus its heap (allocated
    /// capacity; holders shared with other subnets counted in full).
    #[must_use]
    pub fn mem_bytes(&self) -> usize {
        size_of::<Self>()
            + self.addrs.heap_bytes()
            + self.pools.capacity() * size_of::<(Option<IpNet>, Tally)>()
            + self.union.capacity() * size_of::<Tally>()
            + self.owners.heap_bytes()
    }

    /// Returns the address set (read-only: stores persist it).
    #[must_use]
    pub fn addrs(&self) -> &AddrSet {
        &self.addrs
    }

    /// Iterates over the subnet's pools, as sub-pools (`None`: the pool without one).
    pub fn pools(&self) -> impl Iterator<Item = Option<IpNet>> + '_ {
        self.pools.keys()
    }

    /// Tells whether the subnet has a pool with this sub-pool.
    #[must_use]
    pub fn has_pool(&self, sub_pool: Option<IpNet>) -> bool {
        self.pools.contains_key(sub_pool)
    }

    /// Tells whether the subnet is deleted: its last pool went, and every address with it.
    /// A deleted subnet takes no more requests (`PoolNotFound`); its holder drops it.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.pools.is_empty()
    }

    /// Adds pool `id` to the subnet: a sub-pool joins the subnet's pools; the pool without
    /// sub-pool only ever creates a subnet ([`Subnet::create`]), as in libnetwork. Counting the
    /// new range walks the bitmap once.
    ///
    /// # Errors
    /// `PoolNotFound` when the subnet is deleted (or is not `id`'s); `Overlap` for a sub-pool
    /// the subnet has already, or for the pool without sub-pool; `InvalidSubPool` for a
    /// sub-pool that does not belong to the subnet.
    pub fn add_pool(&mut self, id: &PoolId) -> Result<(), Error> {
        if id.subnet() != self.net() || self.is_deleted() {
            return Err(Error::PoolNotFound {
                pool_id: id.to_string(),
            });
        }
        if id.sub_pool().is_none() || self.has_pool(id.sub_pool()) {
            return Err(self.overlap(id));
        }
        check_sub_pool(self.net(), id.sub_pool())?;
        self.insert_pool(id.sub_pool());
        Ok(())
    }

    /// The refusal of pool `requested`, which overlaps this subnet: it names the very pool
    /// repeated, else the subnet's first pool.
    #[must_use]
    pub fn overlap(&self, requested: &PoolId) -> Error {
        let existing = if requested.subnet() == self.net() && self.has_pool(requested.sub_pool()) {
            requested.sub_pool()
        } else {
            self.pools().next().unwrap_or(None)
        };
        let existing = PoolId::checked(requested.space(), self.net(), existing);
        Error::Overlap {
            requested: requested.to_string(),
            existing: existing.to_string(),
        }
    }

    /// Removes pool `id`; the subnet goes with its last pool ([`Subnet::is_deleted`]).
    ///
    /// # Errors
    /// `PoolNotFound`.
    pub fn remove_pool(&mut self, id: &PoolId) -> Result<(), Error> {
        self.check_pool(id)?;
        self.pools.remove(id.sub_pool());
        self.recount_union();
        Ok(())
    }

    fn insert_pool(&mut self, sub_pool: Option<IpNet>) {
        let range = self.addrs.range(sub_pool);
        let n_allocated = self.addrs.count_in(range);
        self.pools.insert(sub_pool, Tally { range, n_allocated });
        self.recount_union();
    }

    /// Recomputes the union of the pools' ranges. Two prefixes either nest or are disjoint, so
    /// the union is the set of ranges not inside another one; ordered by first address (the
    /// larger of two ranges that start together first), an inner range follows its outer one.
    fn recount_union(&mut self) {
        self.union.clear();
        for tally in self.pools.values() {
            match self.union.last() {
                Some(prev) if tally.range.first <= prev.range.last => {}
                _ => self.union.push(*tally),
            }
        }
        // Kept for as long as the pools do not change: no spare room.
        self.union.shrink_to_fit();
    }

    /// Brings every count up to date after `address` went into use or out of it.
    fn tally(&mut self, address: IpAddr, in_use: bool) {
        let Some(ordinal) = self.addrs.ordinal(address) else {
            return;
        };
        let step = |n: &mut u128| {
            *n = if in_use {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
        };
        step(&mut self.n_allocated);
        for tally in self.pools.values_mut().filter(|t| t.contains(ordinal)) {
            step(&mut tally.n_allocated);
        }
        for tally in self.union.iter_mut().filter(|t| t.contains(ordinal)) {
            step(&mut tally.n_allocated);
        }
    }

    /// The pool must exist (in a subnet that is not deleted) to be used.
    fn check_pool(&self, id: &PoolId) -> Result<(), Error> {
        if id.subnet() == self.net() && self.has_pool(id.sub_pool()) {
            Ok(())
        } else {
            Err(Error::PoolNotFound {
                pool_id: id.to_string(),
            })
        }
    }

    /// Allocates an address in pool `id` of this subnet.
    ///
    /// # Errors
    /// `PoolNotFound`; for a given address `OutOfRange` (not in the subnet) or `AddressInUse`
    /// (taken or reserved); otherwise `Exhausted` when the pool's range has no free address.
    pub fn allocate(&mut self, id: &PoolId, req: &AddressRequest) -> Result<IpAddr, Error> {
        self.request_inline(id, req).map(|a| a.address)
    }

    /// Allocates an address in pool `id` of this subnet, as [`Subnet::allocate`], saying
    /// whether anything changed: an owner asking the pool again while it holds an address
    /// there (in the pool's range; the very one, when it names an address) gets that address
    /// back, and the subnet is unchanged.
    ///
    /// # Errors
    /// As [`Subnet::allocate`].
    pub fn request(&mut self, id: &PoolId, req: &AddressRequest) -> Result<Allocation, Error> {
        self.request_inline(id, req)
    }

    /// [`Subnet::request`], inlined into its two callers: handing its answer from one call to
    /// the other through memory stalled the store-to-load forwarding of the address (a seventh
    /// of filling a /16, under perf).
    #[inline(always)]
    fn request_inline(&mut self, id: &PoolId, req: &AddressRequest) -> Result<Allocation, Error> {
        self.check_pool(id)?;
        if let Some(owner) = &req.owner {
            let held = match req.address {
                None => self.owners.held_in(owner, self.addrs.range(id.sub_pool())),
                Some(address) => self
                    .addrs
                    .ordinal(address)
                    .filter(|&o| self.owners.holder(o).is_some_and(|h| &h.owner == owner)),
            };
            if let Some(ordinal) = held {
                return Ok(Allocation {
                    address: self.addrs.addr(ordinal),
                    fresh: false,
                });
            }
        }
        let address = match req.address {
            Some(address) => match self.addrs.insert(address) {
                Some(true) => address,
                Some(false) => {
                    return Err(Error::AddressInUse {
                        pool_id: id.to_string(),
                        address,
                    });
                }
                None => return Err(self.out_of_range(id, address)),
            },
            None => {
                let range = self.addrs.range(id.sub_pool());
                self.addrs
                    .insert_any(range, req.serial)
                    .ok_or_else(|| Error::Exhausted {
                        pool_id: id.to_string(),
                    })?
            }
        };
        self.tally(address, true);
        if let (Some(owner), Some(ordinal)) = (&req.owner, self.addrs.ordinal(address)) {
            let holder = Holder {
                owner: owner.clone(),
                since_ms: req.at_ms,
            };
            Arc::make_mut(&mut self.owners).insert(ordinal, holder);
        }
        Ok(Allocation {
            address,
            fresh: true,
        })
    }

    /// Releases `address` in pool `id`; releasing a free address succeeds (idempotent).
    /// Returns whether the address was in use, i.e. whether anything changed.
    ///
    /// # Errors
    /// `PoolNotFound`, `OutOfRange`, or `ReservedAddress` for the network, broadcast or anycast
    /// address (libnetwork silently un-reserves those; allot refuses).
    pub fn release(&mut self, id: &PoolId, address: IpAddr) -> Result<bool, Error> {
        self.release_by(id, address, None)
    }

    /// Releases `address` in pool `id`, as [`Subnet::release`]; when `owner` is given, the
    /// address must be that owner's (a free address is released by anyone).
    ///
    /// # Errors
    /// As [`Subnet::release`], and `NotHolder` naming who holds it.
    pub fn release_by(
        &mut self,
        id: &PoolId,
        address: IpAddr,
        owner: Option<&Owner>,
    ) -> Result<bool, Error> {
        self.check_pool(id)?;
        if let (Some(owner), Some(ordinal)) = (owner, self.addrs.ordinal(address))
            && self.addrs.bitmap().contains(ordinal)
        {
            let holder = self.owners.holder(ordinal).map(|h| &h.owner);
            if holder != Some(owner) {
                return Err(Error::NotHolder {
                    pool_id: id.to_string(),
                    address,
                    holders: Box::new((owner.to_string(), holder.map(ToString::to_string))),
                });
            }
        }
        if let Some((_, what)) = reserved_addresses(self.net()).find(|(a, _)| *a == address) {
            return Err(Error::ReservedAddress {
                pool_id: id.to_string(),
                address,
                what,
            });
        }
        match self.addrs.remove(address) {
            Some(true) => {
                self.tally(address, false);
                if let Some(ordinal) = self.addrs.ordinal(address)
                    && self.owners.holder(ordinal).is_some()
                {
                    Arc::make_mut(&mut self.owners).remove(ordinal);
                }
                Ok(true)
            }
            Some(false) => Ok(false),
            None => Err(self.out_of_range(id, address)),
        }
    }

    fn out_of_range(&self, id: &PoolId, address: IpAddr) -> Error {
        Error::OutOfRange {
            pool_id: id.to_string(),
            subnet: self.net().to_string(),
            address,
        }
    }

    /// Returns up to `limit` allocations of the pool with this sub-pool, in address order,
    /// after `after` (exclusive; from the start when `None`): each address in use (the
    /// subnet's reserved addresses left out) with its holder, if it has one. With
    /// `owned_only` or a non-empty `owner_prefix`, only the addresses held by an owner
    /// (starting with the prefix).
    #[must_use]
    pub fn allocations(
        &self,
        sub_pool: Option<IpNet>,
        after: Option<IpAddr>,
        (owner_prefix, owned_only): (&str, bool),
        limit: usize,
    ) -> Vec<(IpAddr, Option<Holder>)> {
        let range = self.addrs.range(sub_pool);
        let start = match after.map(|a| self.addrs.ordinal(a)) {
            None => range.first,
            // After the last ordinal there is nothing; outside the subnet, nothing either.
            Some(Some(o)) if o >= range.last => return Vec::new(),
            Some(Some(o)) => range.first.max(o + 1),
            Some(None) => return Vec::new(),
        };
        let reserved: Vec<u128> = reserved_addresses(self.net())
            .filter_map(|(a, _)| self.addrs.ordinal(a))
            .collect();
        let rest = OrdRange {
            first: start,
            last: range.last,
        };
        if owner_prefix.is_empty() && !owned_only {
            self.addrs
                .bitmap()
                .ones(rest.first, rest.last)
                .filter(|o| !reserved.contains(o))
                .take(limit)
                .map(|o| (self.addrs.addr(o), self.owners.holder(o).cloned()))
                .collect()
        } else {
            self.owners
                .in_range(rest)
                .filter(|(_, h)| h.owner.as_str().starts_with(owner_prefix))
                .take(limit)
                .map(|(o, h)| (self.addrs.addr(o), Some(h.clone())))
                .collect()
        }
    }

    /// Returns the utilization of the pool with this sub-pool, from the kept counts: no
    /// counting, whatever the subnet's size or fragmentation. A sub-pool that is not a pool of
    /// this subnet is counted on the spot.
    #[must_use]
    pub fn utilization(&self, sub_pool: Option<IpNet>) -> Utilization {
        let free_in_range = match self.pools.get(sub_pool) {
            Some(tally) => tally.n_free(),
            None => self.addrs.free_in(self.addrs.range(sub_pool)),
        };
        Utilization {
            allocated_in_subnet: self.n_allocated,
            free_in_range,
            free_in_union: self
                .union
                .iter()
                .fold(0u128, |acc, t| acc.saturating_add(t.n_free())),
        }
    }
}
