//! Group commit across subnets: the writes of different subnets (of one tenant or of several)
//! that queue up while the store is busy go to the database together, in one transaction, each
//! still checked against its own version. The driver already gathers the mutations of one
//! subnet into one write; this gathers those writes, so that many subnets share one commit (one
//! fsync) instead of paying one each.
//!
//! A writer takes whatever waits (up to [`MAX_BATCH`], within the store's budget) and writes
//! it; what arrives meanwhile waits for the next transaction. A store may run several writers,
//! which then take turns at the queue. A write whose version no longer
//! matches (another replica got there first) is reported as such and changes nothing, while
//! the others of its transaction commit; the caller reloads and retries that one subnet. A
//! transaction that fails for another reason is retried one write at a time, so one bad write
//! fails only its own caller. Each caller is answered after the commit holding its write.

use std::sync::Arc;

use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use super::Error;

/// The most writes one transaction carries.
pub(super) const MAX_BATCH: usize = 64;

/// A store's writes of subnets, one at a time or several in one transaction.
#[async_trait]
pub(super) trait Writes: Send + Sync + 'static {
    /// One subnet's change, owned, so that it can wait in the queue.
    type Write: Send + Sync + 'static;

    /// Writes `writes` (at least two, each of a different subnet) in one transaction; for each,
    /// whether its version matched (`false`: it changed nothing). An error: nothing committed.
    async fn write_batch(&self, writes: &[&Self::Write]) -> Result<Vec<bool>, Error>;

    /// Writes one alone; whether its version matched.
    async fn write_one(&self, write: &Self::Write) -> Result<bool, Error>;

    /// The most a transaction's writes may weigh together (besides [`MAX_BATCH`]).
    const BUDGET: usize = usize::MAX;

    /// How much of [`Writes::BUDGET`] `write` takes.
    fn weight(_write: &Self::Write) -> usize {
        0
    }
}

/// A write waiting for its transaction, and where its caller waits.
struct Queued<W> {
    write: W,
    reply: oneshot::Sender<Result<bool, Error>>,
}

/// The queue of a store's subnet writes, and the tasks that commit them.
pub(super) struct Group<W> {
    queue: mpsc::UnboundedSender<Queued<W>>,
    turns: Arc<Turns>,
}

/// Whether a transaction is in flight, and who waits for it to end (see [`Group::turn`]).
#[derive(Default)]
struct Turns {
    busy: AtomicBool,
    // Writers waiting for the transaction in flight to end.
    waiting: AtomicUsize,
    ended: Notify,
}

/// How many times a writer yields, waiting for the writes of those its transaction kept
/// waiting, before it commits without them.
const GATHER_YIELDS: usize = 32;

impl<W> std::fmt::Debug for Group<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

impl<W: Send + Sync + 'static> Group<W> {
    /// Starts `writers` tasks that commit what is queued, through `store`. They stop when the
    /// group is dropped, once the queue is empty.
    pub(super) fn start<S: Writes<Write = W>>(store: S, writers: usize) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let store = Arc::new(store);
        let turns = Arc::new(Turns::default());
        for _ in 0..writers.max(1) {
            tokio::spawn(commit_queued(
                Arc::clone(&store),
                Arc::clone(&rx),
                Arc::clone(&turns),
            ));
        }
        Self { queue, turns }
    }

    /// Whether a transaction is in flight.
    #[cfg(test)]
    pub(super) fn busy(&self) -> bool {
        self.turns.busy.load(Ordering::Acquire)
    }

    /// Waits until no transaction is in flight. A subnet's batch waits here before it decides,
    /// so that it carries the jobs that arrived while the store committed others: more
    /// allocations per subnet write when many subnets are busy at once. At once when the store
    /// is idle, so a lone request waits for nothing.
    pub(super) async fn turn(&self) {
        let turns = &self.turns;
        let ended = turns.ended.notified();
        tokio::pin!(ended);
        // Registered before the check, so that the end of the transaction cannot be missed.
        ended.as_mut().enable();
        if !turns.busy.load(Ordering::Acquire) {
            return;
        }
        turns.waiting.fetch_add(1, Ordering::AcqRel);
        ended.await;
    }

    /// Queues `write` and waits for the transaction that holds it: whether its version
    /// matched, or the error that failed it.
    pub(super) async fn write(&self, write: W) -> Result<bool, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued { write, reply })
            .map_err(|_| Error::Internal("the store's writers have stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("a store writer ended without answering".into()))?
    }
}

/// One writer: takes whatever is queued as one batch (within [`MAX_BATCH`] and the store's
/// budget), commits it and answers its callers, until the queue is closed.
async fn commit_queued<S: Writes>(
    store: Arc<S>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Queued<S::Write>>>>,
    turns: Arc<Turns>,
) {
    // A write that did not fit in the last batch: the first of the next.
    let mut carried = None;
    // Writers the last transaction kept waiting: their writes are worth a moment's wait.
    let mut expected = 0;
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let first = match carried.take() {
                Some(first) => first,
                None => match rx.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let mut weight = S::weight(&first.write);
            let mut batch = vec![first];
            let mut yields = 0;
            while batch.len() < MAX_BATCH {
                let queued = match rx.try_recv() {
                    Ok(queued) => queued,
                    Err(_) if batch.len() < expected && yields < GATHER_YIELDS => {
                        yields += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Err(_) => break,
                };
                weight = weight.saturating_add(S::weight(&queued.write));
                if weight > S::BUDGET {
                    carried = Some(queued);
                    break;
                }
                batch.push(queued);
            }
            batch
        };
        turns.busy.store(true, Ordering::Release);
        // In a task of its own: a panic while writing fails only this batch's callers (their
        // replies are dropped, which they see as an error), and this writer goes on.
        let writing = Arc::clone(&store);
        let _ = tokio::spawn(async move { commit(writing.as_ref(), batch).await }).await;
        expected = turns.waiting.swap(0, Ordering::AcqRel);
        turns.busy.store(false, Ordering::Release);
        turns.ended.notify_waiters();
    }
}

/// Commits `batch` and answers each of its callers.
async fn commit<S: Writes>(store: &S, batch: Vec<Queued<S::Write>>) {
    if let [one] = batch.as_slice() {
        let result = store.write_one(&one.write).await;
        for queued in batch {
            let _ = queued.reply.send(result.clone());
        }
        return;
    }
    let writes: Vec<&S::Write> = batch.iter().map(|q| &q.write).collect();
    match store.write_batch(&writes).await {
        Ok(matched) if matched.len() == batch.len() => {
            for (queued, matched) in batch.into_iter().zip(matched) {
                let _ = queued.reply.send(Ok(matched));
            }
        }
        Ok(_) => {
            let e = Error::Internal("a batch answered for a different number of writes".into());
            for queued in batch {
                let _ = queued.reply.send(Err(e.clone()));
            }
        }
        // The database is out of reach: each write alone would only wait out the same timeout.
        Err(e @ Error::Unavailable(_)) => {
            for queued in batch {
                let _ = queued.reply.send(Err(e.clone()));
            }
        }
        // One write may have failed the transaction: each alone, so it fails only its own.
        Err(_) => {
            for queued in batch {
                let result = store.write_one(&queued.write).await;
                let _ = queued.reply.send(result);
            }
        }
    }
}
