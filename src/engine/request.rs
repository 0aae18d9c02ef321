//! Checked requests: what a `RequestPool` or `RequestAddress` asks for, parsed once from the
//! strings and options Docker's API (and allot's, which follows it) carries.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::error::{Error, shown};
use super::id::{PoolId, check_sub_pool, is_v6, parse_prefix, parse_prefix_len};

/// Docker's option key asking for serial allocation (`"true"`).
pub const SERIAL_OPTION: &str = "com.docker.network.ipam.serial";
/// Docker's option key giving the type of an address request.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// The `RequestAddressType` value of a gateway request.
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRequest {
    pub subnet: SubnetSpec,
    pub sub_pool: Option<IpNet>,
    /// Options for the driver (Docker's `--ipam-opt`); a driver that takes none refuses any.
    pub options: Options,
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
                options: Options::new(),
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
                options: Options::new(),
            });
        }
        check_sub_pool(net, sub)?;
        Ok(Self::exact(net, sub))
    }

    /// A request for exactly this subnet and sub-pool, without options.
    #[must_use]
    pub fn exact(net: IpNet, sub_pool: Option<IpNet>) -> Self {
        Self {
            subnet: SubnetSpec::Exact(net),
            sub_pool,
            options: Options::new(),
        }
    }
}

/// A checked `RequestAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressRequest {
    /// Exactly this address (anywhere in the subnet), or the next free one.
    pub address: Option<IpAddr>,
    /// Serial allocation: continue after the most recent dynamic allocation.
    pub serial: bool,
    /// A gateway request (same rules; recorded for the caller's benefit).
    pub gateway: bool,
    /// Options beyond the ones allot reads itself, for the driver (e.g. an endpoint's MAC
    /// address); a driver that takes none refuses any.
    pub options: Options,
    /// Who will hold the address: the same owner asking the same pool again gets the address
    /// it holds there back, not a second one.
    pub owner: Option<super::owners::Owner>,
    /// When the request was made (Unix milliseconds, stamped by the driver): the holder's
    /// `since` when it is owned.
    pub at_ms: u64,
}

/// Options for a driver, beyond the ones allot reads itself (Docker's `Options` maps).
pub type Options = BTreeMap<String, String>;

/// Parses an address given to `RequestAddress`/`ReleaseAddress`: `10.0.0.7`, or `10.0.0.7/24`
/// as `RequestAddress` returns it (the prefix length, when given, must be the subnet's).
/// Leading zeros are refused, as in pools.
///
/// # Errors
/// `InvalidAddress` naming the pool.
pub fn parse_address(pool: &PoolId, input: &str) -> Result<IpAddr, Error> {
    let invalid = |reason| Error::InvalidAddress {
        pool_id: pool.to_string(),
        input: shown(input),
        reason,
    };
    if input.is_empty() {
        return Err(invalid("empty address"));
    }
    let (addr, len) = match input.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (input, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| invalid("not an IP address"))?;
    match len.map(parse_prefix_len) {
        None => Ok(addr),
        Some(Some(len)) if len == pool.subnet().prefix_len() => Ok(addr),
        Some(Some(_)) => Err(invalid("its prefix length is not the subnet's")),
        Some(None) => Err(invalid("not an IP address")),
    }
}

impl AddressRequest {
    /// Checks a `RequestAddress`: the address wanted, if any (empty: the next free one), and
    /// Docker's options. Options allot does not read itself are kept for the driver (which
    /// refuses them unless it takes them).
    ///
    /// # Errors
    /// `InvalidAddress`, or `InvalidOption` for a bad value of a known option.
    pub fn parse<'a>(
        pool: &PoolId,
        address: &str,
        options: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, Error> {
        let mut req = Self::default();
        if !address.is_empty() {
            req.address = Some(parse_address(pool, address)?);
        }
        for (key, value) in options {
            let invalid = |reason| Error::InvalidOption {
                key: shown(key),
                value: shown(value),
                reason,
            };
            match key.as_str() {
                SERIAL_OPTION => {
                    req.serial = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid("expected \"true\" or \"false\"")),
                    };
                }
                REQUEST_ADDRESS_TYPE => {
                    if value != GATEWAY_ADDRESS_TYPE {
                        return Err(invalid(
                            "the only address type is com.docker.network.gateway",
                        ));
                    }
                    req.gateway = true;
                }
                _ => {
                    req.options.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(req)
    }
}
