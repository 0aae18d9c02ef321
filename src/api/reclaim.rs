//! Taking addresses back by owner: `ReleaseOwner` (everything an owner holds) and
//! `GarbageCollect` (what owners no longer alive hold). Both go through the driver's own
//! listing and releases, each release naming the owner, so an address that changed hands
//! meanwhile is left to its new holder.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::engine::owners::{Holder, Owner};
use crate::engine::{ErrorKind, PoolId};
use crate::ipam::{AllocationPage, Error, Ipam, Kind};

/// Owned addresses listed per page.
const PAGE: usize = 1000;

/// An address taken back: its pool, itself, and who held it since when.
pub type Taken = (PoolId, IpAddr, Holder);

/// Every owned allocation of pool `id` whose owner starts with `prefix`.
async fn owned(ipam: &dyn Ipam, id: &PoolId, prefix: &str) -> Result<Vec<(IpAddr, Holder)>, Error> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = AllocationPage {
            after,
            owner_prefix: prefix.to_owned(),
            owned_only: true,
            limit: PAGE,
        };
        let found = ipam.list_allocations(id, &page).await?;
        let full = found.len() == PAGE;
        after = found.last().map(|(a, _)| *a);
        out.extend(found.into_iter().filter_map(|(a, h)| h.map(|h| (a, h))));
        if !full {
            return Ok(out);
        }
    }
}

/// Releases `address` of `id` if `holder` still holds it; `false` when it changed hands.
async fn take(
    ipam: &dyn Ipam,
    id: &PoolId,
    address: IpAddr,
    holder: &Holder,
) -> Result<bool, Error> {
    match ipam.release_address(id, address, Some(&holder.owner)).await {
        Ok(()) => Ok(true),
        Err(Error::Engine(e)) if e.kind() == ErrorKind::FailedPrecondition => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases what `owner` holds in `pools`, or in every pool of the driver when none is named
/// (pools of drivers that keep no owners are passed over then).
///
/// # Errors
/// A pool named that does not exist or keeps no owners; a driver or store failure.
pub async fn release_owner(
    ipam: &dyn Ipam,
    owner: &Owner,
    pools: Vec<PoolId>,
) -> Result<Vec<Taken>, Error> {
    let every = pools.is_empty();
    let pools = if every {
        ipam.list_pools(None, &crate::ipam::PoolPage::ALL).await?
    } else {
        pools
    };
    let mut out = Vec::new();
    for id in pools {
        let held = match owned(ipam, &id, owner.as_str()).await {
            Ok(held) => held,
            Err(e) if every && e.kind() == Kind::FailedPrecondition => continue,
            Err(e) => return Err(e),
        };
        for (address, holder) in held {
            if holder.owner == *owner && take(ipam, &id, address, &holder).await? {
                out.push((id.clone(), address, holder));
            }
        }
    }
    Ok(out)
}

/// Releases (or, with `dry_run`, lists) what owners not in `live` hold in `pools` since at
/// least `min_age_ms` before `now_ms`.
///
/// # Errors
/// A pool that does not exist or keeps no owners; a driver or store failure.
pub async fn garbage_collect(
    ipam: &dyn Ipam,
    pools: Vec<PoolId>,
    live: &HashSet<String>,
    (min_age_ms, now_ms): (u64, u64),
    dry_run: bool,
) -> Result<Vec<Taken>, Error> {
    let mut out = Vec::new();
    for id in pools {
        for (address, holder) in owned(ipam, &id, "").await? {
            let old_enough = holder.since_ms.saturating_add(min_age_ms) <= now_ms;
            if live.contains(holder.owner.as_str()) || !old_enough {
                continue;
            }
            if dry_run || take(ipam, &id, address, &holder).await? {
                out.push((id.clone(), address, holder));
            }
        }
    }
    Ok(out)
}
