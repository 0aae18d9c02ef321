//! What owners cost (see BENCHMARKS.md, "Owners"). Run: `cargo bench --bench owners`.
//!
//! RequestAddress with an owner (each call a new owner) against the same call without one, 64
//! in flight (16 tasks on each of 4 connections), on 1 pool and on 16, on the memory store and
//! on SQLite, in alternating rounds of the same run. Allocations only (pools of a /8 each), so
//! that an owned call's extra work — its holder in the subnet, its owner row written with the
//! change — is what differs.
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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use allot::proto::pb;
use allot::store::{MemoryStore, SqliteStore, Store};
use loadgen::{Client, clients, load, start_allot};

fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (rounds, durations) = if benching() {
        (3, (Duration::from_millis(500), Duration::from_secs(3)))
    } else {
        (1, (Duration::from_millis(20), Duration::from_millis(100)))
    };
    let dir = std::env::temp_dir().join(format!("allot-bench-owners-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("| RequestAddress, 64 in flight | without owner | with owner | ratio (range) |");
    println!("|---|---|---|---|");
    let sqlite = SqliteStore::connect(&format!("sqlite://{}", dir.join("owners.db").display()))
        .await
        .unwrap();
    let stores: [(&str, Arc<dyn Store>); 2] = [
        ("memory", Arc::new(MemoryStore::new())),
        ("SQLite", Arc::new(sqlite)),
    ];
    let mut next_net = 0;
    for (name, store) in stores {
        let addr = start_allot(store).await;
        let cs = clients(addr, 4).await;
        for n_pools in [1, 16] {
            let mut ids = Vec::new();
            for _ in 0..n_pools {
                next_net += 1;
                let r = cs[0]
                    .clone()
                    .request_pool(pb::RequestPoolRequest {
                        address_space: "local".into(),
                        pool: format!("{next_net}.0.0.0/8"),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                ids.push(r.into_inner().pool_id);
            }
            let ids = Arc::new(ids);
            let serial = Arc::new(AtomicU64::new(0));
            let mut rates = [Vec::new(), Vec::new()];
            for _ in 0..rounds {
                for (side, owned) in [false, true].into_iter().enumerate() {
                    let (ids, serial) = (Arc::clone(&ids), Arc::clone(&serial));
                    let op = move |mut c: Client, task: usize| {
                        let id = ids[task % ids.len()].clone();
                        let owner = if owned {
                            format!("c{}/eth0", serial.fetch_add(1, Ordering::Relaxed))
                        } else {
                            String::new()
                        };
                        async move {
                            c.request_address(pb::RequestAddressRequest {
                                pool_id: id,
                                owner,
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        }
                    };
                    let stats = load(&cs, 16, durations, op).await;
                    rates[side].push(stats.per_s);
                }
            }
            let ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(a, b)| b / a).collect();
            println!(
                "| {name}, {n_pools} pool(s) | {:.0}/s | {:.0}/s | {:.3} ({:.3}–{:.3}) |",
                median(rates[0].clone()),
                median(rates[1].clone()),
                median(ratios.clone()),
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
