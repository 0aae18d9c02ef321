//! Following a store's announcements: a task that applies each event to an owner it holds
//! weakly, and stops when the owner is dropped or the store stops reporting.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use super::Event;

/// The task following a store for its owner; aborted when dropped (with its owner).
#[derive(Debug, Default)]
pub struct Follower(Mutex<Option<JoinHandle<()>>>);

impl Follower {
    /// Applies each event of `events` to `owner` with `apply`, for as long as `owner` lives.
    pub fn start<T, F, Fut>(&self, owner: &Arc<T>, mut events: UnboundedReceiver<Event>, apply: F)
    where
        T: Send + Sync + 'static,
        F: Fn(Arc<T>, Event) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let owner = Arc::downgrade(owner);
        let task = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                apply(owner, event).await;
            }
        });
        let old = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(task) = self.0.get_mut().unwrap_or_else(PoisonError::into_inner) {
            task.abort();
        }
    }
}
