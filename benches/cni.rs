//! ADD+DEL per second through `allot-cni`, process start included (see BENCHMARKS.md, "CNI").
//! Run: `cargo bench --bench cni`.
//!
//! Each operation runs the real plugin twice, as a runtime does — `ADD` then `DEL` for a new
//! container id, the network configuration on stdin — against an allot server in this process
//! on SQLite (the default store, durable) and on the memory store, 1 and 8 at a time.
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

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use allot::store::{MemoryStore, SqliteStore, Store};
use loadgen::{durations, load, row, start_allot};

/// Runs the plugin once; panics unless it succeeded.
fn run(command: &str, container: &str, conf: &[u8]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_allot-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = std::env::temp_dir().join(format!("allot-bench-cni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = SqliteStore::connect(&format!("sqlite://{}", dir.join("cni.db").display()))
        .await
        .unwrap();
    let stores: [(&str, Arc<dyn Store>); 2] = [
        ("SQLite", Arc::new(sqlite)),
        ("memory", Arc::new(MemoryStore::new())),
    ];
    println!("| allot-cni ADD+DEL | pairs/s | p50 | p99 |");
    println!("|---|---|---|---|");
    let serial = Arc::new(AtomicU64::new(0));
    for (n, (name, store)) in stores.into_iter().enumerate() {
        let addr = start_allot(store).await;
        let conf = Arc::new(
            serde_json::json!({
                "cniVersion": "1.1.0", "name": "bench", "type": "bridge",
                "ipam": {"type": "allot-cni", "server": format!("http://{addr}"),
                         "subnet": format!("10.{}.0.0/16", 60 + n)},
            })
            .to_string()
            .into_bytes(),
        );
        for at_once in [1, 8] {
            let (conf, serial) = (Arc::clone(&conf), Arc::clone(&serial));
            let op = move |(): (), _task: usize| {
                let (conf, serial) = (Arc::clone(&conf), Arc::clone(&serial));
                async move {
                    let id = format!("bench{}", serial.fetch_add(1, Ordering::Relaxed));
                    // The plugin is a process of its own: wait for it off the runtime.
                    tokio::task::spawn_blocking(move || {
                        run("ADD", &id, &conf);
                        run("DEL", &id, &conf);
                    })
                    .await
                    .unwrap();
                }
            };
            let stats = load(&[()], at_once, durations(), op).await;
            row(&format!("{name}, {at_once} at a time"), &stats, "pairs");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
