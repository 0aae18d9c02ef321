//! A subnet row locked for a writer that lost a race, so that its next try cannot lose.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Postgres, Transaction};

use super::error::map_err;
use super::timed;
use super::write::{SubnetWrite, write_in};
use crate::store::{Change, Error, SubnetLock, SubnetRecord};

/// A subnet row locked (`SELECT … FOR UPDATE`) in an open transaction.
pub(super) struct PgLock {
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) tenant: String,
    pub(super) space: String,
    pub(super) version: u64,
    pub(super) reloaded: Option<SubnetRecord>,
    pub(super) timeout: Duration,
}

#[async_trait]
impl SubnetLock for PgLock {
    fn version(&self) -> u64 {
        self.version
    }

    fn take_reloaded(&mut self) -> Option<SubnetRecord> {
        self.reloaded.take()
    }

    async fn commit(self: Box<Self>, change: &Change<'_>, version: u64) -> Result<(), Error> {
        let Self {
            mut tx,
            tenant,
            space,
            timeout,
            ..
        } = *self;
        let write = SubnetWrite::of(&tenant, &space, change, version);
        let net = write.net().to_string();
        timed(timeout, async {
            if !write_in(&mut tx, &write, true).await? {
                // Cannot happen while the row is locked, unless `version` is not the next one.
                return Err(Error::Conflict {
                    space: space.clone(),
                    subnet: net.clone(),
                });
            }
            tx.commit().await.map_err(|e| map_err(e, &space, &net))
        })
        .await
    }
}
