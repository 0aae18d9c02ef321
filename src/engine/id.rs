//! Pool ids and the names inside them: address-space names and prefixes, each with one
//! spelling, so that one address cannot be handed out under two names.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::error::{Error, shown};

/// The default local address space (`GetDefaultAddressSpaces`).
pub const LOCAL_SPACE: &str = "local";
/// The default global address space.
pub const GLOBAL_SPACE: &str = "global";

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

pub(super) fn is_v6(net: IpNet) -> bool {
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
    /// [`PoolRequest::parse`](super::PoolRequest::parse) reports it.
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

    /// Builds a pool id from parts the caller has checked: a valid space name, a masked
    /// subnet, and a sub-pool inside it.
    pub(super) fn checked(space: &str, subnet: IpNet, sub_pool: Option<IpNet>) -> Self {
        Self {
            space: space.to_owned(),
            subnet,
            sub_pool,
        }
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

pub(super) fn check_sub_pool(subnet: IpNet, sub_pool: Option<IpNet>) -> Result<(), Error> {
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
