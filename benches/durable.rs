//! Durable RequestAddress measured from outside the server's process: the real binary on SQLite
//! and on PostgreSQL (one replica and three), driven by h2load, one h2load process per pool, 64
//! requests in flight in all; beside pgbench's random-row tps on the same server in the same
//! run. Run: `cargo bench --bench durable` (needs `h2load`, Debian's nghttp2-client, and
//! `pgbench`; the server `DATABASE_URL` names, else postgres://postgres@127.0.0.1:5432).
//!
//! `ALLOT_BASELINE=/path/to/allot` measures another build of allot too, alternating with this
//! one in each configuration, for a ratio from one run. `ALLOT_ROUNDS=N` (default 1) repeats
//! the whole run N times and ends with each round's ratios and their median: on a shared
//! machine one round's pgbench figure alone can move by half.
//!
//! Under `cargo test` (no `--bench`) everything runs briefly, as a smoke test.

// Set-up panics on failure (a bug to see at once); counts become f64 for display only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod pg;
mod served;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use allot::proto::pb;
use served::{Binary, grpc_body};

/// Requests in flight in all, across the h2load processes.
const IN_FLIGHT: usize = 64;

fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `allot serve` on loopback (no credentials), on `db`.
fn start(program: &Path, db: &str, dir: &Path, n: usize) -> Binary {
    let log = format!("allot-{n}.log");
    let args = ["--database-url", db];
    Binary::start(program, dir, &log, "warn,allot::cli=info", &args)
}

/// What one measurement gave: allocations/s over every h2load process, latency percentiles
/// over every request.
struct Figures {
    per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `processes` h2load processes at once (at least one per pool), each against
/// `servers[i % servers.len()]`, with [`IN_FLIGHT`] streams in all; checks every request
/// allocated an address.
fn measure(
    servers: &[Binary],
    pools: &[String],
    processes: usize,
    dir: &Path,
    secs: u64,
) -> Figures {
    // At least one process per pool, and one per server.
    let processes = processes.max(pools.len()).max(servers.len());
    let per_process = IN_FLIGHT / processes;
    // Four connections for one process (h2load spreads its streams over them), else one each.
    let (conns, streams) = if processes == 1 {
        (4, per_process / 4)
    } else {
        (1, per_process)
    };
    let before = in_use(&servers[0], pools);
    let mut runs = Vec::new();
    for i in 0..processes {
        let pool = &pools[i % pools.len()];
        let body = grpc_body(
            dir,
            &format!("body-{i}"),
            &pb::RequestAddressRequest {
                pool_id: pool.clone(),
                ..Default::default()
            },
        );
        let log = dir.join(format!("h2load-{i}.log"));
        let server = &servers[i % servers.len()];
        let child = Command::new("h2load")
            .args(["-D", &secs.to_string(), "--warm-up-time", "1"])
            .args([
                "-c",
                &conns.to_string(),
                "-m",
                &streams.to_string(),
                "-t",
                "1",
            ])
            .arg("--log-file")
            .arg(&log)
            .arg("-d")
            .arg(&body)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg(format!(
                "http://{}/ipam.v1.IpamService/RequestAddress",
                server.1
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("h2load on PATH (Debian: nghttp2-client)");
        runs.push((child, log));
    }
    let (mut per_s, mut succeeded, mut latencies) = (0.0, 0_u64, Vec::new());
    for (child, log) in runs {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "h2load: {text}");
        assert!(text.contains(" 0 failed, 0 errored, 0 timeout"), "{text}");
        // "finished in 5.00s, 81234.56 req/s, …"; "requests: N total, N started, N done, N
        // succeeded, …"
        per_s += text
            .split(", ")
            .find_map(|part| {
                part.strip_suffix(" req/s")
                    .and_then(|n| n.parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("h2load said: {text}"));
        succeeded += text
            .split(", ")
            .find_map(|part| {
                part.strip_suffix(" succeeded")
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or_else(|| panic!("h2load said: {text}"));
        // Tab-separated: start (µs since the epoch), HTTP status, µs to the end of the reply.
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            if let Some(us) = line.split('\t').nth(2).and_then(|n| n.parse().ok()) {
                latencies.push(Duration::from_micros(us));
            }
        }
    }
    // A gRPC refusal is an HTTP success: count the addresses instead (once the replica asked
    // has heard of the others' changes).
    std::thread::sleep(Duration::from_millis(300));
    let allocated = in_use(&servers[0], pools) - before;
    assert!(
        allocated >= succeeded,
        "{succeeded} requests answered but only {allocated} addresses allocated"
    );
    latencies.sort_unstable();
    let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    Figures {
        per_s,
        p50: at(50),
        p99: at(99),
    }
}

/// Addresses in use over `pools`, as `allot state` reports them.
fn in_use(server: &Binary, pools: &[String]) -> u64 {
    let mut args = vec!["state"];
    args.extend(pools.iter().map(String::as_str));
    let table = server.cli(&args);
    // POOL DRIVER SUBNET RANGE IN-USE FREE RANGE-USED: the fifth column.
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(4)?.parse::<u64>().ok())
        .sum()
}

fn row(what: &str, f: &Figures) {
    println!(
        "| {what} | {:.0} alloc/s | {} µs | {} µs |",
        f.per_s,
        f.p50.as_micros(),
        f.p99.as_micros()
    );
}

/// The builds measured: this one, and the baseline when `ALLOT_BASELINE` names one.
fn builds() -> Vec<(String, PathBuf)> {
    let mut builds = vec![("".to_owned(), PathBuf::from(env!("CARGO_BIN_EXE_allot")))];
    if let Some(base) = std::env::var_os("ALLOT_BASELINE") {
        builds.push((" (baseline)".to_owned(), PathBuf::from(base)));
    }
    builds
}

/// One store's lines: each build on a fresh database from `fresh`, with `replicas` servers,
/// on 1 and 16 pools; returns this build's figures: (1 pool, 16 pools, 1 pool driven as the
/// 16 pools are).
async fn store_lines<F, Fut>(
    what: &str,
    fresh: F,
    replicas: usize,
    dir: &Path,
    secs: u64,
) -> (f64, f64, f64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut ours = (0.0, 0.0, 0.0);
    let mut tag = 0;
    for n_pools in [1, 16] {
        for (i, (label, program)) in builds().iter().enumerate() {
            tag += 1;
            let db = fresh(tag).await;
            let servers: Vec<Binary> = (0..replicas).map(|r| start(program, &db, dir, r)).collect();
            let pools: Vec<String> = (0..n_pools)
                .map(|p| {
                    servers[0].cli(&[
                        "pool",
                        "request",
                        "--pool",
                        &format!("fd00:{tag:x}:{p:x}::/64"),
                        "--v6",
                    ])
                })
                .collect();
            // The other replicas hear of the pools.
            std::thread::sleep(Duration::from_millis(300));
            let f = measure(&servers, &pools, 1, dir, secs);
            row(&format!("{what}, {n_pools} pool(s){label}"), &f);
            if n_pools == 1 && i == 0 {
                // The 16-pool lines' client (16 processes, 16 connections) on one pool: what
                // the client's own cost takes, apart from the store's.
                let f = measure(&servers, &pools, 16, dir, secs);
                row(&format!("{what}, 1 pool, 16 h2load processes"), &f);
                ours.2 = f.per_s;
            }
            if i == 0 {
                if n_pools == 1 {
                    ours.0 = f.per_s;
                } else {
                    ours.1 = f.per_s;
                }
            }
        }
    }
    ours
}

/// The ratios of one round: SQLite's 16 pools ÷ its 1 pool, the same ÷ 1 pool driven by 16
/// processes, PostgreSQL's 16 pools ÷ pgbench's random-row tps.
type Ratios = [f64; 3];

async fn round(dir: &Path, round: usize, secs: u64) -> Ratios {
    let url = pg::fresh_database("durable_pgbench").await;
    let (_, random) = pg::ceilings(&url, secs).await;
    pg::drop_database("durable_pgbench").await;
    println!("| scenario | throughput | p50 | p99 |");
    println!("|---|---|---|---|");
    println!("| pgbench, 64 clients, UPDATE of a random row of 100k | {random:.0} tps | | |");

    let sqlite = |tag: usize| {
        let path = dir.join(format!("bench-{round}-{tag}.db"));
        async move { format!("sqlite://{}", path.display()) }
    };
    let (one, sixteen, one_as_sixteen) = store_lines("h2load, SQLite", sqlite, 1, dir, secs).await;
    let sqlite_ratios = (sixteen / one.max(1.0), sixteen / one_as_sixteen.max(1.0));
    println!(
        "| SQLite, 16 pools ÷ 1 pool | {:.2} (÷ 1 pool with the same client: {:.2}) | | |",
        sqlite_ratios.0, sqlite_ratios.1
    );
    let postgres = |tag: usize| async move { pg::fresh_database(&format!("durable_{tag}")).await };
    let (_, sixteen, _) =
        store_lines("h2load, PostgreSQL, 1 replica", postgres, 1, dir, secs).await;
    let pg_ratio = sixteen / random.max(1.0);
    println!("| PostgreSQL, 1 replica, 16 pools ÷ pgbench random-row tps | {pg_ratio:.2} | | |");
    store_lines("h2load, PostgreSQL, 3 replicas", postgres, 3, dir, secs).await;
    for tag in 1..=8 {
        pg::drop_database(&format!("durable_{tag}")).await;
    }
    [sqlite_ratios.0, sqlite_ratios.1, pg_ratio]
}

/// `values` listed, then their median.
fn summary(values: &mut [f64]) -> String {
    let listed: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => f64::midpoint(values[n / 2 - 1], values[n / 2]),
    };
    format!("{} (median {median:.2})", listed.join(", "))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secs = if benching() { 5 } else { 1 };
    let rounds: usize = std::env::var("ALLOT_ROUNDS").map_or(1, |r| {
        r.parse()
            .ok()
            .filter(|&n| n > 0)
            .expect("ALLOT_ROUNDS: a positive number")
    });
    let dir = std::env::temp_dir().join(format!("allot-bench-durable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut all: Vec<Ratios> = Vec::new();
    for r in 1..=rounds {
        if rounds > 1 {
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            println!("\nRound {r} of {rounds}, load average {}:\n", load.trim());
        }
        all.push(round(&dir, r, secs).await);
    }
    if rounds > 1 {
        println!("\n| ratio, each round | |\n|---|---|");
        let names = [
            "SQLite, 16 pools ÷ 1 pool",
            "SQLite, 16 pools ÷ 1 pool driven by 16 h2load processes",
            "PostgreSQL, 1 replica, 16 pools ÷ pgbench random-row tps",
        ];
        for (k, name) in names.iter().enumerate() {
            let mut values: Vec<f64> = all.iter().map(|r| r[k]).collect();
            println!("| {name} | {} |", summary(&mut values));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
