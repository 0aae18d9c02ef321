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
        }
    }

    pub(super) fn net(&self) -> IpNet {
        self.net
    }

    fn notice(&self) -> String {
        notice(&self.tenant, &self.space, self.net, self.version)
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

/// Writes several subnets' changes in one transaction, announced in one notification (or a
/// few, when they would not fit in one); for each, whether its version matched. The subnet
/// rows are taken in one order (tenant, space, subnet), the same in every replica, so that two
/// replicas' batches never wait for each other in a cycle.
pub(super) async fn write_batch(
    pool: &PgPool,
    writes: &[&SubnetWrite],
) -> Result<Vec<bool>, Error> {
    let err = |e| map_err(e, "", "");
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |w: &SubnetWrite| (w.tenant.clone(), w.space.clone(), w.net);
        key(writes[a]).cmp(&key(writes[b]))
    });
    let mut matched = vec![false; writes.len()];
    let mut tx = pool.begin().await.map_err(err)?;
    for i in order {
        matched[i] = write_in(&mut tx, writes[i], false).await?;
    }
    let notices: Vec<String> = writes
        .iter()
        .zip(&matched)
        .filter(|&(_, &m)| m)
        .map(|(w, _)| w.notice())
        .collect();
    for payload in payloads(&notices) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(matched)
}

/// Notices joined as JSON arrays, each within a notification's payload limit.
pub(super) fn payloads(notices: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for n in notices {
        if !current.is_empty() && current.len() + n.len() + 2 > MAX_PAYLOAD {
            current.push(']');
            out.push(std::mem::take(&mut current));
        }
        current.push(if current.is_empty() { '[' } else { ',' });
        current.push_str(n);
    }
    if !current.is_empty() {
        current.push(']');
        out.push(current);
    }
    out
}

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
        updated.bind(CHANNEL).bind(write.notice())
    } else {
        updated
    };
    let updated = updated.fetch_all(executor).await.map_err(write.err())?;
    Ok(!updated.is_empty())
}
