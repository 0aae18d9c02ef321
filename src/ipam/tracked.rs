//! The tracking decorator: for a driver that cannot count (a remote plugin), it records what
//! passes through it — pools created and released, addresses handed out and freed — in a
//! built-in driver of its own (the same engine, cache and persisted runs), and answers
//! utilization from that record, marked [`Source::Tracked`].
//!
//! The wrapped driver decides; the record only follows. When the record cannot follow (the
//! plugin handed out an address the record holds as reserved, say), the call still succeeds
//! and the mismatch is logged: the plugin's answer is the truth the caller acts on.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;

use super::{Builtin, Capabilities, Error, Ipam, Kind, PoolState, Source};
use crate::engine::owners::{Holder, Owner};
use crate::engine::{AddressRequest, PoolId, PoolRequest};
use crate::ipam::{AllocationPage, PoolPage};

/// A driver, and the record of what passed through it.
pub struct Tracked {
    inner: Arc<dyn Ipam>,
    record: Builtin,
}

impl Tracked {
    /// Wraps `inner`, recording in `record` (a built-in driver over its own tenant, with the
    /// address spaces `inner` serves).
    #[must_use]
    pub fn new(inner: Arc<dyn Ipam>, record: Builtin) -> Self {
        Self { inner, record }
    }

    fn mismatch(&self, what: &str, id: &PoolId, e: &Error) {
        tracing::warn!(
            driver = self.inner.name(),
            pool_id = %id,
            error = %e,
            "tracking {what}: the record cannot follow the driver"
        );
    }
}

#[async_trait]
impl Ipam for Tracked {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn default_address_spaces(&self) -> (String, String) {
        self.inner.default_address_spaces()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error> {
        let id = self.inner.request_pool(space, req).await?;
        let exact = PoolRequest::exact(id.subnet(), id.sub_pool());
        if let Err(e) = self.record.request_pool(space, &exact).await {
            self.mismatch("a pool", &id, &e);
        }
        Ok(id)
    }

    async fn release_pool(&self, id: &PoolId) -> Result<(), Error> {
        self.inner.release_pool(id).await?;
        match self.record.release_pool(id).await {
            Err(e) if e.kind() != Kind::NotFound => self.mismatch("a pool release", id, &e),
            _ => {}
        }
        Ok(())
    }

    async fn list_pools(&self, space: Option<&str>, page: &PoolPage) -> Result<Vec<PoolId>, Error> {
        self.inner.list_pools(space, page).await
    }

    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error> {
        let address = self.inner.request_address(id, req).await?;
        let exact = AddressRequest {
            address: Some(address.addr()),
            gateway: req.gateway,
            ..AddressRequest::default()
        };
        if let Err(e) = self.record.request_address(id, &exact).await {
            self.mismatch("an address", id, &e);
        }
        Ok(address)
    }

    async fn release_address(
        &self,
        id: &PoolId,
        address: IpAddr,
        owner: Option<&Owner>,
    ) -> Result<(), Error> {
        self.inner.release_address(id, address, owner).await?;
        if let Err(e) = self.record.release_address(id, address, None).await {
            self.mismatch("an address release", id, &e);
        }
        Ok(())
    }

    async fn list_allocations(
        &self,
        id: &PoolId,
        page: &AllocationPage,
    ) -> Result<Vec<(IpAddr, Option<Holder>)>, Error> {
        // What passed through to the driver, as recorded.
        self.record.list_allocations(id, page).await
    }

    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error> {
        let driver = self.inner.name();
        let recorded = self.record.utilization(ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, state) in ids.iter().zip(recorded) {
            let state = if !state.is_missing() {
                PoolState {
                    driver: driver.to_owned(),
                    source: Source::Tracked,
                    ..state
                }
            } else if self
                .inner
                .list_pools(Some(id.space()), &PoolPage::ALL)
                .await?
                .contains(id)
            {
                // A pool of the driver's that the record never saw (it could not follow).
                let untracked = Error::Driver {
                    driver: driver.to_owned(),
                    kind: Kind::FailedPrecondition,
                    message: format!("pool {id} is not tracked (see the log)"),
                };
                PoolState {
                    source: Source::Tracked,
                    ..PoolState::failed(id, driver, &untracked)
                }
            } else {
                PoolState::missing(id, driver)
            };
            out.push(state);
        }
        Ok(out)
    }
}
