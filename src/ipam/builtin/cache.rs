//! The cache of every subnet: one [`Cell`] per subnet, indexed by address space and prefix,
//! and how a cell is brought up to date from the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError, RwLock as SyncRwLock};

use ipnet::IpNet;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use super::Error;
use super::batch::Job;
use crate::engine::{self, DefaultPool, PoolId, Subnet};
use crate::ipam::not_found;
use crate::store::{self, Store, SubnetLock, SubnetRecord};

/// The cache and its store, shared with the tasks that run batches and apply others' changes.
pub(super) struct Ctx {
    pub(super) store: Arc<dyn Store>,
    pub(super) tenant: String,
    pub(super) spaces: BTreeMap<String, SpaceCache>,
}

/// One address space: its default pools and its subnets.
pub(super) struct SpaceCache {
    pub(super) defaults: Vec<DefaultPool>,
    // Invariant: holds the subnets stored for this space and tenant as of the last commit or
    // change seen (another replica's changes arrive a moment later); pairwise disjoint.
    pub(super) index: RwLock<BTreeMap<IpNet, Arc<Cell>>>,
}

/// One subnet of the cache.
pub(super) struct Cell {
    // Mutations waiting for the next batch, in arrival order.
    pub(super) pending: SyncMutex<Vec<Job>>,
    pub(super) state: Mutex<CellState>,
    // Invariant: the subnet and version as last committed or loaded (the same as `state`'s
    // whenever the state lock is free).
    pub(super) view: SyncRwLock<(Arc<Subnet>, u64)>,
}

pub(super) struct CellState {
    // Invariant: `None` once the subnet was deleted; a request holding the cell from before
    // then gets `PoolNotFound`.
    pub(super) subnet: Option<Arc<Subnet>>,
    pub(super) version: u64,
    // Invariant: true while a store write is in flight or ended in an error, or when another
    // replica changed the subnet, so the stored version may differ from `version`; the next
    // writer reloads first.
    pub(super) stale: bool,
}

impl Cell {
    pub(super) fn new(subnet: Subnet, version: u64) -> Self {
        let subnet = Arc::new(subnet);
        Self {
            pending: SyncMutex::new(Vec::new()),
            state: Mutex::new(CellState {
                subnet: Some(Arc::clone(&subnet)),
                version,
                stale: false,
            }),
            view: SyncRwLock::new((subnet, version)),
        }
    }

    pub(super) fn view(&self) -> Arc<Subnet> {
        // Writers only swap the pointer; a poisoned lock still holds a committed subnet.
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner).0)
    }

    pub(super) fn version(&self) -> u64 {
        self.view.read().unwrap_or_else(PoisonError::into_inner).1
    }

    pub(super) fn publish(&self, subnet: Arc<Subnet>, version: u64) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = (subnet, version);
    }
}

/// overlaps), so they leave the index.
pub(super) fn install_record(
    index: &mut BTreeMap<IpNet, Arc<Cell>>,
    record: SubnetRecord,
) -> Arc<Cell> {
    let net = record.subnet.net();
    if let Some(cell) = index.get(&net) {
        return Arc::clone(cell);
    }
    while let Some(gone) = engine::overlapping(index, net) {
        index.remove(&gone);
    }
    let cell = Arc::new(Cell::new(record.subnet, record.version));
    index.insert(net, Arc::clone(&cell));
    cell
}

/// Makes `record`, as just read from the store, the cell's state and published view.
pub(super) fn install(cell: &Cell, state: &mut CellState, record: SubnetRecord) {
    let subnet = Arc::new(record.subnet);
    state.subnet = Some(Arc::clone(&subnet));
    state.version = record.version;
    cell.publish(subnet, record.version);
}

impl Ctx {
    /// Returns the address space `name`.
    ///
    /// # Errors
    /// `InvalidAddressSpace` when no such space is configured.
    pub(super) fn space(&self, name: &str) -> Result<&SpaceCache, Error> {
        self.spaces.get(name).ok_or_else(|| {
            Error::Engine(engine::Error::InvalidAddressSpace {
                name: engine::error::shown(name),
                reason: "no such address space",
            })
        })
    }

    /// Returns the cell of pool `id`'s subnet. One missing from the cache is looked up in the
    /// store before the answer is `PoolNotFound`: another replica may have created it a moment
    /// ago, before its announcement arrived.
    pub(super) async fn cell(&self, id: &PoolId) -> Result<Arc<Cell>, Error> {
        let space = self.spaces.get(id.space()).ok_or_else(|| not_found(id))?;
        let cached = space.index.read().await.get(&id.subnet()).cloned();
        match cached {
            Some(cell) => Ok(cell),
            None => self
                .adopt_unlocked(space, id.space(), id.subnet())
                .await?
                .ok_or_else(|| not_found(id)),
        }
    }

    /// Drops `cell` from the index once its subnet is known deleted (its last pool went, here
    /// or on another replica), unless something brought it back meanwhile. Lock order: index,
    /// then cell.
    pub(super) async fn forget(&self, space: &str, net: IpNet, cell: &Arc<Cell>) {
        let Some(cache) = self.spaces.get(space) else {
            return;
        };
        let mut index = cache.index.write().await;
        if index
            .get(&net)
            .is_some_and(|cached| Arc::ptr_eq(cached, cell))
        {
            let state = cell.state.lock().await;
            if state.subnet.is_none() && !state.stale {
                index.remove(&net);
            }
        }
    }
    /// Takes subnet `net` into the index as stored, if it is stored (another replica created
    /// it) and not cached yet. A cached subnet overlapping it is no longer stored (a store
    /// refuses overlaps), so it leaves the index.
    pub(super) async fn adopt(
        &self,
        index: &mut BTreeMap<IpNet, Arc<Cell>>,
        space: &str,
        net: IpNet,
    ) -> Result<Option<Arc<Cell>>, Error> {
        let record = self.store.load_subnet(&self.tenant, space, net).await?;
        Ok(record.map(|record| install_record(index, record)))
    }

    /// [`Ctx::adopt`] for a caller not holding the index lock: the store is read without it,
    /// so address requests of the space's other subnets do not wait for the round trip.
    pub(super) async fn adopt_unlocked(
        &self,
        cache: &SpaceCache,
        space: &str,
        net: IpNet,
    ) -> Result<Option<Arc<Cell>>, Error> {
        let record = self.store.load_subnet(&self.tenant, space, net).await?;
        match record {
            Some(record) => Ok(Some(install_record(
                &mut *cache.index.write().await,
                record,
            ))),
            None => Ok(None),
        }
    }

    /// Tells whether the store still holds the subnet at `version`: a decision taken on the
    /// cached copy at that version (a no-op, a refusal) then holds now.
    pub(super) async fn confirm(
        &self,
        space: &str,
        net: IpNet,
        version: u64,
    ) -> Result<bool, Error> {
        Ok(self.store.version(&self.tenant, space, net).await? == Some(version))
    }

    /// Makes the cell current again when it may not be (an uncertain write, another
    /// replica's change): reloads it from the store and publishes what it found. Returns
    /// whether it read the store.
    pub(super) async fn refresh(
        &self,
        space: &str,
        net: IpNet,
        cell: &Cell,
        state: &mut CellState,
    ) -> Result<bool, Error> {
        if !state.stale {
            return Ok(false);
        }
        match self.store.load_subnet(&self.tenant, space, net).await? {
            Some(record) => install(cell, state, record),
            None => state.subnet = None,
        }
        state.stale = false;
        Ok(true)
    }

    /// Locks the cell's subnet in the store, if the store can, and makes the cell what the
    /// store holds under that lock.
    pub(super) async fn lock(
        &self,
        space: &str,
        net: IpNet,
        cell: &Cell,
        state: &mut CellState,
    ) -> Result<Option<Box<dyn SubnetLock>>, Error> {
        match self
            .store
            .lock_subnet(&self.tenant, space, net, state.version)
            .await
        {
            Ok(Some(mut lock)) => {
                if let Some(record) = lock.take_reloaded() {
                    install(cell, state, record);
                }
                state.stale = false;
                Ok(Some(lock))
            }
            Ok(None) => Ok(None),
            Err(store::Error::NotFound { .. }) => {
                // Read just now: the caller's refresh confirms it.
                state.subnet = None;
                state.stale = true;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Persists `next` (`before` changed in `blocks`) as the cell's next version, under `lock`
    /// Runs `op`, failing with `Unavailable` once the store's timeout has passed since
    /// `since` (a store without a timeout: no bound).
    pub(super) async fn bounded<T>(
        &self,
        since: Instant,
        op: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(timeout) = self.store.timeout() else {
            return op.await;
        };
        tokio::time::timeout_at(since + timeout, op)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Store(store::Error::Unavailable(
                    format!("the store did not answer within {timeout:?}").into(),
                )))
            })
    }
}

impl SpaceCache {
    pub(super) fn new(defaults: Vec<DefaultPool>) -> Self {
        Self {
            defaults,
            index: RwLock::new(BTreeMap::new()),
        }
    }
}
