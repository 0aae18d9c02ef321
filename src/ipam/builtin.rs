//! The built-in driver: the engine's pool rules over an in-memory cache of every subnet,
//! persisted through a [`Store`].
//!
//! Each subnet lives in a [`Cell`]: a mutex for writers and a published view for readers. A
//! mutation takes the cell's lock, applies the engine to a copy, persists the copy at the next
//! version, then publishes it and replies; a failed write leaves the cache as it was. Readers
//! (utilization, listings) take the published view and never wait for a commit. Pool creation
//! and deletion also hold the address space's index lock, since they change which subnets
//! exist; address requests only read the index. Lock order: index, then cell.
//!
//! Several replicas may share one store. A write names the version it replaces; when another
//! replica got there first, the store refuses it (`Conflict`), and the batch reloads the
//! subnet and applies its mutations again, a bounded number of times. A store that reports
//! other writers' changes ([`Store::subscribe`]) keeps the cache fresh between writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError, RwLock as SyncRwLock};

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::{Mutex, RwLock, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Capabilities, Error, Ipam, PoolState, Source, not_found};
use crate::engine::{
    self, AddressRequest, DefaultPool, GLOBAL_SPACE, LOCAL_SPACE, PoolId, PoolPlan, PoolRequest,
    PoolSet, Subnet, SubnetSpec,
};
use crate::store::{self, Change, Event, Store, SubnetLock, SubnetRecord};

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

/// The cache and its store, shared with the tasks that run batches and apply others' changes.
struct Ctx {
    store: Arc<dyn Store>,
    tenant: String,
    spaces: BTreeMap<String, SpaceCache>,
}

/// One address space: its default pools and its subnets.
struct SpaceCache {
    defaults: Vec<DefaultPool>,
    // Invariant: holds the subnets stored for this space and tenant as of the last commit or
    // change seen (another replica's changes arrive a moment later); pairwise disjoint.
    index: RwLock<BTreeMap<IpNet, Arc<Cell>>>,
}

/// One subnet of the cache.
struct Cell {
    // Mutations waiting for the next batch, in arrival order.
    pending: SyncMutex<Vec<Job>>,
    state: Mutex<CellState>,
    // Invariant: the subnet and version as last committed or loaded (the same as `state`'s
    // whenever the state lock is free).
    view: SyncRwLock<(Arc<Subnet>, u64)>,
}

struct CellState {
    // Invariant: `None` once the subnet was deleted; a request holding the cell from before
    // then gets `PoolNotFound`.
    subnet: Option<Arc<Subnet>>,
    version: u64,
    // Invariant: true while a store write is in flight or ended in an error, or when another
    // replica changed the subnet, so the stored version may differ from `version`; the next
    // writer reloads first.
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
            view: SyncRwLock::new((subnet, version)),
        }
    }

    fn view(&self) -> Arc<Subnet> {
        // Writers only swap the pointer; a poisoned lock still holds a committed subnet.
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner).0)
    }

    fn version(&self) -> u64 {
        self.view.read().unwrap_or_else(PoisonError::into_inner).1
    }

    fn publish(&self, subnet: Arc<Subnet>, version: u64) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = (subnet, version);
    }
}

/// One mutation of a subnet, waiting for its batch.
struct Job {
    // When its request reached the driver: the batch answering it ends within the store's
    // timeout of this.
    arrived: Instant,
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
    /// Applies the mutation to `subnet`; returns its outcome and whether anything changed,
    /// and adds the blocks whose bits it changed to `blocks`.
    fn apply(
        &self,
        id: &PoolId,
        subnet: &mut Subnet,
        blocks: &mut Vec<u128>,
    ) -> Result<(Outcome, bool), engine::Error> {
        let mut touched = |subnet: &Subnet, address: IpAddr| {
            if let Some(ordinal) = subnet.addrs().ordinal(address) {
                blocks.push(ordinal >> 6);
            }
        };
        match self {
            Self::Allocate(req) => {
                let address = subnet.allocate(id, req)?;
                touched(subnet, address);
                Ok((Outcome::Address(address), true))
            }
            Self::Release(address) => {
                let changed = subnet.release(id, *address)?;
                if changed {
                    touched(subnet, *address);
                }
                Ok((Outcome::Done, changed))
            }
            // Planned without the cell's lock: the same sub-pool may have joined meanwhile.
            Self::AddPool if subnet.has_pool(id.sub_pool()) => Err(engine::Error::Overlap {
                requested: id.to_string(),
                existing: id.to_string(),
            }),
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

/// Puts a subnet just read from the store into the index, unless it is cached already (that
/// cell is returned). Cached subnets overlapping it are no longer stored (a store refuses
/// overlaps), so they leave the index.
fn install_record(index: &mut BTreeMap<IpNet, Arc<Cell>>, record: SubnetRecord) -> Arc<Cell> {
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
fn install(cell: &Cell, state: &mut CellState, record: SubnetRecord) {
    let subnet = Arc::new(record.subnet);
    state.subnet = Some(Arc::clone(&subnet));
    state.version = record.version;
    cell.publish(subnet, record.version);
}

/// Keeps `e` if it says the store is unreachable.
fn unavailable(e: Error) -> Option<Error> {
    matches!(e, Error::Store(store::Error::Unavailable(_))).then_some(e)
}

/// The answer when other writers kept changing a subnet for [`MAX_ATTEMPTS`] tries.
fn too_many_races(space: &str, net: IpNet) -> Error {
    Error::Store(store::Error::Conflict {
        space: space.to_owned(),
        subnet: net.to_string(),
    })
}

/// Tells whether a store error means another writer got there first (reload and retry).
fn lost_race(e: &Error) -> bool {
    matches!(
        e,
        Error::Store(store::Error::Conflict { .. } | store::Error::NotFound { .. })
    )
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
            engine::pool::check_space_name(&name)?;
            spaces.insert(name, SpaceCache::new(pools));
        }
        for name in [LOCAL_SPACE, GLOBAL_SPACE] {
            spaces
                .entry(name.to_owned())
                .or_insert_with(|| SpaceCache::new(Vec::new()));
        }
        // Subscribed before loading, so nothing committed in between is missed.
        let events = store.subscribe().await;
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

    fn space(&self, name: &str) -> Result<&SpaceCache, Error> {
        self.ctx.spaces.get(name).ok_or_else(|| {
            Error::Engine(engine::Error::InvalidAddressSpace {
                name: engine::error::shown(name),
                reason: "no such address space",
            })
        })
    }

    /// Returns the cell of pool `id`'s subnet. One missing from the cache is looked up in the
    /// store before the answer is `PoolNotFound`: another replica may have created it a moment
    /// ago, before its announcement arrived.
    async fn cell(&self, id: &PoolId) -> Result<Arc<Cell>, Error> {
        let space = self
            .ctx
            .spaces
            .get(id.space())
            .ok_or_else(|| not_found(id))?;
        let cached = space.index.read().await.get(&id.subnet()).cloned();
        match cached {
            Some(cell) => Ok(cell),
            None => self
                .ctx
                .adopt_unlocked(space, id.space(), id.subnet())
                .await?
                .ok_or_else(|| not_found(id)),
        }
    }

    /// Queues a mutation of pool `id`'s subnet and waits for the batch that commits it.
    ///
    /// Concurrent mutations of one subnet are applied in arrival order to one copy and
    /// persisted in one transaction (group commit); each caller is answered only after that
    /// commit. The batch runs in a task of its own, so a caller that goes away cannot cut a
    /// commit short. The whole request, from `arrived`, is bounded by the store's timeout.
    async fn submit(&self, arrived: Instant, id: &PoolId, op: Op) -> Result<Outcome, Error> {
        let cell = self.ctx.bounded(arrived, self.cell(id)).await?;
        let (reply, answer) = oneshot::channel();
        cell.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Job {
                arrived,
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
            if jobs.is_empty() {
                return;
            }
            if let Some(down) = ctx.run_batch(&cell, &mut state, jobs).await {
                // The store is unreachable: the jobs that queued up meanwhile get the same
                // answer now, rather than waiting out another timeout in a batch of their own.
                let queued = std::mem::take(
                    &mut *cell.pending.lock().unwrap_or_else(PoisonError::into_inner),
                );
                for job in queued {
                    let _ = job.reply.send(Err(down.replicate()));
                }
            }
        });
        answer
            .await
            .map_err(|_| Error::Internal("a batch ended without answering".into()))?
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
        let mut subnet = Subnet::new(id.subnet());
        subnet.add_pool(id.sub_pool())?;
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
        let cache = self.space(space)?;
        let mut tried = String::new();
        let mut synced = false;
        for _ in 0..MAX_ATTEMPTS {
            let mut index = cache.index.write().await;
            let (id, plan) = match engine::plan_pool(space, &cache.defaults, &index, req) {
                // A refusal decided on the cache (overlap, no room): compare the space's
                // subnets with the store, which other replicas may have changed, and decide
                // again.
                Err(e) if !synced && e.kind() != engine::ErrorKind::Invalid => {
                    // The cached subnet the refusal rests on, if one does: only it needs
                    // checking; a refusal for want of room rests on them all.
                    let clash = match req.subnet {
                        SubnetSpec::Exact(net) if index.contains_key(&net) => Some(net),
                        SubnetSpec::Exact(net) => engine::overlapping(&index, net),
                        SubnetSpec::Dynamic { .. } => None,
                    };
                    drop(index);
                    match clash {
                        Some(net) => ctx.bounded(started, ctx.recheck(space, net)).await?,
                        None => ctx.bounded(started, ctx.sync(Some(space))).await?,
                    }
                    synced = true;
                    continue;
                }
                planned => planned?,
            };
            tried = id.subnet().to_string();
            match plan {
                PoolPlan::NewSubnet => {
                    if ctx.bounded(started, self.create(&mut index, &id)).await? {
                        return Ok(id);
                    }
                }
                PoolPlan::JoinSubnet => {
                    drop(index);
                    match self.submit(started, &id, Op::AddPool).await {
                        Ok(_) => return Ok(id),
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

    /// Deletes a pool; its subnet goes with its last pool.
    async fn remove_pool(&self, id: &PoolId) -> Result<(), Error> {
        let cache = self
            .ctx
            .spaces
            .get(id.space())
            .ok_or_else(|| not_found(id))?;
        let ctx = &self.ctx;
        let mut index = cache.index.write().await;
        let cached = index.get(&id.subnet()).cloned();
        let cell = match cached {
            Some(cell) => cell,
            None => ctx
                .adopt(&mut index, id.space(), id.subnet())
                .await?
                .ok_or_else(|| not_found(id))?,
        };
        let mut state = cell.state.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let read = ctx
                .refresh(id.space(), id.subnet(), &cell, &mut state)
                .await?;
            let Some(current) = state.subnet.clone() else {
                // Gone as of a read before this request, perhaps: it may be back since.
                if !read {
                    state.stale = true;
                    continue;
                }
                index.remove(&id.subnet());
                return Err(not_found(id));
            };
            if !current.has_pool(id.sub_pool()) {
                // A refusal decided on the cache: it stands if the cache is current.
                if ctx.confirm(id.space(), id.subnet(), state.version).await? {
                    return Err(not_found(id));
                }
                if attempt == MAX_ATTEMPTS {
                    return Err(too_many_races(id.space(), id.subnet()));
                }
                state.stale = true;
                continue;
            }
            let mut next = Subnet::clone(&current);
            let result = if next.remove_pool(id.sub_pool()) {
                state.stale = true;
                let deleted = ctx
                    .store
                    .delete_subnet(&ctx.tenant, id.space(), id.subnet(), state.version)
                    .await;
                deleted.map_err(Error::from).map(|()| {
                    state.subnet = None;
                    state.stale = false;
                    index.remove(&id.subnet());
                })
            } else {
                ctx.commit(id.space(), &cell, &mut state, (&current, next), &[], None)
                    .await
            };
            match result {
                Err(e) if lost_race(&e) && attempt < MAX_ATTEMPTS => {}
                result => return result,
            }
        }
    }
}

impl Drop for Builtin {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

impl Ctx {
    /// Takes subnet `net` into the index as stored, if it is stored (another replica created
    /// it) and not cached yet. A cached subnet overlapping it is no longer stored (a store
    /// refuses overlaps), so it leaves the index.
    async fn adopt(
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
    async fn adopt_unlocked(
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
    async fn confirm(&self, space: &str, net: IpNet, version: u64) -> Result<bool, Error> {
        Ok(self.store.version(&self.tenant, space, net).await? == Some(version))
    }

    /// Makes the cell current again when it may not be (an uncertain write, another
    /// replica's change): reloads it from the store and publishes what it found. Returns
    /// whether it read the store.
    async fn refresh(
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
    async fn lock(
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
    /// when given, and publishes it.
    async fn commit(
        &self,
        space: &str,
        cell: &Cell,
        state: &mut CellState,
        (before, next): (&Subnet, Subnet),
        blocks: &[u128],
        lock: Option<Box<dyn SubnetLock>>,
    ) -> Result<(), Error> {
        let version = state.version + 1;
        // Set before the write and cleared after it, so a write that fails or is cancelled
        // half-way forces a reload.
        state.stale = true;
        let change = Change {
            before,
            after: &next,
            blocks,
        };
        match lock {
            Some(lock) => lock.commit(&change, version).await?,
            None => {
                self.store
                    .update_subnet(&self.tenant, space, &change, version)
                    .await?;
            }
        }
        let next = Arc::new(next);
        state.subnet = Some(Arc::clone(&next));
        state.version = version;
        state.stale = false;
        cell.publish(next, version);
        Ok(())
    }

    /// Applies `jobs` in order to one copy of the subnet, commits it once, and answers each
    /// job: its own result, or, if the batch failed, the batch's error. The batch ends by the
    /// time the store's timeout has passed since its oldest job arrived, whatever it waited
    /// for before (another batch, another replica's change being loaded). Returns the error
    /// when the store was unavailable.
    async fn run_batch(
        self: &Arc<Self>,
        cell: &Cell,
        state: &mut CellState,
        jobs: Vec<Job>,
    ) -> Option<Error> {
        let first = jobs.first()?;
        let (space, net) = (first.id.space().to_owned(), first.id.subnet());
        let oldest = jobs.iter().map(|job| job.arrived).min()?;
        let decided = self
            .bounded(oldest, self.decide(&space, net, cell, state, &jobs))
            .await;
        if decided.is_err() {
            // Cut short, perhaps half-way through a write: reload before the next one.
            state.stale = true;
        }
        match decided {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
                None
            }
            Err(e) => {
                // Nothing of the batch was stored, and its refusals may have been decided on
                // a stale copy: every job gets the batch's error.
                for job in jobs {
                    let _ = job.reply.send(Err(e.replicate()));
                }
                unavailable(e)
            }
        }
    }

    /// Runs `op`, failing with `Unavailable` once the store's timeout has passed since
    /// `since` (a store without a timeout: no bound).
    async fn bounded<T>(
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

    /// Decides `jobs` on the subnet's current state: applies them in order to one copy and
    /// commits it once; a batch that changes nothing confirms the version it was decided on.
    /// When another replica changed the subnet first, reloads it and starts over. Returns
    /// each job's result, or the error that failed the whole batch.
    async fn decide(
        self: &Arc<Self>,
        space: &str,
        net: IpNet,
        cell: &Cell,
        state: &mut CellState,
        jobs: &[Job],
    ) -> Result<Vec<Result<Outcome, Error>>, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // After losing a race, lock the subnet in the store (where it can) so that this
            // try cannot lose: the replicas then take turns instead of retrying in a crowd.
            let lock = if attempt > 1 {
                self.lock(space, net, cell, state).await?
            } else {
                None
            };
            let read = lock.is_some() || self.refresh(space, net, cell, state).await?;
            let Some(current) = state.subnet.clone() else {
                // Gone as of a read before this request, perhaps: it may be back since.
                if !read {
                    state.stale = true;
                    continue;
                }
                // Deleted by another replica: drop it from the index too.
                let ctx = Arc::clone(self);
                let space = space.to_owned();
                tokio::spawn(async move {
                    if let Err(e) = ctx.catch_up(&space, net, 0, false).await {
                        tracing::warn!(space, subnet = %net, error = %e, "cannot drop a deleted subnet");
                    }
                });
                return Ok(jobs.iter().map(|job| Err(not_found(&job.id))).collect());
            };
            let mut next = Subnet::clone(&current);
            let mut changed = false;
            let mut blocks = Vec::new();
            let mut results = Vec::with_capacity(jobs.len());
            for job in jobs {
                let result = job
                    .op
                    .apply(&job.id, &mut next, &mut blocks)
                    .map(|(outcome, c)| {
                        changed |= c;
                        outcome
                    });
                results.push(result.map_err(Error::Engine));
            }
            if !changed {
                // Nothing to write, so no version check in a write: the answers (no-ops and
                // refusals) stand only if the subnet is still at the version they were
                // decided on, or were decided under the store's lock.
                if lock.is_some() || self.confirm(space, net, state.version).await? {
                    return Ok(results);
                }
                if attempt == MAX_ATTEMPTS {
                    return Err(too_many_races(space, net));
                }
                // Another replica moved on: reload and decide again.
                state.stale = true;
                continue;
            }
            match self
                .commit(space, cell, state, (&current, next), &blocks, lock)
                .await
            {
                Ok(()) => return Ok(results),
                // Another replica changed the subnet: reload (it is marked stale) and redo.
                Err(e) if lost_race(&e) && attempt < MAX_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies other writers' changes to the cache until the store stops reporting them, and
    /// compares every version now and then, in case an announcement never came (a writer
    /// that died between its commit and its announcement).
    async fn watch(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<Event>) {
        let mut every = tokio::time::interval(RESYNC_PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            let event = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
                _ = every.tick() => Event::Resync,
            };
            match event {
                Event::Changed {
                    tenant,
                    space,
                    subnet,
                    version,
                } if tenant == self.tenant => {
                    if let Err(e) = self.catch_up(&space, subnet, version, false).await {
                        // The next write of the subnet, or the next resync, reloads it.
                        tracing::warn!(space, %subnet, error = %e, "cannot load another replica's change");
                    }
                }
                Event::Changed { .. } => {}
                Event::Resync => self.resync().await,
            }
        }
    }

    /// Compares every cached version with the stored ones and catches up where they differ,
    /// retrying until the store answers.
    async fn resync(&self) {
        while let Err(e) = self.sync(None).await {
            tracing::warn!(error = %e, "cannot compare the cache with the store; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Compares one cached subnet's version with the stored one, and catches up if they
    /// differ.
    async fn recheck(&self, space: &str, net: IpNet) -> Result<(), Error> {
        let stored = self.store.version(&self.tenant, space, net).await?;
        let cached = match self.spaces.get(space) {
            Some(cache) => cache
                .index
                .read()
                .await
                .get(&net)
                .map(|cell| cell.version()),
            None => None,
        };
        if stored != cached {
            self.catch_up(space, net, stored.unwrap_or(0), true).await?;
        }
        Ok(())
    }

    /// Compares the cached versions of one address space's subnets (of every space, when
    /// `only` is `None`) with the stored ones, and catches up where they differ.
    async fn sync(&self, only: Option<&str>) -> Result<(), Error> {
        let wanted = |space: &str| only.is_none_or(|o| o == space);
        let stored = self.store.versions(&self.tenant).await?;
        let mut seen = BTreeSet::new();
        for (space, net, version) in stored {
            if wanted(&space) {
                // Exactly, though versions only grow (a subnet created again continues after the
                // deleted one's last version): a cached version past the stored one is wrong.
                self.catch_up(&space, net, version, true).await?;
                seen.insert((space, net));
            }
        }
        for (name, cache) in self.spaces.iter().filter(|(name, _)| wanted(name)) {
            let cached: Vec<IpNet> = cache.index.read().await.keys().copied().collect();
            for net in cached {
                if !seen.contains(&(name.clone(), net)) {
                    self.catch_up(name, net, 0, false).await?;
                }
            }
        }
        Ok(())
    }

    /// Brings one subnet of the cache up to `version` (0: deleted), as another writer
    /// stored it; a cached version past it is kept unless `exact`.
    async fn catch_up(
        &self,
        space: &str,
        net: IpNet,
        version: u64,
        exact: bool,
    ) -> Result<(), Error> {
        let current = |cached: u64| {
            if exact {
                cached == version
            } else {
                cached >= version
            }
        };
        let Some(cache) = self.spaces.get(space) else {
            tracing::debug!(
                space,
                "ignoring a change in an address space not configured here"
            );
            return Ok(());
        };
        let cell = cache.index.read().await.get(&net).cloned();
        match cell {
            Some(cell) if version > 0 && current(cell.version()) => Ok(()),
            Some(cell) if version > 0 => {
                let mut state = cell.state.lock().await;
                if !current(state.version) {
                    state.stale = true;
                }
                let refreshed = self.refresh(space, net, &cell, &mut state).await;
                let gone = state.subnet.is_none();
                drop(state);
                if gone {
                    Box::pin(self.catch_up(space, net, 0, false)).await?;
                }
                refreshed.map(|_| ())
            }
            Some(_) => {
                // Deleted elsewhere: drop it unless it came back (index, then cell lock).
                let mut index = cache.index.write().await;
                match index.get(&net).cloned() {
                    Some(cell) => {
                        let mut state = cell.state.lock().await;
                        state.stale = true;
                        self.refresh(space, net, &cell, &mut state).await?;
                        if state.subnet.is_none() {
                            index.remove(&net);
                        }
                        Ok(())
                    }
                    None => Ok(()),
                }
            }
            None if version > 0 => self.adopt_unlocked(cache, space, net).await.map(|_| ()),
            None => Ok(()),
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
    fn name(&self) -> &str {
        "builtin"
    }

    fn default_address_spaces(&self) -> (String, String) {
        (LOCAL_SPACE.to_owned(), GLOBAL_SPACE.to_owned())
    }

    fn capabilities(&self) -> Capabilities {
        // Every acknowledged allocation is persisted: nothing to replay after a restart.
        Capabilities::default()
    }

    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error> {
        self.plan_and_create(space, req, Instant::now()).await
    }

    async fn release_pool(&self, id: &PoolId) -> Result<(), Error> {
        let started = Instant::now();
        self.ctx.bounded(started, self.remove_pool(id)).await
    }

    async fn list_pools(&self, space: Option<&str>) -> Result<Vec<PoolId>, Error> {
        let names: Vec<&str> = match space {
            Some(name) => {
                self.space(name)?;
                vec![name]
            }
            None => self.ctx.spaces.keys().map(String::as_str).collect(),
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
        let Outcome::Address(address) = self.submit(Instant::now(), id, Op::Allocate(*req)).await?
        else {
            return Err(Error::Internal("an allocation answered no address".into()));
        };
        IpNet::new(address, id.subnet().prefix_len()).map_err(|e| Error::Internal(e.to_string()))
    }

    async fn release_address(&self, id: &PoolId, address: IpAddr) -> Result<(), Error> {
        self.submit(Instant::now(), id, Op::Release(address))
            .await
            .map(|_| ())
    }

    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error> {
        let state = |id: &PoolId, subnet: &Subnet| PoolState {
            id: id.clone(),
            driver: self.name().to_owned(),
            source: Source::Driver,
            utilization: Ok(subnet.utilization(id.sub_pool())),
        };
        let mut out = Vec::with_capacity(ids.len());
        if ids.is_empty() {
            // Every pool, as each subnet's published view has it: a pool released meanwhile
            // is simply not reported.
            for (name, cache) in &self.ctx.spaces {
                let cells: Vec<Arc<Cell>> = cache.index.read().await.values().cloned().collect();
                for cell in cells {
                    let subnet = cell.view();
                    for sub_pool in subnet.pools() {
                        out.push(state(&PoolId::new(name, subnet.net(), sub_pool)?, &subnet));
                    }
                }
            }
            return Ok(out);
        }
        for id in ids {
            let mut subnet = self.cell(id).await?.view();
            if !subnet.has_pool(id.sub_pool()) {
                // A sub-pool another replica added a moment ago: ask the store before
                // NOT_FOUND, as for a subnet missing from the cache.
                let recheck = self.ctx.recheck(id.space(), id.subnet());
                self.ctx.bounded(Instant::now(), recheck).await?;
                subnet = self.cell(id).await?.view();
                if !subnet.has_pool(id.sub_pool()) {
                    return Err(not_found(id));
                }
            }
            out.push(state(id, &subnet));
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
            b.release_address(&id, address).await.unwrap();
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
        a.release_address(&id, "10.52.0.7".parse().unwrap())
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
        let states = b.utilization(std::slice::from_ref(&sub)).await;
        assert_eq!(states.expect("found in the store").len(), 1);
    }

    #[tokio::test]
    async fn every_pool_state_follows_pools_created_and_released() {
        let (a, _, _) = pair().await;
        let id = a
            .request_pool("local", &exact("10.54.0.0/24"))
            .await
            .unwrap();
        assert_eq!(a.utilization(&[]).await.unwrap().len(), 1);
        a.release_pool(&id).await.unwrap();
        assert!(a.utilization(&[]).await.unwrap().is_empty());
    }
}
