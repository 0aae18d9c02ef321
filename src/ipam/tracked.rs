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

use super::{
    Builtin, Capabilities, Error, Ipam, Kind, Options, PoolState, Source, named_or_all, router,
};
use crate::engine::{AddressRequest, PoolId, PoolRequest, SubnetSpec};

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
        self.request_pool_with(space, req, &Options::new()).await
    }

    async fn request_pool_with(
        &self,
        space: &str,
        req: &PoolRequest,
        options: &Options,
    ) -> Result<PoolId, Error> {
        let id = self.inner.request_pool_with(space, req, options).await?;
        let exact = PoolRequest {
            subnet: SubnetSpec::Exact(id.subnet()),
            sub_pool: id.sub_pool(),
        };
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

    async fn list_pools(&self, space: Option<&str>) -> Result<Vec<PoolId>, Error> {
        self.inner.list_pools(space).await
    }

    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error> {
        self.request_address_with(id, req, &Options::new()).await
    }

    async fn request_address_with(
        &self,
        id: &PoolId,
        req: &AddressRequest,
        options: &Options,
    ) -> Result<IpNet, Error> {
        let address = self.inner.request_address_with(id, req, options).await?;
        let exact = AddressRequest {
            address: Some(address.addr()),
            serial: false,
            gateway: req.gateway,
        };
        if let Err(e) = self.record.request_address(id, &exact).await {
            self.mismatch("an address", id, &e);
        }
        Ok(address)
    }

    async fn release_address(&self, id: &PoolId, address: IpAddr) -> Result<(), Error> {
        self.inner.release_address(id, address).await?;
        if let Err(e) = self.record.release_address(id, address).await {
            self.mismatch("an address release", id, &e);
        }
        Ok(())
    }

    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error> {
        let named = !ids.is_empty();
        let ids = named_or_all(self, ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in &*ids {
            let state = match self.record.utilization(std::slice::from_ref(id)).await {
                Ok(mut states) if states.len() == 1 => {
                    let mut state = states.remove(0);
                    state.driver = self.inner.name().to_owned();
                    state
                }
                Ok(_) => router::failed(
                    id,
                    self.inner.name(),
                    &Error::Internal("the record answered for another number of pools".into()),
                ),
                // A pool of the driver's that the record never saw (it could not follow).
                Err(e)
                    if e.kind() == Kind::NotFound
                        && self.inner.list_pools(Some(id.space())).await?.contains(id) =>
                {
                    router::failed(
                        id,
                        self.inner.name(),
                        &Error::Driver {
                            driver: self.inner.name().to_owned(),
                            kind: Kind::FailedPrecondition,
                            message: format!("pool {id} is not tracked (see the log)"),
                        },
                    )
                }
                // Listed, then released before it was looked at: not reported.
                Err(e) if !named && e.kind() == Kind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(PoolState {
                source: Source::Tracked,
                ..state
            });
        }
        Ok(out)
    }
}
