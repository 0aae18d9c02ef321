//! The generated `ipam.v1` code, and the only place that converts between it and domain values.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::api::status::code_name;
use crate::engine::error::shown;
use crate::engine::{
    self, AddressRequest, GATEWAY_ADDRESS_TYPE, PoolId, PoolRequest, REQUEST_ADDRESS_TYPE,
    SERIAL_OPTION, Utilization, saturating_u64,
};
use crate::ipam::{Options, PoolState, Source};

/// Code generated from `proto/ipam/v1/ipam.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("ipam.v1");

    /// The encoded descriptors of `ipam.v1`, with comments, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ipam_descriptor");
}

/// Checks a `RequestPool`: its address space, the pool request proper, and the options for
/// the driver.
///
/// # Errors
/// `InvalidAddressSpace`, `InvalidPrefix` or `InvalidSubPool`.
pub fn pool_request(
    req: &pb::RequestPoolRequest,
) -> Result<(String, PoolRequest, Options), engine::Error> {
    engine::pool::check_space_name(&req.address_space)?;
    let pool = PoolRequest::parse(&req.pool, &req.sub_pool, req.v6)?;
    let options = req
        .options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((req.address_space.clone(), pool, options))
}

/// Parses a pool id.
///
/// # Errors
/// `InvalidPoolId`.
pub fn pool_id(input: &str) -> Result<PoolId, engine::Error> {
    input.parse()
}

/// Parses an address given to `RequestAddress`/`ReleaseAddress`: `10.0.0.7`, or `10.0.0.7/24`
/// as `RequestAddress` returns it (the prefix length, when given, must be the subnet's).
/// Leading zeros are refused, as in pools.
///
/// # Errors
/// `InvalidAddress` naming the pool.
pub fn address(pool: &PoolId, input: &str) -> Result<IpAddr, engine::Error> {
    let invalid = |reason| engine::Error::InvalidAddress {
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
    match len.map(engine::pool::parse_prefix_len) {
        None => Ok(addr),
        Some(Some(len)) if len == pool.subnet().prefix_len() => Ok(addr),
        Some(Some(_)) => Err(invalid("its prefix length is not the subnet's")),
        Some(None) => Err(invalid("not an IP address")),
    }
}

/// Checks a `RequestAddress`: the address wanted, if any, and Docker's options. Options allot
/// does not read itself are returned for the driver (which refuses them unless it takes
/// them).
///
/// # Errors
/// `InvalidAddress`, or `InvalidOption` for a bad value of a known option.
pub fn address_request(
    pool: &PoolId,
    address: &str,
    options: &HashMap<String, String>,
) -> Result<(AddressRequest, Options), engine::Error> {
    let mut extra = Options::new();
    let mut req = AddressRequest::default();
    if !address.is_empty() {
        req.address = Some(self::address(pool, address)?);
    }
    for (key, value) in options {
        let invalid = |reason| engine::Error::InvalidOption {
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
                extra.insert(key.clone(), value.clone());
            }
        }
    }
    Ok((req, extra))
}

/// Describes a pool for `ListPools`.
#[must_use]
pub fn pool(id: &PoolId) -> pb::Pool {
    pb::Pool {
        pool_id: id.to_string(),
        address_space: id.space().to_owned(),
        pool: id.subnet().to_string(),
        sub_pool: id.sub_pool().map(|p| p.to_string()).unwrap_or_default(),
    }
}

/// Reports a pool's utilization for `GetIpamState`: saturating `u64` counts with exact
/// decimal twins.
#[must_use]
pub fn pool_state(state: &PoolState) -> pb::PoolState {
    let (u, error_code, error) = match &state.utilization {
        Ok(u) => (*u, String::new(), String::new()),
        Err(e) => (
            Utilization {
                allocated_in_subnet: 0,
                free_in_range: 0,
                free_in_union: 0,
            },
            code_name(e.kind).to_owned(),
            e.message.clone(),
        ),
    };
    pb::PoolState {
        pool_id: state.id.to_string(),
        subnet: state.id.subnet().to_string(),
        ip_range: state
            .id
            .sub_pool()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        allocated_ips_in_subnet: saturating_u64(u.allocated_in_subnet),
        available_ips_in_ip_range_pool: saturating_u64(u.free_in_range),
        allocated_ips_in_subnet_exact: u.allocated_in_subnet.to_string(),
        available_ips_in_ip_range_pool_exact: u.free_in_range.to_string(),
        available_ips_in_subnet_ranges: saturating_u64(u.free_in_union),
        available_ips_in_subnet_ranges_exact: u.free_in_union.to_string(),
        address_space: state.id.space().to_owned(),
        driver: state.driver.clone(),
        source: match state.source {
            Source::Driver => pb::UtilizationSource::Driver,
            Source::Tracked => pb::UtilizationSource::Tracked,
        }
        .into(),
        error_code,
        error,
    }
}
