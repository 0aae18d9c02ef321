//! The embedded default: one SQLite file (WAL, `synchronous=FULL`, so a commit is on disk before
//! the reply), owned by one process (an exclusive lock) and readable by its owner only.
//! Runtime queries only; migrations in `migrations/sqlite/`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::group::{Group, Writes};
use super::{
    Change, Error, OwnerRow, Store, SubnetRecord, decode_subnet, from_sql_version, missed,
    owner_rows_of, parse_versions, pool_key, to_sql_version, with_owner_rows,
};
use crate::engine::Subnet;

/// The SQLite schema migrations, run at startup and by `allot migrate`.
pub static MIGRATOR: &std::sync::LazyLock<sqlx::migrate::Migrator> = &super::migrations::SQLITE;

/// How long a writer waits for another one before giving up with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many subnets a load reads and decodes at a time (a few under test, so that every load
/// there crosses pages).
#[cfg(not(test))]
const LOAD_PAGE: i64 = 5_000;
#[cfg(test)]
const LOAD_PAGE: i64 = 2;

/// Subnets in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    // Invariant: holds an exclusive `flock` on the database file (none for `:memory:`) for
    // as long as any clone of the store lives: no other process writes the file.
    _lock: Option<Arc<File>>,
    // The migrations opening the database applied: (version, description).
    migrated: Vec<(i64, String)>,
    // The group commit of subnet writes, started by the first write (it needs a runtime).
    writes: Arc<OnceLock<Group<SqliteWrite>>>,
}

/// One subnet's change as it is written, owned, so that it can wait for a group commit.
struct SqliteWrite {
    tenant: String,
    space: String,
    net: String,
    version: u64,
    state: Vec<u8>,
    owners: Vec<(String, Option<OwnerRow>)>,
    // The pools, when they changed.
    pools: Option<Vec<Option<IpNet>>>,
}

impl SqliteWrite {
    fn of(tenant: &str, space: &str, change: &Change<'_>, version: u64) -> Self {
        let after = change.after;
        Self {
            tenant: tenant.to_owned(),
            space: space.to_owned(),
            net: after.net().to_string(),
            version,
            state: after.addrs().encode(),
            owners: change.owner_rows(),
            pools: change.pools_changed().then(|| after.pools().collect()),
        }
    }

    /// Whether only the addresses changed (no owner, no pool): a write of one statement.
    fn plain(&self) -> bool {
        self.owners.is_empty() && self.pools.is_none()
    }

    /// Whether `key` (tenant, space, subnet), as the batch statement returns it, is this one's.
    fn is(&self, key: &(String, String, String)) -> bool {
        key.0 == self.tenant && key.1 == self.space && key.2 == self.net
    }

    /// Writes the new state, if the stored version is still the one it replaces; returns
    /// whether it was.
    async fn update<'e>(&self, executor: impl sqlx::SqliteExecutor<'e>) -> Result<bool, Error> {
        let updated = sqlx::query(
            "UPDATE subnets SET version = ?, state = ? \
             WHERE tenant = ? AND space = ? AND subnet = ? AND version = ?",
        )
        .bind(to_sql_version(self.version)?)
        .bind(&self.state)
        .bind(&self.tenant)
        .bind(&self.space)
        .bind(&self.net)
        .bind(to_sql_version(self.version.saturating_sub(1))?)
        .execute(executor)
        .await
        .map_err(|e| map_err(e, &self.space, &self.net))?
        .rows_affected();
        Ok(updated > 0)
    }

    /// Writes the owner rows and pools that changed with the state (in the state's
    /// transaction).
    async fn write_extras(&self, tx: &mut Transaction<'_, Sqlite>) -> Result<(), Error> {
        let err = |e| map_err(e, &self.space, &self.net);
        SqliteStore::write_owners(
            tx,
            &self.tenant,
            &self.space,
            &self.net,
            self.owners.clone(),
        )
        .await
        .map_err(err)?;
        if let Some(pools) = &self.pools {
            SqliteStore::write_pools(tx, &self.tenant, &self.space, &self.net, pools)
                .await
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Subnet writes, one at a time or several in a transaction (one fsync), for the group commit.
struct SqliteWrites {
    pool: SqlitePool,
}

#[async_trait]
impl Writes for SqliteWrites {
    type Write = SqliteWrite;

    async fn write_batch(&self, writes: &[&SqliteWrite]) -> Result<Vec<bool>, Error> {
        let err = |e| map_err(e, "", "");
        // Each statement is a round trip to the connection's thread: the subnets' rows in one.
        let rows: Vec<serde_json::Value> = writes
            .iter()
            .map(|w| {
                let version = to_sql_version(w.version)?;
                Ok(serde_json::json!([
                    w.tenant,
                    w.space,
                    w.net,
                    version,
                    hex::encode(&w.state)
                ]))
            })
            .collect::<Result<_, Error>>()?;
        let rows = serde_json::Value::Array(rows).to_string();
        let query = sqlx::query_as::<_, (String, String, String)>(BATCH_SQL).bind(rows);
        let updated = if writes.iter().all(|w| w.plain()) {
            query.fetch_all(&self.pool).await.map_err(err)?
        } else {
            let mut tx = self.pool.begin().await.map_err(err)?;
            let updated = query.fetch_all(&mut *tx).await.map_err(err)?;
            for w in writes {
                if !w.plain() && updated.iter().any(|key| w.is(key)) {
                    w.write_extras(&mut tx).await?;
                }
            }
            tx.commit().await.map_err(err)?;
            updated
        };
        Ok(writes
            .iter()
            .map(|w| updated.iter().any(|key| w.is(key)))
            .collect())
    }

    async fn write_one(&self, write: &SqliteWrite) -> Result<bool, Error> {
        let err = |e| map_err(e, &write.space, &write.net);
        if write.plain() {
            return write.update(&self.pool).await;
        }
        let mut tx = self.pool.begin().await.map_err(err)?;
        let matched = write.update(&mut *tx).await?;
        if matched {
            write.write_extras(&mut tx).await?;
            tx.commit().await.map_err(err)?;
        }
        Ok(matched)
    }
}

/// Several subnets' new states in one statement, from a JSON array of `[tenant, space, subnet,
/// version, state in hex]`, each written only if the stored version is the one it replaces;
/// returns the keys of those written.
const BATCH_SQL: &str = "UPDATE subnets SET version = w.version, state = unhex(w.state) \
     FROM (SELECT value ->> 0 AS tenant, value ->> 1 AS space, value ->> 2 AS subnet, \
         value ->> 3 AS version, value ->> 4 AS state FROM json_each(?1)) AS w \
     WHERE subnets.tenant = w.tenant AND subnets.space = w.space \
         AND subnets.subnet = w.subnet AND subnets.version = w.version - 1 \
     RETURNING subnets.tenant, subnets.space, subnets.subnet";

/// Opens the database file (creating it, readable by its owner only, when missing) and locks
/// it for this process: two processes on one file would each hand out addresses from a cache
/// that knows nothing of the other's. The lock is `flock`, which SQLite's own POSIX locks
/// leave alone, and the kernel drops it when the process dies.
fn lock_file(path: &Path) -> Result<File, Error> {
    let shown = path.display();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Error::Unavailable(format!("cannot open database file {shown}: {e}").into())
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => {
            let by = holder(&file).map_or_else(String::new, |pid| format!(" (pid {pid})"));
            Err(Error::Internal(
                format!("database file {shown} is in use by another process{by}").into(),
            ))
        }
        Err(TryLockError::Error(e)) => Err(Error::Unavailable(
            format!("cannot lock database file {shown}: {e}").into(),
        )),
    }
}

/// The process holding a `flock` on `file`, as Linux's `/proc/locks` tells (`None` where it
/// cannot tell).
fn holder(file: &File) -> Option<u32> {
    let inode = file.metadata().ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF`
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ours = fields.get(1) == Some(&"FLOCK")
            && fields
                .get(5)
                .and_then(|dev_inode| dev_inode.rsplit(':').next())
                .and_then(|i| i.parse::<u64>().ok())
                == Some(inode);
        ours.then(|| fields.get(4)?.parse().ok()).flatten()
    })
}

impl SqliteStore {
    /// Opens (creating it if missing) and migrates the database at `url`: `sqlite://PATH`, or
    /// `sqlite::memory:`.
    ///
    /// # Errors
    /// `Internal` for a malformed URL or a failed migration, `Unavailable` when the file
    /// cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(url).map_err(|e| Error::Internal(e.into()))?;
        let lock = if url.contains(":memory:") {
            None
        } else {
            Some(Arc::new(lock_file(options.get_filename())?))
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // An in-memory database lives in its connection: keep exactly one.
        let max = if url.contains(":memory:") { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| map_err(e, "", ""))?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&pool)
        .await
        .map_err(|e| map_err(e, "", ""))?;
        let applied: Vec<i64> = if exists {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&pool)
                .await
                .map_err(|e| map_err(e, "", ""))?
        } else {
            Vec::new()
        };
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(e.into()))?;
        Ok(Self {
            pool,
            _lock: lock,
            migrated: super::migrations::pending(MIGRATOR, &applied),
            writes: Arc::default(),
        })
    }

    /// The group commit of subnet writes (started on first use): one writer, as SQLite has.
    fn writes(&self) -> &Group<SqliteWrite> {
        self.writes.get_or_init(|| {
            let writes = SqliteWrites {
                pool: self.pool.clone(),
            };
            Group::start(writes, 1)
        })
    }

    /// The schema migrations opening the database applied, as (version, description): all of
    /// them for a new database, none for one up to date.
    #[must_use]
    pub fn migrated(&self) -> &[(i64, String)] {
        &self.migrated
    }

    async fn pools_of(
        tx: &mut Transaction<'_, Sqlite>,
        tenant: &str,
        space: &str,
        subnet: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query(
            "SELECT sub_pool FROM pools WHERE tenant = ? AND space = ? AND subnet = ? \
             ORDER BY sub_pool",
        )
        .bind(tenant)
        .bind(space)
        .bind(subnet)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
    }

    /// Writes owner rows: each address's holder, or none (`None`: the row is deleted).
    async fn write_owners(
        tx: &mut Transaction<'_, Sqlite>,
        tenant: &str,
        space: &str,
        subnet: &str,
        rows: Vec<(String, Option<OwnerRow>)>,
    ) -> Result<(), sqlx::Error> {
        for (address, row) in rows {
            match row {
                None => sqlx::query(
                    "DELETE FROM owners \
                     WHERE tenant = ? AND space = ? AND subnet = ? AND address = ?",
                )
                .bind(tenant)
                .bind(space)
                .bind(subnet)
                .bind(address),
                Some(row) => sqlx::query(
                    "INSERT INTO owners (tenant, space, subnet, address, owner, since_ms) \
                     VALUES (?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (tenant, space, subnet, address) \
                     DO UPDATE SET owner = excluded.owner, since_ms = excluded.since_ms",
                )
                .bind(tenant)
                .bind(space)
                .bind(subnet)
                .bind(address)
                .bind(row.owner)
                .bind(row.since_ms),
            }
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Reads owner rows (of one subnet, when `key` names it), keyed by (space, subnet).
    async fn owners_of(
        tx: &mut Transaction<'_, Sqlite>,
        tenant: &str,
        key: Option<(&str, &str)>,
    ) -> Result<HashMap<(String, String), Vec<(String, OwnerRow)>>, sqlx::Error> {
        let (space, subnet) = key.unzip();
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT space, subnet, address, owner, since_ms FROM owners WHERE tenant = ?1 \
             AND (?2 IS NULL OR (space = ?2 AND subnet = ?3))",
        )
        .bind(tenant)
        .bind(space)
        .bind(subnet)
        .fetch_all(&mut **tx)
        .await?;
        let mut out: HashMap<(String, String), Vec<(String, OwnerRow)>> = HashMap::new();
        for (space, subnet, address, owner, since_ms) in rows {
            out.entry((space, subnet))
                .or_default()
                .push((address, OwnerRow { owner, since_ms }));
        }
        Ok(out)
    }

    /// Writes the pools of subnet `net`, replacing those stored.
    async fn write_pools(
        tx: &mut Transaction<'_, Sqlite>,
        tenant: &str,
        space: &str,
        net: &str,
        pools: &[Option<IpNet>],
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM pools WHERE tenant = ? AND space = ? AND subnet = ?")
            .bind(tenant)
            .bind(space)
            .bind(net)
            .execute(&mut **tx)
            .await?;
        for &sub_pool in pools {
            sqlx::query("INSERT INTO pools (tenant, space, subnet, sub_pool) VALUES (?, ?, ?, ?)")
                .bind(tenant)
                .bind(space)
                .bind(net)
                .bind(pool_key(sub_pool))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Runs a directory operation (SQLite bounds each by its busy timeout).
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        op.await
    }

    /// Nothing to tell: no other process shares the file.
    async fn announce(_tx: &mut Transaction<'_, Sqlite>, _tenant: &str) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Nothing to tell, as for `announce`.
    async fn announce_deleted(
        _tx: &mut Transaction<'_, Sqlite>,
        _tenant: &str,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

fn dir_err(e: sqlx::Error) -> Error {
    map_err(e, "", "")
}

super::sql_directory::sql_directory!(SqliteStore);

/// Maps a driver error into the store's terms: busy or unreachable is `Unavailable`, a
/// duplicate key a `Conflict`, anything else `Internal`.
fn map_err(e: sqlx::Error, space: &str, subnet: &str) -> Error {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict {
            space: space.to_owned(),
            subnet: subnet.to_owned(),
        },
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6): another writer held on past the timeout.
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("5" | "6")) => {
            Error::Unavailable(db.into())
        }
        e @ (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => {
            Error::Unavailable(e.into())
        }
        e => Error::Internal(e.into()),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, tenant: &str) -> Result<Vec<SubnetRecord>, Error> {
        let err = |e| map_err(e, "", "");
        let mut tx = self.pool.begin().await.map_err(err)?;
        let mut owners = Self::owners_of(&mut tx, tenant, None).await.map_err(err)?;
        // A page of subnets at a time, in key order, with the pools of the page's key range
        // in one query: what is read is held only while its page is decoded, so a cold start
        // of 100,000 subnets does not leave the heap grown by all their rows at once (nor
        // ask for each subnet's pools apart, a query each).
        let mut out = Vec::new();
        // Starting after ("", ""), before every key (a space has a name): a plain range on the
        // primary key, which `? IS NULL OR …` would keep SQLite from using.
        let mut after = (String::new(), String::new());
        loop {
            let rows = sqlx::query(
                "SELECT space, subnet, version, state FROM subnets WHERE tenant = ?1 \
                 AND (space, subnet) > (?2, ?3) \
                 ORDER BY space, subnet LIMIT ?4",
            )
            .bind(tenant)
            .bind(&after.0)
            .bind(&after.1)
            .bind(LOAD_PAGE)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            let Some(last) = rows.last() else { break };
            let last: (String, String) =
                (last.try_get(0).map_err(err)?, last.try_get(1).map_err(err)?);
            let mut pools: HashMap<(String, String), Vec<String>> = HashMap::new();
            let pool_rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT space, subnet, sub_pool FROM pools WHERE tenant = ?1 \
                 AND (space, subnet) > (?2, ?3) \
                 AND (space, subnet) <= (?4, ?5)",
            )
            .bind(tenant)
            .bind(&after.0)
            .bind(&after.1)
            .bind(&last.0)
            .bind(&last.1)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            for (space, subnet, sub_pool) in pool_rows {
                pools.entry((space, subnet)).or_default().push(sub_pool);
            }
            let full = rows.len() == usize::try_from(LOAD_PAGE).unwrap_or(usize::MAX);
            for row in rows {
                let space: String = row.try_get(0).map_err(err)?;
                let subnet: String = row.try_get(1).map_err(err)?;
                let version: i64 = row.try_get(2).map_err(err)?;
                let state: Vec<u8> = row.try_get(3).map_err(err)?;
                let key = (space.clone(), subnet.clone());
                let pools = pools.remove(&key).unwrap_or_default();
                let decoded = decode_subnet(&space, &subnet, &state, &pools)?;
                let owned = owners.remove(&key).unwrap_or_default();
                out.push(SubnetRecord {
                    subnet: with_owner_rows(&space, decoded, owned)?,
                    version: from_sql_version(version)?,
                    space,
                });
            }
            if !full {
                break;
            }
            after = last;
        }
        tx.commit().await.map_err(err)?;
        Ok(out)
    }

    async fn load_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
    ) -> Result<Option<SubnetRecord>, Error> {
        let subnet = net.to_string();
        let err = |e| map_err(e, space, &subnet);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let row = sqlx::query(
            "SELECT version, state FROM subnets WHERE tenant = ? AND space = ? AND subnet = ?",
        )
        .bind(tenant)
        .bind(space)
        .bind(&subnet)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        let Some(row) = row else { return Ok(None) };
        let version: i64 = row.try_get(0).map_err(err)?;
        let state: Vec<u8> = row.try_get(1).map_err(err)?;
        let pools = Self::pools_of(&mut tx, tenant, space, &subnet)
            .await
            .map_err(err)?;
        let owned = Self::owners_of(&mut tx, tenant, Some((space, &subnet)))
            .await
            .map_err(err)?
            .into_values()
            .next()
            .unwrap_or_default();
        tx.commit().await.map_err(err)?;
        let decoded = decode_subnet(space, &subnet, &state, &pools)?;
        Ok(Some(SubnetRecord {
            space: space.to_owned(),
            subnet: with_owner_rows(space, decoded, owned)?,
            version: from_sql_version(version)?,
        }))
    }

    async fn create_subnet(
        &self,
        tenant: &str,
        space: &str,
        subnet: &Subnet,
    ) -> Result<u64, Error> {
        let net = subnet.net().to_string();
        let err = |e| map_err(e, space, &net);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO subnets (tenant, space, subnet, version, state) \
             VALUES (?1, ?2, ?3, 1 + COALESCE((SELECT version FROM retired \
                 WHERE tenant = ?1 AND space = ?2 AND subnet = ?3), 0), ?4) \
             RETURNING version",
        )
        .bind(tenant)
        .bind(space)
        .bind(&net)
        .bind(subnet.addrs().encode())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        let pools: Vec<Option<IpNet>> = subnet.pools().collect();
        Self::write_pools(&mut tx, tenant, space, &net, &pools)
            .await
            .map_err(err)?;
        let owned = owner_rows_of(subnet)
            .into_iter()
            .map(|(address, row)| (address, Some(row)))
            .collect();
        Self::write_owners(&mut tx, tenant, space, &net, owned)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        from_sql_version(version)
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
        let write = SqliteWrite::of(tenant, space, change, version);
        if self.writes().write(write).await? {
            Ok(())
        } else {
            Err(missed(self, tenant, space, change.after.net()).await)
        }
    }

    async fn delete_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
        version: u64,
    ) -> Result<(), Error> {
        let subnet = net.to_string();
        let err = |e| map_err(e, space, &subnet);
        // The `subnets_retire` trigger records the last version in `retired`.
        let deleted = sqlx::query(
            "DELETE FROM subnets WHERE tenant = ? AND space = ? AND subnet = ? AND version = ?",
        )
        .bind(tenant)
        .bind(space)
        .bind(&subnet)
        .bind(to_sql_version(version)?)
        .execute(&self.pool)
        .await
        .map_err(err)?
        .rows_affected();
        if deleted == 0 {
            return Err(missed(self, tenant, space, net).await);
        }
        Ok(())
    }

    async fn put_remote_pool(
        &self,
        tenant: &str,
        pool_id: &str,
        remote_id: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO remote_pools (tenant, pool_id, remote_id) VALUES (?, ?, ?) \
             ON CONFLICT (tenant, pool_id) DO UPDATE SET remote_id = excluded.remote_id",
        )
        .bind(tenant)
        .bind(pool_id)
        .bind(remote_id)
        .execute(&self.pool)
        .await
        .map_err(|e| map_err(e, "", ""))?;
        Ok(())
    }

    async fn delete_remote_pool(&self, tenant: &str, pool_id: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM remote_pools WHERE tenant = ? AND pool_id = ?")
            .bind(tenant)
            .bind(pool_id)
            .execute(&self.pool)
            .await
            .map_err(|e| map_err(e, "", ""))?;
        Ok(())
    }

    async fn remote_pools(&self, tenant: &str) -> Result<Vec<(String, String)>, Error> {
        sqlx::query_as("SELECT pool_id, remote_id FROM remote_pools WHERE tenant = ?")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_err(e, "", ""))
    }

    async fn version(&self, tenant: &str, space: &str, net: IpNet) -> Result<Option<u64>, Error> {
        let subnet = net.to_string();
        let version: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM subnets WHERE tenant = ? AND space = ? AND subnet = ?",
        )
        .bind(tenant)
        .bind(space)
        .bind(&subnet)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| map_err(e, space, &subnet))?;
        version.map(from_sql_version).transpose()
    }

    async fn versions(&self, tenant: &str) -> Result<Vec<(String, IpNet, u64)>, Error> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT space, subnet, version FROM subnets WHERE tenant = ?")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_err(e, "", ""))?;
        parse_versions(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::stored_then_allocated;

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid prefix")
    }

    /// Several subnets' changes in one transaction: the one whose version no longer matches
    /// changes nothing, the others commit.
    #[tokio::test]
    async fn a_batch_commits_every_subnet_but_the_one_that_lost_its_race() {
        let s = SqliteStore::connect("sqlite::memory:").await.expect("open");
        let keys = [
            ("t1", "10.81.0.0/24"),
            ("t1", "10.82.0.0/24"),
            ("t2", "10.83.0.0/24"),
        ];
        let mut changes = Vec::new();
        for (tenant, cidr) in keys {
            let (before, after, blocks) = stored_then_allocated(&s, tenant, net(cidr)).await;
            changes.push((tenant, before, after, blocks));
        }
        let writes: Vec<SqliteWrite> = changes
            .iter()
            .enumerate()
            .map(|(i, (tenant, before, after, blocks))| {
                let change = Change {
                    before,
                    after,
                    blocks,
                };
                SqliteWrite::of(tenant, "local", &change, if i == 1 { 3 } else { 2 })
            })
            .collect();
        let refs: Vec<&SqliteWrite> = writes.iter().collect();
        let batch = SqliteWrites {
            pool: s.pool.clone(),
        };
        let matched = batch.write_batch(&refs).await.expect("batch");
        assert_eq!(matched, [true, false, true]);
        for ((tenant, cidr), (_, before, after, _)) in keys.iter().zip(&changes) {
            let stored = s
                .load_subnet(tenant, "local", net(cidr))
                .await
                .expect("load")
                .expect("stored");
            let expected = if *cidr == "10.82.0.0/24" {
                (1, before)
            } else {
                (2, after)
            };
            assert_eq!((stored.version, &stored.subnet), expected, "{cidr}");
        }
    }

    /// `next_turn` returns at once while the store is idle, and waits while a transaction is
    /// in flight (here held up by another connection's write lock) until it commits.
    #[tokio::test]
    async fn a_turn_waits_for_the_transaction_in_flight() {
        use sqlx::Connection;
        let path = std::env::temp_dir().join(format!("allot-turn-{}.db", std::process::id()));
        let url = format!("sqlite://{}", path.display());
        let s = SqliteStore::connect(&url).await.expect("open");
        let (before, after, blocks) = stored_then_allocated(&s, "t1", net("10.84.0.0/24")).await;
        let wait = |d| tokio::time::timeout(Duration::from_millis(d), s.next_turn());
        assert!(wait(5_000).await.is_ok(), "idle: at once");

        let mut other = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .expect("write lock");
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                let change = Change {
                    before: &before,
                    after: &after,
                    blocks: &blocks,
                };
                s.update_subnet("t1", "local", &change, 2).await
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !s.writes().busy() {
            assert!(std::time::Instant::now() < deadline, "the write started");
            tokio::task::yield_now().await;
        }
        assert!(wait(200).await.is_err(), "a transaction is in flight");
        sqlx::query("COMMIT")
            .execute(&mut other)
            .await
            .expect("release");
        assert!(wait(5_000).await.is_ok(), "its commit ends the turn");
        writer.await.expect("task").expect("written");
        drop(s);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
