//! Pool rules, after Docker libnetwork's default IPAM: address spaces, subnets and their
//! sub-pools (ip-ranges), reserved addresses, dynamic subnets from the default address pools,
//! and utilization.
//!
//! Everything here is a value: a [`Subnet`] is one subnet's whole state (its pools and its
//! [`AddrSet`]), a [`Space`] is the subnets of one address space. Callers that need concurrency
//! lock and persist around these values; this module never does.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::addrset::{AddrSet, OrdRange, addr_bits};
use super::error::{Error, shown};

/// The default local address space (`GetDefaultAddressSpaces`).
pub const LOCAL_SPACE: &str = "local";
/// The default global address space.
pub const GLOBAL_SPACE: &str = "global";
/// Docker's option key asking for serial allocation (`"true"`).
pub const SERIAL_OPTION: &str = "com.docker.network.ipam.serial";
/// Docker's option key giving the type of an address request.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// The `RequestAddressType` value of a gateway request.
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";

/// Longest accepted address-space name.
const MAX_SPACE_LEN: usize = 64;

/// Checks an address-space name: 1 to 64 ASCII letters, digits, `-`, `_` or `.` (no `/`, which
/// separates the parts of a pool id).
///
/// # Errors
/// `Error::InvalidAddressSpace` naming the offending input.
pub fn check_space_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty name"
    } else if name.len() > MAX_SPACE_LEN {
        "longer than 64 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "only letters, digits, '-', '_' and '.' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidAddressSpace {
        name: shown(name),
        reason,
    })
}

/// Parses a masked CIDR prefix (`192.168.0.0/16`, `fd00::/64`), strictly: one spelling per
/// prefix, so that one address cannot be handed out under two names. Leading zeros
/// (`010.1.0.0/24`, `/024`) and IPv4-mapped IPv6 prefixes (`::ffff:10.0.0.0/120`, the IPv4
/// addresses again, RFC 4291 §2.5.5.2) are refused.
pub fn parse_prefix(input: &str) -> Result<IpNet, &'static str> {
    if input.is_empty() {
        return Err("empty prefix");
    }
    let malformed = "not a prefix of the form address/length";
    let (addr, len) = input.split_once('/').ok_or(malformed)?;
    // The standard parser refuses leading zeros in IPv4 octets (ipnet's does not).
    let addr: IpAddr = addr.parse().map_err(|_| malformed)?;
    let net = IpNet::new(addr, parse_prefix_len(len).ok_or(malformed)?).map_err(|_| malformed)?;
    if net.trunc() != net {
        return Err("host bits are set");
    }
    if let IpNet::V6(v6) = net
        && v6.network().to_ipv4_mapped().is_some()
    {
        return Err("an IPv4-mapped IPv6 prefix (use the IPv4 prefix)");
    }
    Ok(net)
}

/// Parses a prefix length: decimal digits, no sign, no leading zero.
#[must_use]
pub fn parse_prefix_len(input: &str) -> Option<u8> {
    let canonical = !input.is_empty()
        && input.bytes().all(|b| b.is_ascii_digit())
        && (input == "0" || !input.starts_with('0'));
    canonical.then(|| input.parse().ok()).flatten()
}

fn is_v6(net: IpNet) -> bool {
    matches!(net, IpNet::V6(_))
}

/// Identifies a pool: `<space>/<subnet>[/<sub-pool>]`, e.g.
/// `local/192.168.10.0/24/192.168.10.128/31`. Readable, and parsed back by `FromStr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId {
    space: String,
    subnet: IpNet,
    sub_pool: Option<IpNet>,
}

impl PoolId {
    /// Builds a pool id from checked parts.
    ///
    /// # Errors
    /// `InvalidAddressSpace`, `InvalidPrefix` or `InvalidSubPool` when a part is malformed, as
    /// [`PoolRequest::parse`] reports it.
    pub fn new(space: &str, subnet: IpNet, sub_pool: Option<IpNet>) -> Result<Self, Error> {
        check_space_name(space)?;
        check_sub_pool(subnet, sub_pool)?;
        if subnet.trunc() != subnet {
            return Err(Error::InvalidPrefix {
                input: subnet.to_string(),
                reason: "host bits are set",
            });
        }
        Ok(Self {
            space: space.to_owned(),
            subnet,
            sub_pool,
        })
    }

    /// Returns the address space.
    #[must_use]
    pub fn space(&self) -> &str {
        &self.space
    }

    /// Returns the subnet.
    #[must_use]
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// Returns the sub-pool (ip-range), if the pool has one.
    #[must_use]
    pub fn sub_pool(&self) -> Option<IpNet> {
        self.sub_pool
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.space, self.subnet)?;
        if let Some(sub) = self.sub_pool {
            write!(f, "/{sub}")?;
        }
        Ok(())
    }
}

impl FromStr for PoolId {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidPoolId {
            input: shown(input),
            reason,
        };
        let parts: Vec<&str> = input.splitn(6, '/').collect();
        let (space, subnet, sub_pool) = match parts[..] {
            [space, addr, len] => (space, [addr, len].join("/"), None),
            [space, addr, len, sub_addr, sub_len] => (
                space,
                [addr, len].join("/"),
                Some([sub_addr, sub_len].join("/")),
            ),
            _ => return Err(invalid("expected <space>/<subnet>[/<sub-pool>]")),
        };
        check_space_name(space).map_err(|_| invalid("malformed address space"))?;
        let subnet = parse_prefix(&subnet).map_err(invalid)?;
        let sub_pool = match sub_pool {
            Some(s) => Some(parse_prefix(&s).map_err(invalid)?),
            None => None,
        };
        check_sub_pool(subnet, sub_pool)
            .map_err(|_| invalid("sub-pool is not inside the subnet"))?;
        Ok(Self {
            space: space.to_owned(),
            subnet,
            sub_pool,
        })
    }
}

fn check_sub_pool(subnet: IpNet, sub_pool: Option<IpNet>) -> Result<(), Error> {
    let Some(sub) = sub_pool else { return Ok(()) };
    let reason = if is_v6(sub) != is_v6(subnet) {
        "not the same address family as the pool"
    } else if !subnet.contains(&sub) {
        "not inside the pool"
    } else {
        return Ok(());
    };
    Err(Error::InvalidSubPool {
        pool: subnet.to_string(),
        sub_pool: sub.to_string(),
        reason,
    })
}

/// Which subnet a pool request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubnetSpec {
    /// Exactly this subnet.
    Exact(IpNet),
    /// The next free subnet from the default address pools: of the pool's configured size, or
    /// of `prefix_len` when the request said `0.0.0.0/N` or `::/N`.
    Dynamic { v6: bool, prefix_len: Option<u8> },
}

/// A checked `RequestPool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRequest {
    pub subnet: SubnetSpec,
    pub sub_pool: Option<IpNet>,
}

impl PoolRequest {
    /// Checks the `RequestPool` arguments as Docker's API carries them (empty string = absent).
    ///
    /// # Errors
    /// `InvalidPrefix` for an unparsable pool, host bits set, or a family that contradicts `v6`;
    /// `InvalidSubPool` for a sub-pool that is unparsable, of the other family, outside the
    /// pool, or given without a pool.
    pub fn parse(pool: &str, sub_pool: &str, v6: bool) -> Result<Self, Error> {
        let bad_sub = |reason| Error::InvalidSubPool {
            pool: shown(pool),
            sub_pool: shown(sub_pool),
            reason,
        };
        if pool.is_empty() {
            if !sub_pool.is_empty() {
                return Err(bad_sub("a sub-pool needs an explicit pool"));
            }
            return Ok(Self {
                subnet: SubnetSpec::Dynamic {
                    v6,
                    prefix_len: None,
                },
                sub_pool: None,
            });
        }
        let net = parse_prefix(pool).map_err(|reason| Error::InvalidPrefix {
            input: shown(pool),
            reason,
        })?;
        if is_v6(net) != v6 {
            return Err(Error::InvalidPrefix {
                input: shown(pool),
                reason: if v6 {
                    "an IPv4 pool was given with v6 set"
                } else {
                    "an IPv6 pool was given without v6 set"
                },
            });
        }
        let sub = if sub_pool.is_empty() {
            None
        } else {
            Some(parse_prefix(sub_pool).map_err(bad_sub)?)
        };
        if net.addr().is_unspecified() && net.prefix_len() > 0 {
            // 0.0.0.0/N or ::/N: a dynamic subnet of length N (Kuryr's subnet-pool flow).
            if sub.is_some() {
                return Err(bad_sub("a dynamic pool cannot carry a sub-pool"));
            }
            return Ok(Self {
                subnet: SubnetSpec::Dynamic {
                    v6,
                    prefix_len: Some(net.prefix_len()),
                },
                sub_pool: None,
            });
        }
        check_sub_pool(net, sub)?;
        Ok(Self {
            subnet: SubnetSpec::Exact(net),
            sub_pool: sub,
        })
    }
}

/// A checked `RequestAddress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressRequest {
    /// Exactly this address (anywhere in the subnet), or the next free one.
    pub address: Option<IpAddr>,
    /// Serial allocation: continue after the most recent dynamic allocation.
    pub serial: bool,
    /// A gateway request (same rules; recorded for the caller's benefit).
    pub gateway: bool,
}

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
#[must_use]
pub fn reserved_addresses(net: IpNet) -> Vec<(IpAddr, &'static str)> {
    match net {
        IpNet::V4(n) if n.prefix_len() < 31 => vec![
            (IpAddr::V4(n.network()), "network address"),
            (IpAddr::V4(n.broadcast()), "broadcast address"),
        ],
        IpNet::V4(_) => Vec::new(),
        IpNet::V6(n) => vec![(IpAddr::V6(n.network()), "subnet-router anycast address")],
    }
}

/// One subnet: its pools (the one without sub-pool and the sub-pools), its address set, and
/// the allocated count of every range, kept current so utilization costs no counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    addrs: AddrSet,
    // Invariant: never empty while the subnet belongs to a space. Keys: `None` is the pool
    // without a sub-pool, `Some(r)` a sub-pool inside the subnet of the same family. Each value
    // holds the key's ordinal range and how many of its addresses are in use.
    pools: BTreeMap<Option<IpNet>, Tally>,
    // Invariant: the number of addresses in use in the whole subnet.
    n_allocated: u128,
    // Invariant: the outermost pool ranges (their union, as disjoint ranges in order), each
    // with the number of its addresses in use.
    union: Vec<Tally>,
}

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
    /// Returns a subnet with its reserved addresses marked in use and no pools yet.
    #[must_use]
    pub fn new(net: IpNet) -> Self {
        let mut addrs = AddrSet::new(net);
        for (addr, _) in reserved_addresses(addrs.net()) {
            addrs.insert(addr);
        }
        Self::with_addrs(addrs)
    }

    fn with_addrs(addrs: AddrSet) -> Self {
        let n_allocated = addrs.count_in(addrs.range(None));
        Self {
            addrs,
            pools: BTreeMap::new(),
            n_allocated,
            union: Vec::new(),
        }
    }

    /// Reassembles a subnet from persisted parts.
    ///
    /// # Errors
    /// `InvalidSubPool` for a sub-pool that does not belong to the subnet.
    pub fn from_parts(
        addrs: AddrSet,
        pools: impl IntoIterator<Item = Option<IpNet>>,
    ) -> Result<Self, Error> {
        let mut subnet = Self::with_addrs(addrs);
        for sub in pools {
            subnet.add_pool(sub)?;
        }
        Ok(subnet)
    }

    /// Returns the subnet's prefix.
    #[must_use]
    pub fn net(&self) -> IpNet {
        self.addrs.net()
    }

    /// Returns the memory the subnet holds, in bytes: its own size plus its heap (allocated
    /// capacity; the pool map counted per entry, without the B-tree's node slack).
    #[must_use]
    pub fn mem_bytes(&self) -> usize {
        size_of::<Self>()
            + self.addrs.heap_bytes()
            + self.pools.len() * size_of::<(Option<IpNet>, Tally)>()
            + self.union.capacity() * size_of::<Tally>()
    }

    /// Returns the address set (read-only: stores persist it).
    #[must_use]
    pub fn addrs(&self) -> &AddrSet {
        &self.addrs
    }

    /// Iterates over the subnet's pools, as sub-pools (`None`: the pool without one).
    pub fn pools(&self) -> impl Iterator<Item = Option<IpNet>> + '_ {
        self.pools.keys().copied()
    }

    /// Tells whether the subnet has a pool with this sub-pool.
    #[must_use]
    pub fn has_pool(&self, sub_pool: Option<IpNet>) -> bool {
        self.pools.contains_key(&sub_pool)
    }

    /// Adds a pool (see [`plan_pool`] for when a space allows it); counting its range walks
    /// the bitmap once.
    ///
    /// # Errors
    /// `InvalidSubPool` for a sub-pool that does not belong to the subnet.
    pub fn add_pool(&mut self, sub_pool: Option<IpNet>) -> Result<(), Error> {
        check_sub_pool(self.net(), sub_pool)?;
        let range = self.addrs.range(sub_pool);
        let n_allocated = self.addrs.count_in(range);
        self.pools.insert(sub_pool, Tally { range, n_allocated });
        self.recount_union();
        Ok(())
    }

    /// Removes a pool; returns whether it was the last one (the subnet then goes too).
    pub fn remove_pool(&mut self, sub_pool: Option<IpNet>) -> bool {
        self.pools.remove(&sub_pool);
        self.recount_union();
        self.pools.is_empty()
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

    fn check_pool(&self, id: &PoolId) -> Result<(), Error> {
        if id.subnet == self.net() && self.has_pool(id.sub_pool) {
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
        self.check_pool(id)?;
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
                let range = self.addrs.range(id.sub_pool);
                self.addrs
                    .insert_any(range, req.serial)
                    .ok_or_else(|| Error::Exhausted {
                        pool_id: id.to_string(),
                    })?
            }
        };
        self.tally(address, true);
        Ok(address)
    }

    /// Releases `address` in pool `id`; releasing a free address succeeds (idempotent).
    /// Returns whether the address was in use, i.e. whether anything changed.
    ///
    /// # Errors
    /// `PoolNotFound`, `OutOfRange`, or `ReservedAddress` for the network, broadcast or anycast
    /// address (libnetwork silently un-reserves those; allot refuses).
    pub fn release(&mut self, id: &PoolId, address: IpAddr) -> Result<bool, Error> {
        self.check_pool(id)?;
        if let Some(&(_, what)) = reserved_addresses(self.net())
            .iter()
            .find(|(a, _)| *a == address)
        {
            return Err(Error::ReservedAddress {
                pool_id: id.to_string(),
                address,
                what,
            });
        }
        match self.addrs.remove(address) {
            Some(true) => {
                self.tally(address, false);
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

    /// Returns the utilization of the pool with this sub-pool, from the kept counts: no
    /// counting, whatever the subnet's size or fragmentation. A sub-pool that is not a pool of
    /// this subnet is counted on the spot.
    #[must_use]
    pub fn utilization(&self, sub_pool: Option<IpNet>) -> Utilization {
        let free_in_range = match self.pools.get(&sub_pool) {
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

/// A block of the default address pools: `base` split into subnets of length `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultPool {
    base: IpNet,
    size: u8,
}

impl DefaultPool {
    /// Checks and builds a default pool.
    ///
    /// # Errors
    /// `InvalidPrefix` when `base` has host bits set or `size` is shorter than `base` or longer
    /// than the family allows.
    pub fn new(base: IpNet, size: u8) -> Result<Self, Error> {
        let reason = if base.trunc() != base {
            "host bits are set"
        } else if size < base.prefix_len() {
            "split size is shorter than the base prefix"
        } else if size > base.max_prefix_len() {
            "split size is longer than the address family allows"
        } else {
            return Ok(Self { base, size });
        };
        Err(Error::InvalidPrefix {
            input: format!("{base} split into /{size}"),
            reason,
        })
    }

    /// Returns the base prefix.
    #[must_use]
    pub fn base(&self) -> IpNet {
        self.base
    }

    /// Returns the length of the subnets it is split into.
    #[must_use]
    pub fn size(&self) -> u8 {
        self.size
    }

    fn docker(list: &[(IpNet, u8)]) -> Vec<Self> {
        list.iter()
            .map(|&(base, size)| Self { base, size })
            .collect()
    }

    /// Docker's default pools of the `local` space, plus the IPv6 default.
    #[must_use]
    pub fn local_defaults() -> Vec<Self> {
        let v4 = |a, b, len| IpNet::V4(v4net(Ipv4Addr::new(a, b, 0, 0), len));
        let mut pools = Self::docker(&[
            (v4(172, 17, 16), 16),
            (v4(172, 18, 16), 16),
            (v4(172, 19, 16), 16),
            (v4(172, 20, 14), 16),
            (v4(172, 24, 14), 16),
            (v4(172, 28, 14), 16),
            (v4(192, 168, 16), 20),
        ]);
        pools.extend(Self::v6_defaults());
        pools
    }

    /// Docker's default pool of the `global` space, plus the IPv6 default.
    #[must_use]
    pub fn global_defaults() -> Vec<Self> {
        let mut pools = Self::docker(&[(IpNet::V4(v4net(Ipv4Addr::new(10, 0, 0, 0), 8)), 24)]);
        pools.extend(Self::v6_defaults());
        pools
    }

    /// A unique-local (RFC 4193) /48 split into /64s. Operators should configure their own,
    /// randomly chosen /48; this fixed one only keeps the embedded default usable.
    fn v6_defaults() -> Vec<Self> {
        let base = Ipv6Addr::new(0xfd00, 0xa110, 0x7, 0, 0, 0, 0, 0);
        Self::docker(&[(IpNet::V6(v6net(base, 48)), 64)])
    }
}

fn v4net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len.min(32)).unwrap_or_default()
}

fn v6net(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    Ipv6Net::new(addr, len.min(128)).unwrap_or_default()
}

/// Builds the prefix of length `len` at integer address `bits` in the given family.
fn net_at(v6: bool, bits: u128, len: u8) -> IpNet {
    if v6 {
        IpNet::V6(v6net(Ipv6Addr::from(bits), len))
    } else {
        // Callers only pass IPv4 addresses here, which fit in 32 bits.
        IpNet::V4(v4net(Ipv4Addr::from(u32::try_from(bits).unwrap_or(0)), len))
    }
}

/// The subnets of one address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    name: String,
    // Invariant: sorted by base address, so the first fit is the lowest address.
    defaults: Vec<DefaultPool>,
    // Invariant: pairwise disjoint, each with at least one pool.
    subnets: BTreeMap<IpNet, Subnet>,
}

impl Space {
    /// Returns an empty address space.
    ///
    /// # Errors
    /// `InvalidAddressSpace` for a malformed name.
    pub fn new(name: &str, mut defaults: Vec<DefaultPool>) -> Result<Self, Error> {
        check_space_name(name)?;
        defaults.sort_by_key(|d| (is_v6(d.base), addr_bits(d.base.network()), d.size));
        Ok(Self {
            name: name.to_owned(),
            defaults,
            subnets: BTreeMap::new(),
        })
    }

    /// Returns the space's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the default address pools, lowest address first.
    #[must_use]
    pub fn defaults(&self) -> &[DefaultPool] {
        &self.defaults
    }

    /// Iterates over the subnets in address order.
    pub fn subnets(&self) -> impl Iterator<Item = &Subnet> {
        self.subnets.values()
    }

    /// Returns one subnet.
    #[must_use]
    pub fn subnet(&self, net: IpNet) -> Option<&Subnet> {
        self.subnets.get(&net)
    }

    /// Adds a subnet rebuilt from a store.
    ///
    /// # Errors
    /// `Overlap` when it overlaps a subnet already present.
    pub fn restore(&mut self, subnet: Subnet) -> Result<(), Error> {
        if let Some(existing) = self.overlapping(subnet.net()) {
            return Err(overlap_error(
                &self.name,
                &self.subnets,
                subnet.net(),
                None,
                existing,
            ));
        }
        self.subnets.insert(subnet.net(), subnet);
        Ok(())
    }

    /// Iterates over every pool id of the space, in address order.
    pub fn pool_ids(&self) -> impl Iterator<Item = PoolId> + '_ {
        self.subnets.values().flat_map(move |s| {
            s.pools().map(move |sub_pool| PoolId {
                space: self.name.clone(),
                subnet: s.net(),
                sub_pool,
            })
        })
    }

    /// Returns the existing subnet that overlaps `net`, if any.
    #[must_use]
    pub fn overlapping(&self, net: IpNet) -> Option<IpNet> {
        overlapping(&self.subnets, net)
    }

    /// Creates a pool and returns its id.
    ///
    /// A sub-pool joins its subnet's existing pools (creating the subnet if needed); the pool
    /// without sub-pool can only create a subnet. Beyond libnetwork, a new subnet is checked
    /// for overlap whether or not it comes with a sub-pool.
    ///
    /// # Errors
    /// `Overlap` for a repeated (subnet, sub-pool) pair, a repeated subnet, or a new subnet
    /// overlapping an existing one; `NoMoreSubnets` when a dynamic request finds no room.
    pub fn request_pool(&mut self, req: &PoolRequest) -> Result<PoolId, Error> {
        let (id, plan) = plan_pool(&self.name, &self.defaults, &self.subnets, req)?;
        match plan {
            PoolPlan::NewSubnet => {
                let mut subnet = Subnet::new(id.subnet);
                subnet.add_pool(id.sub_pool)?;
                self.subnets.insert(id.subnet, subnet);
            }
            PoolPlan::JoinSubnet => {
                if let Some(subnet) = self.subnets.get_mut(&id.subnet) {
                    subnet.add_pool(id.sub_pool)?;
                }
            }
        }
        Ok(id)
    }

    /// Releases a pool; the subnet (and every address in it) goes with its last pool.
    ///
    /// # Errors
    /// `PoolNotFound`.
    pub fn release_pool(&mut self, id: &PoolId) -> Result<(), Error> {
        let subnet = self.subnet_mut(id)?;
        if subnet.remove_pool(id.sub_pool) {
            self.subnets.remove(&id.subnet);
        }
        Ok(())
    }

    fn subnet_mut(&mut self, id: &PoolId) -> Result<&mut Subnet, Error> {
        self.subnets
            .get_mut(&id.subnet)
            .filter(|s| id.space == self.name && s.has_pool(id.sub_pool))
            .ok_or_else(|| Error::PoolNotFound {
                pool_id: id.to_string(),
            })
    }

    fn subnet_of(&self, id: &PoolId) -> Result<&Subnet, Error> {
        self.subnets
            .get(&id.subnet)
            .filter(|s| id.space == self.name && s.has_pool(id.sub_pool))
            .ok_or_else(|| Error::PoolNotFound {
                pool_id: id.to_string(),
            })
    }

    /// Allocates an address in pool `id`; see [`Subnet::allocate`].
    ///
    /// # Errors
    /// As [`Subnet::allocate`].
    pub fn request_address(&mut self, id: &PoolId, req: &AddressRequest) -> Result<IpAddr, Error> {
        self.subnet_mut(id)?.allocate(id, req)
    }

    /// Releases an address of pool `id`; see [`Subnet::release`].
    ///
    /// # Errors
    /// As [`Subnet::release`].
    pub fn release_address(&mut self, id: &PoolId, address: IpAddr) -> Result<(), Error> {
        self.subnet_mut(id)?.release(id, address).map(|_| ())
    }

    /// Returns the utilization of pool `id`.
    ///
    /// # Errors
    /// `PoolNotFound`.
    pub fn utilization(&self, id: &PoolId) -> Result<Utilization, Error> {
        Ok(self.subnet_of(id)?.utilization(id.sub_pool))
    }
}

/// Whatever a space keeps per subnet, as far as pool rules need it: which pools it holds.
/// Implemented by [`Subnet`] and by drivers' cache entries.
pub trait PoolSet {
    /// Tells whether the subnet has a pool with this sub-pool.
    fn has_pool(&self, sub_pool: Option<IpNet>) -> bool;
    /// Returns the subnet's first pool, in id order.
    fn first_pool(&self) -> Option<Option<IpNet>>;
}

impl PoolSet for Subnet {
    fn has_pool(&self, sub_pool: Option<IpNet>) -> bool {
        Subnet::has_pool(self, sub_pool)
    }

    fn first_pool(&self) -> Option<Option<IpNet>> {
        self.pools().next()
    }
}

/// What a pool request does to its address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolPlan {
    /// Create the subnet, holding this one pool.
    NewSubnet,
    /// Add the sub-pool to the existing subnet.
    JoinSubnet,
}

/// Decides a pool request against the subnets an address space already has: which subnet
/// (the given one, or the first free one of the default pools), and whether it creates the
/// subnet or joins it.
///
/// A sub-pool joins its subnet's existing pools (creating the subnet if needed); the pool
/// without sub-pool can only create a subnet. Beyond libnetwork, a new subnet is checked for
/// overlap whether or not it comes with a sub-pool.
///
/// # Errors
/// `Overlap` for a repeated (subnet, sub-pool) pair, a repeated subnet, or a new subnet
/// overlapping an existing one; `NoMoreSubnets` when a dynamic request finds no room;
/// `InvalidSubPool` for a sub-pool outside the chosen subnet.
pub fn plan_pool<V: PoolSet>(
    space: &str,
    defaults: &[DefaultPool],
    subnets: &BTreeMap<IpNet, V>,
    req: &PoolRequest,
) -> Result<(PoolId, PoolPlan), Error> {
    let net = match req.subnet {
        SubnetSpec::Exact(net) => net,
        SubnetSpec::Dynamic { v6, prefix_len } => {
            pick_subnet(space, defaults, subnets, v6, prefix_len)?
        }
    };
    check_sub_pool(net, req.sub_pool)?;
    let id = PoolId {
        space: space.to_owned(),
        subnet: net,
        sub_pool: req.sub_pool,
    };
    if let Some(subnet) = subnets.get(&net) {
        if req.sub_pool.is_some() && !subnet.has_pool(req.sub_pool) {
            return Ok((id, PoolPlan::JoinSubnet));
        }
        // Name the very pool repeated, else (a pool without sub-pool on a subnet that has
        // sub-pools) the subnet's first pool.
        let clash = if subnet.has_pool(req.sub_pool) {
            req.sub_pool
        } else {
            subnet.first_pool().unwrap_or(None)
        };
        return Err(Error::Overlap {
            requested: id.to_string(),
            existing: PoolId {
                sub_pool: clash,
                ..id.clone()
            }
            .to_string(),
        });
    }
    if let Some(existing) = overlapping(subnets, net) {
        return Err(overlap_error(space, subnets, net, req.sub_pool, existing));
    }
    Ok((id, PoolPlan::NewSubnet))
}

fn overlap_error<V: PoolSet>(
    space: &str,
    subnets: &BTreeMap<IpNet, V>,
    requested: IpNet,
    sub_pool: Option<IpNet>,
    existing: IpNet,
) -> Error {
    let id = |subnet, sub_pool| {
        PoolId {
            space: space.to_owned(),
            subnet,
            sub_pool,
        }
        .to_string()
    };
    let existing_pool = subnets
        .get(&existing)
        .and_then(PoolSet::first_pool)
        .unwrap_or(None);
    Error::Overlap {
        requested: id(requested, sub_pool),
        existing: id(existing, existing_pool),
    }
}

/// Returns the subnet of `subnets` (pairwise disjoint, as in any space) that overlaps `net`.
#[must_use]
pub fn overlapping<V>(subnets: &BTreeMap<IpNet, V>, net: IpNet) -> Option<IpNet> {
    // Subnets are pairwise disjoint, so only the last one at or before `net` can contain its
    // first address, and only the first one after it can start inside it.
    let before = subnets.range(..=net).next_back().map(|(n, _)| *n);
    let after = subnets.range(net..).next().map(|(n, _)| *n);
    [before, after]
        .into_iter()
        .flatten()
        .find(|s| s.contains(&net.network()) || net.contains(&s.network()))
}

/// Returns the lowest free subnet of the default pools: of length `prefix_len`, or of each
/// pool's own split size. Gaps left by released subnets are reused.
fn pick_subnet<V>(
    space: &str,
    defaults: &[DefaultPool],
    subnets: &BTreeMap<IpNet, V>,
    v6: bool,
    prefix_len: Option<u8>,
) -> Result<IpNet, Error> {
    for pool in defaults.iter().filter(|d| is_v6(d.base) == v6) {
        let len = prefix_len.unwrap_or(pool.size);
        if len < pool.base.prefix_len() || len > pool.base.max_prefix_len() {
            continue;
        }
        if let Some(net) = first_fit(subnets, pool.base, len) {
            return Ok(net);
        }
    }
    let family = if v6 { "IPv6" } else { "IPv4" };
    Err(Error::NoMoreSubnets {
        space: space.to_owned(),
        wanted: match prefix_len {
            Some(len) => format!("{family} /{len}"),
            None => family.to_owned(),
        },
    })
}

fn first_fit<V>(subnets: &BTreeMap<IpNet, V>, base: IpNet, len: u8) -> Option<IpNet> {
    let host_bits = u32::from(base.max_prefix_len() - len);
    let span = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    let end = addr_bits(base.broadcast());
    let mut cur = addr_bits(base.network());
    loop {
        let candidate = net_at(is_v6(base), cur, len);
        let Some(taken) = overlapping(subnets, candidate) else {
            return Some(candidate);
        };
        // The two prefixes nest, so the end of the larger one is aligned for the next try.
        let next = (cur + span)
            .max(addr_bits(taken.broadcast()))
            .checked_add(1)?;
        if next > end {
            return None;
        }
        cur = next;
    }
}
