//! End-to-end gRPC benchmarks over loopback (see BENCHMARKS.md). Run: `cargo bench --bench grpc`.
//!
//! Each scenario keeps 64 requests in flight (16 tasks on each of 4 connections) for a fixed
//! time and reports requests/s with p50/p99 latency. The ceiling is a bare tonic server started
//! here, serving the same generated service with handlers that do nothing: what tonic, HTTP/2
//! and loopback cost on this machine. Under `cargo test` (no `--bench`) every scenario runs
//! briefly, as a smoke test.

// Set-up panics on failure (a bug to see at once); counts become f64 for display only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allot::engine::LOCAL_SPACE;
use allot::proto::pb;
use allot::proto::pb::ipam_service_server::{IpamService, IpamServiceServer};
use allot::store::{MemoryStore, SqliteStore};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

mod loadgen;

use allot::startup;
use loadgen::{Client, Stats, clients as connect, load as load_on, row, start_allot};

const CONNECTIONS: usize = 4;
const TASKS_PER_CONNECTION: usize = 16;

/// The ceiling: the same service, every handler an immediate empty reply.
struct Bare;

#[tonic::async_trait]
impl IpamService for Bare {
    async fn get_default_address_spaces(
        &self,
        _: Request<pb::GetDefaultAddressSpacesRequest>,
    ) -> Result<Response<pb::GetDefaultAddressSpacesResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn get_capabilities(
        &self,
        _: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::GetCapabilitiesResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn request_pool(
        &self,
        _: Request<pb::RequestPoolRequest>,
    ) -> Result<Response<pb::RequestPoolResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn release_pool(
        &self,
        _: Request<pb::ReleasePoolRequest>,
    ) -> Result<Response<pb::ReleasePoolResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn list_pools(
        &self,
        _: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn request_address(
        &self,
        _: Request<pb::RequestAddressRequest>,
    ) -> Result<Response<pb::RequestAddressResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn release_address(
        &self,
        _: Request<pb::ReleaseAddressRequest>,
    ) -> Result<Response<pb::ReleaseAddressResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn get_ipam_state(
        &self,
        _: Request<pb::GetIpamStateRequest>,
    ) -> Result<Response<pb::GetIpamStateResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn list_allocations(
        &self,
        _: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn release_owner(
        &self,
        _: Request<pb::ReleaseOwnerRequest>,
    ) -> Result<Response<pb::ReleaseOwnerResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn garbage_collect(
        &self,
        _: Request<pb::GarbageCollectRequest>,
    ) -> Result<Response<pb::GarbageCollectResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
}

async fn clients(addr: SocketAddr) -> Vec<Client> {
    connect(addr, CONNECTIONS).await
}

async fn load<F, Fut>(clients: &[Client], warmup: Duration, run: Duration, op: F) -> Stats
where
    F: Fn(Client, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    load_on(clients, TASKS_PER_CONNECTION, (warmup, run), op).await
}

async fn start_bare() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IpamServiceServer::new(Bare))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    addr
}

async fn make_pools(c: &mut Client, n: usize) -> Vec<String> {
    loadgen::make_pools(c, (0..n).map(|i| format!("10.{i}.0.0/16"))).await
}

fn state_op(
    ids: Vec<String>,
) -> impl Fn(Client, usize) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Clone {
    let ids = Arc::new(ids);
    move |mut c: Client, _task| {
        let ids = Arc::clone(&ids);
        Box::pin(async move {
            let r = c
                .get_ipam_state(pb::GetIpamStateRequest {
                    pool_ids: ids.to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(r.get_ref().pools.len(), ids.len());
        })
    }
}

/// `GetIpamState` without pool ids: every pool of the server, expected to be `n`.
fn every_op(
    n: usize,
) -> impl Fn(Client, usize) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Clone {
    move |mut c: Client, _task| {
        Box::pin(async move {
            let r = c
                .get_ipam_state(pb::GetIpamStateRequest {
                    pool_ids: Vec::new(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(r.get_ref().pools.len(), n);
        })
    }
}

fn pair_op(
    ids: Vec<String>,
) -> impl Fn(Client, usize) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Clone {
    let ids = Arc::new(ids);
    move |mut c: Client, task| {
        let id = ids[task % ids.len()].clone();
        Box::pin(async move {
            let a = c
                .request_address(pb::RequestAddressRequest {
                    pool_id: id.clone(),
                    address: String::new(),
                    options: HashMap::new(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .address;
            c.release_address(pb::ReleaseAddressRequest {
                pool_id: id,
                address: a,
                ..Default::default()
            })
            .await
            .unwrap();
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (warmup, run) = loadgen::durations();
    println!("| scenario (64 in flight, loopback) | throughput | p50 | p99 |");
    println!("|---|---|---|---|");

    let bare = clients(start_bare().await).await;
    let ceiling = load(&bare, warmup, run, state_op(Vec::new())).await;
    row(
        "bare tonic server, empty unary handler (ceiling)",
        &ceiling,
        "req",
    );

    let addr = start_allot(Arc::new(MemoryStore::new())).await;
    let mut cs = clients(addr).await;
    let ids = make_pools(&mut cs[0], 16).await;
    let one = load(&cs, warmup, run, state_op(ids[..1].to_vec())).await;
    row("GetIpamState, 1 pool", &one, "req");
    println!(
        "| GetIpamState, 1 pool, share of the ceiling | {:.0}% | | |",
        100.0 * one.per_s / ceiling.per_s
    );
    let sixteen = load(&cs, warmup, run, state_op(ids.clone())).await;
    row("GetIpamState, 16 pools per request", &sixteen, "req");
    let every = load(&cs, warmup, run, every_op(ids.len())).await;
    row("GetIpamState, every pool (16)", &every, "req");
    let pairs = load(&cs, warmup, run, pair_op(ids[..1].to_vec())).await;
    row(
        "RequestAddress+ReleaseAddress, memory store, 1 pool",
        &pairs,
        "pair",
    );
    let pairs = load(&cs, warmup, run, pair_op(ids.clone())).await;
    row(
        "RequestAddress+ReleaseAddress, memory store, 16 pools",
        &pairs,
        "pair",
    );

    let dir = std::env::temp_dir().join(format!("allot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let addr = start_allot(Arc::new(SqliteStore::connect(&url).await.unwrap())).await;
    let mut cs = clients(addr).await;
    let ids = make_pools(&mut cs[0], 16).await;
    let pairs = load(&cs, warmup, run, pair_op(ids[..1].to_vec())).await;
    row(
        "RequestAddress+ReleaseAddress, SQLite store, 1 pool",
        &pairs,
        "pair",
    );
    let pairs = load(&cs, warmup, run, pair_op(ids.clone())).await;
    row(
        "RequestAddress+ReleaseAddress, SQLite store, 16 pools",
        &pairs,
        "pair",
    );

    // The remote driver: allot in front of a plugin (a second allot driver, memory store,
    // serving the plugin protocol on a unix socket in this process), against the built-in
    // driver on the same memory store. One request in flight gives the per-request overhead.
    let socket = dir.join("plugin.sock");
    let plugin_tenants = loadgen::tenants(Arc::new(MemoryStore::new())).await;
    let bound = allot::api::plugin::bind(&socket).unwrap();
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let gate = allot::api::conn::Gate::new(allot::api::conn::Limits::default());
    tokio::spawn(allot::api::plugin::serve(
        allot::api::conn::Incoming::new(bound.listener, gate, "docker plugin"),
        bound.path,
        plugin_tenants,
        allot::store::DEFAULT_TENANT.to_owned(),
        stopping,
    ));
    let route = (
        "far".to_owned(),
        allot::config::DriverSpec::Remote {
            endpoint: allot::ipam::Endpoint::Unix(socket.clone()),
            remote_space: None,
            timeout: Duration::from_secs(10),
        },
    );
    let front_store: Arc<dyn allot::store::Store> = Arc::new(MemoryStore::new());
    let front = startup::tenants(
        Arc::clone(&front_store),
        [(LOCAL_SPACE.to_owned(), Vec::new())].into(),
        &[route],
    )
    .await
    .unwrap();
    let addr = loadgen::serve(front, front_store).await;
    let mut cs = clients(addr).await;
    let remote_id = cs[0]
        .request_pool(pb::RequestPoolRequest {
            address_space: "far".into(),
            pool: "10.200.0.0/16".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pool_id;
    let builtin_ids = make_pools(&mut cs[0], 1).await;
    for (what, id) in [("built-in", &builtin_ids[0]), ("remote", &remote_id)] {
        let one = load_on(&cs[..1], 1, (warmup, run), pair_op(vec![id.clone()])).await;
        row(
            &format!("RequestAddress+ReleaseAddress, {what} driver, 1 pool, 1 in flight"),
            &one,
            "pair",
        );
        let many = load(&cs, warmup, run, pair_op(vec![id.clone()])).await;
        row(
            &format!("RequestAddress+ReleaseAddress, {what} driver, 1 pool, 64 in flight"),
            &many,
            "pair",
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
