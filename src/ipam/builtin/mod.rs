//! The built-in driver: the engine's pool rules over an in-memory cache of every subnet,
//! persisted through a [`Store`].
//!
//! Each subnet lives in a cell ([`cache`]): a mutex for writers and a published view for
//! readers. A mutation takes the cell's lock, applies the engine to a copy, persists the copy
//! at the next version, then publishes it and replies ([`batch`]); a failed write leaves the
//! cache as it was. Readers (utilization, listings) take the published view and never wait
//! for a commit. Creating a subnet holds the address space's index lock, since it changes
//! which subnets exist, and so does dropping a deleted one; every other request only reads
//! the index. Lock order: index, then cell.
//!
//! Several replicas may share one store. A write names the version it replaces; when another
//! replica got there first, the store refuses it (`Conflict`), and the batch reloads the
//! subnet and applies its mutations again, a bounded number of times. A store that reports
//! other writers' changes ([`Store::subscribe`]) keeps the cache fresh between writes
//! ([`replica`]).

mod batch;
mod cache;
mod replica;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Capabilities, Error, Ipam, Kind, PoolState, not_found, refuse_options};
use crate::engine::owners::{Holder, Owner};
use crate::engine::{
    self, AddressRequest, DefaultPool, GLOBAL_SPACE, LOCAL_SPACE, PoolId, PoolPlan, PoolRequest,
    Subnet,
};
use crate::ipam::{AllocationPage, PoolPage};
use crate::store::{self, Store, SubnetRecord};
use batch::Op;
use cache::{Cell, Ctx, SpaceCache};

/// How many times a batch (or a pool request) is tried when other replicas keep winning the
/// race for its subnet, before the caller gets `Aborted`.
const MAX_ATTEMPTS: usize = 16;

/// How often a driver sharing its store with other writers compares every cached version with
/// the stored ones, besides applying their announcements as they come.
const RESYNC_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// The built-in IPAM driver.
pub struct Builtin {
    ctx: Arc<Ctx>,
    // The task applying other replicas' changes, if the store reports them.
    watcher: Option<JoinHandle<()>>,
}

impl Builtin {
    /// Loads every subnet of `tenant` from `store` into the cache. `defaults` gives the
    /// default address pools of each address space; `local` and `global` always exist. When
    /// the store reports other writers' changes, a task applies them to the cache.
    ///
    /// # Errors
    /// A store error, or `Corrupt` data.
    pub async fn load(
        store: Arc<dyn Store>,
        tenant: &str,
        defaults: BTreeMap<String, Vec<DefaultPool>>,
    ) -> Result<Self, Error> {
        let mut spaces: BTreeMap<String, SpaceCache> = BTreeMap::new();
        for (name, pools) in defaults {
            engine::id::check_space_name(&name)?;
            spaces.insert(name, SpaceCache::new(pools));
        }
        for name in [LOCAL_SPACE, GLOBAL_SPACE] {
            spaces
                .entry(name.to_owned())
                .or_insert_with(|| SpaceCache::new(Vec::new()));
        }
        // Subscribed before loading, so nothing committed in between is missed.
        let events = store
            .subscribe(store::Interest::Tenant(tenant.to_owned()))
            .await;
        for SubnetRecord {
            space,
            subnet,
            version,
        } in store.load(tenant).await?
        {
            // A space that is no longer configured keeps its subnets visible.
            let cache = spaces
                .entry(space.clone())
                .or_insert_with(|| SpaceCache::new(Vec::new()));
            let index = cache.index.get_mut();
            // Serving overlapping subnets would hand out one address twice: refuse to start.
            if let Some(other) = engine::overlapping(index, subnet.net()) {
                return Err(Error::Store(store::Error::Corrupt {
                    space,
                    subnet: format!("{} (and {other})", subnet.net()),
                    source: engine::Error::Corrupt {
                        reason: if other == subnet.net() {
                            "stored twice"
                        } else {
                            "it overlaps another stored subnet of its address space"
                        },
                    },
                }));
            }
            index.insert(subnet.net(), Arc::new(Cell::new(subnet, version)));
        }
        let ctx = Arc::new(Ctx {
            store,
            tenant: tenant.to_owned(),
            spaces,
        });
        let watcher = events.map(|events| tokio::spawn(Arc::clone(&ctx).watch(events)));
        Ok(Self { ctx, watcher })
    }
    /// Creates a new subnet for pool `id` in the store and the index. When the store holds
    /// an overlapping subnet this replica has not seen yet (another replica's), it takes that
    /// one into the index and returns `false`: plan again.
    async fn create(
        &self,
        index: &mut BTreeMap<IpNet, Arc<Cell>>,
        id: &PoolId,
    ) -> Result<bool, Error> {
        let ctx = &self.ctx;
        let subnet = Subnet::create(id)?;
        match ctx
            .store
            .create_subnet(&ctx.tenant, id.space(), &subnet)
            .await
        {
            Ok(version) => {
                index.insert(id.subnet(), Arc::new(Cell::new(subnet, version)));
                Ok(true)
            }
            Err(store::Error::Conflict {
                space,
                subnet: existing,
            }) => {
                // Stored but not cached: another replica's subnet, or an earlier create whose
                // reply was lost.
                let net: IpNet = existing.parse().map_err(|_| {
                    Error::Store(store::Error::Conflict {
                        space: space.clone(),
                        subnet: existing.clone(),
                    })
                })?;
                ctx.adopt(index, &space, net).await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Returns the published view of pool `id`'s subnet. A pool missing from the cache is
    /// looked up in the store before the answer is `PoolNotFound`: another replica may have
    /// created it a moment ago, before its announcement arrived.
    async fn published(&self, id: &PoolId) -> Result<Arc<Subnet>, Error> {
        let ctx = &self.ctx;
        let subnet = ctx.cell(id).await?.view();
        if subnet.has_pool(id.sub_pool()) {
            return Ok(subnet);
        }
        ctx.bounded(Instant::now(), ctx.recheck(id.space(), id.subnet()))
            .await?;
        let subnet = ctx.cell(id).await?.view();
        if subnet.has_pool(id.sub_pool()) {
            Ok(subnet)
        } else {
            Err(not_found(id))
        }
    }

    /// Plans a pool request on the cached subnets and carries it out: creates the subnet
    /// or adds the sub-pool to it. A refusal decided on the cache is checked against the
    /// store first. Each step that reads or writes the store ends within the store's timeout
    /// of `started`; the sub-pool's batch answers by then too, so a pool is never added
    /// after its caller was told it failed.
    async fn plan_and_create(
        &self,
        space: &str,
        req: &PoolRequest,
        started: Instant,
    ) -> Result<PoolId, Error> {
        let ctx = &self.ctx;
        let cache = ctx.space(space)?;
        let mut tried = String::new();
        let mut synced = false;
        for _ in 0..MAX_ATTEMPTS {
            let mut index = cache.index.write().await;
            let plan = match engine::plan_pool(space, &cache.defaults, &index, req) {
                // No room as the cache sees it: compare the space's subnets with the store,
                // which other replicas may have changed, and decide again.
                Err(e) if !synced && e.kind() == engine::ErrorKind::Exhausted => {
                    drop(index);
                    ctx.bounded(started, ctx.sync(Some(space))).await?;
                    synced = true;
                    continue;
                }
                planned => planned?,
            };
            match plan {
                PoolPlan::Overlaps {
                    requested,
                    existing,
                } => {
                    let refusal = index
                        .get(&existing)
                        .map(|cell| cell.view().overlap(&requested));
                    drop(index);
                    match refusal {
                        // Decided on the cache: it stands once the subnet it rests on is
                        // checked against the store.
                        Some(refusal) if synced => return Err(Error::Engine(refusal)),
                        _ => {
                            ctx.bounded(started, ctx.recheck(space, existing)).await?;
                            synced = true;
                        }
                    }
                }
                PoolPlan::NewSubnet(id) => {
                    tried = id.subnet().to_string();
                    if ctx.bounded(started, self.create(&mut index, &id)).await? {
                        return Ok(id);
                    }
                }
                PoolPlan::JoinSubnet(id) => {
                    drop(index);
                    tried = id.subnet().to_string();
                    // The subnet's own rules decide, on its current state, in its batch.
                    match ctx.submit(started, &id, Op::AddPool).await {
                        Ok(()) => return Ok(id),
                        // The subnet went away under us (another replica released it):
                        // drop it from the index before planning again.
                        Err(Error::Engine(engine::Error::PoolNotFound { .. })) => {
                            ctx.bounded(started, ctx.recheck(space, id.subnet()))
                                .await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(Error::Store(store::Error::Conflict {
            space: space.to_owned(),
            subnet: tried,
        }))
    }
}

impl Drop for Builtin {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

#[async_trait]
impl Ipam for Builtin {
    fn name(&self) -> &str {
        super::BUILTIN_DRIVER
    }

    fn default_address_spaces(&self) -> (String, String) {
        (LOCAL_SPACE.to_owned(), GLOBAL_SPACE.to_owned())
    }

    fn capabilities(&self) -> Capabilities {
        // Every acknowledged allocation is persisted: nothing to replay after a restart.
        Capabilities::default()
    }

    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error> {
        refuse_options(&req.options)?;
        self.plan_and_create(space, req, Instant::now()).await
    }

    async fn release_pool(&self, id: &PoolId) -> Result<(), Error> {
        self.ctx.submit(Instant::now(), id, Op::RemovePool).await
    }

    async fn list_pools(&self, space: Option<&str>, page: &PoolPage) -> Result<Vec<PoolId>, Error> {
        let names: Vec<&str> = match space {
            Some(name) => {
                self.ctx.space(name)?;
                vec![name]
            }
            None => self.ctx.spaces.keys().map(String::as_str).collect(),
        };
        let mut out = Vec::new();
        for name in names {
            // A space before the page's start holds none of its pools; in the start's own
            // space, the page starts at the start's subnet (its later sub-pools follow it).
            let start = match &page.after {
                Some(after) if name < after.space() => continue,
                Some(after) if name == after.space() => Bound::Included(after.subnet()),
                _ => Bound::Unbounded,
            };
            let index = self.ctx.space(name)?.index.read().await;
            for (&net, cell) in index.range((start, Bound::Unbounded)) {
                for sub_pool in cell.view().pools() {
                    let id = PoolId::new(name, net, sub_pool)?;
                    if !page.follows(&id) {
                        continue;
                    }
                    if out.len() == page.limit {
                        return Ok(out);
                    }
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error> {
        refuse_options(&req.options)?;
        let mut req = req.clone();
        if req.owner.is_some() {
            // The holder's "since": the engine keeps no clock.
            req.at_ms = crate::store::unix_now_ms();
        }
        let allocate = |answer| Op::Allocate(req, answer);
        let address = self.ctx.submit(Instant::now(), id, allocate).await?;
        IpNet::new(address, id.subnet().prefix_len()).map_err(|e| Error::Internal(e.to_string()))
    }

    async fn release_address(
        &self,
        id: &PoolId,
        address: IpAddr,
        owner: Option<&Owner>,
    ) -> Result<(), Error> {
        let owner = owner.cloned();
        let release = |answer| Op::Release(address, owner, answer);
        self.ctx.submit(Instant::now(), id, release).await
    }

    async fn list_allocations(
        &self,
        id: &PoolId,
        page: &AllocationPage,
    ) -> Result<Vec<(IpAddr, Option<Holder>)>, Error> {
        let subnet = self.published(id).await?;
        let owners = (page.owner_prefix.as_str(), page.owned_only);
        Ok(subnet.allocations(id.sub_pool(), page.after, owners, page.limit))
    }

    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(match self.published(id).await {
                Ok(subnet) => {
                    PoolState::counted(id, self.name(), subnet.utilization(id.sub_pool()))
                }
                Err(e) if e.kind() == Kind::NotFound => PoolState::missing(id, self.name()),
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! Two drivers on one store, neither told of the other's changes (the memory store
    //! announces nothing): the worst a cache can lag. Every answer must still be the one the
    //! store's current state gives.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::engine::Utilization;
    use crate::ipam::Kind;
    use crate::store::MemoryStore;

    async fn pair() -> (Builtin, Builtin, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let a = Builtin::load(Arc::clone(&store), "t", BTreeMap::new());
        let b = Builtin::load(Arc::clone(&store), "t", BTreeMap::new());
        (a.await.expect("a"), b.await.expect("b"), store)
    }

    fn exact(pool: &str) -> PoolRequest {
        PoolRequest::parse(pool, "", false).expect("valid request")
    }

    fn at(address: &str) -> AddressRequest {
        AddressRequest {
            address: Some(address.parse().expect("an address")),
            ..AddressRequest::default()
        }
    }

    /// A pool of `pool` created on A and used on B (so B caches its subnet), then released
    /// on A: B's cache is now wrong.
    async fn released_behind_bs_back(a: &Builtin, b: &Builtin, pool: &str) -> PoolId {
        let id = a.request_pool("local", &exact(pool)).await.unwrap();
        b.request_address(&id, &AddressRequest::default())
            .await
            .unwrap();
        a.release_pool(&id).await.unwrap();
        id
    }

    async fn in_use(store: &Arc<dyn Store>, net: &str) -> u128 {
        let fresh = Builtin::load(Arc::clone(store), "t", BTreeMap::new());
        let id = PoolId::new("local", net.parse().expect("prefix"), None).expect("id");
        let states = fresh.await.expect("load").utilization(&[id]).await;
        let Ok(Utilization {
            allocated_in_subnet,
            ..
        }) = states.expect("state").remove(0).utilization
        else {
            panic!("no utilization");
        };
        allocated_in_subnet
    }

    #[tokio::test]
    async fn a_release_on_another_replica_takes_effect() {
        let (a, b, store) = pair().await;
        let id = a
            .request_pool("local", &exact("10.50.0.0/24"))
            .await
            .unwrap();
        // B caches the subnet while it is empty.
        b.utilization(std::slice::from_ref(&id)).await.unwrap();
        for _ in 0..20 {
            let address = a.request_address(&id, &AddressRequest::default()).await;
            let address = address.unwrap().addr();
            // B believes the address free: its release must not be a no-op on the cache.
            b.release_address(&id, address, None).await.unwrap();
        }
        // Network and broadcast only: every release took effect.
        assert_eq!(in_use(&store, "10.50.0.0/24").await, 2);
    }

    #[tokio::test]
    async fn a_pool_created_on_another_replica_is_found() {
        let (a, b, _) = pair().await;
        let id = a
            .request_pool("local", &exact("10.51.0.0/24"))
            .await
            .unwrap();
        let address = b.request_address(&id, &AddressRequest::default()).await;
        assert_eq!(address.unwrap().to_string(), "10.51.0.1/24");
        b.release_pool(&id).await.unwrap();
        let again = a.release_pool(&id).await.expect_err("released on B");
        assert_eq!(again.kind(), Kind::NotFound);
    }

    #[tokio::test]
    async fn an_address_released_on_another_replica_can_be_requested_by_name() {
        let (a, b, _) = pair().await;
        let id = a
            .request_pool("local", &exact("10.52.0.0/24"))
            .await
            .unwrap();
        b.request_address(&id, &at("10.52.0.7")).await.unwrap();
        a.release_address(&id, "10.52.0.7".parse().unwrap(), None)
            .await
            .unwrap();
        // B still caches .7 as taken.
        b.request_address(&id, &at("10.52.0.7")).await.unwrap();
        let taken = a.request_address(&id, &at("10.52.0.7")).await;
        assert_eq!(taken.expect_err("B holds it").kind(), Kind::AlreadyExists);
    }

    #[tokio::test]
    async fn a_subnet_released_on_another_replica_can_be_created_again() {
        let (a, b, _) = pair().await;
        let id = released_behind_bs_back(&a, &b, "10.53.0.0/24").await;
        // B's cache still holds the subnet: its overlap refusal must be checked first.
        let again = b.request_pool("local", &exact("10.53.0.0/16")).await;
        assert_eq!(again.unwrap().to_string(), "local/10.53.0.0/16");
        let stale = b.request_address(&id, &AddressRequest::default()).await;
        assert_eq!(stale.expect_err("gone").kind(), Kind::NotFound);
        // And a refusal that holds is still a refusal.
        let overlap = a.request_pool("local", &exact("10.53.1.0/24")).await;
        assert_eq!(overlap.expect_err("inside").kind(), Kind::AlreadyExists);
    }

    /// A subnet deleted and created again on one replica, then brought to the version the
    /// other replica caches: the other must not take the new subnet for the one it knows.
    #[tokio::test]
    async fn a_subnet_created_again_is_not_mistaken_for_the_cached_one() {
        let (a, b, _) = pair().await;
        let id = a
            .request_pool("local", &exact("10.55.0.0/24"))
            .await
            .unwrap();
        // B caches the subnet with .1 in use.
        b.request_address(&id, &at("10.55.0.1")).await.unwrap();
        a.release_pool(&id).await.unwrap();
        a.request_pool("local", &exact("10.55.0.0/24"))
            .await
            .unwrap();
        a.request_address(&id, &at("10.55.0.5")).await.unwrap();
        // .1 is free in the subnet as stored now, .5 is not.
        b.request_address(&id, &at("10.55.0.1")).await.unwrap();
        let taken = b.request_address(&id, &at("10.55.0.5")).await;
        assert_eq!(taken.expect_err("in use").kind(), Kind::AlreadyExists);
    }

    #[tokio::test]
    async fn a_sub_pool_of_a_subnet_released_elsewhere_creates_it_anew() {
        let (a, b, _) = pair().await;
        released_behind_bs_back(&a, &b, "10.56.0.0/24").await;
        // B plans to join the subnet it caches; the store has none.
        let req = PoolRequest::parse("10.56.0.0/24", "10.56.0.128/25", false).unwrap();
        let sub = b.request_pool("local", &req).await.unwrap();
        assert_eq!(sub.to_string(), "local/10.56.0.0/24/10.56.0.128/25");
        let first = a.request_address(&sub, &AddressRequest::default()).await;
        assert_eq!(
            first.unwrap().to_string(),
            "10.56.0.128/24",
            "a fresh subnet"
        );
    }

    #[tokio::test]
    async fn a_sub_pool_added_on_another_replica_has_a_state() {
        let (a, b, _) = pair().await;
        let id = a
            .request_pool("local", &exact("10.57.0.0/24"))
            .await
            .unwrap();
        // B caches the subnet before the sub-pool exists.
        b.utilization(std::slice::from_ref(&id)).await.unwrap();
        let req = PoolRequest::parse("10.57.0.0/24", "10.57.0.64/26", false).unwrap();
        let sub = a.request_pool("local", &req).await.unwrap();
        let states = b.utilization(std::slice::from_ref(&sub)).await.unwrap();
        assert_eq!(states.len(), 1);
        assert!(states[0].utilization.is_ok(), "found in the store");
    }

    #[tokio::test]
    async fn every_pool_state_follows_pools_created_and_released() {
        let (a, _, _) = pair().await;
        let a = crate::ipam::Router::new(Arc::new(a), BTreeMap::new());
        let id = a
            .request_pool("local", &exact("10.54.0.0/24"))
            .await
            .unwrap();
        let every = a.list_pools(None, &PoolPage::ALL).await.unwrap();
        assert_eq!(every, std::slice::from_ref(&id));
        assert!(a.utilization(&every).await.unwrap()[0].utilization.is_ok());
        a.release_pool(&id).await.unwrap();
        assert!(a.list_pools(None, &PoolPage::ALL).await.unwrap().is_empty());
        let missing = a.utilization(std::slice::from_ref(&id)).await.unwrap();
        assert!(missing[0].is_missing(), "released: {missing:?}");
    }
}

#[cfg(test)]
mod proptests {
    //! The engine's property tests, run through the built-in driver over the memory store:
    //! every request goes through a batch and a store write, and a round trip is a restart
    //! (a new driver loading what the store holds). The same naive model judges the answers.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;
    use tokio::runtime::Runtime;

    use super::*;
    use crate::engine::model::{Op, Subject, ops, run};
    use crate::engine::{Utilization, error::Error as EngineError};
    use crate::store::MemoryStore;

    struct Driver {
        rt: Runtime,
        store: Arc<dyn Store>,
        driver: Builtin,
    }

    impl Driver {
        fn new() -> Self {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let driver = rt.block_on(Builtin::load(Arc::clone(&store), "t", BTreeMap::new()));
            Self {
                rt,
                store,
                driver: driver.unwrap(),
            }
        }
    }

    /// The engine's error inside the driver's (any other is a failure of the test).
    fn engine<T>(result: Result<T, Error>) -> Result<T, EngineError> {
        result.map_err(|e| match e {
            Error::Engine(e) => e,
            other => panic!("not an engine error: {other}"),
        })
    }

    impl Subject for Driver {
        fn add_pool(&mut self, id: &PoolId) -> Result<(), EngineError> {
            let v6 = matches!(id.subnet(), IpNet::V6(_));
            let sub = id.sub_pool().map(|s| s.to_string()).unwrap_or_default();
            let req = PoolRequest::parse(&id.subnet().to_string(), &sub, v6).unwrap();
            let created = self.rt.block_on(self.driver.request_pool(id.space(), &req));
            engine(created).map(|got| assert_eq!(&got, id))
        }

        fn remove_pool(&mut self, id: &PoolId) -> Result<(), EngineError> {
            engine(self.rt.block_on(self.driver.release_pool(id)))
        }

        fn request(&mut self, id: &PoolId, req: &AddressRequest) -> Result<IpAddr, EngineError> {
            let got = self.rt.block_on(self.driver.request_address(id, req));
            engine(got).map(|net| net.addr())
        }

        fn release(&mut self, id: &PoolId, address: IpAddr) -> Result<(), EngineError> {
            engine(
                self.rt
                    .block_on(self.driver.release_address(id, address, None)),
            )
        }

        fn utilization(&mut self, id: &PoolId) -> Utilization {
            let states = self
                .rt
                .block_on(self.driver.utilization(std::slice::from_ref(id)));
            states.unwrap().remove(0).utilization.unwrap()
        }

        fn round_trip(&mut self) {
            let store = Arc::clone(&self.store);
            let loaded = self.rt.block_on(Builtin::load(store, "t", BTreeMap::new()));
            self.driver = loaded.unwrap();
        }

        fn subnet(&mut self) -> Option<Subnet> {
            let records = self.rt.block_on(self.store.load("t")).unwrap();
            assert!(records.len() <= 1, "one subnet at most");
            records.into_iter().next().map(|record| record.subnet)
        }
    }

    fn check(net: &str, sub_pools: &[&str], ops: &[Op]) {
        run(&mut Driver::new(), net, sub_pools, ops);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn a_slash_24_with_ranges_and_a_whole_pool_matches_the_model(ops in ops(150)) {
            check("192.168.8.0/24", &["", "192.168.8.16/28", "192.168.8.128/25"], &ops);
        }

        #[test]
        fn a_slash_24_with_overlapping_ranges_matches_the_model(ops in ops(150)) {
            check(
                "192.168.7.0/24",
                &["192.168.7.0/25", "192.168.7.64/26", "192.168.7.128/30", "192.168.7.250/31"],
                &ops,
            );
        }

        #[test]
        fn a_slash_31_matches_the_model(ops in ops(150)) {
            check("10.0.0.2/31", &[""], &ops);
        }

        #[test]
        fn a_v6_slash_64_matches_the_model(ops in ops(150)) {
            check("fd00:1:2:3::/64", &["", "fd00:1:2:3::/120"], &ops);
        }
    }
}
