//! The `null` driver: Docker's null IPAM, for networks that need no addresses. Every pool it
//! gives is `0.0.0.0/0` in its address space (`null/0.0.0.0/0` for Docker's `null` space), and
//! it hands out no address.
//!
//! It remembers which pools it gave (for listings and utilization) in memory only: a null pool
//! holds nothing, and a client that asks again after a restart gets the same id.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use ipnet::IpNet;

use super::{Capabilities, Error, Ipam, Kind, PoolState, not_found, refuse_options, refuse_owner};
use crate::engine::owners::{Holder, Owner};
use crate::engine::{AddressRequest, PoolId, PoolRequest, SubnetSpec, Utilization};
use crate::ipam::{AllocationPage, PoolPage};

/// Docker's name for the null driver's address space.
pub const NULL_SPACE: &str = "null";

/// The null IPAM driver.
#[derive(Debug, Default)]
pub struct Null {
    // Invariant: how many times each pool was requested and not yet released (at least 1).
    pools: Mutex<BTreeMap<PoolId, usize>>,
}

impl Null {
    /// Returns a null driver holding no pool.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, BTreeMap<PoolId, usize>> {
        // Each change is one insert or update: a poisoned map is still consistent.
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(kind: Kind, message: String) -> Error {
        Error::Driver {
            driver: "null".to_owned(),
            kind,
            message,
        }
    }

    fn check(&self, id: &PoolId) -> Result<(), Error> {
        if self.pools().contains_key(id) {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }
}

/// The one pool of the null driver in `space`.
fn null_pool(space: &str) -> Result<PoolId, Error> {
    let everything =
        IpNet::new(IpAddr::from([0, 0, 0, 0]), 0).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(PoolId::new(space, everything, None)?)
}

#[async_trait]
impl Ipam for Null {
    fn name(&self) -> &str {
        "null"
    }

    fn default_address_spaces(&self) -> (String, String) {
        (NULL_SPACE.to_owned(), NULL_SPACE.to_owned())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error> {
        refuse_options(&req.options)?;
        // As Docker's null driver: no specific pool, no sub-pool, no IPv6.
        match req.subnet {
            SubnetSpec::Dynamic { v6: true, .. } => {
                return Err(Self::refuse(
                    Kind::Invalid,
                    "no IPv6 pools: networks on the null driver have no addresses".into(),
                ));
            }
            SubnetSpec::Exact(net) => {
                return Err(Self::refuse(
                    Kind::Invalid,
                    format!("pool {net} was asked for: the null driver takes no specific pool"),
                ));
            }
            SubnetSpec::Dynamic { v6: false, .. } => {}
        }
        let id = null_pool(space)?;
        *self.pools().entry(id.clone()).or_insert(0) += 1;
        Ok(id)
    }

    async fn release_pool(&self, id: &PoolId) -> Result<(), Error> {
        let mut pools = self.pools();
        match pools.get_mut(id) {
            Some(1) => {
                pools.remove(id);
                Ok(())
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Err(not_found(id)),
        }
    }

    async fn list_pools(&self, space: Option<&str>, page: &PoolPage) -> Result<Vec<PoolId>, Error> {
        Ok(page.of(&self.pools(), space))
    }

    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error> {
        refuse_options(&req.options)?;
        refuse_owner(req.owner.as_ref())?;
        self.check(id)?;
        Err(Self::refuse(
            Kind::FailedPrecondition,
            format!("pool {id} has no addresses to hand out"),
        ))
    }

    async fn release_address(
        &self,
        id: &PoolId,
        _address: IpAddr,
        owner: Option<&Owner>,
    ) -> Result<(), Error> {
        refuse_owner(owner)?;
        // Nothing was handed out, so everything is already free.
        self.check(id)
    }

    async fn list_allocations(
        &self,
        id: &PoolId,
        _page: &AllocationPage,
    ) -> Result<Vec<(IpAddr, Option<Holder>)>, Error> {
        // Nothing is ever handed out.
        self.check(id)?;
        Ok(Vec::new())
    }

    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error> {
        let empty = Utilization {
            allocated_in_subnet: 0,
            free_in_range: 0,
            free_in_union: 0,
        };
        Ok(ids
            .iter()
            .map(|id| match self.check(id) {
                Ok(()) => PoolState::counted(id, self.name(), empty),
                Err(_) => PoolState::missing(id, self.name()),
            })
            .collect())
    }
}
