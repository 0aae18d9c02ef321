//! Starting servers (in-process or the real binary) and talking to them.

use allot::api::conn::{Gate, Incoming, Limits};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use allot::config::ServeArgs;
use allot::proto::pb;
use allot::proto::pb::ipam_service_client::IpamServiceClient;
use allot::startup;
use allot::store::{MemoryStore, PgStore, SqliteStore, Store};
use clap::Parser;
use sqlx::Connection;
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

/// Starts a server over `store`, without authentication (everyone is the tenant default).
pub async fn spawn_app(store: Arc<dyn Store>) -> App {
    spawn_app_with(store, allot::auth::Mode::Open, None, None).await
}

/// Starts a server over `store` that requires tokens, with `admin` as its bootstrap admin
/// token, over TLS with `pki`'s `server` certificate and its CA for client certificates.
pub async fn spawn_secure(store: Arc<dyn Store>, admin: &str, pki: &Pki) -> App {
    let tls = allot::api::tls::Tls::load(allot::api::tls::TlsFiles {
        cert: pki.path("server.pem").into(),
        key: pki.path("server.key").into(),
        client_ca: Some(pki.path("ca.pem").into()),
    })
    .expect("TLS");
    spawn_app_with(
        store,
        allot::auth::Mode::Tokens,
        Some(admin),
        Some((tls, pki.path("ca.pem"))),
    )
    .await
}

async fn spawn_app_with(
    store: Arc<dyn Store>,
    mode: allot::auth::Mode,
    admin: Option<&str>,
    tls: Option<(Arc<allot::api::tls::Tls>, String)>,
) -> App {
    let auth =
        allot::auth::Authenticator::new(mode, Arc::clone(&store), admin, allot::auth::Role::Write)
            .await
            .expect("authenticator");
    let tenants = startup::tenants(store, default_pools(), &[])
        .await
        .expect("drivers");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = rx.await;
    };
    let task = tokio::spawn(startup::serve(
        Incoming::new(listener, Gate::new(Limits::default()), "grpc"),
        startup::Service {
            tenants,
            auth,
            tls: tls.as_ref().map(|(tls, _)| Arc::clone(tls)),
        },
        shutdown,
        Duration::from_secs(5),
    ));
    let client = match &tls {
        None => Client::connect(format!("http://{addr}"))
            .await
            .expect("connect"),
        Some((_, ca)) => Client::new(channel(addr.port(), ca, None).await.expect("connect")),
    };
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

/// A new admin token in `dir/admin-token`, readable by its owner only (as `allot serve
/// --admin-token-file` requires): (the token, the file's path).
pub fn admin_token_file(dir: &Path) -> (String, String) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = allot::auth::issue().expect("random source").token;
    let path = dir.join("admin-token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("admin token file");
    writeln!(f, "{token}").expect("write the token");
    (token, path.display().to_string())
}

/// What must outlive a store (its directory, its database).
pub type Keep = Box<dyn std::any::Any + Send>;

/// Every store backend, each fresh: (name, store, what must outlive it).
pub async fn backends() -> Vec<(&'static str, Arc<dyn Store>, Keep)> {
    let dir = TempDir::new("backend");
    let sqlite = SqliteStore::connect(&dir.db_url()).await.expect("sqlite");
    let db = PgDb::fresh("backend").await;
    let pg = PgStore::connect(&db.url, Duration::from_secs(30))
        .await
        .expect("postgres");
    vec![
        ("memory", Arc::new(MemoryStore::new()), Box::new(())),
        ("sqlite", Arc::new(sqlite), Box::new(dir)),
        ("postgres", Arc::new(pg), Box::new(db)),
    ]
}

/// The Postgres server the tests use: `DATABASE_URL`, which scripts/test.sh always sets (it
/// finds, starts or installs PostgreSQL). A missing server fails the test, never skips it.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the tests with scripts/test.sh, which finds, starts or \
         installs PostgreSQL",
    )
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A fresh, empty database on the test server, dropped when the value is.
pub struct PgDb {
    pub url: String,
    name: String,
}

impl PgDb {
    pub async fn fresh(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "allot_it_{tag}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs PostgreSQL, and none answers at {admin} ({e}): start one \
                     there (README.md, Run the tests), or set DATABASE_URL, or run scripts/test.sh"
                )
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        Self {
            url: with_database(&admin, &name),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a temporary directory, on a free port),
/// which the test may stop and start without disturbing the others.
pub struct PrivatePg {
    pub url: String,
    dir: TempDir,
    port: u16,
}

impl PrivatePg {
    /// A PostgreSQL server program: on PATH, else in Debian's versioned directory.
    fn program(name: &str) -> PathBuf {
        let on_path = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if let Some(p) = on_path {
            return p;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin").join(name))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        found
            .pop()
            .unwrap_or_else(|| panic!("{name} not found: install postgresql"))
    }

    /// Runs a server program, as the `postgres` user when we are root (initdb refuses root).
    fn run(name: &str, args: &[&str]) {
        let program = Self::program(name);
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(args).output().expect("run a postgres program");
        assert!(
            out.status.success(),
            "{name} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data(&self) -> String {
        self.dir.0.join("data").display().to_string()
    }

    pub fn start_new() -> Self {
        let dir = TempDir::new("pg");
        let _ = Command::new("chown")
            .args(["postgres:", &dir.0.display().to_string()])
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            port,
        };
        Self::run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.start();
        pg
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.0.display()
        );
        let log = self.dir.0.join("log").display().to_string();
        Self::run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server (fast: open connections are cut).
    pub fn stop(&self) {
        Self::run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let program = Self::program("pg_ctl");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&program)
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = Command::new(&program)
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
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
        ..Default::default()
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
        ..Default::default()
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
        ..Default::default()
    })
    .await
    .map(|_| ())
}

pub async fn state(c: &mut Client, pool_id: &str) -> pb::PoolState {
    let r = c
        .get_ipam_state(pb::GetIpamStateRequest {
            pool_ids: vec![pool_id.to_owned()],
            ..Default::default()
        })
        .await
        .expect("state");
    r.into_inner().pools.remove(0)
}

/// The real `allot serve` binary, on a port it chose, logging JSON.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines logged since it listened.
    pub log_lines: Arc<AtomicU32>,
    // The audit lines (target `allot::audit`) and the plugin endpoint's lines logged since it
    // listened.
    audit: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `allot serve` on `db_url`; waits until it listens.
    pub fn start(db_url: &str, dir: &Path) -> Self {
        Self::start_with(db_url, dir, &[])
    }

    /// Starts `allot serve` on `db_url` with more flags; waits until it listens.
    pub fn start_with(db_url: &str, dir: &Path, flags: &[&str]) -> Self {
        Self::start_in(
            Command::new(env!("CARGO_BIN_EXE_allot")),
            db_url,
            dir,
            flags,
        )
    }

    /// Starts `allot serve` as `program` runs it (the binary itself, or a shell that sets
    /// limits first and passes its arguments on); waits until it listens.
    pub fn start_in(mut program: Command, db_url: &str, dir: &Path, flags: &[&str]) -> Self {
        let mut child = program
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--shutdown-grace", "3s"])
            .args(["--database-url", db_url])
            .args(flags)
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
        // Keep draining the log so the server never blocks on a full pipe, counting it and
        // keeping the audit trail.
        let log_lines = Arc::new(AtomicU32::new(0));
        let audit = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counted, kept) = (Arc::clone(&log_lines), Arc::clone(&audit));
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                counted.fetch_add(1, Ordering::Relaxed);
                if line.contains("allot::audit") || line.contains("docker plugin:") {
                    kept.lock().unwrap().push(line);
                }
            }
        });
        Self {
            child,
            addr,
            log_lines,
            audit,
        }
    }

    /// The audit lines logged so far.
    pub fn audit(&self) -> Vec<String> {
        let kept = self.audit.lock().unwrap();
        kept.iter()
            .filter(|l| l.contains("allot::audit"))
            .cloned()
            .collect()
    }

    /// The Docker plugin endpoint's lines logged so far (at `info`: its refusals).
    pub fn plugin_log(&self) -> Vec<String> {
        let kept = self.audit.lock().unwrap();
        kept.iter()
            .filter(|l| l.contains("docker plugin:"))
            .cloned()
            .collect()
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

/// Waits until a unix socket accepts connections.
pub async fn wait_for_socket(socket: &Path) {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the plugin socket {} never came up", socket.display());
}

/// Every replica's full `GetIpamState`, once they agree (they converge through notifications).
pub async fn converged_state(servers: &[Option<Server>]) -> Vec<pb::PoolState> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut states = Vec::new();
        for s in servers.iter().flatten() {
            let mut c = s.client().await;
            let r = c
                .get_ipam_state(pb::GetIpamStateRequest {
                    pool_ids: vec![],
                    ..Default::default()
                })
                .await
                .expect("state");
            states.push(r.into_inner().pools);
        }
        if states.windows(2).all(|w| w[0] == w[1]) {
            return states.remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "replicas never agreed: {states:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `allot serve` on `db_url` with more flags, expecting it to refuse to start; returns
/// what it said on stderr.
pub async fn serve_refused(db_url: &str, flags: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db_url])
        .args(flags)
        .output()
        .await
        .expect("run allot serve");
    assert!(!out.status.success(), "allot serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A certificate authority of the test's own, and what it signs, as PEM files in `dir`.
pub struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A new CA named `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "01\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\n\
                 serial = {0}/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
                 [any]\ncommonName = supplied\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
             basicConstraints=CA:FALSE\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        Self { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// Signs a new key for `cn` as `name`.pem / `name`.key, valid from `start` to `end`
    /// (`YYYYMMDDHHMMSSZ`; `None`: from now, for a day), for a server or a client.
    pub fn issue(&self, name: &str, cn: &str, server: bool, dates: Option<(&str, &str)>) {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        let ext = if server { "server.ext" } else { "client.ext" };
        let mut args = vec![
            "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in",
            &csr, "-out", &pem, "-extfile", ext, "-notext",
        ];
        match dates {
            Some((start, end)) => args.extend(["-startdate", start, "-enddate", end]),
            None => args.extend(["-days", "1"]),
        }
        openssl(&self.dir, &args);
    }
}

/// A tonic channel to `https://localhost:port` trusting `ca`, with a client identity if given.
pub async fn channel(
    port: u16,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Whether a test's system prerequisites hold, installing Debian `packages` with apt-get
/// when they do not and we are root. `false` (the test says it skipped) only off CI and not
/// root; under CI, or as root, what cannot be had fails the test.
pub fn prerequisites(ready: impl Fn() -> bool, packages: &[&str], why: &str) -> bool {
    if !ready() && is_root() && have("apt-get") {
        let installed = Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        eprintln!("installing {packages:?}: {installed:?}");
    }
    if ready() && is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{why}");
    assert!(
        !is_root(),
        "{why}: missing as root, and apt-get could not install them"
    );
    eprintln!("skipped: {why} (not root here)");
    false
}
