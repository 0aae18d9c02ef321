//! Quotas on pools and addresses, checked before one is created: the tenant's limits (read by
//! the authenticator, from the store), its usage as its driver counts it, and what is being
//! created on this replica and does not show in the usage yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tonic::Status;

use super::status::status;
use crate::auth::{Authenticator, Caller};
use crate::ipam::{self, Ipam};

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Counted {
    Pools,
    Addresses,
}

type Key = (String, Counted);

/// What is being created, per tenant and kind, and whose turn it is to check.
#[derive(Default)]
pub(super) struct Quotas {
    // Pools and addresses being created: counted against the quota until they show in the
    // usage (their guard drops after the driver answered, when the usage has them).
    pending: Arc<Mutex<HashMap<Key, u64>>>,
    // One check at a time per tenant and kind, so that two cannot pass on the same count.
    turns: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// A pool or address being created, counted against its tenant's quota until dropped.
pub(super) struct Pending {
    pending: Arc<Mutex<HashMap<Key, u64>>>,
    key: Key,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = pending.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pending.remove(&self.key);
            }
        }
    }
}

impl Quotas {
    fn being_made(&self, key: &Key) -> u64 {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.get(key).copied().unwrap_or(0)
    }

    /// Checks that the caller's tenant may create one more of `what`, and counts it as being
    /// created until the returned guard drops. Free for a tenant without that limit.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED naming the tenant, the limit and the use; a store or driver error.
    pub(super) async fn admit(
        &self,
        auth: &Authenticator,
        caller: &Caller,
        ipam: &dyn Ipam,
        what: Counted,
    ) -> Result<Option<Pending>, Status> {
        let quota = auth.quota(&caller.tenant).await.map_err(|e| status(&e))?;
        let (max, noun) = match what {
            Counted::Pools => (quota.max_pools, "pools"),
            Counted::Addresses => (quota.max_addresses, "addresses"),
        };
        if max == 0 {
            return Ok(None);
        }
        let key = (caller.tenant.to_string(), what);
        let turn = Arc::clone(
            self.turns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_default(),
        );
        let _turn = turn.lock().await;
        // What is being made, read before the usage: one that finishes in between is then
        // counted twice (a refusal at the limit, never a pass over it), where read after it
        // could be counted nowhere (its commit missed, its guard already dropped).
        let being_made = self.being_made(&key);
        let usage = ipam::usage(ipam).await.map_err(|e| status(&e))?;
        let used = match what {
            Counted::Pools => usage.pools,
            Counted::Addresses => usage.addresses,
        };
        if used.saturating_add(being_made) >= max {
            let tenant = &caller.tenant;
            return Err(status(&ipam::Error::Refused {
                kind: ipam::Kind::Exhausted,
                message: format!(
                    "tenant {tenant:?} has reached its quota of {max} {noun} ({used} in use)"
                ),
            }));
        }
        *self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default() += 1;
        Ok(Some(Pending {
            pending: Arc::clone(&self.pending),
            key,
        }))
    }
}
