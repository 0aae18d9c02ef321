//! Persistence of subnets, behind one small trait in domain terms: engine values in, engine
//! values out. Only this module knows SQL; no backend type escapes it.
//!
//! Backends: [`MemoryStore`] (tests, `memory:`), [`SqliteStore`] (the embedded default),
//! [`PgStore`] (production, shared by several replicas).

pub mod directory;
mod error;
mod follow;
mod group;
mod memory;
mod migrations;
mod postgres;
mod sql_directory;
mod sqlite;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::engine::owners::{Holder, Owner, Owners};
use crate::engine::{AddrSet, RunDelta, Subnet};

pub use directory::{Directory, Quota, TenantDeletion, TenantRecord, TokenRecord};
pub use error::{Cause, Error};
pub use follow::Follower;
pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The tenant a new database holds, which serves every caller when authentication is off.
pub const DEFAULT_TENANT: &str = "default";

/// The time now, in Unix milliseconds, as owners' "since" records it.
#[must_use]
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time now, in Unix seconds, as the directory records it.
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A subnet as stored: its address space, its state, and the version of that state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRecord {
    pub space: String,
    pub subnet: Subnet,
    /// Starts at 1 (or after the last version of a deleted subnet of the same prefix) and
    /// grows by one with every change.
    pub version: u64,
}

/// A change of one subnet: the state stored at the version before, the state after, and the
/// blocks (ordinal / 64) whose bits differ, so a store that keeps runs as rows writes only the
/// runs the change rewrote.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub before: &'a Subnet,
    pub after: &'a Subnet,
    // Invariant: every block whose bits differ between `before` and `after` is listed.
    pub blocks: &'a [u128],
}

impl Change<'_> {
    /// Returns the runs to delete and to write.
    #[must_use]
    pub fn delta(&self) -> RunDelta {
        RunDelta::between(
            self.before.addrs().bitmap(),
            self.after.addrs().bitmap(),
            self.blocks,
        )
    }

    /// Tells whether the set of pools changed.
    #[must_use]
    pub fn pools_changed(&self) -> bool {
        !self.before.pools().eq(self.after.pools())
    }

    /// Returns the owner rows to write: each address whose holder changed, as an owner row
    /// (`None`: no longer held). Holders change only where bits do, so only the changed blocks
    /// are compared: nothing to write for allocations without an owner.
    #[must_use]
    pub fn owner_rows(&self) -> Vec<(String, Option<OwnerRow>)> {
        let (before, after) = (self.before.owners(), self.after.owners());
        if before.is_empty() && after.is_empty() {
            return Vec::new();
        }
        let last = self.after.addrs().bitmap().last();
        let mut out = Vec::new();
        for &block in self.blocks {
            let (first, end) = crate::engine::block_span(block);
            let range = crate::engine::OrdRange {
                first,
                last: end.min(last),
            };
            for (ordinal, holder) in Owners::changes(before, after, range) {
                let address = self.after.addrs().addr(ordinal).to_string();
                out.push((address, holder.map(|h| OwnerRow::of(&h))));
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

/// An owner as a store keeps it: the owner's name and since when (Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    pub owner: String,
    pub since_ms: i64,
}

impl OwnerRow {
    fn of(holder: &Holder) -> Self {
        Self {
            owner: holder.owner.to_string(),
            since_ms: i64::try_from(holder.since_ms).unwrap_or(i64::MAX),
        }
    }
}

/// Every owner row of `subnet`, as a new subnet's are written.
fn owner_rows_of(subnet: &Subnet) -> Vec<(String, OwnerRow)> {
    subnet
        .owners()
        .in_range(subnet.addrs().range(None))
        .map(|(ordinal, h)| (subnet.addrs().addr(ordinal).to_string(), OwnerRow::of(h)))
        .collect()
}

/// Adds stored owner rows (address, owner, since) to a decoded subnet, checking them.
fn with_owner_rows(
    space: &str,
    subnet: Subnet,
    rows: Vec<(String, OwnerRow)>,
) -> Result<Subnet, Error> {
    if rows.is_empty() {
        return Ok(subnet);
    }
    let net = subnet.net();
    let corrupt = |reason| Error::Corrupt {
        space: space.to_owned(),
        subnet: net.to_string(),
        source: crate::engine::Error::Corrupt { reason },
    };
    let mut holders = Vec::with_capacity(rows.len());
    for (address, row) in rows {
        let ordinal = address
            .parse()
            .ok()
            .and_then(|a| subnet.addrs().ordinal(a))
            .ok_or_else(|| corrupt("stored owner's address is not in its subnet"))?;
        let owner = Owner::new(&row.owner).map_err(|_| corrupt("stored owner is malformed"))?;
        let since_ms =
            u64::try_from(row.since_ms).map_err(|_| corrupt("stored owner's time is negative"))?;
        holders.push((ordinal, Holder { owner, since_ms }));
    }
    subnet
        .with_owners(Owners::from_rows(holders))
        .map_err(|source| Error::Corrupt {
            space: space.to_owned(),
            subnet: net.to_string(),
            source,
        })
}

/// A subnet locked for writing by [`Store::lock_subnet`]; dropping it releases the lock.
#[async_trait]
pub trait SubnetLock: Send {
    /// The stored version.
    fn version(&self) -> u64;

    /// The stored state, when its version was not the one the caller had cached.
    fn take_reloaded(&mut self) -> Option<SubnetRecord>;

    /// Stores `change` at `version` (the locked version plus one) and releases the lock.
    async fn commit(self: Box<Self>, change: &Change<'_>, version: u64) -> Result<(), Error>;
}

/// What another writer (another replica) did, as a store that can tell reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A subnet was created or changed (`version` > 0), or deleted (`version` = 0).
    Changed {
        tenant: String,
        space: String,
        subnet: IpNet,
        version: u64,
    },
    /// A tenant's directory entries (tokens, quota, the tenant itself) changed.
    Directory { tenant: String },
    /// Events may have been missed (the connection was lost): compare everything.
    Resync,
}

/// What a subscriber to a store's events hears, besides `Resync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Changes of one tenant's subnets (a tenant as stored: `<tenant>+remote:<space>` for a
    /// remote pool's record).
    Tenant(String),
    /// Changes of the directory (tenants, tokens, quotas).
    Directory,
}

/// Durable storage of subnets and of the directory of tenants. Every write either happens
/// whole or not at all.
#[async_trait]
pub trait Store: Directory + Send + Sync + 'static {
    /// Loads every subnet of a tenant.
    async fn load(&self, tenant: &str) -> Result<Vec<SubnetRecord>, Error>;

    /// Loads one subnet, if stored.
    async fn load_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
    ) -> Result<Option<SubnetRecord>, Error>;

    /// Returns the stored version of one subnet, or `None` if it is not stored: the cheap
    /// check that a decision taken on a cached copy was taken on the current state.
    async fn version(&self, tenant: &str, space: &str, net: IpNet) -> Result<Option<u64>, Error>;

    /// Stores a new subnet and returns its version: 1, or, for a subnet stored and deleted
    /// before, the deleted one's last version plus one (a version never names two states
    /// of one subnet). `Conflict` if it is already stored; a store that
    /// several drivers share (memory, Postgres) also refuses one overlapping a stored subnet
    /// of the same address space, naming the stored one.
    async fn create_subnet(&self, tenant: &str, space: &str, subnet: &Subnet)
    -> Result<u64, Error>;

    /// Stores `change.after` as a subnet's state at `version`, if the stored version is
    /// `version - 1` (whose state is `change.before`). `Conflict` otherwise, `NotFound` if it
    /// is not stored.
    async fn update_subnet(
        &self,
        tenant: &str,
        space: &str,
        change: &Change<'_>,
        version: u64,
    ) -> Result<(), Error>;

    /// Deletes a subnet and its pools, if stored at `version`.
    async fn delete_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
        version: u64,
    ) -> Result<(), Error>;

    /// Locks a subnet for writing, for a writer that lost a race for it: other writers of the
    /// subnet wait until the lock is committed or dropped, so this writer cannot lose again.
    /// The lock holds the stored state when its version is not `cached_version`. `None` from
    /// a store that cannot lock (the caller stays optimistic); `NotFound` if not stored.
    async fn lock_subnet(
        &self,
        _tenant: &str,
        _space: &str,
        _net: IpNet,
        _cached_version: u64,
    ) -> Result<Option<Box<dyn SubnetLock>>, Error> {
        Ok(None)
    }

    /// Records that pool `pool_id` is `remote_id` in the remote plugin serving it (replacing
    /// an earlier record of the same pool).
    async fn put_remote_pool(
        &self,
        tenant: &str,
        pool_id: &str,
        remote_id: &str,
    ) -> Result<(), Error>;

    /// Forgets a remote pool (forgetting an unknown one succeeds).
    async fn delete_remote_pool(&self, tenant: &str, pool_id: &str) -> Result<(), Error>;

    /// Lists the remote pools of a tenant: (allot's pool id, the plugin's pool id).
    async fn remote_pools(&self, tenant: &str) -> Result<Vec<(String, String)>, Error>;

    /// Lists the stored version of every subnet of a tenant (for a resync after missed
    /// events).
    async fn versions(&self, tenant: &str) -> Result<Vec<(String, IpNet, u64)>, Error>;

    /// Waits until the store is between two group-commit transactions (at once when none is
    /// in flight, or for a store without group commit), so that a writer that decides its
    /// change after this carries whatever arrived while the store was busy.
    async fn next_turn(&self) {}

    /// Returns the longest any one operation of the store may take (`--database-timeout`),
    /// if it bounds them; a caller making several bounds them all by it too.
    fn timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Starts reporting what other writers do that `interest` names (and `Resync`), for a
    /// store that several processes share. `None` for a store only this process writes.
    async fn subscribe(
        &self,
        _interest: Interest,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<Event>> {
        None
    }
}

/// Encodes a subnet's pools for storage: the sub-pool's CIDR, or "" for the pool without one.
fn pool_key(sub_pool: Option<IpNet>) -> String {
    sub_pool.map(|p| p.to_string()).unwrap_or_default()
}

/// Tells apart, after a write that matched no row, a subnet another writer changed
/// (`Conflict`) from one that is not stored (`NotFound`).
async fn missed<S: Store + ?Sized>(store: &S, tenant: &str, space: &str, net: IpNet) -> Error {
    let (space, subnet) = (space.to_owned(), net.to_string());
    match store.version(tenant, &space, net).await {
        Ok(Some(_)) => Error::Conflict { space, subnet },
        Ok(None) => Error::NotFound { space, subnet },
        Err(e) => e,
    }
}

/// Writes a version as a SQL store keeps it (a signed 64-bit integer).
fn to_sql_version(version: u64) -> Result<i64, Error> {
    i64::try_from(version).map_err(|e| Error::Internal(e.into()))
}

/// Reads a version as a SQL store keeps it (a signed 64-bit integer).
fn from_sql_version(version: i64) -> Result<u64, Error> {
    u64::try_from(version).map_err(|e| Error::Internal(e.into()))
}

/// Reads `(space, subnet, version)` rows as a store lists them.
fn parse_versions(rows: Vec<(String, String, i64)>) -> Result<Vec<(String, IpNet, u64)>, Error> {
    rows.into_iter()
        .map(|(space, subnet, version)| {
            Ok((
                space,
                subnet
                    .parse()
                    .map_err(|e: ipnet::AddrParseError| Error::Internal(e.into()))?,
                from_sql_version(version)?,
            ))
        })
        .collect()
}

/// Rebuilds a subnet from its stored parts, checking everything.
fn decode_subnet(
    space: &str,
    subnet: &str,
    state: &[u8],
    pools: &[String],
) -> Result<Subnet, Error> {
    let corrupt = |source| Error::Corrupt {
        space: space.to_owned(),
        subnet: subnet.to_owned(),
        source,
    };
    let net: IpNet = subnet.parse().map_err(|_| {
        corrupt(crate::engine::Error::Corrupt {
            reason: "stored subnet is not a prefix",
        })
    })?;
    let addrs = AddrSet::decode(net, state).map_err(corrupt)?;
    let mut sub_pools = Vec::with_capacity(pools.len());
    for p in pools {
        if p.is_empty() {
            sub_pools.push(None);
        } else {
            let sub = p.parse().map_err(|_| {
                corrupt(crate::engine::Error::Corrupt {
                    reason: "stored sub-pool is not a prefix",
                })
            })?;
            sub_pools.push(Some(sub));
        }
    }
    Subnet::from_parts(addrs, sub_pools).map_err(corrupt)
}

#[cfg(test)]
mod conformance;
