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

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Postgres, Row, Transaction};
use tokio::sync::mpsc;

use super::{
    Change, Error, Event, Store, SubnetLock, SubnetRecord, from_sql_version, missed,
    parse_versions, to_sql_version,
};
use crate::engine::addrset::{addr_bits, host_mask};
use crate::engine::{self, AddrSet, Bitmap, Run, Subnet};

/// The Postgres schema migrations, run at startup and by `allot migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel every change is announced on; the payload is JSON (see [`notice`]).
const CHANNEL: &str = "allot_subnets";

/// How long to wait before reconnecting the listener after losing it.
const RELISTEN_DELAY: Duration = Duration::from_millis(250);

/// Connections per process: group commit keeps one transaction in flight per subnet.
const MAX_CONNECTIONS: u32 = 16;

/// Subnets in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    // Invariant: every operation (acquiring a connection included) ends within this.
    timeout: Duration,
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
        let store = Self::from_pool(pool, timeout);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps a pool whose database is already migrated (tests get one per test).
    #[must_use]
    pub fn from_pool(pool: PgPool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }

    /// Creates or upgrades the schema. Replicas starting together are safe: the migrator
    /// holds an advisory lock.
    ///
    /// # Errors
    /// `Internal` when a migration fails.
    pub async fn migrate(&self) -> Result<(), Error> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| Error::Internal(e.into()))
    }

    /// Runs `op`, failing with `Unavailable` when it takes longer than the store's timeout.
    async fn timed<T>(&self, op: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        timed(self.timeout, op).await
    }

    /// Loads the subnets matching `filter` ("" or a condition on `$2`/`$3`) in one snapshot.
    async fn load_where(
        &self,
        tenant: &str,
        key: Option<(&str, IpNet)>,
    ) -> Result<Vec<SubnetRecord>, Error> {
        let err = |e| map_err(e, "", "");
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(err)?;
        let records = read_subnets(&mut tx, tenant, key).await?;
        tx.commit().await.map_err(err)?;
        Ok(records)
    }
}

/// Reads the subnets of a tenant (`key`: only the one named) with the statements of one
/// connection: call it inside a transaction, for one snapshot.
async fn read_subnets(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    key: Option<(&str, IpNet)>,
) -> Result<Vec<SubnetRecord>, Error> {
    let err = |e| map_err(e, "", "");
    let (space, net) = key.map_or((None, None), |(s, n)| (Some(s), Some(n.to_string())));
    // `$2 IS NULL` selects every subnet of the tenant, else the one named.
    let queries = [
        "SELECT space, subnet::text, version, cursor::text FROM subnets \
             WHERE tenant = $1 AND ($2::text IS NULL OR (space = $2 AND subnet = $3::cidr))",
        "SELECT space, subnet::text, sub_pool::text FROM pools \
             WHERE tenant = $1 AND ($2::text IS NULL OR (space = $2 AND subnet = $3::cidr))",
        "SELECT space, subnet::text, host(first), host(last), bits FROM runs \
             WHERE tenant = $1 AND ($2::text IS NULL OR (space = $2 AND subnet = $3::cidr)) \
             ORDER BY space, subnet, first",
    ];
    let mut rows = Vec::with_capacity(queries.len());
    for sql in queries {
        rows.push(
            sqlx::query(sql)
                .bind(tenant)
                .bind(space)
                .bind(&net)
                .fetch_all(&mut *conn)
                .await
                .map_err(err)?,
        );
    }
    let [subnets, pools, runs] = <[Vec<PgRow>; 3]>::try_from(rows)
        .map_err(|_| Error::Internal("three queries, three answers".into()))?;
    assemble(&subnets, &pools, &runs)
}

/// Runs `op`, failing with `Unavailable` when it takes longer than `timeout`.
async fn timed<T>(
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

/// What a `NOTIFY` on [`CHANNEL`] carries.
fn notice(tenant: &str, space: &str, subnet: IpNet, version: u64) -> String {
    serde_json::json!({
        "tenant": tenant,
        "space": space,
        "subnet": subnet.to_string(),
        "version": version,
    })
    .to_string()
}

fn parse_notice(payload: &str) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    Some(Event::Changed {
        tenant: v.get("tenant")?.as_str()?.to_owned(),
        space: v.get("space")?.as_str()?.to_owned(),
        subnet: v.get("subnet")?.as_str()?.parse().ok()?,
        version: v.get("version")?.as_u64()?,
    })
}

/// One run as a row: its first address, its last address (clipped to the subnet), its block.
fn run_row(addrs: &AddrSet, run: &Run) -> (String, String, i64) {
    let end_block = run.start + (run.n_blocks - 1);
    let last = ((end_block << 6) | 63).min(addrs.bitmap().last());
    (
        addrs.addr(run.start << 6).to_string(),
        addrs.addr(last).to_string(),
        i64::from_ne_bytes(run.bits.to_ne_bytes()),
    )
}

/// Reads a run back from its row, checking that it lies in the subnet and starts a block.
fn run_of(net: IpNet, first: &str, last: &str, bits: i64) -> Result<Run, engine::Error> {
    let corrupt = |reason| engine::Error::Corrupt { reason };
    let ordinal = |s: &str| -> Result<u128, engine::Error> {
        let addr: IpAddr = s
            .parse()
            .map_err(|_| corrupt("stored run bound is not an address"))?;
        if !net.contains(&addr) {
            return Err(corrupt("stored run lies outside its subnet"));
        }
        Ok(addr_bits(addr) - addr_bits(net.network()))
    };
    let (first, last) = (ordinal(first)?, ordinal(last)?);
    if first & 63 != 0 || last < first {
        return Err(corrupt("stored run is not block-aligned"));
    }
    Ok(Run {
        start: first >> 6,
        n_blocks: (last >> 6) - (first >> 6) + 1,
        bits: u64::from_ne_bytes(bits.to_ne_bytes()),
    })
}

type Key = (String, String);

/// Rebuilds subnets from the rows of one snapshot, checking everything.
fn assemble(
    subnets: &[PgRow],
    pools: &[PgRow],
    runs: &[PgRow],
) -> Result<Vec<SubnetRecord>, Error> {
    let err = |e| map_err(e, "", "");
    let mut pools_of: HashMap<Key, Vec<Option<String>>> = HashMap::new();
    for row in pools {
        let key: Key = (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?);
        pools_of
            .entry(key)
            .or_default()
            .push(row.try_get(2).map_err(err)?);
    }
    let mut runs_of: HashMap<Key, Vec<(String, String, i64)>> = HashMap::new();
    for row in runs {
        let key: Key = (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?);
        runs_of.entry(key).or_default().push((
            row.try_get(2).map_err(err)?,
            row.try_get(3).map_err(err)?,
            row.try_get(4).map_err(err)?,
        ));
    }
    let mut out = Vec::with_capacity(subnets.len());
    for row in subnets {
        let space: String = row.try_get(0).map_err(err)?;
        let subnet: String = row.try_get(1).map_err(err)?;
        let version: i64 = row.try_get(2).map_err(err)?;
        let cursor: String = row.try_get(3).map_err(err)?;
        let key = (space, subnet);
        let corrupt = |source| Error::Corrupt {
            space: key.0.clone(),
            subnet: key.1.clone(),
            source,
        };
        let net: IpNet = key.1.parse().map_err(|_| {
            corrupt(engine::Error::Corrupt {
                reason: "stored subnet is not a prefix",
            })
        })?;
        let cursor: u128 = cursor.parse().map_err(|_| {
            corrupt(engine::Error::Corrupt {
                reason: "stored cursor is not an ordinal",
            })
        })?;
        let mut runs = Vec::new();
        for (first, last, bits) in runs_of.remove(&key).unwrap_or_default() {
            runs.push(run_of(net, &first, &last, bits).map_err(corrupt)?);
        }
        let bitmap = Bitmap::from_runs(host_mask(net), runs).map_err(corrupt)?;
        let addrs = AddrSet::from_parts(net, bitmap, cursor).map_err(corrupt)?;
        let mut sub_pools = Vec::new();
        for p in pools_of.remove(&key).unwrap_or_default() {
            sub_pools.push(match p {
                None => None,
                Some(p) => Some(p.parse().map_err(|_| {
                    corrupt(engine::Error::Corrupt {
                        reason: "stored sub-pool is not a prefix",
                    })
                })?),
            });
        }
        let subnet = Subnet::from_parts(addrs, sub_pools).map_err(corrupt)?;
        out.push(SubnetRecord {
            version: from_sql_version(version)?,
            space: key.0,
            subnet,
        });
    }
    Ok(out)
}

/// Maps a driver error into the store's terms, by SQLSTATE: an unreachable, restarting or
/// overloaded server is `Unavailable`, a duplicate key or a serialization failure a
/// `Conflict`, anything else `Internal`.
fn map_err(e: sqlx::Error, space: &str, subnet: &str) -> Error {
    let conflict = || Error::Conflict {
        space: space.to_owned(),
        subnet: subnet.to_owned(),
    };
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => conflict(),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // serialization_failure, deadlock_detected
            Some("40001" | "40P01") => conflict(),
            // connection_exception (08…), insufficient_resources (53…), operator
            // intervention: admin/crash shutdown, cannot connect now (57P0…)
            Some(code)
                if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P0") =>
            {
                Error::Unavailable(db.into())
            }
            _ => Error::Internal(db.into()),
        },
        e @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed) => Error::Unavailable(e.into()),
        e => Error::Internal(e.into()),
    }
}

/// The rows a change writes: run starts to delete, then the runs to insert or update.
struct RunRows {
    removed: Vec<String>,
    firsts: Vec<String>,
    lasts: Vec<String>,
    bits: Vec<i64>,
}

impl RunRows {
    fn of(addrs: &AddrSet, removed: &[u128], upserted: &[Run]) -> Self {
        let mut rows = Self {
            removed: removed
                .iter()
                .map(|&start| addrs.addr(start << 6).to_string())
                .collect(),
            firsts: Vec::with_capacity(upserted.len()),
            lasts: Vec::with_capacity(upserted.len()),
            bits: Vec::with_capacity(upserted.len()),
        };
        for run in upserted {
            let (first, last, bits) = run_row(addrs, run);
            rows.firsts.push(first);
            rows.lasts.push(last);
            rows.bits.push(bits);
        }
        rows
    }
}

/// Writes the pools of a subnet, replacing those stored.
async fn write_pools(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    space: &str,
    subnet: &Subnet,
) -> Result<(), sqlx::Error> {
    let net = subnet.net().to_string();
    sqlx::query("DELETE FROM pools WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr")
        .bind(tenant)
        .bind(space)
        .bind(&net)
        .execute(&mut **tx)
        .await?;
    let pools: Vec<Option<String>> = subnet.pools().map(|p| p.map(|p| p.to_string())).collect();
    sqlx::query(
        "INSERT INTO pools (tenant, space, subnet, sub_pool) \
         SELECT $1, $2, $3::cidr, p::cidr FROM unnest($4::text[]) AS u(p)",
    )
    .bind(tenant)
    .bind(space)
    .bind(&net)
    .bind(pools)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Bumps the version (if it is still the one replaced), applies the run delta and announces
/// the change, in one statement: one round trip. Returns whether the version matched.
async fn write_change<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    tenant: &str,
    space: &str,
    change: &Change<'_>,
    version: u64,
) -> Result<bool, Error> {
    let after = change.after;
    let net = after.net();
    let delta = change.delta();
    let rows = RunRows::of(after.addrs(), &delta.removed, &delta.upserted);
    let updated = sqlx::query(
        "WITH up AS ( \
             UPDATE subnets SET version = $4, cursor = $5::numeric \
             WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr AND version = $4 - 1 \
             RETURNING 1 \
         ), del AS ( \
             DELETE FROM runs WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr \
             AND first = ANY($6::inet[]) AND EXISTS (SELECT 1 FROM up) \
         ), ins AS ( \
             INSERT INTO runs (tenant, space, subnet, first, last, bits) \
             SELECT $1, $2, $3::cidr, f::inet, l::inet, b \
             FROM unnest($7::text[], $8::text[], $9::int8[]) AS u(f, l, b) \
             WHERE EXISTS (SELECT 1 FROM up) \
             ON CONFLICT (tenant, space, subnet, first) \
             DO UPDATE SET last = excluded.last, bits = excluded.bits \
         ) \
         SELECT pg_notify($10, $11) FROM up",
    )
    .bind(tenant)
    .bind(space)
    .bind(net.to_string())
    .bind(to_sql_version(version)?)
    .bind(after.addrs().cursor().to_string())
    .bind(rows.removed)
    .bind(rows.firsts)
    .bind(rows.lasts)
    .bind(rows.bits)
    .bind(CHANNEL)
    .bind(notice(tenant, space, net, version))
    .fetch_all(executor)
    .await
    .map_err(|e| map_err(e, space, &net.to_string()))?;
    Ok(!updated.is_empty())
}

#[async_trait]
impl Store for PgStore {
    async fn load(&self, tenant: &str) -> Result<Vec<SubnetRecord>, Error> {
        self.timed(self.load_where(tenant, None)).await
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
            let overlap: Option<String> = sqlx::query_scalar(
                "SELECT subnet::text FROM subnets \
                 WHERE tenant = $1 AND space = $2 AND subnet && $3::cidr LIMIT 1",
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
            write_pools(&mut tx, tenant, space, subnet)
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

    async fn update_subnet(
        &self,
        tenant: &str,
        space: &str,
        change: &Change<'_>,
        version: u64,
    ) -> Result<(), Error> {
        let net = change.after.net().to_string();
        let err = |e| map_err(e, space, &net);
        self.timed(async {
            let updated = if change.pools_changed() {
                let mut tx = self.pool.begin().await.map_err(err)?;
                let updated = write_change(&mut *tx, tenant, space, change, version).await?;
                if updated {
                    write_pools(&mut tx, tenant, space, change.after)
                        .await
                        .map_err(err)?;
                    tx.commit().await.map_err(err)?;
                }
                updated
            } else {
                // The common case (addresses only): one statement, one round trip.
                write_change(&self.pool, tenant, space, change, version).await?
            };
            if updated {
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
                read_subnets(&mut tx, tenant, Some((space, net)))
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

    async fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let options = PgConnectOptions::clone(&self.pool.connect_options());
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.timeout)
            .connect_lazy_with(options);
        tokio::spawn(listen(pool, tx));
        Some(rx)
    }
}

/// A subnet row locked (`SELECT … FOR UPDATE`) in an open transaction.
struct PgLock {
    tx: Transaction<'static, Postgres>,
    tenant: String,
    space: String,
    version: u64,
    reloaded: Option<SubnetRecord>,
    timeout: Duration,
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
        let net = change.after.net().to_string();
        let err = |e| map_err(e, &space, &net);
        timed(timeout, async {
            let updated = write_change(&mut *tx, &tenant, &space, change, version).await?;
            if !updated {
                // Cannot happen while the row is locked, unless `version` is not the next one.
                return Err(Error::Conflict {
                    space: space.clone(),
                    subnet: net.clone(),
                });
            }
            if change.pools_changed() {
                write_pools(&mut tx, &tenant, &space, change.after)
                    .await
                    .map_err(err)?;
            }
            tx.commit().await.map_err(err)
        })
        .await
    }
}

/// Forwards every change announced on [`CHANNEL`] to `tx` until its receiver goes away. After
/// each (re)connection it sends `Resync` first: anything announced while it was not listening
/// is lost.
async fn listen(pool: PgPool, tx: mpsc::UnboundedSender<Event>) {
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

#[cfg(test)]
// Test addresses are built from small numbers that fit.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    //! Postgres-only checks, each in a fresh migrated database: the schema an operator reads,
    //! the size of each write, and a cold start of many subnets.
    use std::net::IpAddr;

    use sqlx::PgPool;

    use super::*;
    use crate::engine::{AddressRequest, PoolId};

    fn store(pool: PgPool) -> PgStore {
        PgStore::from_pool(pool, Duration::from_secs(30))
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid prefix")
    }

    /// Subnets and ranges are `cidr`, run bounds `inet`, and every table is keyed by tenant.
    #[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")]
    async fn the_schema_reads_as_addresses(pool: PgPool) {
        let types: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, udt_name::text \
             FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name IN ('subnets', 'pools', 'runs') ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .expect("columns");
        let of = |t: &str, c: &str| {
            types
                .iter()
                .find(|(tt, cc, _)| tt == t && cc == c)
                .map(|(_, _, u)| u.as_str())
        };
        assert_eq!(of("subnets", "subnet"), Some("cidr"));
        assert_eq!(of("pools", "sub_pool"), Some("cidr"));
        assert_eq!(of("runs", "first"), Some("inet"));
        assert_eq!(of("runs", "last"), Some("inet"));
        assert_eq!(of("subnets", "version"), Some("int8"));
        for table in ["subnets", "pools", "runs"] {
            assert_eq!(
                of(table, "tenant"),
                Some("text"),
                "{table} is keyed by tenant"
            );
        }

        // What an operator sees for the worked example of DESIGN.md.
        let s = store(pool.clone());
        let subnet = Subnet::with_pools(net("192.168.10.0/24"), [Some(net("192.168.10.128/31"))])
            .expect("inside");
        s.create_subnet("t1", "local", &subnet)
            .await
            .expect("create");
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT host(first), host(last), bits FROM runs WHERE subnet = '192.168.10.0/24' \
             ORDER BY first",
        )
        .fetch_all(&pool)
        .await
        .expect("runs");
        assert_eq!(
            rows,
            vec![
                ("192.168.10.0".to_owned(), "192.168.10.63".to_owned(), 1),
                ("192.168.10.64".to_owned(), "192.168.10.191".to_owned(), 0),
                (
                    "192.168.10.192".to_owned(),
                    "192.168.10.255".to_owned(),
                    i64::MIN
                ),
            ],
            "a block holding the network address, free blocks, a block holding the broadcast"
        );
        let sub_pool: Option<String> = sqlx::query_scalar("SELECT sub_pool::text FROM pools")
            .fetch_one(&pool)
            .await
            .expect("pool");
        assert_eq!(sub_pool.as_deref(), Some("192.168.10.128/31"));
    }

    /// Stores `after` as `version` of a subnet that was `before`, changed in `blocks`.
    async fn store_change(
        s: &PgStore,
        before: &Subnet,
        after: &Subnet,
        blocks: &[u128],
        version: u64,
    ) {
        let change = Change {
            before,
            after,
            blocks,
        };
        s.update_subnet("t1", "local", &change, version)
            .await
            .expect("write");
    }

    /// Counts the run rows the last change of a subnet inserted or updated: rows written by
    /// one transaction share its id (`xmin`), and every change also rewrites the subnet row.
    async fn rows_written_by_last_change(pool: &PgPool, subnet: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM runs r JOIN subnets s USING (tenant, space, subnet) \
             WHERE s.subnet = $1::cidr AND r.xmin::text = s.xmin::text",
        )
        .bind(subnet)
        .fetch_one(pool)
        .await
        .expect("count")
    }

    /// After thousands of allocations have fragmented a /16 into thousands of runs, each
    /// further allocation or release writes a handful of rows, not the bitmap.
    #[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")]
    async fn a_change_writes_only_the_runs_it_rewrote(pool: PgPool) {
        let s = store(pool.clone());
        let cidr = "10.50.0.0/16";
        let id = PoolId::new("local", net(cidr), None).expect("id");
        let mut subnet = Subnet::with_pools(net(cidr), [None]).expect("pool");
        s.create_subnet("t1", "local", &subnet)
            .await
            .expect("create");
        // Every third address of the first 24,000, in a few big changes.
        let mut version = 1;
        for chunk in 0..8u32 {
            let before = subnet.clone();
            let mut blocks = Vec::new();
            for i in 0..1000u32 {
                let n = (chunk * 1000 + i) * 3 + 1;
                let address = IpAddr::from([10, 50, (n >> 8) as u8, (n & 0xff) as u8]);
                let req = AddressRequest {
                    address: Some(address),
                    ..AddressRequest::default()
                };
                subnet.allocate(&id, &req).expect("free");
                blocks.push(u128::from(n) >> 6);
            }
            version += 1;
            store_change(&s, &before, &subnet, &blocks, version).await;
        }
        let n_runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert!(n_runs > 300, "fragmented: {n_runs} runs");
        let mut max_written = 0;
        for step in 0..200u32 {
            let before = subnet.clone();
            let address = if step % 2 == 0 {
                subnet
                    .allocate(&id, &AddressRequest::default())
                    .expect("room")
            } else {
                let a = IpAddr::from([10, 50, (step % 90) as u8, 1 + 3 * (step % 80) as u8]);
                subnet.release(&id, a).expect("release");
                a
            };
            let blocks = [subnet.addrs().ordinal(address).expect("inside") >> 6];
            version += 1;
            store_change(&s, &before, &subnet, &blocks, version).await;
            max_written = max_written.max(rows_written_by_last_change(&pool, cidr).await);
        }
        assert!(
            (1..=3).contains(&max_written),
            "at most 3 run rows per change, out of {n_runs}: {max_written}"
        );
        let loaded = s
            .load_subnet("t1", "local", net(cidr))
            .await
            .expect("load")
            .expect("stored");
        assert_eq!(loaded.subnet, subnet);
    }

    /// A cold start rebuilds exactly the subnets that were there: many of them, both
    /// families, with sub-pools, allocations, releases and serial cursors.
    #[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")]
    async fn a_cold_start_rebuilds_every_subnet(pool: PgPool) {
        let s = store(pool.clone());
        let mut want = Vec::new();
        for i in 0..300u32 {
            let cidr = if i % 3 == 0 {
                net(&format!("fd00:{i:x}::/64"))
            } else {
                net(&format!("10.{}.{}.0/24", i / 256, i % 256))
            };
            let mut subnet = Subnet::with_pools(cidr, [None]).expect("pool");
            if i % 2 == 0 {
                let sub = IpNet::new(cidr.network(), cidr.prefix_len() + 1).expect("half");
                let id = PoolId::new("local", cidr, Some(sub)).expect("id");
                subnet.add_pool(&id).expect("inside");
            }
            s.create_subnet("t1", "local", &subnet)
                .await
                .expect("create");
            let id = PoolId::new("local", cidr, None).expect("id");
            let before = subnet.clone();
            let mut blocks = Vec::new();
            for k in 0..(i % 17) {
                let req = AddressRequest {
                    serial: k % 2 == 0,
                    ..AddressRequest::default()
                };
                let a = subnet.allocate(&id, &req).expect("room");
                blocks.push(subnet.addrs().ordinal(a).expect("inside") >> 6);
            }
            store_change(&s, &before, &subnet, &blocks, 2).await;
            want.push(("local".to_owned(), subnet, 2));
        }
        let fresh = store(pool);
        let mut got: Vec<_> = fresh
            .load("t1")
            .await
            .expect("load")
            .into_iter()
            .map(|r| (r.space, r.subnet, r.version))
            .collect();
        got.sort_by_key(|(_, s, _)| s.net());
        want.sort_by_key(|(_, s, _)| s.net());
        assert_eq!(got, want);
    }

    /// Two writers creating overlapping subnets: the second is refused with the first's
    /// subnet named, whatever its cache knew.
    #[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")]
    async fn creating_an_overlapping_subnet_names_the_one_stored(pool: PgPool) {
        let s = store(pool);
        let a = Subnet::with_pools(net("10.60.0.0/16"), [None]).expect("pool");
        s.create_subnet("t1", "local", &a).await.expect("create");
        let b = Subnet::with_pools(net("10.60.4.0/24"), [None]).expect("pool");
        match s.create_subnet("t1", "local", &b).await {
            Err(Error::Conflict { subnet, .. }) => assert_eq!(subnet, "10.60.0.0/16"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        s.create_subnet("t1", "global", &b)
            .await
            .expect("another space may hold it");
        s.create_subnet("t2", "local", &b)
            .await
            .expect("another tenant may hold it");
    }

    /// A locked subnet makes the next locker wait, then hands it the state committed under
    /// the first lock.
    #[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")]
    async fn a_lock_makes_the_next_writer_wait_and_reload(pool: PgPool) {
        let s = store(pool);
        let cidr = net("10.71.0.0/24");
        let mut subnet = Subnet::with_pools(cidr, [None]).expect("pool");
        s.create_subnet("t1", "local", &subnet)
            .await
            .expect("create");
        let mut first = s
            .lock_subnet("t1", "local", cidr, 1)
            .await
            .expect("lock")
            .expect("postgres locks");
        assert_eq!(first.version(), 1);
        assert!(
            first.take_reloaded().is_none(),
            "the cached version is current"
        );
        let other = s.clone();
        let second = tokio::spawn(async move {
            let mut lock = other
                .lock_subnet("t1", "local", cidr, 1)
                .await
                .expect("lock")
                .expect("postgres locks");
            (lock.version(), lock.take_reloaded())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "the second writer waits for the first"
        );
        let before = subnet.clone();
        let id = PoolId::new("local", cidr, None).expect("id");
        let a = subnet
            .allocate(&id, &AddressRequest::default())
            .expect("room");
        let blocks = [subnet.addrs().ordinal(a).expect("inside") >> 6];
        let change = Change {
            before: &before,
            after: &subnet,
            blocks: &blocks,
        };
        first.commit(&change, 2).await.expect("commit");
        let (version, reloaded) = second.await.expect("second writer");
        assert_eq!(version, 2);
        assert_eq!(reloaded.map(|r| r.subnet), Some(subnet));
        assert!(matches!(
            s.lock_subnet("t1", "local", net("10.72.0.0/24"), 1).await,
            Err(Error::NotFound { .. })
        ));
    }

    /// Changes are announced: a subscriber hears a resync, then each commit's version.
    #[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")]
    async fn subscribers_hear_every_change(pool: PgPool) {
        let s = store(pool);
        let mut events = s.subscribe().await.expect("postgres reports changes");
        assert_eq!(events.recv().await, Some(Event::Resync));
        let subnet = Subnet::with_pools(net("10.70.0.0/24"), [None]).expect("pool");
        s.create_subnet("t1", "local", &subnet)
            .await
            .expect("create");
        let changed = |version| Event::Changed {
            tenant: "t1".into(),
            space: "local".into(),
            subnet: net("10.70.0.0/24"),
            version,
        };
        assert_eq!(events.recv().await, Some(changed(1)));
        s.delete_subnet("t1", "local", net("10.70.0.0/24"), 1)
            .await
            .expect("delete");
        assert_eq!(events.recv().await, Some(changed(0)));
    }
}
