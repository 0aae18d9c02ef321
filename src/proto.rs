//! The generated `ipam.v1` code, and the only place that converts between it and domain values.

use crate::engine::{self, PoolId, PoolRequest, Utilization, saturating_u64};
use crate::ipam::{PoolState, Source};

/// Code generated from `proto/ipam/v1/ipam.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("ipam.v1");

    /// The encoded descriptors of `ipam.v1` and `ipam.admin.v1`, with comments, for server
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ipam_descriptor");
}

/// Code generated from `proto/ipam/admin/v1/admin.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod admin_pb {
    tonic::include_proto!("ipam.admin.v1");
}

/// Checks a `RequestPool`: its address space, and the pool request proper with the options
/// for the driver.
///
/// # Errors
/// `InvalidAddressSpace`, `InvalidPrefix` or `InvalidSubPool`.
pub fn pool_request(req: &pb::RequestPoolRequest) -> Result<(String, PoolRequest), engine::Error> {
    engine::id::check_space_name(&req.address_space)?;
    let mut pool = PoolRequest::parse(&req.pool, &req.sub_pool, req.v6)?;
    pool.options = req
        .options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((req.address_space.clone(), pool))
}

/// Parses an owner: empty for none.
///
/// # Errors
/// `InvalidOwner`.
pub fn owner(input: &str) -> Result<Option<engine::owners::Owner>, engine::Error> {
    if input.is_empty() {
        return Ok(None);
    }
    engine::owners::Owner::new(input)
        .map(Some)
        .map_err(|reason| engine::Error::InvalidOwner {
            owner: engine::error::shown(input),
            reason,
        })
}

/// The default and the largest page of `ListAllocations`.
pub const PAGE_SIZE: (usize, usize) = (100, 1000);

/// The default and the largest page of `ListPools` and of `GetIpamState` over every pool.
pub const POOL_PAGE_SIZE: (usize, usize) = (1000, 10_000);

fn bad_page(key: &str, value: &str, reason: &'static str) -> engine::Error {
    engine::Error::InvalidOption {
        key: key.to_owned(),
        value: engine::error::shown(value),
        reason,
    }
}

/// A page size as asked (0: the default), at most the largest.
fn page_limit(page_size: i32, (default, largest): (usize, usize)) -> Result<usize, engine::Error> {
    match usize::try_from(page_size) {
        Err(_) => Err(bad_page("page_size", &page_size.to_string(), "negative")),
        Ok(0) => Ok(default),
        Ok(n) => Ok(n.min(largest)),
    }
}

/// Reads which page of pools `ListPools` or `GetIpamState` asks for.
///
/// # Errors
/// `InvalidOption` for a negative page size or a page token that is not a pool id.
pub fn pool_page(page_size: i32, page_token: &str) -> Result<crate::ipam::PoolPage, engine::Error> {
    let limit = page_limit(page_size, POOL_PAGE_SIZE)?;
    let after = if page_token.is_empty() {
        None
    } else {
        let after = page_token
            .parse()
            .map_err(|_| bad_page("page_token", page_token, "not a token a page of pools gave"))?;
        Some(after)
    };
    Ok(crate::ipam::PoolPage { after, limit })
}

/// Reads which page of a pool's allocations `ListAllocations` asks for.
///
/// # Errors
/// `InvalidOption` for a negative page size or a page token that is not an address of the
/// pool's subnet.
pub fn allocation_page(
    id: &PoolId,
    req: &pb::ListAllocationsRequest,
) -> Result<crate::ipam::AllocationPage, engine::Error> {
    let bad = bad_page;
    let limit = page_limit(req.page_size, PAGE_SIZE)?;
    let after = if req.page_token.is_empty() {
        None
    } else {
        let address: std::net::IpAddr = req
            .page_token
            .parse()
            .map_err(|_| bad("page_token", &req.page_token, "not a token this pool gave"))?;
        if !id.subnet().contains(&address) {
            return Err(bad(
                "page_token",
                &req.page_token,
                "not a token this pool gave",
            ));
        }
        Some(address)
    };
    Ok(crate::ipam::AllocationPage {
        after,
        owner_prefix: req.owner_prefix.clone(),
        owned_only: false,
        limit,
    })
}

/// A time as the API carries it.
fn timestamp(since_ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(since_ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_ms % 1000).unwrap_or(0) * 1_000_000,
    }
}

/// Describes an address taken back, for `ReleaseOwner` and `GarbageCollect`.
#[must_use]
pub fn released(
    (id, address, holder): &(PoolId, std::net::IpAddr, engine::owners::Holder),
) -> pb::Released {
    pb::Released {
        pool_id: id.to_string(),
        address: address.to_string(),
        owner: holder.owner.to_string(),
        allocated_at: Some(timestamp(holder.since_ms)),
    }
}

/// Parses the pool ids of a request.
///
/// # Errors
/// `InvalidPoolId`.
pub fn pool_ids(ids: &[String]) -> Result<Vec<PoolId>, engine::Error> {
    ids.iter().map(|s| pool_id(s)).collect()
}

/// Describes one allocation for `ListAllocations`.
#[must_use]
pub fn allocation(
    (address, holder): &(std::net::IpAddr, Option<engine::owners::Holder>),
) -> pb::Allocation {
    pb::Allocation {
        address: address.to_string(),
        owner: holder
            .as_ref()
            .map(|h| h.owner.to_string())
            .unwrap_or_default(),
        allocated_at: holder.as_ref().map(|h| timestamp(h.since_ms)),
    }
}

/// Parses a pool id.
///
/// # Errors
/// `InvalidPoolId`.
pub fn pool_id(input: &str) -> Result<PoolId, engine::Error> {
    input.parse()
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
            e.kind.name().to_owned(),
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
