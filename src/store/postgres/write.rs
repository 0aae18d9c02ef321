//! Writes: a change of one subnet in one statement, and its pools.

use sqlx::{Postgres, Transaction};

use super::error::map_err;
use super::notify::{CHANNEL, notice};
use super::rows::RunRows;
use crate::engine::Subnet;
use crate::store::{Change, Error, OwnerRow, to_sql_version};

/// Writes the pools of a subnet, replacing those stored.
pub(super) async fn write_pools(
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

/// Bumps the version (if it is still the one replaced), applies the run delta and announces
/// the change, in one statement: one round trip. Returns whether the version matched.
pub(super) async fn write_change<'e>(
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
