//! Load generation shared by the gRPC benchmarks: an in-process allot server, clients, and a
//! closed-loop load with latency percentiles.

// Not every benchmark binary uses every helper.
#![allow(dead_code)]

use allot::api::conn::{Gate, Incoming, Limits};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::auth::{Authenticator, Mode, Role};
use allot::engine::{DefaultPool, LOCAL_SPACE};
use allot::ipam::{Ipam, Tenants};
use allot::proto::pb;
use allot::proto::pb::ipam_service_client::IpamServiceClient;
use allot::startup;
use allot::store::Store;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub type Client = IpamServiceClient<Channel>;

/// The default tenant's built-in driver over `store`, with the local default pools.
pub async fn driver(store: Arc<dyn Store>) -> Arc<dyn Ipam> {
    let defaults = [(LOCAL_SPACE.to_owned(), DefaultPool::local_defaults())].into();
    startup::driver(store, defaults).await.unwrap()
}

/// The built-in drivers of every tenant over `store`, with the local default pools.
pub async fn tenants(store: Arc<dyn Store>) -> Arc<Tenants> {
    let defaults = [(LOCAL_SPACE.to_owned(), DefaultPool::local_defaults())].into();
    startup::tenants(store, defaults, &[]).await.unwrap()
}

/// Serves `tenants` on a free loopback port, without authentication.
pub async fn serve(tenants: Arc<Tenants>, store: Arc<dyn Store>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let auth = Authenticator::new(Mode::Open, store, None, Role::Write)
        .await
        .unwrap();
    tokio::spawn(startup::serve(
        Incoming::new(listener, Gate::new(Limits::default()), "grpc"),
        startup::Service {
            tenants,
            auth,
            tls: None,
        },
        std::future::pending(),
        Duration::from_secs(1),
    ));
    addr
}

/// Starts allot over `store` on a free loopback port.
pub async fn start_allot(store: Arc<dyn Store>) -> SocketAddr {
    serve(tenants(Arc::clone(&store)).await, store).await
}

/// `n` HTTP/2 connections to `addr`.
pub async fn clients(addr: SocketAddr, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Client::connect(format!("http://{addr}")).await.unwrap());
    }
    out
}

pub struct Stats {
    pub per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// Runs `op` from `per_connection` tasks on each client for `warmup` (unrecorded) then `run`;
/// `op` gets the client and the task's number.
pub async fn load<C, F, Fut>(
    clients: &[C],
    per_connection: usize,
    (warmup, run): (Duration, Duration),
    op: F,
) -> Stats
where
    C: Clone + Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now() + warmup;
    let end = start + run;
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        for j in 0..per_connection {
            let (c, op) = (c.clone(), op.clone());
            let task = i * per_connection + j;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        return latencies;
                    }
                    op(c.clone(), task).await;
                    if t0 >= start {
                        latencies.push(t0.elapsed());
                    }
                }
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Stats {
        per_s: all.len() as f64 / run.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Prints one table row: throughput, p50, p99.
pub fn row(what: &str, s: &Stats, unit: &str) {
    println!(
        "| {what} | {:.0} {unit}/s | {:.0} µs | {:.0} µs |",
        s.per_s,
        s.p50.as_secs_f64() * 1e6,
        s.p99.as_secs_f64() * 1e6
    );
}

/// Creates one pool in the local space for each of `cidrs`; returns their ids.
pub async fn make_pools(c: &mut Client, cidrs: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut ids = Vec::new();
    for pool in cidrs {
        let r = c
            .request_pool(pb::RequestPoolRequest {
                address_space: LOCAL_SPACE.into(),
                v6: pool.contains(':'),
                pool,
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(r.into_inner().pool_id);
    }
    ids
}

/// Warm-up and measured time: 1 s and 5 s under `cargo bench`, a brief smoke run under
/// `cargo test` (no `--bench`).
pub fn durations() -> (Duration, Duration) {
    if std::env::args().any(|a| a == "--bench") {
        (Duration::from_secs(1), Duration::from_secs(5))
    } else {
        (Duration::from_millis(50), Duration::from_millis(200))
    }
}
