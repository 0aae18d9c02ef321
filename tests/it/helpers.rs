//! Starting servers (in-process or the real binary) and talking to them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use allot::config::ServeArgs;
use allot::proto::pb;
use allot::proto::pb::ipam_service_client::IpamServiceClient;
use allot::startup;
use allot::store::{MemoryStore, SqliteStore, Store};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub type Client = IpamServiceClient<Channel>;

/// A server running in this process on 127.0.0.1 and a free port.
pub struct App {
    pub addr: SocketAddr,
    pub client: Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl App {
    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .expect("server task")
            .expect("server ran");
    }
}

/// The default address pools of `allot serve` with no flags.
fn default_pools() -> std::collections::BTreeMap<String, Vec<allot::engine::DefaultPool>> {
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        serve: ServeArgs,
    }
    Args::parse_from(["allot"]).serve.default_pools()
}

/// Starts a server over `store`.
pub async fn spawn_app(store: Arc<dyn Store>) -> App {
    let ipam = startup::driver(store, default_pools())
        .await
        .expect("driver");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = rx.await;
    };
    let task = tokio::spawn(startup::serve(
        listener,
        ipam,
        shutdown,
        Duration::from_secs(5),
    ));
    let client = Client::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    App {
        addr,
        client,
        shutdown: Some(tx),
        task,
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "allot-it-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn db_url(&self) -> String {
        format!("sqlite://{}", self.0.join("allot.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every store backend, each fresh: (name, store, the directory that must outlive it).
pub async fn backends() -> Vec<(&'static str, Arc<dyn Store>, Option<TempDir>)> {
    let dir = TempDir::new("backend");
    let sqlite = SqliteStore::connect(&dir.db_url()).await.expect("sqlite");
    vec![
        ("memory", Arc::new(MemoryStore::new()), None),
        ("sqlite", Arc::new(sqlite), Some(dir)),
    ]
}

pub async fn request_pool(
    c: &mut Client,
    pool: &str,
    sub_pool: &str,
) -> Result<String, tonic::Status> {
    c.request_pool(pb::RequestPoolRequest {
        address_space: "local".into(),
        pool: pool.into(),
        sub_pool: sub_pool.into(),
        options: HashMap::new(),
        v6: pool.contains(':'),
    })
    .await
    .map(|r| r.into_inner().pool_id)
}

pub async fn request_address(
    c: &mut Client,
    pool_id: &str,
    address: &str,
    options: &[(&str, &str)],
) -> Result<String, tonic::Status> {
    c.request_address(pb::RequestAddressRequest {
        pool_id: pool_id.into(),
        address: address.into(),
        options: options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })
    .await
    .map(|r| r.into_inner().address)
}

pub async fn release_address(
    c: &mut Client,
    pool_id: &str,
    address: &str,
) -> Result<(), tonic::Status> {
    c.release_address(pb::ReleaseAddressRequest {
        pool_id: pool_id.into(),
        address: address.into(),
    })
    .await
    .map(|_| ())
}

pub async fn state(c: &mut Client, pool_id: &str) -> pb::PoolState {
    let r = c
        .get_ipam_state(pb::GetIpamStateRequest {
            pool_ids: vec![pool_id.to_owned()],
        })
        .await
        .expect("state");
    r.into_inner().pools.remove(0)
}

/// The real `allot serve` binary, on a port it chose, logging JSON.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `allot serve` on `db_url`; waits until it listens.
    pub fn start(db_url: &str, dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--shutdown-grace", "3s"])
            .args(["--database-url", db_url])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start allot serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            assert!(Instant::now() < deadline, "allot serve did not start");
            let line = lines.next().expect("allot serve exited").expect("log line");
            if let Some(rest) = line.split("\"addr\":\"").nth(1) {
                break rest
                    .split('"')
                    .next()
                    .expect("addr")
                    .parse()
                    .expect("socket addr");
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    pub async fn client(&self) -> Client {
        Client::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
