//! Writes: a change of one subnet in one statement, its owners and pools; several subnets'
//! changes in one transaction, announced in one notification.

use ipnet::IpNet;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

use super::error::map_err;
use super::notify::{CHANNEL, MAX_PAYLOAD, notice};
use super::rows::RunRows;
use crate::engine::Subnet;
use crate::store::{Change, Error, OwnerRow, to_sql_version};

/// The room a batch's notices have in its one notification: the payload limit, less the
/// brackets of the JSON array.
pub(super) const BATCH_PAYLOAD: usize = MAX_PAYLOAD - 2;

/// One subnet's change as it is written, owned, so that it can wait for a group commit.
pub(super) struct SubnetWrite {
    tenant: String,
    space: String,
    net: IpNet,
    version: u64,
    cursor: String,
    runs: RunRows,
    owners: Vec<(String, Option<OwnerRow>)>,
    // The pools, when they changed.
    pools: Option<Vec<Option<String>>>,
    // What announces it to the other replicas.
    notice: String,
}

impl SubnetWrite {
    /// `change` of a subnet, stored as `version` (the version it replaces plus one).
    pub(super) fn of(tenant: &str, space: &str, change: &Change<'_>, version: u64) -> Self {
        let after = change.after;
        let delta = change.delta();
        Self {
            tenant: tenant.to_owned(),
            space: space.to_owned(),
            net: after.net(),
            version,
            cursor: after.addrs().cursor().to_string(),
            runs: RunRows::of(after.addrs(), &delta.removed, &delta.upserted),
            owners: change.owner_rows(),
            pools: change.pools_changed().then(|| pool_list(after)),
            notice: notice(tenant, space, after.net(), version),
        }
    }

    /// The room its notice takes in a batch's notification (a batch's writes must fit in one:
    /// [`BATCH_PAYLOAD`]).
    pub(super) fn weight(&self) -> usize {
        self.notice.len() + 1
    }

    pub(super) fn net(&self) -> IpNet {
        self.net
    }

    fn err(&self) -> impl Fn(sqlx::Error) -> Error + '_ {
        let net = self.net.to_string();
        move |e| map_err(e, &self.space, &net)
    }
}

/// A subnet's pools as rows: the sub-pool's CIDR, or `None` for the pool without one.
pub(super) fn pool_list(subnet: &Subnet) -> Vec<Option<String>> {
    subnet.pools().map(|p| p.map(|p| p.to_string())).collect()
}

/// Writes one subnet's change alone: in one statement (one round trip, announced) when only
/// addresses changed, else in a transaction. Returns whether the version matched.
pub(super) async fn write_one(pool: &PgPool, write: &SubnetWrite) -> Result<bool, Error> {
    if write.owners.is_empty() && write.pools.is_none() {
        return write_runs(pool, write, true).await;
    }
    let mut tx = pool.begin().await.map_err(write.err())?;
    let updated = write_in(&mut tx, write, true).await?;
    if updated {
        tx.commit().await.map_err(write.err())?;
    }
    Ok(updated)
}

/// Writes several subnets' changes in one statement (one transaction, one round trip; a
/// transaction of a few more when pools changed too), announced in one notification; for
/// each, whether its version matched. The subnet rows are locked in one order (tenant,
/// space, subnet), the same in every replica, so that two replicas' batches never wait for
/// each other in a cycle. The writes' notices must fit in one payload together
/// ([`SubnetWrite::weight`]).
pub(super) async fn write_batch(
    pool: &PgPool,
    writes: &[&SubnetWrite],
) -> Result<Vec<bool>, Error> {
    let err = |e| map_err(e, "", "");
    let mut a = BatchArrays::default();
    for (i, w) in (1_i64..).zip(writes) {
        a.push(i, w)?;
    }
    let query = sqlx::query_scalar::<_, i64>(BATCH_SQL)
        .bind(a.tenants)
        .bind(a.spaces)
        .bind(a.subnets)
        .bind(a.versions)
        .bind(a.cursors)
        .bind(a.notices)
        .bind(a.removed_i)
        .bind(a.removed)
        .bind(a.run_i)
        .bind(a.firsts)
        .bind(a.lasts)
        .bind(a.bits)
        .bind(a.cleared_i)
        .bind(a.cleared)
        .bind(a.owner_i)
        .bind(a.addresses)
        .bind(a.owners)
        .bind(a.since)
        .bind(CHANNEL);
    let write_of = |i: i64| {
        usize::try_from(i - 1)
            .ok()
            .filter(|&i| i < writes.len())
            .ok_or_else(|| Error::Internal("a batch answered for a write it had not".into()))
    };
    let done = if writes.iter().any(|w| w.pools.is_some()) {
        let mut tx = pool.begin().await.map_err(err)?;
        let done = query.fetch_all(&mut *tx).await.map_err(err)?;
        for &i in &done {
            let w = writes[write_of(i)?];
            if let Some(pools) = &w.pools {
                write_pools(&mut tx, &w.tenant, &w.space, w.net, pools.clone())
                    .await
                    .map_err(w.err())?;
            }
        }
        tx.commit().await.map_err(err)?;
        done
    } else {
        query.fetch_all(pool).await.map_err(err)?
    };
    let mut matched = vec![false; writes.len()];
    for i in done {
        matched[write_of(i)?] = true;
    }
    Ok(matched)
}

/// A batch of writes as the columns [`BATCH_SQL`] unnests; `*_i` name the write (from 1) a
/// row belongs to.
#[derive(Default)]
struct BatchArrays {
    tenants: Vec<String>,
    spaces: Vec<String>,
    subnets: Vec<String>,
    versions: Vec<i64>,
    cursors: Vec<String>,
    notices: Vec<String>,
    removed_i: Vec<i64>,
    removed: Vec<String>,
    run_i: Vec<i64>,
    firsts: Vec<String>,
    lasts: Vec<String>,
    bits: Vec<i64>,
    cleared_i: Vec<i64>,
    cleared: Vec<String>,
    owner_i: Vec<i64>,
    addresses: Vec<String>,
    owners: Vec<String>,
    since: Vec<i64>,
}

impl BatchArrays {
    fn push(&mut self, i: i64, w: &SubnetWrite) -> Result<(), Error> {
        self.tenants.push(w.tenant.clone());
        self.spaces.push(w.space.clone());
        self.subnets.push(w.net.to_string());
        self.versions.push(to_sql_version(w.version)?);
        self.cursors.push(w.cursor.clone());
        self.notices.push(w.notice.clone());
        for first in &w.runs.removed {
            self.removed_i.push(i);
            self.removed.push(first.clone());
        }
        for ((first, last), bits) in w.runs.firsts.iter().zip(&w.runs.lasts).zip(&w.runs.bits) {
            self.run_i.push(i);
            self.firsts.push(first.clone());
            self.lasts.push(last.clone());
            self.bits.push(*bits);
        }
        for (address, row) in &w.owners {
            match row {
                None => {
                    self.cleared_i.push(i);
                    self.cleared.push(address.clone());
                }
                Some(row) => {
                    self.owner_i.push(i);
                    self.addresses.push(address.clone());
                    self.owners.push(row.owner.clone());
                    self.since.push(row.since_ms);
                }
            }
        }
        Ok(())
    }
}

/// Several subnets' changes in one statement. `w`: the writes; `locked`: the subnet rows still
/// at the version each write replaces, locked in key order; `up`: those bumped; then each
/// bumped subnet's runs and owners deleted and written, and one notification of them all.
/// Returns the (1-based) numbers of the writes whose version matched.
const BATCH_SQL: &str = "WITH w AS ( \
         SELECT * FROM unnest($1::text[], $2::text[], $3::cidr[], $4::int8[], $5::numeric[], \
             $6::text[]) WITH ORDINALITY AS w(tenant, space, subnet, version, cursor, notice, i) \
     ), locked AS MATERIALIZED ( \
         SELECT w.i, s.tenant, s.space, s.subnet, w.version, w.cursor, w.notice \
         FROM subnets s JOIN w ON s.tenant = w.tenant AND s.space = w.space \
             AND s.subnet = w.subnet AND s.version = w.version - 1 \
         ORDER BY s.tenant, s.space, s.subnet \
         FOR UPDATE OF s \
     ), up AS ( \
         UPDATE subnets s SET version = l.version, cursor = l.cursor \
         FROM locked l \
         WHERE s.tenant = l.tenant AND s.space = l.space AND s.subnet = l.subnet \
         RETURNING l.i, l.tenant, l.space, l.subnet, l.notice \
     ), del AS ( \
         DELETE FROM runs r USING up, unnest($7::int8[], $8::inet[]) AS d(i, first) \
         WHERE d.i = up.i AND r.tenant = up.tenant AND r.space = up.space \
             AND r.subnet = up.subnet AND r.first = d.first \
     ), ins AS ( \
         INSERT INTO runs (tenant, space, subnet, first, last, bits) \
         SELECT up.tenant, up.space, up.subnet, u.first, u.last, u.bits \
         FROM unnest($9::int8[], $10::inet[], $11::inet[], $12::int8[]) AS u(i, first, last, bits) \
         JOIN up ON up.i = u.i \
         ON CONFLICT (tenant, space, subnet, first) \
         DO UPDATE SET last = excluded.last, bits = excluded.bits \
     ), odel AS ( \
         DELETE FROM owners o USING up, unnest($13::int8[], $14::inet[]) AS c(i, address) \
         WHERE c.i = up.i AND o.tenant = up.tenant AND o.space = up.space \
             AND o.subnet = up.subnet AND o.address = c.address \
     ), oins AS ( \
         INSERT INTO owners (tenant, space, subnet, address, owner, since_ms) \
         SELECT up.tenant, up.space, up.subnet, n.address, n.owner, n.since \
         FROM unnest($15::int8[], $16::inet[], $17::text[], $18::int8[]) \
             AS n(i, address, owner, since) \
         JOIN up ON up.i = n.i \
         ON CONFLICT (tenant, space, subnet, address) \
         DO UPDATE SET owner = excluded.owner, since_ms = excluded.since_ms \
     ), notified AS ( \
         SELECT pg_notify($19, '[' || string_agg(notice, ',') || ']') FROM up \
         HAVING count(*) > 0 \
     ) \
     SELECT up.i FROM up LEFT JOIN notified ON true";

/// Writes one subnet's change in `tx`: its runs, owners and pools, announced when `announce`.
/// Returns whether the version matched (nothing is written when it did not).
pub(super) async fn write_in(
    tx: &mut Transaction<'_, Postgres>,
    write: &SubnetWrite,
    announce: bool,
) -> Result<bool, Error> {
    if !write_runs(&mut **tx, write, announce).await? {
        return Ok(false);
    }
    let net = write.net.to_string();
    write_owners(tx, &write.tenant, &write.space, &net, write.owners.clone())
        .await
        .map_err(write.err())?;
    if let Some(pools) = &write.pools {
        write_pools(tx, &write.tenant, &write.space, write.net, pools.clone())
            .await
            .map_err(write.err())?;
    }
    Ok(true)
}

/// Writes the pools of a subnet, replacing those stored.
pub(super) async fn write_pools(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    space: &str,
    net: IpNet,
    pools: Vec<Option<String>>,
) -> Result<(), sqlx::Error> {
    let net = net.to_string();
    sqlx::query("DELETE FROM pools WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr")
        .bind(tenant)
        .bind(space)
        .bind(&net)
        .execute(&mut **tx)
        .await?;
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

/// Writes owner rows: each address's holder, or none (`None`: the row is deleted). Nothing
/// (no round trip) when there are none: allocations without an owner pay nothing here.
pub(super) async fn write_owners(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    space: &str,
    subnet: &str,
    rows: Vec<(String, Option<OwnerRow>)>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (mut cleared, mut addresses, mut owners, mut since) = (vec![], vec![], vec![], vec![]);
    for (address, row) in rows {
        match row {
            None => cleared.push(address),
            Some(row) => {
                addresses.push(address);
                owners.push(row.owner);
                since.push(row.since_ms);
            }
        }
    }
    sqlx::query(
        "WITH d AS ( \
             DELETE FROM owners WHERE tenant = $1 AND space = $2 AND subnet = $3::cidr \
             AND address = ANY($4::inet[]) \
         ) \
         INSERT INTO owners (tenant, space, subnet, address, owner, since_ms) \
         SELECT $1, $2, $3::cidr, a::inet, o, s \
         FROM unnest($5::text[], $6::text[], $7::int8[]) AS u(a, o, s) \
         ON CONFLICT (tenant, space, subnet, address) \
         DO UPDATE SET owner = excluded.owner, since_ms = excluded.since_ms",
    )
    .bind(tenant)
    .bind(space)
    .bind(subnet)
    .bind(cleared)
    .bind(addresses)
    .bind(owners)
    .bind(since)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// The statement of [`write_runs`] but its last line: the version bumped if it is still the one
/// replaced (`up`), the runs deleted and written only then.
macro_rules! runs_sql {
    () => {
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
         ) "
    };
}

/// Bumps the version (if it is still the one replaced) and applies the run delta, announcing
/// the change when `announce`, in one statement: one round trip. Returns whether the version
/// matched.
async fn write_runs<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    write: &SubnetWrite,
    announce: bool,
) -> Result<bool, Error> {
    let sql = if announce {
        concat!(runs_sql!(), "SELECT pg_notify($10, $11) FROM up")
    } else {
        concat!(runs_sql!(), "SELECT 1 FROM up")
    };
    let runs = &write.runs;
    let updated = sqlx::query(sql)
        .bind(&write.tenant)
        .bind(&write.space)
        .bind(write.net.to_string())
        .bind(to_sql_version(write.version)?)
        .bind(&write.cursor)
        .bind(&runs.removed)
        .bind(&runs.firsts)
        .bind(&runs.lasts)
        .bind(&runs.bits);
    let updated = if announce {
        updated.bind(CHANNEL).bind(&write.notice)
    } else {
        updated
    };
    let updated = updated.fetch_all(executor).await.map_err(write.err())?;
    Ok(!updated.is_empty())
}
