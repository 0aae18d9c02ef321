//! Durable allocation on PostgreSQL, beside pgbench on the same server in the same run (see
//! BENCHMARKS.md). Run: `cargo bench --bench postgres` (uses `DATABASE_URL`, else
//! postgres://postgres@127.0.0.1:5432/postgres; needs `pgbench`).
//!
//! - pgbench, 64 clients: one UPDATE of a single hot row per transaction (the ceiling of one
//!   transaction per allocation on one pool), and one UPDATE of a random row among 100,000
//!   (the server's durable-commit ceiling);
//! - allot: durable RequestAddress/s through gRPC on one pool and across 16 pools, with 1, 16
//!   and 64 requests in flight, and across 256 pools with 64, p50/p99, and how many subnet
//!   writes the allocations took (several subnets' writes share a transaction);
//! - cold start: loading 10,000 subnets into a fresh driver;
//! - replica freshness: how long a change committed by one driver takes to show in another's
//!   utilization (LISTEN/NOTIFY).
//!
//! Under `cargo test` (no `--bench`) everything runs briefly, as a smoke test.

// Set-up panics on failure (a bug to see at once); counts become f64 for display only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

mod loadgen;
mod pg;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::engine::{AddressRequest, LOCAL_SPACE, PoolId, PoolRequest, Subnet};
use allot::proto::pb;
use allot::store::{PgStore, Store};
use loadgen::{Client, clients, driver, load, row, start_allot};
use sqlx::{Connection, PgConnection};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The number of subnet writes so far: every write bumps one subnet's version by one (a
/// database transaction carries several subnets' writes).
async fn commits(url: &str) -> i64 {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT coalesce(sum(version), 0)::int8 FROM subnets")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

async fn make_pools(c: &mut Client, tag: usize, n: usize) -> Vec<String> {
    loadgen::make_pools(c, (0..n).map(|i| format!("fd00:{tag:x}:{i:x}::/64"))).await
}

fn allocate_op(
    ids: Vec<String>,
) -> impl Fn(Client, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Clone
{
    let ids = Arc::new(ids);
    move |mut c: Client, task| {
        let id = ids[task % ids.len()].clone();
        Box::pin(async move {
            c.request_address(pb::RequestAddressRequest {
                pool_id: id,
                address: String::new(),
                options: HashMap::new(),
                ..Default::default()
            })
            .await
            .unwrap();
        })
    }
}

/// Releases an address no one holds (the last of the /64, never reached by allocation): a
/// no-op, which a replica may answer only once it has confirmed its cached version (issue #8).
fn release_free_op(
    ids: Vec<String>,
) -> impl Fn(Client, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Clone
{
    let ids = Arc::new(ids);
    move |mut c: Client, task| {
        let id = ids[task % ids.len()].clone();
        let parts: Vec<&str> = id.split('/').collect();
        let net: ipnet::IpNet = format!("{}/{}", parts[1], parts[2]).parse().unwrap();
        let free = net.broadcast().to_string();
        Box::pin(async move {
            c.release_address(pb::ReleaseAddressRequest {
                pool_id: id,
                address: free,
                ..Default::default()
            })
            .await
            .unwrap();
        })
    }
}

/// Creates `n` /24 subnets, each with a few allocations, straight through the store.
async fn fill(store: &PgStore, n: usize) {
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(32) {
                let net = format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap();
                let id = PoolId::new("global", net, None).unwrap();
                let mut subnet = Subnet::create(&id).unwrap();
                for _ in 0..(i % 7) {
                    subnet.allocate(&id, &AddressRequest::default()).unwrap();
                }
                store
                    .create_subnet("default", "global", &subnet)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (warmup, run) = loadgen::durations();
    let url = pg::fresh_database("postgres").await;
    // The ceilings, measured by pgbench on the same server.
    let (hot, random) = pg::ceilings(&url, if full { 5 } else { 1 }).await;
    println!("| scenario | throughput | p50 | p99 |");
    println!("|---|---|---|---|");
    println!("| pgbench, 64 clients, UPDATE of one hot row | {hot:.0} tps | | |");
    println!("| pgbench, 64 clients, UPDATE of a random row of 100k | {random:.0} tps | | |");

    let store = PgStore::connect(&url, TIMEOUT).await.unwrap();
    let addr = start_allot(Arc::new(store.clone())).await;
    let mut tag = 1;
    for n_pools in [1, 16, 256] {
        for in_flight in [1, 16, 64] {
            if n_pools == 256 && in_flight < 64 {
                continue;
            }
            let (n_conn, per_conn) = if in_flight == 1 {
                (1, 1)
            } else {
                (4, in_flight / 4)
            };
            let mut cs = clients(addr, n_conn).await;
            let ids = make_pools(&mut cs[0], tag, n_pools).await;
            tag += 1;
            let before = commits(&url).await;
            let stats = load(&cs, per_conn, (warmup, run), allocate_op(ids)).await;
            let txs = commits(&url).await - before;
            let allocations = stats.per_s * (warmup + run).as_secs_f64();
            row(
                &format!(
                    "allot durable RequestAddress, {n_pools} pool(s), {in_flight} in flight \
                     (~{:.1} allocations per subnet write)",
                    allocations / txs.max(1) as f64
                ),
                &stats,
                "alloc",
            );
            if n_pools == 1 && in_flight == 64 {
                println!(
                    "| same, against pgbench's hot row | {:.1}× | | |",
                    stats.per_s / hot
                );
            }
        }
    }

    // Three replicas (three drivers, each with its own connection pool and cache) on one
    // pool: they take turns through the version compare-and-swap, reloading when they lose.
    let mut replica_clients = Vec::new();
    for _ in 0..3 {
        let store = PgStore::connect(&url, TIMEOUT).await.unwrap();
        let addr = start_allot(Arc::new(store)).await;
        replica_clients.extend(clients(addr, 1).await);
    }
    for n_pools in [1, 16, 256] {
        let ids = make_pools(&mut replica_clients[0], tag, n_pools).await;
        tag += 1;
        tokio::time::sleep(Duration::from_millis(200)).await; // the others hear of the pools
        let stats = load(&replica_clients, 21, (warmup, run), allocate_op(ids)).await;
        row(
            &format!("allot durable RequestAddress, 3 replicas on {n_pools} pool(s), 63 in flight"),
            &stats,
            "alloc",
        );
    }

    // What deciding on the stored state costs where nothing is written: releases of a free
    // address, one replica and three, on one pool.
    let mut one = clients(addr, 4).await;
    let ids = make_pools(&mut one[0], tag, 1).await;
    tag += 1;
    let stats = load(&one, 16, (warmup, run), release_free_op(ids)).await;
    row(
        "allot ReleaseAddress of a free address (no-op), 1 pool, 64 in flight",
        &stats,
        "release",
    );
    let ids = make_pools(&mut replica_clients[0], tag, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = load(&replica_clients, 21, (warmup, run), release_free_op(ids)).await;
    row(
        "allot ReleaseAddress of a free address (no-op), 3 replicas on 1 pool, 63 in flight",
        &stats,
        "release",
    );

    // Cold start: a fresh driver loading every subnet.
    let n_subnets = if full { 10_000 } else { 300 };
    fill(&store, n_subnets).await;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let fresh = PgStore::connect(&url, TIMEOUT).await.unwrap();
        let ipam = driver(Arc::new(fresh)).await;
        best = best.min(t0.elapsed());
        let n = ipam
            .list_pools(Some("global"), &allot::ipam::PoolPage::ALL)
            .await
            .unwrap()
            .len();
        assert_eq!(n, n_subnets);
    }
    println!(
        "| cold start: connect and load {n_subnets} subnets (best of 3) | {:.0} ms | | |",
        best.as_secs_f64() * 1e3
    );

    // Freshness: a change committed through one driver, seen by another's utilization.
    let a = driver(Arc::new(PgStore::connect(&url, TIMEOUT).await.unwrap())).await;
    let b = driver(Arc::new(PgStore::connect(&url, TIMEOUT).await.unwrap())).await;
    let id = a
        .request_pool(
            LOCAL_SPACE,
            &PoolRequest::parse("fd00:ffff::/64", "", true).unwrap(),
        )
        .await
        .unwrap();
    let mut lags = Vec::new();
    let samples = if full { 200 } else { 10 };
    for _ in 0..samples {
        a.request_address(&id, &AddressRequest::default())
            .await
            .unwrap();
        let want = a.utilization(std::slice::from_ref(&id)).await.unwrap()[0]
            .utilization
            .as_ref()
            .unwrap()
            .allocated_in_subnet;
        let t0 = Instant::now();
        loop {
            if let Ok(states) = b.utilization(std::slice::from_ref(&id)).await
                && states[0]
                    .utilization
                    .as_ref()
                    .is_ok_and(|u| u.allocated_in_subnet == want)
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "replica b never caught up"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(t0.elapsed());
    }
    lags.sort_unstable();
    println!(
        "| another replica's GetIpamState reflects a commit (LISTEN/NOTIFY) | | {:.1} ms | {:.1} ms (max {:.1} ms) |",
        lags[lags.len() / 2].as_secs_f64() * 1e3,
        lags[(lags.len() * 99 / 100).min(lags.len() - 1)].as_secs_f64() * 1e3,
        lags[lags.len() - 1].as_secs_f64() * 1e3
    );

    drop((a, b));
    pg::drop_database("postgres").await;
}
