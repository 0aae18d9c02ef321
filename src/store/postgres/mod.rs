//! PostgreSQL: production storage, shared by several replicas. Subnets and pools are `cidr`
//! rows, each subnet's allocation bitmap is a set of rows, one per run (so a change writes only
//! the runs it rewrote), and a version per subnet serializes writers: a write names the
//! version it replaces and loses (`Conflict`) if another replica got there first. Every change
//! sends a `NOTIFY` so the other replicas refresh their caches. Runtime queries only;
//! migrations in `migrations/postgres/`.
//!
//! Every operation is bounded by the store's timeout: with Postgres unreachable, a request
//! fails with `Unavailable` instead of waiting, and the pool reconnects by itself when the
//! server is back.

mod error;
mod lock;
mod notify;
mod rows;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
// Test addresses are built from small numbers that fit.
#[allow(clippy::cast_possible_truncation)]
mod tests;
mod write;

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use super::group::{Group, Writes};
use super::{
    Change, Error, Event, Interest, Store, SubnetLock, SubnetRecord, from_sql_version, missed,
    parse_versions, to_sql_version,
};
use crate::engine::{Run, Subnet};
use error::map_err;
use lock::PgLock;
use notify::{CHANNEL, Fanout, notice};
use rows::{RunRows, read_subnets};
use write::{SubnetWrite, pool_list, write_owners, write_pools};

/// The Postgres schema migrations, run at startup and by `allot migrate`.
pub static MIGRATOR: &std::sync::LazyLock<sqlx::migrate::Migrator> = &super::migrations::POSTGRES;

/// Connections per process: group commit keeps one transaction in flight per subnet.
const MAX_CONNECTIONS: u32 = 16;

/// Transactions of subnet writes in flight at once (each carrying the writes of many subnets,
/// see [`super::group`]). One: whatever queues while it commits goes in the next, which makes
/// the batches large; two writers took turns on small batches and gave fewer allocations per
/// second (BENCHMARKS.md).
const WRITERS: usize = 1;

/// Subnets in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    // Invariant: every operation (acquiring a connection included) ends within this.
    timeout: Duration,
    // The migrations `migrate` applied: (version, description).
    migrated: Vec<(i64, String)>,
    // The one `LISTEN` connection every subscriber of this store (and its clones) shares.
    events: Arc<Fanout>,
    // The group commit of subnet writes, started by the first write (it needs a runtime).
    writes: Arc<OnceLock<Group<SubnetWrite>>>,
}

/// Subnet writes, one at a time or several in a transaction, for the group commit.
struct PgWrites {
    pool: PgPool,
    timeout: Duration,
}

#[async_trait]
impl Writes for PgWrites {
    type Write = SubnetWrite;

    async fn write_batch(&self, writes: &[&SubnetWrite]) -> Result<Vec<bool>, Error> {
        timed(self.timeout, write::write_batch(&self.pool, writes)).await
    }

    async fn write_one(&self, write: &SubnetWrite) -> Result<bool, Error> {
        timed(self.timeout, write::write_one(&self.pool, write)).await
    }

    const BUDGET: usize = write::BATCH_PAYLOAD;

    fn weight(write: &SubnetWrite) -> usize {
        write.weight()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://…`) and migrates the schema. Every later operation
    /// fails with `Unavailable` when it cannot finish within `timeout`.
    ///
    /// # Errors
    /// `Internal` for a malformed URL or a failed migration, `Unavailable` when the server
    /// cannot be reached.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, Error> {
        let options = PgConnectOptions::from_str(url).map_err(|e| Error::Internal(e.into()))?;
        // One connection first, for its error: the pool's would only say it timed out.
        let probe = timed(timeout, async {
            PgConnection::connect_with(&options)
                .await
                .map_err(|e| map_err(e, "", ""))
        })
        .await?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(|e| map_err(e, "", ""))?;
        let mut store = Self::from_pool(pool, timeout);
        store.migrated = store.migrate().await?;
        Ok(store)
    }

    /// Wraps a pool whose database is already migrated (tests get one per test).
    #[must_use]
    pub fn from_pool(pool: PgPool, timeout: Duration) -> Self {
        Self {
            pool,
            timeout,
            migrated: Vec::new(),
            events: Arc::default(),
            writes: Arc::default(),
        }
    }

    /// The group commit of subnet writes (started on first use).
    fn writes(&self) -> &Group<SubnetWrite> {
        self.writes.get_or_init(|| {
            let writes = PgWrites {
                pool: self.pool.clone(),
                timeout: self.timeout,
            };
            Group::start(writes, WRITERS)
        })
    }

    /// Creates or upgrades the schema; returns the migrations it applied, as (version,
    /// description). Replicas starting together are safe: the migrator holds an advisory lock
    /// (one of them applies what another reports, perhaps).
    ///
    /// # Errors
    /// `Internal` when a migration fails, `Unavailable` when the server cannot be reached.
    pub async fn migrate(&self) -> Result<Vec<(i64, String)>, Error> {
        let err = |e| map_err(e, "", "");
        let applied: Vec<i64> = self
            .timed(async {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&self.pool)
                    .await
                    .or_else(|e| match &e {
                        // The table does not exist yet: a new database.
                        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
                            Ok(Vec::new())
                        }
                        _ => Err(err(e)),
                    })
            })
            .await?;
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| Error::Internal(e.into()))?;
        Ok(super::migrations::pending(MIGRATOR, &applied))
    }

    /// The schema migrations opening the database applied (see [`PgStore::migrate`]).
    #[must_use]
    pub fn migrated(&self) -> &[(i64, String)] {
        &self.migrated
    }

    /// Runs `op`, failing with `Unavailable` when it takes longer than the store's timeout.
    async fn timed<T>(&self, op: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        timed(self.timeout, op).await
    }

    /// Loads a tenant's subnets (`key`: only the one named) in one snapshot. Each statement
    /// is bounded by the store's timeout, not the whole load, which grows with the tenant.
    async fn load_where(
        &self,
        tenant: &str,
        key: Option<(&str, IpNet)>,
    ) -> Result<Vec<SubnetRecord>, Error> {
        let err = |e| map_err(e, "", "");
        let mut tx = self
            .timed(async {
                let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
                self.pool.begin_with(begin).await.map_err(err)
            })
            .await?;
        let records = read_subnets(&mut tx, tenant, key, self.timeout).await?;
        self.timed(async { tx.commit().await.map_err(err) }).await?;
        Ok(records)
    }
}

/// Runs `op`, failing with `Unavailable` when it takes longer than `timeout`.
pub(super) async fn timed<T>(
    timeout: Duration,
    op: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, op).await {
        Ok(result) => result,
        Err(_) => Err(Error::Unavailable(
            format!("postgres did not answer within {timeout:?}").into(),
        )),
    }
}

impl PgStore {
    /// Runs a directory operation within the store's timeout.
    async fn bounded<T>(&self, op: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.timed(op).await
    }

    /// Tells the other replicas, when `tx` commits, that `tenant`'s directory entries changed.
    async fn announce(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        tenant: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(notify::directory_notice(tenant))
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    /// Tells the other replicas, when `tx` commits, that every subnet of `tenant` (its remote
    /// pools' records included) is deleted: what `delete_subnet` announces for one.
    async fn announce_deleted(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        tenant: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(concat!(
            "SELECT pg_notify($2, json_build_object('tenant', tenant, 'space', space, \
             'subnet', subnet::text, 'version', 0)::text) FROM subnets WHERE ",
            super::sql_directory::belongs!()
        ))
        .bind(tenant)
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await
        .map(drop)
    }
}

fn dir_err(e: sqlx::Error) -> Error {
    map_err(e, "", "")
}

super::sql_directory::sql_directory!(PgStore);

#[async_trait]
impl Store for PgStore {
    async fn load(&self, tenant: &str) -> Result<Vec<SubnetRecord>, Error> {
        self.load_where(tenant, None).await
    }

    async fn load_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
    ) -> Result<Option<SubnetRecord>, Error> {
        let mut records = self
            .timed(self.load_where(tenant, Some((space, net))))
            .await?;
        Ok(records.pop())
    }

    async fn version(&self, tenant: &str, space: &str, net: IpNet) -> Result<Option<u64>, Error> {
        let subnet = net.to_string();
        let version: Option<i64> = self
            .timed(async {
                sqlx::query_scalar(
                    "SELECT version FROM subnets \
                     WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr",
                )
                .bind(tenant)
                .bind(space)
                .bind(&subnet)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_err(e, space, &subnet))
            })
            .await?;
        version.map(from_sql_version).transpose()
    }

    async fn create_subnet(
        &self,
        tenant: &str,
        space: &str,
        subnet: &Subnet,
    ) -> Result<u64, Error> {
        let net = subnet.net().to_string();
        let err = |e| map_err(e, space, &net);
        self.timed(async {
            let mut tx = self.pool.begin().await.map_err(err)?;
            // Creations in one address space take turns, so two replicas cannot both create
            // overlapping subnets.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
                .bind(tenant)
                .bind(space)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            // The space's subnets are disjoint, and cidr's order puts a subnet holding the new
            // one at or before it and one inside it after it, before any that is disjoint from
            // it: only the two neighbours can overlap. Two probes of the primary key, where
            // `subnet && $3` over the space read every subnet of it (100,000 rows for the
            // 100,000th pool).
            let overlap: Option<String> = sqlx::query_scalar(
                "SELECT subnet::text FROM ( \
                     (SELECT subnet FROM subnets \
                      WHERE tenant = $1 AND space = $2 AND subnet <= $3::cidr \
                      ORDER BY subnet DESC LIMIT 1) \
                     UNION ALL \
                     (SELECT subnet FROM subnets \
                      WHERE tenant = $1 AND space = $2 AND subnet >= $3::cidr \
                      ORDER BY subnet LIMIT 1) \
                 ) neighbours WHERE subnet && $3::cidr LIMIT 1",
            )
            .bind(tenant)
            .bind(space)
            .bind(&net)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
            if let Some(existing) = overlap {
                return Err(Error::Conflict {
                    space: space.to_owned(),
                    subnet: existing,
                });
            }
            let version: i64 = sqlx::query_scalar(
                "INSERT INTO subnets (tenant, space, subnet, version, cursor) \
                 VALUES ($1, $2, $3::cidr, 1 + COALESCE((SELECT version FROM retired \
                     WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr), 0), $4::numeric) \
                 RETURNING version",
            )
            .bind(tenant)
            .bind(space)
            .bind(&net)
            .bind(subnet.addrs().cursor().to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
            let version = from_sql_version(version)?;
            write_pools(&mut tx, tenant, space, subnet.net(), pool_list(subnet))
                .await
                .map_err(err)?;
            let owned = super::owner_rows_of(subnet)
                .into_iter()
                .map(|(address, row)| (address, Some(row)))
                .collect();
            write_owners(&mut tx, tenant, space, &net, owned)
                .await
                .map_err(err)?;
            let runs: Vec<Run> = subnet.addrs().bitmap().runs().collect();
            let rows = RunRows::of(subnet.addrs(), &[], &runs);
            sqlx::query(
                "INSERT INTO runs (tenant, space, subnet, first, last, bits) \
                 SELECT $1, $2, $3::cidr, f::inet, l::inet, b \
                 FROM unnest($4::text[], $5::text[], $6::int8[]) AS u(f, l, b)",
            )
            .bind(tenant)
            .bind(space)
            .bind(&net)
            .bind(rows.firsts)
            .bind(rows.lasts)
            .bind(rows.bits)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(notice(tenant, space, subnet.net(), version))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(version)
        })
        .await
    }

    async fn next_turn(&self) {
        self.writes().turn().await;
    }

    async fn update_subnet(
        &self,
        tenant: &str,
        space: &str,
        change: &Change<'_>,
        version: u64,
    ) -> Result<(), Error> {
        let write = SubnetWrite::of(tenant, space, change, version);
        self.timed(async {
            if self.writes().write(write).await? {
                Ok(())
            } else {
                Err(missed(self, tenant, space, change.after.net()).await)
            }
        })
        .await
    }

    async fn delete_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
        version: u64,
    ) -> Result<(), Error> {
        let subnet = net.to_string();
        self.timed(async {
            // Pools and runs go with the subnet (ON DELETE CASCADE).
            let deleted = sqlx::query(
                "WITH d AS ( \
                     DELETE FROM subnets \
                     WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr AND version = $4 \
                     RETURNING 1 \
                 ), r AS ( \
                     INSERT INTO retired (tenant, space, subnet, version) \
                     SELECT $1, $2, $3::cidr, $4 FROM d \
                     ON CONFLICT (tenant, space, subnet) DO UPDATE SET version = excluded.version \
                 ) \
                 SELECT pg_notify($5, $6) FROM d",
            )
            .bind(tenant)
            .bind(space)
            .bind(&subnet)
            .bind(to_sql_version(version)?)
            .bind(CHANNEL)
            .bind(notice(tenant, space, net, 0))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_err(e, space, &subnet))?;
            if deleted.is_empty() {
                return Err(missed(self, tenant, space, net).await);
            }
            Ok(())
        })
        .await
    }

    async fn lock_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
        cached_version: u64,
    ) -> Result<Option<Box<dyn SubnetLock>>, Error> {
        let subnet = net.to_string();
        let err = |e| map_err(e, space, &subnet);
        self.timed(async {
            let mut tx = self.pool.begin().await.map_err(err)?;
            // The row lock: other writers' version updates wait for this transaction.
            let version: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM subnets \
                 WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr FOR UPDATE",
            )
            .bind(tenant)
            .bind(space)
            .bind(&subnet)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
            let Some(version) = version else {
                return Err(Error::NotFound {
                    space: space.to_owned(),
                    subnet: subnet.clone(),
                });
            };
            let version = from_sql_version(version)?;
            // Read under the lock, the subnet cannot change until this transaction ends.
            let reloaded = if version == cached_version {
                None
            } else {
                read_subnets(&mut tx, tenant, Some((space, net)), self.timeout)
                    .await?
                    .pop()
            };
            let lock: Box<dyn SubnetLock> = Box::new(PgLock {
                tx,
                tenant: tenant.to_owned(),
                space: space.to_owned(),
                version,
                reloaded,
                timeout: self.timeout,
            });
            Ok(Some(lock))
        })
        .await
    }

    async fn put_remote_pool(
        &self,
        tenant: &str,
        pool_id: &str,
        remote_id: &str,
    ) -> Result<(), Error> {
        self.timed(async {
            sqlx::query(
                "INSERT INTO remote_pools (tenant, pool_id, remote_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, pool_id) DO UPDATE SET remote_id = excluded.remote_id",
            )
            .bind(tenant)
            .bind(pool_id)
            .bind(remote_id)
            .execute(&self.pool)
            .await
            .map_err(|e| map_err(e, "", ""))?;
            Ok(())
        })
        .await
    }

    async fn delete_remote_pool(&self, tenant: &str, pool_id: &str) -> Result<(), Error> {
        self.timed(async {
            sqlx::query("DELETE FROM remote_pools WHERE tenant = $1 AND pool_id = $2")
                .bind(tenant)
                .bind(pool_id)
                .execute(&self.pool)
                .await
                .map_err(|e| map_err(e, "", ""))?;
            Ok(())
        })
        .await
    }

    async fn remote_pools(&self, tenant: &str) -> Result<Vec<(String, String)>, Error> {
        self.timed(async {
            sqlx::query_as("SELECT pool_id, remote_id FROM remote_pools WHERE tenant = $1")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_err(e, "", ""))
        })
        .await
    }

    async fn versions(&self, tenant: &str) -> Result<Vec<(String, IpNet, u64)>, Error> {
        let rows: Vec<(String, String, i64)> = self
            .timed(async {
                sqlx::query_as("SELECT space, subnet::text, version FROM subnets WHERE tenant = $1")
                    .bind(tenant)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| map_err(e, "", ""))
            })
            .await?;
        parse_versions(rows)
    }

    fn timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    async fn subscribe(&self, interest: Interest) -> Option<mpsc::UnboundedReceiver<Event>> {
        Some(self.events.subscribe(&interest, || {
            let options = PgConnectOptions::clone(&self.pool.connect_options());
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(self.timeout)
                .connect_lazy_with(options)
        }))
    }
}
