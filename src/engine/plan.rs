//! Planning a pool request against the subnets an address space already has: the default
//! address pools that dynamic requests draw from, first fit, and overlap.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::addrset::addr_bits;
use super::error::Error;
use super::id::{PoolId, check_sub_pool, is_v6};
use super::request::{PoolRequest, SubnetSpec};

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

/// What a pool request does to its address space, decided on the subnets it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolPlan {
    /// Create the subnet, holding this one pool ([`Subnet::create`](super::Subnet::create)).
    NewSubnet(PoolId),
    /// Add the pool to the existing subnet, whose rules decide whether it may join
    /// ([`Subnet::add_pool`](super::Subnet::add_pool)).
    JoinSubnet(PoolId),
    /// Refused: the subnet wanted overlaps the existing subnet `existing`, which names the
    /// clash ([`Subnet::overlap`](super::Subnet::overlap)).
    Overlaps { requested: PoolId, existing: IpNet },
}

/// Decides a pool request against the subnets an address space already has (keyed by
/// prefix, pairwise disjoint): which subnet (the given one, or the first free one of the
/// default pools), and whether it creates the subnet, joins it, or overlaps another. Beyond
/// libnetwork, a new subnet is checked for overlap whether or not it comes with a sub-pool.
///
/// # Errors
/// `NoMoreSubnets` when a dynamic request finds no room; `InvalidSubPool` for a sub-pool
/// outside the chosen subnet.
pub fn plan_pool<V>(
    space: &str,
    defaults: &[DefaultPool],
    subnets: &BTreeMap<IpNet, V>,
    req: &PoolRequest,
) -> Result<PoolPlan, Error> {
    let net = match req.subnet {
        SubnetSpec::Exact(net) => net,
        SubnetSpec::Dynamic { v6, prefix_len } => {
            pick_subnet(space, defaults, subnets, v6, prefix_len)?
        }
    };
    check_sub_pool(net, req.sub_pool)?;
    let id = PoolId::checked(space, net, req.sub_pool);
    if subnets.contains_key(&net) {
        return Ok(PoolPlan::JoinSubnet(id));
    }
    Ok(match overlapping(subnets, net) {
        Some(existing) => PoolPlan::Overlaps {
            requested: id,
            existing,
        },
        None => PoolPlan::NewSubnet(id),
    })
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
