//! What tenancy costs (see BENCHMARKS.md, "Tenancy"). Run: `cargo bench --bench tenancy`.
//!
//! - Authentication: the same calls, 64 in flight (16 tasks on each of 4 connections), against a
//!   server requiring a token and one with `--auth none`, in alternating rounds of the same run:
//!   in-process (tonic clients) and from outside the process (h2load against the real binary,
//!   when h2load is installed: Debian's nghttp2-client).
//! - TLS against plaintext, the same way (in-process).
//! - Cold start and memory of 1,000 tenants × 100 pools (/24, a few addresses each) from SQLite:
//!   the time to build every tenant's driver, and the resident memory it adds.
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
mod served;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::api::conn::{Gate, Incoming, Limits};
use allot::api::tls::{Tls, TlsFiles};
use allot::auth::{Authenticator, Mode, Role};
use allot::engine::{AddressRequest, DefaultPool, LOCAL_SPACE, PoolId, Subnet};
use allot::proto::pb;
use allot::proto::pb::ipam_service_client::IpamServiceClient;
use allot::startup;
use allot::store::{Directory, MemoryStore, SqliteStore, Store};
use loadgen::{Stats, load};
use served::{Binary, grpc_body};
use tokio::net::TcpListener;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const CONNECTIONS: usize = 4;
const TASKS_PER_CONNECTION: usize = 16;

fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Adds a bearer token to every call, or nothing.
#[derive(Clone)]
struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

type Client = IpamServiceClient<InterceptedService<Channel, Bearer>>;

/// An in-process server over `store`: authentication `mode` (with `admin` as its bootstrap
/// token), TLS if given.
async fn serve(
    store: Arc<dyn Store>,
    mode: Mode,
    admin: Option<&str>,
    tls: Option<Arc<Tls>>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let auth = Authenticator::new(mode, Arc::clone(&store), admin, Role::Write)
        .await
        .unwrap();
    let defaults = [(LOCAL_SPACE.to_owned(), DefaultPool::local_defaults())].into();
    let tenants = startup::tenants(store, defaults, &[]).await.unwrap();
    tokio::spawn(startup::serve(
        Incoming::new(listener, Gate::new(Limits::default()), "grpc"),
        startup::Service { tenants, auth, tls },
        std::future::pending(),
        Duration::from_secs(1),
    ));
    addr
}

async fn clients(addr: SocketAddr, token: Option<&str>, ca: Option<&Path>) -> Vec<Client> {
    let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = match ca {
            None => Channel::from_shared(format!("http://{addr}")).unwrap(),
            Some(ca) => Channel::from_shared(format!("https://localhost:{}", addr.port()))
                .unwrap()
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
                        .domain_name("localhost"),
                )
                .unwrap(),
        };
        let channel = channel.connect().await.unwrap();
        out.push(IpamServiceClient::with_interceptor(channel, bearer.clone()));
    }
    out
}

async fn make_pools(c: &mut Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = c
            .request_pool(pb::RequestPoolRequest {
                address_space: LOCAL_SPACE.into(),
                pool: format!("10.{i}.0.0/16"),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(r.into_inner().pool_id);
    }
    ids
}

type Op =
    Arc<dyn Fn(Client, usize) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn state_op(id: String) -> Op {
    Arc::new(move |mut c: Client, _| {
        let id = id.clone();
        Box::pin(async move {
            c.get_ipam_state(pb::GetIpamStateRequest {
                pool_ids: vec![id],
                ..Default::default()
            })
            .await
            .unwrap();
        })
    })
}

fn pair_op(ids: Vec<String>) -> Op {
    let ids = Arc::new(ids);
    Arc::new(move |mut c: Client, task| {
        let id = ids[task % ids.len()].clone();
        Box::pin(async move {
            let a = c
                .request_address(pb::RequestAddressRequest {
                    pool_id: id.clone(),
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
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs each op on each side in alternating rounds; prints the median of each, and the
/// median of the per-round ratios (`sides[1]` over `sides[0]`).
async fn compare(title: &str, sides: [(&str, &[Client]); 2], ops: &[(&str, Op, &str)]) {
    let rounds = if benching() { 5 } else { 1 };
    let durations = if benching() {
        (Duration::from_millis(500), Duration::from_secs(3))
    } else {
        (Duration::from_millis(20), Duration::from_millis(100))
    };
    for (what, op, unit) in ops {
        let mut figures: [Vec<Stats>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (side, (_, clients)) in sides.iter().enumerate() {
                let op = Arc::clone(op);
                let stats = load(clients, TASKS_PER_CONNECTION, durations, move |c, t| {
                    op(c, t)
                })
                .await;
                figures[side].push(stats);
            }
        }
        let latency = |side: usize| {
            let f = &figures[side];
            format!(
                "{:.0} µs | {:.0} µs",
                median(f.iter().map(|s| s.p50.as_secs_f64() * 1e6).collect()),
                median(f.iter().map(|s| s.p99.as_secs_f64() * 1e6).collect()),
            )
        };
        report(
            &format!("{title}: {what}"),
            [sides[0].0, sides[1].0],
            &[&figures[0], &figures[1]].map(|f| f.iter().map(|s| s.per_s).collect()),
            unit,
            &[latency(0), latency(1)],
        );
    }
}

/// Prints each side's median rate (with every round's) and the median of the per-round ratios
/// of the second side to the first, with their range.
fn report(what: &str, names: [&str; 2], rates: &[Vec<f64>; 2], unit: &str, extra: &[String; 2]) {
    for ((name, rates), extra) in names.iter().zip(rates).zip(extra) {
        println!(
            "| {what}, {name} | {:.0} {unit}/s (rounds: {}) | {extra} |",
            median(rates.clone()),
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(a, b)| b / a).collect();
    println!(
        "| {what}, {} ÷ {} | {:.3} (median of rounds; range {:.3}–{:.3}) | | |",
        names[1],
        names[0],
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
}

/// A CA and a server certificate for localhost, made with the real openssl in `dir`.
fn certificates(dir: &Path) -> (PathBuf, TlsFiles) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bench-ca",
        ],
    ]
    .concat());
    run(&[
        &["req", "-new"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: None,
        },
    )
}

/// Requests per second h2load measured sending `body` to `path` (64 streams in flight).
fn h2load(addr: SocketAddr, path: &str, body: &Path, token: Option<&str>, n: usize) -> f64 {
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", &n.to_string(), "-c", "4", "-m", "16", "-t", "1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("http://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{n} succeeded")), "{text}");
    // "finished in 1.23s, 81234.56 req/s, …"
    text.split(", ")
        .find_map(|part| part.strip_suffix(" req/s").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("h2load said: {text}"))
}

/// The real binary, serving `memory:` with `flags`.
fn served(dir: &Path, flags: &[&str]) -> Binary {
    let mut args = vec!["--database-url", "memory:"];
    args.extend_from_slice(flags);
    let log = format!("allot-{}.log", flags.len());
    Binary::start(
        Path::new(env!("CARGO_BIN_EXE_allot")),
        dir,
        &log,
        "info",
        &args,
    )
}

/// Authentication from outside the process: h2load against the real binary, with and without
/// tokens, alternating.
fn from_outside(dir: &Path) {
    if Command::new("h2load").arg("--version").output().is_err() {
        println!("| h2load | not installed (Debian: nghttp2-client): skipped | | |");
        return;
    }
    let admin_file = dir.join("admin-token");
    let open = served(dir, &[]);
    let made = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["admin", "token", "create", "--output"])
        .arg(&admin_file)
        .output()
        .unwrap();
    assert!(made.status.success());
    let admin_flag = admin_file.display().to_string();
    let tokens = served(dir, &["--admin-token-file", &admin_flag]);
    let token = tokens.cli(&[
        "--token-file",
        &admin_flag,
        "token",
        "create",
        "default",
        "--role",
        "write",
    ]);
    for (server, t) in [(&open, None), (&tokens, Some(token.as_str()))] {
        let mut args = vec![];
        if let Some(t) = t {
            args.extend(["--token", t]);
        }
        args.extend(["pool", "request", "--pool", "10.0.0.0/8"]);
        server.cli(&args);
    }
    let state = grpc_body(
        dir,
        "state",
        &pb::GetIpamStateRequest {
            pool_ids: vec!["local/10.0.0.0/8".into()],
            ..Default::default()
        },
    );
    let alloc = grpc_body(
        dir,
        "alloc",
        &pb::RequestAddressRequest {
            pool_id: "local/10.0.0.0/8".into(),
            ..Default::default()
        },
    );
    let (rounds, n) = if benching() { (5, 200_000) } else { (1, 2_000) };
    for (what, path, body) in [
        ("GetIpamState", "/ipam.v1.IpamService/GetIpamState", &state),
        (
            "RequestAddress (memory store, /8)",
            "/ipam.v1.IpamService/RequestAddress",
            &alloc,
        ),
    ] {
        let mut figures = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            figures[0].push(h2load(open.1, path, body, None, n));
            figures[1].push(h2load(tokens.1, path, body, Some(&token), n));
        }
        report(
            &format!("h2load, real binary: {what}"),
            ["--auth none", "token"],
            &figures,
            "req",
            &[" | ".to_owned(), " | ".to_owned()],
        );
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// 1,000 tenants × 100 pools from SQLite: build time of every driver, and memory.
async fn cold_start(dir: &Path) {
    let (n_tenants, n_pools) = if benching() { (1_000, 100) } else { (10, 10) };
    let url = format!("sqlite://{}", dir.join("cold.db").display());
    {
        let store = SqliteStore::connect(&url).await.unwrap();
        let t0 = Instant::now();
        for t in 0..n_tenants {
            let tenant = format!("t{t}");
            store.create_tenant(&tenant, 0).await.unwrap();
            for p in 0..n_pools {
                let net = format!("10.{}.{}.0/24", p / 256, p % 256).parse().unwrap();
                let id = PoolId::new(LOCAL_SPACE, net, None).unwrap();
                let mut subnet = Subnet::with_pools(net, [None]).unwrap();
                for _ in 0..4 {
                    subnet.allocate(&id, &AddressRequest::default()).unwrap();
                }
                store
                    .create_subnet(&tenant, LOCAL_SPACE, &subnet)
                    .await
                    .unwrap();
            }
        }
        println!(
            "| filling SQLite with {n_tenants} tenants × {n_pools} pools (not measured) | {:.1} s | | |",
            t0.elapsed().as_secs_f64()
        );
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
    let before = rss();
    let t0 = Instant::now();
    let defaults = [(LOCAL_SPACE.to_owned(), DefaultPool::local_defaults())].into();
    let tenants = startup::tenants(Arc::clone(&store), defaults, &[])
        .await
        .unwrap();
    let took = t0.elapsed();
    let after = rss();
    let pools = (n_tenants * n_pools) as u64;
    println!(
        "| cold start, {n_tenants} tenants × {n_pools} pools (/24, 4 addresses each), SQLite | {:.2} s | {} bytes per pool | {:.1} MiB in all |",
        took.as_secs_f64(),
        after.saturating_sub(before) / pools,
        after.saturating_sub(before) as f64 / 1024.0 / 1024.0,
    );
    // Every tenant answers.
    let ipam = tenants
        .driver(&format!("t{}", n_tenants - 1))
        .await
        .unwrap();
    assert_eq!(
        ipam.list_pools(None, &allot::ipam::PoolPage::ALL)
            .await
            .unwrap()
            .len(),
        n_pools
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = std::env::temp_dir().join(format!("allot-bench-tenancy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("| scenario (64 in flight, loopback) | throughput | p50 | p99 |");
    println!("|---|---|---|---|");

    // Authentication in process: two servers, each on a memory store of its own with the same
    // pools.
    let admin = allot::auth::issue().unwrap().token;
    let open = serve(Arc::new(MemoryStore::new()), Mode::Open, None, None).await;
    let tokens = serve(
        Arc::new(MemoryStore::new()),
        Mode::Tokens,
        Some(&admin),
        None,
    )
    .await;
    let mut admin_client = allot::proto::admin_pb::admin_service_client::AdminServiceClient::new(
        Channel::from_shared(format!("http://{tokens}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut request = tonic::Request::new(allot::proto::admin_pb::CreateTokenRequest {
        tenant: "default".into(),
        role: "write".into(),
        description: "bench".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let token = admin_client
        .create_token(request)
        .await
        .unwrap()
        .into_inner()
        .token;
    let open_clients = clients(open, None, None).await;
    let token_clients = clients(tokens, Some(&token), None).await;
    let ids = make_pools(&mut open_clients[0].clone(), 16).await;
    assert_eq!(make_pools(&mut token_clients[0].clone(), 16).await, ids);
    let state = state_op(ids[0].clone());
    let pairs = pair_op(ids.clone());
    compare(
        "authentication",
        [("--auth none", &open_clients), ("token", &token_clients)],
        &[
            ("GetIpamState, 1 pool", Arc::clone(&state), "call"),
            (
                "RequestAddress+ReleaseAddress, 16 pools",
                Arc::clone(&pairs),
                "pair",
            ),
        ],
    )
    .await;

    // TLS against plaintext, in process.
    let (ca, files) = certificates(&dir);
    let tls = Tls::load(files).unwrap();
    let plain = serve(Arc::new(MemoryStore::new()), Mode::Open, None, None).await;
    let secure = serve(Arc::new(MemoryStore::new()), Mode::Open, None, Some(tls)).await;
    let plain_clients = clients(plain, None, None).await;
    let tls_clients = clients(secure, None, Some(&ca)).await;
    let ids = make_pools(&mut plain_clients[0].clone(), 16).await;
    assert_eq!(make_pools(&mut tls_clients[0].clone(), 16).await, ids);
    compare(
        "TLS",
        [("plaintext", &plain_clients), ("TLS", &tls_clients)],
        &[
            ("GetIpamState, 1 pool", state_op(ids[0].clone()), "call"),
            (
                "RequestAddress+ReleaseAddress, 16 pools",
                pair_op(ids),
                "pair",
            ),
        ],
    )
    .await;

    from_outside(&dir);
    cold_start(&dir).await;
    std::fs::remove_dir_all(&dir).ok();
}
