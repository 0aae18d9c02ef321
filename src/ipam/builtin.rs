//! The built-in driver: the engine's pool rules over an in-memory cache of every subnet,
//! persisted through a [`Store`].
//!
//! Each subnet lives in a [`Cell`]: a mutex for writers and a published view for readers. A
//! mutation takes the cell's lock, applies the engine to a copy, persists the copy at the next
//! version, then publishes it and replies; a failed write leaves the cache as it was. Readers
//! (utilization, listings) take the published view and never wait for a commit. Pool creation
//! and deletion also hold the address space's index lock, since they change which subnets
//! exist; address requests only read the index.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock as SyncRwLock};

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::{Mutex, RwLock};

use super::{Capabilities, Error, Ipam, PoolState, not_found};
use crate::engine::{
    self, AddressRequest, DefaultPool, GLOBAL_SPACE, LOCAL_SPACE, PoolId, PoolPlan, PoolRequest,
    PoolSet, Subnet,
};
use crate::store::{self, Store, SubnetRecord};

/// The built-in IPAM driver.
pub struct Builtin {
    store: Arc<dyn Store>,
    tenant: String,
    spaces: BTreeMap<String, SpaceCache>,
}

/// One address space: its default pools and its subnets.
struct SpaceCache {
    defaults: Vec<DefaultPool>,
    // Invariant: holds exactly the subnets stored for this space and tenant (as of the last
    // commit); pairwise disjoint.
    index: RwLock<BTreeMap<IpNet, Arc<Cell>>>,
}

/// One subnet of the cache.
struct Cell {
    state: Mutex<CellState>,
    // Invariant: the subnet as last committed (the same value as `state.subnet` whenever the
    // state lock is free).
    view: SyncRwLock<Arc<Subnet>>,
}

struct CellState {
    // Invariant: `None` once the subnet was deleted; a request holding the cell from before
    // then gets `PoolNotFound`.
    subnet: Option<Arc<Subnet>>,
    version: u64,
    // Invariant: true while a store write is in flight or ended in an error, so the stored
    // version may differ from `version`; the next writer reloads first.
    stale: bool,
}

impl Cell {
    fn new(subnet: Subnet, version: u64) -> Self {
        let subnet = Arc::new(subnet);
        Self {
            state: Mutex::new(CellState {
                subnet: Some(Arc::clone(&subnet)),
                version,
                stale: false,
            }),
            view: SyncRwLock::new(subnet),
        }
    }

    fn view(&self) -> Arc<Subnet> {
        // Writers only swap the pointer; a poisoned lock still holds a committed subnet.
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn publish(&self, subnet: Arc<Subnet>) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = subnet;
    }
}

impl PoolSet for Arc<Cell> {
    fn has_pool(&self, sub_pool: Option<IpNet>) -> bool {
        self.view().has_pool(sub_pool)
    }

    fn first_pool(&self) -> Option<Option<IpNet>> {
        self.view().pools().next()
    }
}

impl Builtin {
    /// Loads every subnet of `tenant` from `store` into the cache. `defaults` gives the
    /// default address pools of each address space; `local` and `global` always exist.
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
            engine::pool::check_space_name(&name)?;
            spaces.insert(name, SpaceCache::new(pools));
        }
        for name in [LOCAL_SPACE, GLOBAL_SPACE] {
            spaces
                .entry(name.to_owned())
                .or_insert_with(|| SpaceCache::new(Vec::new()));
        }
        for SubnetRecord {
            space,
            subnet,
            version,
        } in store.load(tenant).await?
        {
            // A space that is no longer configured keeps its subnets visible.
            let cache = spaces
                .entry(space)
                .or_insert_with(|| SpaceCache::new(Vec::new()));
            cache
                .index
                .get_mut()
                .insert(subnet.net(), Arc::new(Cell::new(subnet, version)));
        }
        Ok(Self {
            store,
            tenant: tenant.to_owned(),
            spaces,
        })
    }

    fn space(&self, name: &str) -> Result<&SpaceCache, Error> {
        self.spaces.get(name).ok_or_else(|| {
            Error::Engine(engine::Error::InvalidAddressSpace {
                name: engine::error::shown(name),
                reason: "no such address space",
            })
        })
    }

    async fn cell(&self, id: &PoolId) -> Result<Arc<Cell>, Error> {
        let space = self.spaces.get(id.space()).ok_or_else(|| not_found(id))?;
        let index = space.index.read().await;
        index
            .get(&id.subnet())
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Makes the cell current again after an uncertain write: reloads it from the store.
    async fn refresh(&self, space: &str, net: IpNet, state: &mut CellState) -> Result<(), Error> {
        if !state.stale {
            return Ok(());
        }
        match self.store.load_subnet(&self.tenant, space, net).await? {
            Some(record) => {
                state.subnet = Some(Arc::new(record.subnet));
                state.version = record.version;
            }
            None => state.subnet = None,
        }
        state.stale = false;
        Ok(())
    }

    /// Persists `next` as the cell's next version and publishes it.
    async fn commit(
        &self,
        space: &str,
        cell: &Cell,
        state: &mut CellState,
        next: Subnet,
    ) -> Result<(), Error> {
        let version = state.version + 1;
        // Set before the write and cleared after it, so a write that fails or is cancelled
        // half-way forces a reload.
        state.stale = true;
        self.store
            .update_subnet(&self.tenant, space, &next, version)
            .await?;
        let next = Arc::new(next);
        state.subnet = Some(Arc::clone(&next));
        state.version = version;
        state.stale = false;
        cell.publish(next);
        Ok(())
    }

    /// Applies `change` to a copy of the pool's subnet and commits it if it reports a change.
    async fn mutate<T>(
        &self,
        id: &PoolId,
        change: impl FnOnce(&mut Subnet) -> Result<(T, bool), engine::Error> + Send,
    ) -> Result<T, Error> {
        let cell = self.cell(id).await?;
        let mut state = cell.state.lock().await;
        self.refresh(id.space(), id.subnet(), &mut state).await?;
        let current = state.subnet.clone().ok_or_else(|| not_found(id))?;
        let mut next = Subnet::clone(&current);
        let (out, changed) = change(&mut next)?;
        if changed {
            self.commit(id.space(), &cell, &mut state, next).await?;
        }
        Ok(out)
    }
}

impl SpaceCache {
    fn new(defaults: Vec<DefaultPool>) -> Self {
        Self {
            defaults,
            index: RwLock::new(BTreeMap::new()),
        }
    }
}

#[async_trait]
impl Ipam for Builtin {
    fn default_address_spaces(&self) -> (String, String) {
        (LOCAL_SPACE.to_owned(), GLOBAL_SPACE.to_owned())
    }

    fn capabilities(&self) -> Capabilities {
        // Every acknowledged allocation is persisted: nothing to replay after a restart.
        Capabilities::default()
    }

    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error> {
        let cache = self.space(space)?;
        let mut index = cache.index.write().await;
        let (id, plan) = engine::plan_pool(space, &cache.defaults, &index, req)?;
        match plan {
            PoolPlan::NewSubnet => {
                let mut subnet = Subnet::new(id.subnet());
                subnet.add_pool(id.sub_pool())?;
                match self.store.create_subnet(&self.tenant, space, &subnet).await {
                    Ok(()) => {}
                    Err(store::Error::Conflict { .. }) => {
                        // Stored but not cached: an earlier create whose reply was lost. Take
                        // the stored one in, and let the caller retry against it.
                        if let Some(r) = self
                            .store
                            .load_subnet(&self.tenant, space, id.subnet())
                            .await?
                        {
                            index.insert(id.subnet(), Arc::new(Cell::new(r.subnet, r.version)));
                        }
                        return Err(Error::Store(store::Error::Conflict {
                            space: space.to_owned(),
                            subnet: id.subnet().to_string(),
                        }));
                    }
                    Err(e) => return Err(e.into()),
                }
                index.insert(id.subnet(), Arc::new(Cell::new(subnet, 1)));
            }
            PoolPlan::JoinSubnet => {
                drop(index);
                let sub_pool = id.sub_pool();
                self.mutate(&id, |s| s.add_pool(sub_pool).map(|()| ((), true)))
                    .await?;
            }
        }
        Ok(id)
    }

    async fn release_pool(&self, id: &PoolId) -> Result<(), Error> {
        let cache = self.spaces.get(id.space()).ok_or_else(|| not_found(id))?;
        let mut index = cache.index.write().await;
        let cell = index
            .get(&id.subnet())
            .cloned()
            .ok_or_else(|| not_found(id))?;
        let mut state = cell.state.lock().await;
        self.refresh(id.space(), id.subnet(), &mut state).await?;
        let current = state.subnet.clone().ok_or_else(|| not_found(id))?;
        if !current.has_pool(id.sub_pool()) {
            return Err(not_found(id));
        }
        let mut next = Subnet::clone(&current);
        if next.remove_pool(id.sub_pool()) {
            state.stale = true;
            self.store
                .delete_subnet(&self.tenant, id.space(), id.subnet(), state.version)
                .await?;
            state.subnet = None;
            state.stale = false;
            index.remove(&id.subnet());
            Ok(())
        } else {
            self.commit(id.space(), &cell, &mut state, next).await
        }
    }

    async fn list_pools(&self, space: Option<&str>) -> Result<Vec<PoolId>, Error> {
        let names: Vec<&str> = match space {
            Some(name) => {
                self.space(name)?;
                vec![name]
            }
            None => self.spaces.keys().map(String::as_str).collect(),
        };
        let mut out = Vec::new();
        for name in names {
            let index = self.space(name)?.index.read().await;
            for (&net, cell) in index.iter() {
                for sub_pool in cell.view().pools() {
                    out.push(PoolId::new(name, net, sub_pool)?);
                }
            }
        }
        Ok(out)
    }

    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error> {
        let address = self
            .mutate(id, |s| s.allocate(id, req).map(|a| (a, true)))
            .await?;
        IpNet::new(address, id.subnet().prefix_len()).map_err(|e| Error::Internal(e.to_string()))
    }

    async fn release_address(&self, id: &PoolId, address: IpAddr) -> Result<(), Error> {
        self.mutate(id, |s| s.release(id, address).map(|changed| ((), changed)))
            .await
    }

    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error> {
        let all;
        let ids = if ids.is_empty() {
            all = self.list_pools(None).await?;
            &all
        } else {
            ids
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let subnet = self.cell(id).await?.view();
            if !subnet.has_pool(id.sub_pool()) {
                return Err(not_found(id));
            }
            out.push(PoolState {
                id: id.clone(),
                utilization: subnet.utilization(id.sub_pool()),
            });
        }
        Ok(out)
    }
}
