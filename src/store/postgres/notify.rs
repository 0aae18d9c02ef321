//! Announcing changes to the other replicas (`NOTIFY`) and hearing theirs (`LISTEN`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{broadcast, mpsc};

use crate::store::Event;

/// The channel every change is announced on; the payload is JSON (see [`notice`]).
pub(super) const CHANNEL: &str = "allot_subnets";

/// How long to wait before reconnecting the listener after losing it.
const RELISTEN_DELAY: Duration = Duration::from_millis(250);

/// What a `NOTIFY` on [`CHANNEL`] carries.
pub(super) fn notice(tenant: &str, space: &str, subnet: IpNet, version: u64) -> String {
    serde_json::json!({
        "tenant": tenant,
        "space": space,
        "subnet": subnet.to_string(),
        "version": version,
    })
    .to_string()
}

/// What a `NOTIFY` on [`CHANNEL`] carries when a tenant's directory entries changed.
pub(super) fn directory_notice(tenant: &str) -> String {
    serde_json::json!({ "tenant": tenant, "directory": true }).to_string()
}

pub(super) fn parse_notice(payload: &str) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    if v.get("directory").is_some() {
        return Some(Event::Directory {
            tenant: v.get("tenant")?.as_str()?.to_owned(),
        });
    }
    Some(Event::Changed {
        tenant: v.get("tenant")?.as_str()?.to_owned(),
        space: v.get("space")?.as_str()?.to_owned(),
        subnet: v.get("subnet")?.as_str()?.parse().ok()?,
        version: v.get("version")?.as_u64()?,
    })
}

/// Events one subscriber has not taken yet before it counts as lagging (and gets `Resync`).
const BACKLOG: usize = 4096;

/// Every driver of a process that shares a store hears its changes from one `LISTEN`
/// connection: the first subscriber starts it, later ones join it, and it stops when the last
/// one is gone (the next subscriber starts it again).
#[derive(Debug, Default)]
pub(super) struct Fanout {
    // Invariant: `Some` exactly while a listener task runs for the channel; the task sets it
    // back to `None`, under this lock, when it finds no receiver left and stops.
    listening: Mutex<Option<broadcast::Sender<Event>>>,
}

impl Fanout {
    fn lock(&self) -> MutexGuard<'_, Option<broadcast::Sender<Event>>> {
        self.listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes to the changes announced on [`CHANNEL`], listening on the pool `connect`
    /// makes (of one connection) if nobody is yet. A subscriber that falls [`BACKLOG`] events
    /// behind gets `Resync` in their place.
    pub(super) fn subscribe(
        self: &Arc<Self>,
        connect: impl FnOnce() -> PgPool,
    ) -> mpsc::UnboundedReceiver<Event> {
        let mut events = {
            let mut listening = self.lock();
            match listening.as_ref() {
                Some(sender) => sender.subscribe(),
                None => {
                    let (sender, events) = broadcast::channel(BACKLOG);
                    tokio::spawn(listen(connect(), sender.clone(), Arc::clone(self)));
                    *listening = Some(sender);
                    events
                }
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = tx.closed() => return,
                    event = events.recv() => match event {
                        Ok(event) => event,
                        Err(broadcast::error::RecvError::Lagged(_)) => Event::Resync,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Tells the listener of `tx` whether to stop: yes when no receiver is left, and then no
    /// later subscriber joins it (it starts a listener of its own).
    fn retire(&self, tx: &broadcast::Sender<Event>) -> bool {
        let mut listening = self.lock();
        if tx.receiver_count() > 0 {
            return false;
        }
        if listening.as_ref().is_some_and(|s| s.same_channel(tx)) {
            *listening = None;
        }
        true
    }
}

/// Forwards every change announced on [`CHANNEL`] to `tx` until its receivers are all gone.
/// After each (re)connection it sends `Resync` first: anything announced while it was not
/// listening is lost.
async fn listen(pool: PgPool, tx: broadcast::Sender<Event>, fanout: Arc<Fanout>) {
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = tx.closed() => {
                if fanout.retire(&tx) {
                    return;
                }
                continue;
            }
            listener = listener => match listener {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for changes of other replicas; retrying");
                    tokio::time::sleep(RELISTEN_DELAY).await;
                    continue;
                }
            },
        };
        if tx.send(Event::Resync).is_err() && fanout.retire(&tx) {
            return;
        }
        loop {
            let next = tokio::select! {
                () = tx.closed() => {
                    if fanout.retire(&tx) {
                        return;
                    }
                    continue;
                }
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(n)) => match parse_notice(n.payload()) {
                    Some(event) => {
                        // Sent to nobody: the last receiver left, or joined a moment ago.
                        if tx.send(event).is_err() && fanout.retire(&tx) {
                            return;
                        }
                    }
                    None => tracing::warn!(payload = n.payload(), "ignoring a malformed notice"),
                },
                Ok(None) => {
                    tracing::warn!(
                        "lost the connection listening for other replicas; reconnecting"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for other replicas failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(RELISTEN_DELAY).await;
    }
}
