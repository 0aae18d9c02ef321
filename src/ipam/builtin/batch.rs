//! Group commit: the mutations of one subnet that queue up together are applied in arrival
//! order to one copy of it and persisted in one write, and each caller is answered only after
//! that write. Pool removal is such a mutation too: a batch that leaves the subnet without
//! pools deletes it. One retry loop serves them all: when another replica changed the subnet
//! first, the batch reloads it and decides again.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError};

use ipnet::IpNet;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::cache::{Cell, CellState, Ctx};
use super::{Error, MAX_ATTEMPTS};
use crate::engine::owners::Owner;
use crate::engine::{self, AddressRequest, PoolId, Subnet};
use crate::ipam::not_found;
use crate::store::{self, Change, SubnetLock};

/// One mutation of a subnet and its caller, waiting for its batch.
pub(super) struct Job {
    // When its request reached the driver: the batch answering it ends within the store's
    // timeout of this.
    arrived: Instant,
    id: PoolId,
    op: Op,
}

/// The mutations a batch applies, each with its caller's typed answer.
pub(super) enum Op {
    Allocate(AddressRequest, Answer<IpAddr>),
    Release(IpAddr, Option<Owner>, Answer<()>),
    AddPool(Answer<()>),
    RemovePool(Answer<()>),
}

/// Where a job's caller waits, and the job's own result once its batch decided it.
pub(super) struct Answer<T> {
    reply: oneshot::Sender<Result<T, Error>>,
    decided: Option<Result<T, Error>>,
}

impl<T> Answer<T> {
    fn new(reply: oneshot::Sender<Result<T, Error>>) -> Self {
        Self {
            reply,
            decided: None,
        }
    }

    /// Keeps the job's result, until its batch is committed.
    fn keep(&mut self, result: Result<T, Error>) {
        self.decided = Some(result);
    }

    /// Answers the caller: the job's own result, or the error that failed its batch.
    fn send(self, failed: Option<&Error>) {
        let result = match failed {
            Some(e) => Err(e.clone()),
            None => self
                .decided
                .unwrap_or_else(|| Err(Error::Internal("a batch left a job undecided".into()))),
        };
        let _ = self.reply.send(result);
    }
}

impl Job {
    /// Applies the job to `subnet` and keeps its result; returns whether the subnet changed,
    /// and adds the blocks whose bits changed to `blocks`.
    fn apply(&mut self, subnet: &mut Subnet, blocks: &mut Vec<u128>) -> bool {
        let id = &self.id;
        let mut touched = |subnet: &Subnet, address: IpAddr| {
            if let Some(ordinal) = subnet.addrs().ordinal(address) {
                blocks.push(engine::block_of(ordinal));
            }
        };
        match &mut self.op {
            Op::Allocate(req, answer) => {
                let result = subnet.request(id, req);
                // An owner's address given back changes nothing.
                let changed = matches!(result, Ok(a) if a.fresh);
                if let Ok(a) = result
                    && a.fresh
                {
                    touched(subnet, a.address);
                }
                answer.keep(result.map(|a| a.address).map_err(Error::Engine));
                changed
            }
            Op::Release(address, owner, answer) => {
                let result = subnet.release_by(id, *address, owner.as_ref());
                let changed = result == Ok(true);
                if changed {
                    touched(subnet, *address);
                }
                answer.keep(result.map(|_| ()).map_err(Error::Engine));
                changed
            }
            Op::AddPool(answer) => {
                let result = subnet.add_pool(id);
                let changed = result.is_ok();
                answer.keep(result.map_err(Error::Engine));
                changed
            }
            Op::RemovePool(answer) => {
                let result = subnet.remove_pool(id);
                let changed = result.is_ok();
                answer.keep(result.map_err(Error::Engine));
                changed
            }
        }
    }

    /// Refuses the job without applying it.
    fn refuse(&mut self, e: Error) {
        match &mut self.op {
            Op::Allocate(_, answer) => answer.keep(Err(e)),
            Op::Release(_, _, answer) | Op::AddPool(answer) | Op::RemovePool(answer) => {
                answer.keep(Err(e));
            }
        }
    }

    /// Answers the caller: the job's own result, or the error that failed its batch.
    fn answer(self, failed: Option<&Error>) {
        match self.op {
            Op::Allocate(_, answer) => answer.send(failed),
            Op::Release(_, _, answer) | Op::AddPool(answer) | Op::RemovePool(answer) => {
                answer.send(failed);
            }
        }
    }
}

/// Tells whether `e` says the store is unreachable.
fn unavailable(e: &Error) -> bool {
    matches!(e, Error::Store(store::Error::Unavailable(_)))
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

impl Ctx {
    /// Queues a mutation of pool `id`'s subnet and waits for the batch that commits it.
    ///
    /// Concurrent mutations of one subnet are applied in arrival order to one copy and
    /// persisted in one transaction (group commit); each caller is answered only after that
    /// commit. The batch runs in a task of its own, so a caller that goes away cannot cut a
    /// commit short. The whole request, from `arrived`, is bounded by the store's timeout.
    pub(super) async fn submit<T>(
        self: &Arc<Self>,
        arrived: Instant,
        id: &PoolId,
        op: impl FnOnce(Answer<T>) -> Op,
    ) -> Result<T, Error> {
        let cell = self.bounded(arrived, self.cell(id)).await?;
        let (reply, answer) = oneshot::channel();
        cell.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Job {
                arrived,
                id: id.clone(),
                op: op(Answer::new(reply)),
            });
        tokio::spawn(Arc::clone(self).run_batch(cell));
        answer
            .await
            .map_err(|_| Error::Internal("a batch ended without answering".into()))?
    }

    /// Runs the jobs waiting on `cell` (none when an earlier batch took them) as one batch,
    /// then answers each: its own result, or, if the batch failed, the batch's error. The
    /// batch ends by the time the store's timeout has passed since its oldest job arrived,
    /// whatever it waited for before (another batch, another replica's change being loaded).
    async fn run_batch(self: Arc<Self>, cell: Arc<Cell>) {
        let mut state = cell.state.lock().await;
        let queued = || {
            !cell
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        };
        if !queued() {
            return;
        }
        // Decide as late as the store's group commit allows: the jobs that arrive while it
        // commits other subnets join this batch instead of waiting for the next.
        self.store.next_turn().await;
        let mut jobs =
            std::mem::take(&mut *cell.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let (Some(first), Some(oldest)) = (jobs.first(), jobs.iter().map(|job| job.arrived).min())
        else {
            return;
        };
        let (space, net) = (first.id.space().to_owned(), first.id.subnet());
        let decided = self
            .bounded(
                oldest,
                self.decide(&space, net, &cell, &mut state, &mut jobs),
            )
            .await;
        let failed = decided.err();
        if failed.is_some() {
            // Cut short, perhaps half-way through a write: reload before the next one.
            state.stale = true;
        }
        if failed.as_ref().is_some_and(unavailable) {
            // The store is unreachable: the jobs that queued up meanwhile get the same answer
            // now, rather than waiting out another timeout in a batch of their own.
            jobs.append(&mut cell.pending.lock().unwrap_or_else(PoisonError::into_inner));
        }
        // Nothing of a failed batch was stored, and its refusals may have been decided on a
        // stale copy: every job gets the batch's error.
        let answer = |jobs: Vec<Job>| {
            for job in jobs {
                job.answer(failed.as_ref());
            }
        };
        if state.subnet.is_some() {
            // Answered under the lock: callers that go on queue their next jobs meanwhile,
            // and the next batch takes them all.
            answer(jobs);
            return;
        }
        // Deleted: out of the index before anyone hears so (lock order: index, then cell).
        drop(state);
        self.forget(&space, net, &cell).await;
        answer(jobs);
    }

    /// Decides `jobs` on the subnet's current state: applies them in order to one copy and
    /// writes it once (deletes the subnet when its last pool went); a batch that changes
    /// nothing confirms the version it was decided on. When another replica changed the
    /// subnet first, reloads it and starts over. Each job keeps its own result; an error
    /// returned fails the whole batch.
    async fn decide(
        &self,
        space: &str,
        net: IpNet,
        cell: &Cell,
        state: &mut CellState,
        jobs: &mut [Job],
    ) -> Result<(), Error> {
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
                // Deleted by another replica (the cell then leaves the index).
                for job in jobs.iter_mut() {
                    let gone = not_found(&job.id);
                    job.refuse(gone);
                }
                return Ok(());
            };
            let mut next = Subnet::clone(&current);
            let mut changed = false;
            let mut blocks = Vec::new();
            for job in jobs.iter_mut() {
                changed |= job.apply(&mut next, &mut blocks);
            }
            if !changed {
                // Nothing to write, so no version check in a write: the answers (no-ops and
                // refusals) stand only if the subnet is still at the version they were
                // decided on, or were decided under the store's lock.
                if lock.is_some() || self.confirm(space, net, state.version).await? {
                    return Ok(());
                }
                if attempt == MAX_ATTEMPTS {
                    return Err(too_many_races(space, net));
                }
                // Another replica moved on: reload and decide again.
                state.stale = true;
                continue;
            }
            let written = if next.is_deleted() {
                drop(lock);
                self.delete(space, net, cell, state, next).await
            } else {
                let change = Change {
                    before: &current,
                    after: &next,
                    blocks: &blocks,
                };
                self.commit(space, state, &change, lock).await.map(|()| {
                    let next = Arc::new(next);
                    state.subnet = Some(Arc::clone(&next));
                    cell.publish(next, state.version);
                })
            };
            match written {
                Ok(()) => return Ok(()),
                // Another replica changed the subnet: reload (it is marked stale) and redo.
                Err(e) if lost_race(&e) && attempt < MAX_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Persists `change` as the cell's next version, under `lock` when given.
    async fn commit(
        &self,
        space: &str,
        state: &mut CellState,
        change: &Change<'_>,
        lock: Option<Box<dyn SubnetLock>>,
    ) -> Result<(), Error> {
        let version = state.version + 1;
        // Set before the write and cleared after it, so a write that fails or is cancelled
        // half-way forces a reload.
        state.stale = true;
        match lock {
            Some(lock) => lock.commit(change, version).await?,
            None => {
                self.store
                    .update_subnet(&self.tenant, space, change, version)
                    .await?;
            }
        }
        state.version = version;
        state.stale = false;
        Ok(())
    }

    /// Deletes the cell's subnet, which lost its last pool (`gone`), if still stored at the
    /// cached version, and publishes it without pools, so readers see none until the cell
    /// leaves the index.
    async fn delete(
        &self,
        space: &str,
        net: IpNet,
        cell: &Cell,
        state: &mut CellState,
        gone: Subnet,
    ) -> Result<(), Error> {
        state.stale = true;
        self.store
            .delete_subnet(&self.tenant, space, net, state.version)
            .await?;
        state.subnet = None;
        state.stale = false;
        cell.publish(Arc::new(gone), state.version);
        Ok(())
    }
}
