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
use std::sync::{Arc, Mutex as SyncMutex, PoisonError, RwLock as SyncRwLock};

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::{Mutex, RwLock, oneshot};

use super::{Capabilities, Error, Ipam, PoolState, not_found};
use crate::engine::{
    self, AddressRequest, DefaultPool, GLOBAL_SPACE, LOCAL_SPACE, PoolId, PoolPlan, PoolRequest,
    PoolSet, Subnet,
};
use crate::store::{self, Store, SubnetRecord};

/// The built-in IPAM driver.
pub struct Builtin {
    ctx: Arc<Ctx>,
    spaces: BTreeMap<String, SpaceCache>,
}

/// What a commit needs, shared with the tasks that run batches.
struct Ctx {
    store: Arc<dyn Store>,
    tenant: String,
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
    // Mutations waiting for the next batch, in arrival order.
    pending: SyncMutex<Vec<Job>>,
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
            pending: SyncMutex::new(Vec::new()),
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

/// One mutation of a subnet, waiting for its batch.
struct Job {
    id: PoolId,
    op: Op,
    reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// The mutations a batch applies.
enum Op {
    Allocate(AddressRequest),
    Release(IpAddr),
    AddPool,
}

/// What a mutation returns.
enum Outcome {
    Address(IpAddr),
    Done,
}

impl Op {
    /// Applies the mutation to `subnet`; returns its outcome and whether anything changed.
    fn apply(&self, id: &PoolId, subnet: &mut Subnet) -> Result<(Outcome, bool), engine::Error> {
        match self {
            Self::Allocate(req) => subnet
                .allocate(id, req)
                .map(|a| (Outcome::Address(a), true)),
            Self::Release(address) => subnet
                .release(id, *address)
                .map(|changed| (Outcome::Done, changed)),
            Self::AddPool => subnet
                .add_pool(id.sub_pool())
                .map(|()| (Outcome::Done, true)),
        }
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
            ctx: Arc::new(Ctx {
                store,
                tenant: tenant.to_owned(),
            }),
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

    /// Queues a mutation of pool `id`'s subnet and waits for the batch that commits it.
    ///
    /// Concurrent mutations of one subnet are applied in arrival order to one copy and
    /// persisted in one transaction (group commit); each caller is answered only after that
    /// commit. The batch runs in a task of its own, so a caller that goes away cannot cut a
    /// commit short.
    async fn submit(&self, id: &PoolId, op: Op) -> Result<Outcome, Error> {
        let cell = self.cell(id).await?;
        let (reply, answer) = oneshot::channel();
        cell.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Job {
                id: id.clone(),
                op,
                reply,
            });
        let ctx = Arc::clone(&self.ctx);
        tokio::spawn(async move {
            let mut state = cell.state.lock().await;
            let jobs =
                std::mem::take(&mut *cell.pending.lock().unwrap_or_else(PoisonError::into_inner));
            // Empty when an earlier batch already took this job.
            if !jobs.is_empty() {
                ctx.run_batch(&cell, &mut state, jobs).await;
            }
        });
        answer
            .await
            .map_err(|_| Error::Internal("a batch ended without answering".into()))?
    }
}

impl Ctx {
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

    /// Applies `jobs` in order to one copy of the subnet, commits it once, and answers each
    /// job: its own result, or, if the commit failed, the commit's error.
    async fn run_batch(&self, cell: &Cell, state: &mut CellState, jobs: Vec<Job>) {
        let Some(first) = jobs.first() else { return };
        let (space, net) = (first.id.space().to_owned(), first.id.subnet());
        let current = match self.refresh(&space, net, state).await {
            Ok(()) => state.subnet.clone(),
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.replicate()));
                }
                return;
            }
        };
        let Some(current) = current else {
            for job in jobs {
                let _ = job.reply.send(Err(not_found(&job.id)));
            }
            return;
        };
        let mut next = Subnet::clone(&current);
        let mut changed = false;
        let mut results = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let result = job.op.apply(&job.id, &mut next).map(|(outcome, c)| {
                changed |= c;
                outcome
            });
            results.push(result.map_err(Error::Engine));
        }
        let failed = if changed {
            self.commit(&space, cell, state, next).await.err()
        } else {
            None
        };
        for (job, result) in jobs.into_iter().zip(results) {
            let answer = match (&failed, result) {
                // Nothing of the batch was stored: every change it acknowledged fails too.
                (Some(e), Ok(_)) => Err(e.replicate()),
                (_, result) => result,
            };
            let _ = job.reply.send(answer);
        }
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
                match self
                    .ctx
                    .store
                    .create_subnet(&self.ctx.tenant, space, &subnet)
                    .await
                {
                    Ok(()) => {}
                    Err(store::Error::Conflict { .. }) => {
                        // Stored but not cached: an earlier create whose reply was lost. Take
                        // the stored one in, and let the caller retry against it.
                        if let Some(r) = self
                            .ctx
                            .store
                            .load_subnet(&self.ctx.tenant, space, id.subnet())
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
                self.submit(&id, Op::AddPool).await?;
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
        self.ctx
            .refresh(id.space(), id.subnet(), &mut state)
            .await?;
        let current = state.subnet.clone().ok_or_else(|| not_found(id))?;
        if !current.has_pool(id.sub_pool()) {
            return Err(not_found(id));
        }
        let mut next = Subnet::clone(&current);
        if next.remove_pool(id.sub_pool()) {
            state.stale = true;
            self.ctx
                .store
                .delete_subnet(&self.ctx.tenant, id.space(), id.subnet(), state.version)
                .await?;
            state.subnet = None;
            state.stale = false;
            index.remove(&id.subnet());
            Ok(())
        } else {
            self.ctx.commit(id.space(), &cell, &mut state, next).await
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
        let Outcome::Address(address) = self.submit(id, Op::Allocate(*req)).await? else {
            return Err(Error::Internal("an allocation answered no address".into()));
        };
        IpNet::new(address, id.subnet().prefix_len()).map_err(|e| Error::Internal(e.to_string()))
    }

    async fn release_address(&self, id: &PoolId, address: IpAddr) -> Result<(), Error> {
        self.submit(id, Op::Release(address)).await.map(|_| ())
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
