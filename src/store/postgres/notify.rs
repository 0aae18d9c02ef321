//! Announcing changes to the other replicas (`NOTIFY`) and hearing theirs (`LISTEN`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

use crate::store::{Event, Interest};

/// The channel every change is announced on; the payload is JSON (see [`notice`]).
pub(super) const CHANNEL: &str = "allot_subnets";

/// How long to wait before reconnecting the listener after losing it.
const RELISTEN_DELAY: Duration = Duration::from_millis(250);

/// The most a notification's payload holds (PostgreSQL refuses 8,000 bytes and more).
pub(super) const MAX_PAYLOAD: usize = 7_900;

/// What a `NOTIFY` on [`CHANNEL`] carries for one change; a transaction that changed several
/// subnets sends them as one JSON array.
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

/// The events a notification's payload announces: one notice, or an array of them.
pub(super) fn parse_notices(payload: &str) -> Option<Vec<Event>> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    match v {
        serde_json::Value::Array(notices) => notices.iter().map(parse_notice).collect(),
        one => Some(vec![parse_notice(&one)?]),
    }
}

fn parse_notice(v: &serde_json::Value) -> Option<Event> {
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

/// How often an idle listener checks whether its subscribers are all gone.
const IDLE_CHECK: Duration = Duration::from_secs(1);

type Tx = mpsc::UnboundedSender<Event>;

/// Who hears what: each tenant's subscribers hear that tenant's subnet changes, the directory's
/// hear directory changes, and all hear `Resync`. So a change wakes the one driver it concerns,
/// however many tenants a process serves.
#[derive(Debug, Default)]
struct Routes {
    tenants: HashMap<String, Vec<Tx>>,
    directory: Vec<Tx>,
}

impl Routes {
    fn add(&mut self, interest: &Interest, tx: Tx) {
        match interest {
            Interest::Tenant(t) => self.tenants.entry(t.clone()).or_default().push(tx),
            Interest::Directory => self.directory.push(tx),
        }
    }

    /// Sends `event` to whoever hears it, forgetting subscribers that are gone.
    fn deliver(&mut self, event: &Event) {
        let send = |list: &mut Vec<Tx>| list.retain(|tx| tx.send(event.clone()).is_ok());
        match event {
            Event::Changed { tenant, .. } => {
                if let Some(list) = self.tenants.get_mut(tenant) {
                    send(list);
                    if list.is_empty() {
                        self.tenants.remove(tenant);
                    }
                }
            }
            Event::Directory { .. } => send(&mut self.directory),
            Event::Resync => {
                self.tenants.values_mut().for_each(send);
                self.tenants.retain(|_, list| !list.is_empty());
                send(&mut self.directory);
            }
        }
    }

    /// Forgets subscribers that are gone; tells whether none is left.
    fn prune(&mut self) -> bool {
        let open = |list: &mut Vec<Tx>| list.retain(|tx| !tx.is_closed());
        self.tenants.values_mut().for_each(open);
        self.tenants.retain(|_, list| !list.is_empty());
        open(&mut self.directory);
        self.tenants.is_empty() && self.directory.is_empty()
    }
}

/// Every driver of a process that shares a store hears its changes from one `LISTEN`
/// connection: the first subscriber starts it, later ones join it, and it stops when the last
/// one is gone (the next subscriber starts it again).
#[derive(Debug, Default)]
pub(super) struct Fanout {
    // Invariant: `Some` exactly while a listener task runs; the task sets it back to `None`,
    // under this lock, when it finds no subscriber left and stops.
    listening: Mutex<Option<Routes>>,
}

impl Fanout {
    fn lock(&self) -> MutexGuard<'_, Option<Routes>> {
        self.listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes to the changes announced on [`CHANNEL`] that `interest` names, listening on
    /// the pool `connect` makes (of one connection) if nobody is yet.
    pub(super) fn subscribe(
        self: &Arc<Self>,
        interest: &Interest,
        connect: impl FnOnce() -> PgPool,
    ) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut listening = self.lock();
        let start = listening.is_none();
        listening
            .get_or_insert_with(Routes::default)
            .add(interest, tx);
        if start {
            tokio::spawn(listen(connect(), Arc::clone(self)));
        }
        rx
    }

    /// Delivers `event`; tells whether the listener is to go on (false, and then no later
    /// subscriber joins it, when none is left).
    fn deliver(&self, event: Option<&Event>) -> bool {
        let mut listening = self.lock();
        let Some(routes) = listening.as_mut() else {
            return false;
        };
        if let Some(event) = event {
            routes.deliver(event);
        }
        if routes.prune() {
            *listening = None;
            return false;
        }
        true
    }
}

/// Forwards every change announced on [`CHANNEL`] to the subscribers of `fanout` until none is
/// left. After each (re)connection it sends `Resync` first: anything announced while it was not
/// listening is lost.
async fn listen(pool: PgPool, fanout: Arc<Fanout>) {
    let mut idle = tokio::time::interval(IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = idle.tick() => {
                if !fanout.deliver(None) {
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
        if !fanout.deliver(Some(&Event::Resync)) {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = idle.tick() => {
                    if !fanout.deliver(None) {
                        return;
                    }
                    continue;
                }
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(n)) => match parse_notices(n.payload()) {
                    Some(events) => {
                        for event in &events {
                            if !fanout.deliver(Some(event)) {
                                return;
                            }
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
