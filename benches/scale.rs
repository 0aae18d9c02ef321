//! 100,000 pools: cold start of the real binary from SQLite and from PostgreSQL (spawned until
//! it listens, every tenant's subnets loaded), its resident memory per pool, and paging
//! through every pool with the CLI. Two layouts: 100,000 pools in one tenant, and 1,000
//! tenants of 100 pools. Each pool is a /24 with 4 addresses allocated (beside its reserved
//! ones). Run: `cargo bench --bench scale` (PostgreSQL at `DATABASE_URL`, else
//! postgres://postgres@127.0.0.1:5432).
//!
//! Under `cargo test` (no `--bench`) the same runs with 1,000 pools, as a smoke test.

// Set-up panics on failure (a bug to see at once); counts become f64 for display only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

// Shared with other benchmarks, which use the rest (pgbench, request bodies).
#[allow(dead_code)]
mod pg;
#[allow(dead_code)]
mod served;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::engine::{AddressRequest, PoolId, Subnet};
use allot::store::{PgStore, SqliteStore, Store};
use served::Binary;

fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// How the pools are spread: (tenants, pools per tenant).
#[derive(Clone, Copy)]
struct Layout {
    tenants: usize,
    pools: usize,
}

impl Layout {
    fn total(self) -> usize {
        self.tenants * self.pools
    }

    /// The tenants' names: `default` alone (the tenant an open server serves), or t0, t1, ….
    fn tenant(self, t: usize) -> String {
        if self.tenants == 1 {
            "default".to_owned()
        } else {
            format!("t{t}")
        }
    }

    fn describe(self) -> String {
        if self.tenants == 1 {
            format!("{} pools in one tenant", thousands(self.pools))
        } else {
            format!(
                "{} tenants × {} pools",
                thousands(self.tenants),
                thousands(self.pools)
            )
        }
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Stores `layout`'s pools through the store's own API, 32 at a time.
async fn fill(store: Arc<dyn Store>, layout: Layout) {
    for t in 0..layout.tenants {
        store.create_tenant(&layout.tenant(t), 0).await.unwrap();
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (store, next) = (Arc::clone(&store), Arc::clone(&next));
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= layout.total() {
                    return;
                }
                let (t, p) = (k / layout.pools, k % layout.pools);
                // 10.0.0.0/24, 10.0.1.0/24, … on into 11.0.0.0/8 past 65,536 pools.
                let (a, b, c) = (10 + p / 65_536, p / 256 % 256, p % 256);
                let net = format!("{a}.{b}.{c}.0/24").parse().unwrap();
                let id = PoolId::new("local", net, None).unwrap();
                let mut subnet = Subnet::with_pools(net, [None]).unwrap();
                for _ in 0..4 {
                    subnet.allocate(&id, &AddressRequest::default()).unwrap();
                }
                store
                    .create_subnet(&layout.tenant(t), "local", &subnet)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// One cold start of the real binary on `url`: seconds until it listens, and its resident
/// memory once it answered the CLI's `probe`.
fn cold_start(dir: &Path, url: &str, probe: &[&str]) -> (f64, u64, Binary) {
    let t0 = Instant::now();
    let server = Binary::start(
        Path::new(env!("CARGO_BIN_EXE_allot")),
        dir,
        "scale.log",
        "info",
        &["--database-url", url],
    );
    let took = t0.elapsed().as_secs_f64();
    server.cli(probe);
    let rss = rss_of(server.pid());
    (took, rss, server)
}

/// Best and median of three cold starts, bytes per pool over an empty database's server, and
/// (one tenant) the time the CLI takes to page through every pool and every state.
fn measure(dir: &Path, store: &str, url: &str, empty_rss: u64, layout: Layout) {
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        // One server at a time: SQLite lets one process hold the file.
        drop(last.take());
        // A call that reads a pool (the tenant default has none when the pools are spread).
        let probe: &[&str] = if layout.tenants == 1 {
            &["state", "local/10.0.0.0/24"]
        } else {
            &["pool", "list"]
        };
        let (took, bytes, server) = cold_start(dir, url, probe);
        starts.push(took);
        rss.push(bytes);
        last = Some(server);
    }
    starts.sort_by(f64::total_cmp);
    rss.sort_unstable();
    let per_pool = rss[1].saturating_sub(empty_rss) / layout.total() as u64;
    println!(
        "| {store}, {} | {:.2} s | {:.2} s | {} bytes | {:.0} MiB |",
        layout.describe(),
        starts[0],
        starts[1],
        per_pool,
        rss[1] as f64 / 1024.0 / 1024.0,
    );
    let server = last.unwrap();
    if layout.tenants == 1 {
        let t0 = Instant::now();
        let listed = server.cli(&["pool", "list"]);
        let list_took = t0.elapsed().as_secs_f64();
        assert_eq!(listed.lines().count(), layout.total());
        let t0 = Instant::now();
        let states = server.cli(&["state", "--output", "json"]);
        let state_took = t0.elapsed().as_secs_f64();
        let states: serde_json::Value = serde_json::from_str(&states).unwrap();
        let states = states.as_array().unwrap();
        assert_eq!(states.len(), layout.total());
        assert!(
            states
                .iter()
                .all(|s| s["allocated_ips_in_subnet"] == 6 && s["error"] == "")
        );
        println!(
            "| {store}, {}: `allot pool list` / `allot state --output json` through every page | {:.2} s / {:.2} s | | | |",
            layout.describe(),
            list_took,
            state_took,
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = if benching() { 100_000 } else { 1_000 };
    let layouts = [
        Layout {
            tenants: 1,
            pools: n,
        },
        Layout {
            tenants: n / 100,
            pools: 100,
        },
    ];
    let dir: PathBuf = std::env::temp_dir().join(format!("allot-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "| store, pools | cold start, best of 3 | median | resident memory per pool | resident in all (median) |"
    );
    println!("|---|---|---|---|---|");

    // The server on an empty database, for the memory it has before any pool.
    let empty_url = format!("sqlite://{}", dir.join("empty.db").display());
    drop(SqliteStore::connect(&empty_url).await.unwrap());
    let (_, empty_rss, server) = cold_start(&dir, &empty_url, &["pool", "list"]);
    drop(server);

    // ALLOT_SCALE_ONLY=sqlite or =postgres: one store only.
    let only = std::env::var("ALLOT_SCALE_ONLY").unwrap_or_default();
    for (i, layout) in layouts.into_iter().enumerate() {
        if only == "postgres" {
            measure_postgres(&dir, i, empty_rss, layout).await;
            continue;
        }
        let url = format!("sqlite://{}", dir.join(format!("scale-{i}.db")).display());
        let t0 = Instant::now();
        fill(Arc::new(SqliteStore::connect(&url).await.unwrap()), layout).await;
        eprintln!(
            "filled SQLite ({}) in {:.1} s",
            layout.describe(),
            t0.elapsed().as_secs_f64()
        );
        measure(&dir, "SQLite", &url, empty_rss, layout);
        if only != "sqlite" {
            measure_postgres(&dir, i, empty_rss, layout).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn measure_postgres(dir: &Path, i: usize, empty_rss: u64, layout: Layout) {
    let tag = format!("scale{i}");
    let url = pg::fresh_database(&tag).await;
    let t0 = Instant::now();
    let store = PgStore::connect(&url, Duration::from_secs(60))
        .await
        .unwrap();
    fill(Arc::new(store), layout).await;
    eprintln!(
        "filled PostgreSQL ({}) in {:.1} s",
        layout.describe(),
        t0.elapsed().as_secs_f64()
    );
    // The statistics autovacuum gathers within a minute of a bulk load: without them the
    // planner takes the freshly filled tables for empty.
    pg::exec(&url, "ANALYZE").await;
    measure(dir, "PostgreSQL", &url, empty_rss, layout);
    pg::drop_database(&tag).await;
}
