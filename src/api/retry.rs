//! Idempotent pool creation: a `RequestPool` carrying a `request_id` that was seen in the last
//! 24 hours returns the pool the first one made instead of creating another (or failing with
//! ALREADY_EXISTS). The ids live in the store, so a retry through another replica is
//! recognised too; of two creates racing with one id, the one remembered first wins and the
//! other's pool is released.

use crate::engine::{self, PoolId};
use crate::ipam::{Error, Ipam, Kind};
use crate::store::{Store, unix_now};

/// How long a request id is remembered, in seconds.
pub const REMEMBERED_FOR: u64 = 24 * 3600;

/// Longest request id, in bytes.
const MAX_ID_LEN: usize = 256;

/// A pool request as remembered with its id: what was asked, so that an id reused for another
/// request is refused.
#[must_use]
pub fn fingerprint(space: &str, req: &crate::proto::pb::RequestPoolRequest) -> String {
    format!("{space} {} {} {}", req.pool, req.sub_pool, req.v6)
}

/// Checks a request id.
///
/// # Errors
/// `Invalid` for one too long or with control characters.
pub fn check_id(id: &str) -> Result<(), Error> {
    if id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "invalid request_id {:?}: at most 256 bytes, no control characters",
            engine::error::shown(id)
        )));
    }
    Ok(())
}

/// The pool an earlier request with this id made, if any and if it still exists.
///
/// # Errors
/// `Invalid` when the id was used for another request; `NotFound` when its pool was released
/// since; a store or driver error.
pub async fn earlier(
    store: &dyn Store,
    ipam: &dyn Ipam,
    tenant: &str,
    (request_id, asked): (&str, &str),
) -> Result<Option<PoolId>, Error> {
    let since = unix_now().saturating_sub(REMEMBERED_FOR);
    match store.pool_request(tenant, request_id, since).await? {
        None => Ok(None),
        Some(remembered) => existing(ipam, request_id, asked, remembered)
            .await
            .map(Some),
    }
}

/// The pool remembered for `request_id`, checked: asked the same way, and still there.
async fn existing(
    ipam: &dyn Ipam,
    request_id: &str,
    asked: &str,
    (remembered, pool_id): (String, String),
) -> Result<PoolId, Error> {
    let shown = engine::error::shown(request_id);
    if remembered != asked {
        return Err(Error::Invalid(format!(
            "request_id {shown:?} was used for another pool request"
        )));
    }
    let id: PoolId = pool_id
        .parse()
        .map_err(|e: engine::Error| Error::Internal(format!("a remembered pool id: {e}")))?;
    let states = ipam.utilization(std::slice::from_ref(&id)).await;
    match states {
        Ok(states) if states.iter().all(|s| !s.is_missing()) => Ok(id),
        Err(e) if e.kind() != Kind::NotFound => Err(e),
        _ => Err(Error::Refused {
            kind: Kind::NotFound,
            message: format!("pool {id}, made by request_id {shown:?}, was released since"),
        }),
    }
}

/// Remembers that `request_id` made `made`; when a concurrent create with the same id was
/// remembered first, releases `made` and returns that one's pool instead.
///
/// # Errors
/// A store or driver error; `Invalid` when the other request asked otherwise.
pub async fn remember(
    store: &dyn Store,
    ipam: &dyn Ipam,
    tenant: &str,
    (request_id, asked): (&str, &str),
    made: PoolId,
) -> Result<PoolId, Error> {
    let now = unix_now();
    let since = now.saturating_sub(REMEMBERED_FOR);
    let pool_id = made.to_string();
    match store
        .remember_pool_request(tenant, request_id, (asked, &pool_id), (now, since))
        .await?
    {
        None => Ok(made),
        Some(remembered) => {
            ipam.release_pool(&made).await?;
            existing(ipam, request_id, asked, remembered).await
        }
    }
}
