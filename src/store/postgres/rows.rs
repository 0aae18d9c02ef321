//! Row mapping: subnets, pools and runs as the tables hold them, read back into engine values
//! with every bound checked, and a change's runs as the rows it writes.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::error::map_err;
use crate::engine::addrset::{addr_bits, host_mask};
use crate::engine::{self, AddrSet, Bitmap, Run, Subnet, block_of, block_span};
use crate::store::{Error, OwnerRow, SubnetRecord, from_sql_version};

/// Reads the subnets of a tenant (`key`: only the one named) with the statements of one
/// connection: call it inside a transaction, for one snapshot.
pub(super) async fn read_subnets(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    key: Option<(&str, IpNet)>,
    timeout: std::time::Duration,
) -> Result<Vec<SubnetRecord>, Error> {
    let err = |e| map_err(e, "", "");
    let (space, net) = key.map_or((None, None), |(s, n)| (Some(s), Some(n.to_string())));
    // A page of subnets at a time, in key order, each page's pools, runs and owners read for
    // its key range alone: what is read is held only while its page is decoded, so a cold
    // start of 100,000 subnets does not leave the heap grown by all their rows at once.
    // `$2 IS NULL` selects every subnet of the tenant, else the one named; `$4`/`$5` is the
    // key the page starts after (("", 0.0.0.0/0) for the first: before every key, since a
    // space has a name), `$6`/`$7` the page's last key. Pages
    // follow the key's own order (`subnets.subnet`, a cidr: the selected `subnet` is its
    // text, whose order differs).
    let subnets_sql = "SELECT space, subnet::text, version, cursor::text FROM subnets \
         WHERE tenant = $1 AND ($2::text IS NULL OR (space = $2 AND subnet = $3::cidr)) \
         AND (space, subnet) > ($4, $5::cidr) \
         ORDER BY subnets.space, subnets.subnet LIMIT $6";
    let in_page = "WHERE tenant = $1 AND ($2::text IS NULL OR (space = $2 AND subnet = $3::cidr)) \
         AND (space, subnet) > ($4, $5::cidr) \
         AND (space, subnet) <= ($6, $7::cidr)";
    let page_sql = [
        format!("SELECT space, subnet::text, sub_pool::text FROM pools {in_page}"),
        format!(
            "SELECT space, subnet::text, host(first), host(last), bits FROM runs {in_page} \
             ORDER BY runs.space, runs.subnet, runs.first"
        ),
        format!("SELECT space, subnet::text, host(address), owner, since_ms FROM owners {in_page}"),
    ];
    let mut out = Vec::new();
    let mut after: Key = (String::new(), "0.0.0.0/0".to_owned());
    loop {
        let subnets = sqlx::query(subnets_sql)
            .bind(tenant)
            .bind(space)
            .bind(&net)
            .bind(&after.0)
            .bind(&after.1)
            .bind(LOAD_PAGE)
            .fetch_all(&mut *conn);
        let subnets = super::timed(timeout, async { subnets.await.map_err(err) }).await?;
        let Some(last) = subnets.last() else {
            return Ok(out);
        };
        let last: Key = (last.try_get(0).map_err(err)?, last.try_get(1).map_err(err)?);
        let mut rows = Vec::with_capacity(page_sql.len());
        for sql in &page_sql {
            let read = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(tenant)
                .bind(space)
                .bind(&net)
                .bind(&after.0)
                .bind(&after.1)
                .bind(&last.0)
                .bind(&last.1)
                .fetch_all(&mut *conn);
            rows.push(super::timed(timeout, async { read.await.map_err(err) }).await?);
        }
        let [pools, runs, owners] = <[Vec<PgRow>; 3]>::try_from(rows)
            .map_err(|_| Error::Internal("three queries, three answers".into()))?;
        out.extend(assemble(&subnets, &pools, &runs, &owners)?);
        if subnets.len() < usize::try_from(LOAD_PAGE).unwrap_or(usize::MAX) {
            return Ok(out);
        }
        after = last;
    }
}

/// How many subnets a load reads and decodes at a time (a few under test, so that every load
/// there crosses pages).
#[cfg(not(test))]
const LOAD_PAGE: i64 = 5_000;
#[cfg(test)]
const LOAD_PAGE: i64 = 2;

/// One run as a row: its first address, its last address (clipped to the subnet), its block.
pub(super) fn run_row(addrs: &AddrSet, run: &Run) -> (String, String, i64) {
    let (first, _) = block_span(run.start);
    let (_, end) = block_span(run.start + (run.n_blocks - 1));
    let last = end.min(addrs.bitmap().last());
    (
        addrs.addr(first).to_string(),
        addrs.addr(last).to_string(),
        i64::from_ne_bytes(run.bits.to_ne_bytes()),
    )
}

/// Reads a run back from its row, checking that it lies in the subnet and starts a block.
pub(super) fn run_of(net: IpNet, first: &str, last: &str, bits: i64) -> Result<Run, engine::Error> {
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
    if block_span(block_of(first)).0 != first || last < first {
        return Err(corrupt("stored run is not block-aligned"));
    }
    Ok(Run {
        start: block_of(first),
        n_blocks: block_of(last) - block_of(first) + 1,
        bits: u64::from_ne_bytes(bits.to_ne_bytes()),
    })
}

type Key = (String, String);

/// Rebuilds subnets from the rows of one snapshot, checking everything.
pub(super) fn assemble(
    subnets: &[PgRow],
    pools: &[PgRow],
    runs: &[PgRow],
    owners: &[PgRow],
) -> Result<Vec<SubnetRecord>, Error> {
    let err = |e| map_err(e, "", "");
    let mut owners_of: HashMap<Key, Vec<(String, OwnerRow)>> = HashMap::new();
    for row in owners {
        let key: Key = (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?);
        owners_of.entry(key).or_default().push((
            row.try_get(2).map_err(err)?,
            OwnerRow {
                owner: row.try_get(3).map_err(err)?,
                since_ms: row.try_get(4).map_err(err)?,
            },
        ));
    }
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
        let owned = owners_of.remove(&key).unwrap_or_default();
        let subnet = crate::store::with_owner_rows(&key.0, subnet, owned)?;
        out.push(SubnetRecord {
            version: from_sql_version(version)?,
            space: key.0,
            subnet,
        });
    }
    Ok(out)
}

/// The rows a change writes: run starts to delete, then the runs to insert or update.
pub(super) struct RunRows {
    pub(super) removed: Vec<String>,
    pub(super) firsts: Vec<String>,
    pub(super) lasts: Vec<String>,
    pub(super) bits: Vec<i64>,
}

impl RunRows {
    pub(super) fn of(addrs: &AddrSet, removed: &[u128], upserted: &[Run]) -> Self {
        let mut rows = Self {
            removed: removed
                .iter()
                .map(|&start| addrs.addr(block_span(start).0).to_string())
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
