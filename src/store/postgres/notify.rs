//! Announcing changes to the other replicas (`NOTIFY`) and hearing theirs (`LISTEN`).

use std::time::Duration;

use ipnet::IpNet;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

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

pub(super) fn parse_notice(payload: &str) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    Some(Event::Changed {
        tenant: v.get("tenant")?.as_str()?.to_owned(),
        space: v.get("space")?.as_str()?.to_owned(),
        subnet: v.get("subnet")?.as_str()?.parse().ok()?,
        version: v.get("version")?.as_u64()?,
    })
}

/// Forwards every change announced on [`CHANNEL`] to `tx` until its receiver goes away. After
/// each (re)connection it sends `Resync` first: anything announced while it was not listening
/// is lost.
pub(super) async fn listen(pool: PgPool, tx: mpsc::UnboundedSender<Event>) {
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = tx.closed() => return,
            listener = listener => match listener {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for changes of other replicas; retrying");
                    tokio::time::sleep(RELISTEN_DELAY).await;
                    continue;
                }
            },
        };
        if tx.send(Event::Resync).is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(n)) => match parse_notice(n.payload()) {
                    Some(event) => {
                        if tx.send(event).is_err() {
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
