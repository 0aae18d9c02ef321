//! Serves each address space with the driver configured for it, and is itself an [`Ipam`], so
//! the API reaches every driver through one value. Utilization over pools of several drivers
//! is answered per pool: a driver that fails marks its own pools with its error, and the
//! others are still answered.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;

use super::{AllocationPage, Capabilities, Error, Ipam, PoolPage, PoolState};
use crate::engine::owners::{Holder, Owner};
use crate::engine::{AddressRequest, PoolId, PoolRequest};

/// Address spaces, each served by its driver.
pub struct Router {
    // Invariant: `drivers[0]` is the fallback, serving every space not in `spaces`; each
    // driver appears once.
    drivers: Vec<Arc<dyn Ipam>>,
    // Address space → index in `drivers`.
    spaces: BTreeMap<String, usize>,
}

impl Router {
    /// Serves the spaces of `spaces` with their drivers, and every other space with
    /// `fallback` (the built-in driver). One driver may serve several spaces.
    #[must_use]
    pub fn new(fallback: Arc<dyn Ipam>, spaces: BTreeMap<String, Arc<dyn Ipam>>) -> Self {
        let mut drivers = vec![fallback];
        let mut index = BTreeMap::new();
        for (space, driver) in spaces {
            let i = match drivers.iter().position(|d| Arc::ptr_eq(d, &driver)) {
                Some(i) => i,
                None => {
                    drivers.push(driver);
                    drivers.len() - 1
                }
            };
            index.insert(space, i);
        }
        Self {
            drivers,
            spaces: index,
        }
    }

    fn index_of(&self, space: &str) -> usize {
        self.spaces.get(space).copied().unwrap_or(0)
    }

    fn driver(&self, space: &str) -> &Arc<dyn Ipam> {
        &self.drivers[self.index_of(space)]
    }

    /// Whether `driver` (an index) serves `space`.
    fn serves(&self, driver: usize, space: &str) -> bool {
        self.index_of(space) == driver
    }
}

impl Router {
    /// Asks `driver` for the state of `ids`, all of them its pools, in that order.
    /// A driver that fails marks each pool with its error.
    async fn states_of(&self, driver: &Arc<dyn Ipam>, ids: &[PoolId]) -> Vec<PoolState> {
        let failed = |e: &Error| {
            ids.iter()
                .map(|id| PoolState::failed(id, driver.name(), e))
                .collect()
        };
        match driver.utilization(ids).await {
            Ok(states) if states.len() == ids.len() => states,
            Ok(_) => failed(&Error::Internal(format!(
                "driver {} answered for a different number of pools",
                driver.name()
            ))),
            Err(e) => failed(&e),
        }
    }

    /// The page of the pools of every space that `driver` (an index) serves: a driver may
    /// list pools of spaces routed to another, which are skipped, asking on until the page
    /// is full or the driver has no more.
    async fn served_page(&self, i: usize, page: &PoolPage) -> Result<Vec<PoolId>, Error> {
        let mut out = Vec::new();
        let mut from = page.clone();
        loop {
            let listed = self.drivers[i].list_pools(None, &from).await?;
            let more = listed.len() == from.limit;
            from.after = listed.last().cloned().or(from.after);
            out.extend(listed.into_iter().filter(|id| self.serves(i, id.space())));
            if !more || out.len() >= page.limit {
                out.truncate(page.limit);
                return Ok(out);
            }
            from.limit = page.limit - out.len();
        }
    }
}

#[async_trait]
impl Ipam for Router {
    fn name(&self) -> &str {
        "router"
    }

    fn default_address_spaces(&self) -> (String, String) {
        self.drivers[0].default_address_spaces()
    }

    fn capabilities(&self) -> Capabilities {
        // What any driver needs, its callers must give.
        self.drivers
            .iter()
            .map(|d| d.capabilities())
            .fold(Capabilities::default(), |a, b| Capabilities {
                requires_mac_address: a.requires_mac_address || b.requires_mac_address,
                requires_request_replay: a.requires_request_replay || b.requires_request_replay,
            })
    }

    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error> {
        self.driver(space).request_pool(space, req).await
    }

    async fn release_pool(&self, id: &PoolId) -> Result<(), Error> {
        self.driver(id.space()).release_pool(id).await
    }

    async fn list_pools(&self, space: Option<&str>, page: &PoolPage) -> Result<Vec<PoolId>, Error> {
        if let Some(space) = space {
            return self.driver(space).list_pools(Some(space), page).await;
        }
        // Each driver's page, merged: the first `limit` of them all are the page.
        let mut out = Vec::new();
        for i in 0..self.drivers.len() {
            out.extend(self.served_page(i, page).await?);
        }
        out.sort();
        out.truncate(page.limit);
        Ok(out)
    }

    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error> {
        self.driver(id.space()).request_address(id, req).await
    }

    async fn release_address(
        &self,
        id: &PoolId,
        address: IpAddr,
        owner: Option<&Owner>,
    ) -> Result<(), Error> {
        self.driver(id.space())
            .release_address(id, address, owner)
            .await
    }

    async fn list_allocations(
        &self,
        id: &PoolId,
        page: &AllocationPage,
    ) -> Result<Vec<(IpAddr, Option<Holder>)>, Error> {
        self.driver(id.space()).list_allocations(id, page).await
    }

    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error> {
        // Each driver is asked once, for its pools; answers go back in the order asked.
        let mut out: Vec<Option<PoolState>> = vec![None; ids.len()];
        for (i, driver) in self.drivers.iter().enumerate() {
            let (positions, mine): (Vec<usize>, Vec<PoolId>) = ids
                .iter()
                .enumerate()
                .filter(|(_, id)| self.serves(i, id.space()))
                .map(|(pos, id)| (pos, id.clone()))
                .unzip();
            if mine.is_empty() {
                continue;
            }
            let states = self.states_of(driver, &mine).await;
            for (pos, state) in positions.into_iter().zip(states) {
                out[pos] = Some(state);
            }
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| Error::Internal("a pool was left unanswered".into())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Utilization;
    use crate::ipam::{Builtin, Kind, Null};
    use crate::store::MemoryStore;

    /// A driver whose every call fails as an unreachable plugin would: what the router does
    /// with a failing driver is the point, and no real driver fails on demand.
    struct Unreachable;

    fn down() -> Error {
        Error::Driver {
            driver: "remote".into(),
            kind: Kind::Unavailable,
            message: "plugin unreachable".into(),
        }
    }

    #[async_trait]
    impl Ipam for Unreachable {
        fn name(&self) -> &str {
            "remote"
        }
        fn default_address_spaces(&self) -> (String, String) {
            ("far".into(), "far".into())
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                requires_mac_address: true,
                requires_request_replay: false,
            }
        }
        async fn request_pool(&self, _: &str, _: &PoolRequest) -> Result<PoolId, Error> {
            Err(down())
        }
        async fn release_pool(&self, _: &PoolId) -> Result<(), Error> {
            Err(down())
        }
        async fn list_pools(
            &self,
            space: Option<&str>,
            page: &PoolPage,
        ) -> Result<Vec<PoolId>, Error> {
            let far: PoolId = "far/10.9.0.0/16".parse().expect("id");
            Ok(page.of(&BTreeMap::from([(far, ())]), space))
        }
        async fn request_address(&self, _: &PoolId, _: &AddressRequest) -> Result<IpNet, Error> {
            Err(down())
        }
        async fn release_address(
            &self,
            _: &PoolId,
            _: IpAddr,
            _: Option<&Owner>,
        ) -> Result<(), Error> {
            Err(down())
        }
        async fn utilization(&self, _: &[PoolId]) -> Result<Vec<PoolState>, Error> {
            Err(down())
        }
    }

    async fn router() -> Router {
        let builtin = Builtin::load(Arc::new(MemoryStore::new()), "t", BTreeMap::new())
            .await
            .expect("builtin");
        let null: Arc<dyn Ipam> = Arc::new(Null::new());
        let far: Arc<dyn Ipam> = Arc::new(Unreachable);
        Router::new(
            Arc::new(builtin),
            BTreeMap::from([("null".into(), null), ("far".into(), far)]),
        )
    }

    #[tokio::test]
    async fn every_pool_gets_a_state_and_a_failing_driver_marks_only_its_own() {
        let r = router().await;
        let local = r
            .request_pool(
                "local",
                &PoolRequest::parse("10.1.0.0/24", "", false).expect("req"),
            )
            .await
            .expect("builtin pool");
        let null = r
            .request_pool("null", &PoolRequest::parse("", "", false).expect("req"))
            .await
            .expect("null pool");
        assert_eq!(null.to_string(), "null/0.0.0.0/0");
        let far: PoolId = "far/10.9.0.0/16".parse().expect("id");
        let every = r.list_pools(None, &PoolPage::ALL).await.expect("list");
        let states = r.utilization(&every).await.expect("states");
        let by_id: BTreeMap<String, &PoolState> =
            states.iter().map(|s| (s.id.to_string(), s)).collect();
        assert_eq!(states.len(), 3, "{states:?}");
        assert_eq!(by_id[&local.to_string()].driver, "builtin");
        assert_eq!(
            by_id[&local.to_string()].utilization,
            Ok(Utilization {
                allocated_in_subnet: 2,
                free_in_range: 254,
                free_in_union: 254
            })
        );
        assert_eq!(by_id[&null.to_string()].driver, "null");
        assert_eq!(
            by_id[&null.to_string()]
                .utilization
                .as_ref()
                .map(|u| u.free_in_range),
            Ok(0)
        );
        let failed = by_id[&far.to_string()];
        assert_eq!(failed.driver, "remote");
        let err = failed.utilization.as_ref().expect_err("the driver failed");
        assert_eq!(err.kind, Kind::Unavailable);
        // Told as every API tells it: which part is down, not why (that is in the log).
        assert_eq!(err.message, "remote driver unavailable, retry later");
        // In the order asked, when named.
        let named = r
            .utilization(&[far.clone(), local.clone()])
            .await
            .expect("states");
        assert_eq!(named[0].id, far);
        assert_eq!(named[1].id, local);
        // Unknown pools are answered missing (the API refuses them).
        let unknown: PoolId = "local/10.2.0.0/24".parse().expect("id");
        let states = r.utilization(&[unknown]).await.expect("states");
        assert!(states[0].is_missing(), "{states:?}");
        // A page at a time, across drivers, in pool id order: each pool once.
        let mut paged = Vec::new();
        let mut page = PoolPage {
            after: None,
            limit: 1,
        };
        loop {
            let ids = r.list_pools(None, &page).await.expect("page");
            let Some(last) = ids.last() else { break };
            page.after = Some(last.clone());
            paged.extend(ids);
        }
        assert_eq!(paged, every);
        assert_eq!(every, [far.clone(), local.clone(), null.clone()]);
        // Capabilities: what any driver needs.
        assert!(r.capabilities().requires_mac_address);
    }

    #[tokio::test]
    async fn the_null_driver_holds_pools_without_addresses() {
        let r = router().await;
        let req = PoolRequest::parse("", "", false).expect("req");
        let a = r.request_pool("null", &req).await.expect("pool");
        let b = r
            .request_pool("null", &req)
            .await
            .expect("the same pool again");
        assert_eq!(a, b);
        let e = r
            .request_address(&a, &AddressRequest::default())
            .await
            .expect_err("no addresses");
        assert_eq!(e.kind(), Kind::FailedPrecondition);
        assert!(e.to_string().contains("null/0.0.0.0/0"), "{e}");
        for (pool, v6) in [("10.0.0.0/8", false), ("", true)] {
            let req = PoolRequest::parse(pool, "", v6).expect("req");
            assert_eq!(
                r.request_pool("null", &req)
                    .await
                    .expect_err("refused")
                    .kind(),
                Kind::Invalid
            );
        }
        r.release_pool(&a).await.expect("release");
        assert_eq!(
            r.list_pools(Some("null"), &PoolPage::ALL)
                .await
                .expect("list"),
            vec![b.clone()]
        );
        r.release_pool(&b).await.expect("release");
        assert_eq!(
            r.release_pool(&b).await.expect_err("gone").kind(),
            Kind::NotFound
        );
    }
}
