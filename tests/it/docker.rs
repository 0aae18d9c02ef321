//! allot under a real Docker daemon (Debian's `docker.io`, dockerd 20.10), driven through its
//! plugin socket: networks and containers made with `docker`, compared with allot's state and
//! with the same networks on Docker's own default IPAM, field by field.
//!
//! Each test starts its own dockerd on private paths (no default bridge, no iptables, vfs
//! storage) and its own allot, makes a busybox image without a registry (`docker import`), and
//! removes everything when done. Needs root and `docker.io` + `busybox-static`: installed with
//! apt-get when missing (scripts/test.sh does it first); under CI, or as root, a machine that
//! cannot have them fails the test, never skips it. The tests take turns (one dockerd at a
//! time), so their networks never meet on the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// The image every container runs: busybox, imported from a local root filesystem.
const IMAGE: &str = "allot-busybox:test";

/// One dockerd at a time.
pub static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether a dockerd can run here (installing it when missing and we can).
fn ready() -> bool {
    prerequisites(
        || have("dockerd") && have("docker") && have("busybox"),
        &["docker.io", "busybox-static"],
        "the Docker tests need root, docker.io and busybox-static",
    )
}

/// A dockerd of the test's own, stopped and cleaned up when dropped.
pub struct Dockerd {
    dir: TempDir,
    child: Child,
    host: String,
}

impl Dockerd {
    pub fn start() -> Self {
        let dir = TempDir::new("dockerd");
        let host = format!("unix://{}", dir.0.join("docker.sock").display());
        let child = Self::spawn(&dir.0, &host);
        let docker = Self { dir, child, host };
        docker.wait_ready();
        docker.make_image();
        docker
    }

    fn spawn(dir: &Path, host: &str) -> Child {
        let d = |p: &str| dir.join(p).display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        Command::new("dockerd")
            .args([
                "--host",
                host,
                "--data-root",
                &d("data"),
                "--exec-root",
                &d("exec"),
            ])
            .args([
                "--pidfile",
                &d("docker.pid"),
                "--iptables=false",
                "--ip-masq=false",
            ])
            .args(["--storage-driver=vfs", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd starts")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.run(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the daemon with `signal` (`TERM`, `KILL`), waits for it, and starts it again on
    /// the same paths.
    pub fn restart(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
        // The daemon's containerd dies with it, a moment later; a new daemon finding its pid
        // still alive would wait for it instead of starting its own.
        let pidfile = self.dir.0.join("exec/containerd/containerd.pid");
        let pid = std::fs::read_to_string(pidfile).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !pid.trim().is_empty()
            && Path::new(&format!("/proc/{}", pid.trim())).exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child = Self::spawn(&self.dir.0, &self.host);
        self.wait_ready();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("dockerd.log")).unwrap_or_default()
    }

    /// `program` (a Docker client) pointed at this daemon.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DOCKER_HOST", &self.host);
        cmd
    }

    /// Runs the docker client against this daemon.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command("docker")
            .args(args)
            .output()
            .expect("docker runs")
    }

    /// Runs the docker client; its stdout, trimmed, once it succeeded.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `docker inspect`-like JSON of one object.
    pub fn inspect(&self, args: &[&str]) -> Value {
        let v: Value = serde_json::from_str(&self.ok(args)).unwrap();
        v[0].clone()
    }

    fn make_image(&self) {
        let root = self.dir.0.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let busybox = Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap();
        let busybox = PathBuf::from(String::from_utf8(busybox.stdout).unwrap().trim());
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        for tool in ["sh", "sleep", "ip", "ping"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
        }
        let mut tar = Command::new("tar")
            .args(["-C", &root.display().to_string(), "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let imported = Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(["import", "-c", "CMD [\"/bin/sh\"]", "-", IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of the root filesystem");
        assert!(imported.status.success(), "docker import: {imported:?}");
    }

    /// A container on `network` that sleeps, with more `docker run` flags.
    pub fn container(&self, name: &str, network: &str, flags: &[&str]) -> Output {
        // `sleep` as PID 1 ignores SIGTERM: one second before SIGKILL, not Docker's ten.
        let mut args = vec!["run", "-d", "--stop-timeout", "1", "--name", name];
        args.extend(["--network", network]);
        args.extend_from_slice(flags);
        args.extend([IMAGE, "sleep", "3600"]);
        self.run(&args)
    }

    /// The addresses of `container` on its networks: (IPv4, IPv6), empty where none.
    pub fn addresses(&self, container: &str) -> Vec<(String, String)> {
        let c = self.inspect(&["inspect", container]);
        c["NetworkSettings"]["Networks"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| {
                (
                    n["IPAddress"].as_str().unwrap_or_default().to_owned(),
                    n["GlobalIPv6Address"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first (their endpoints go back to allot while it still runs), then the
        // networks, then the daemon, politely, then whatever it left mounted under its paths.
        let ids = String::from_utf8(self.run(&["ps", "-aq"]).stdout).unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = self.run(&["rm", "-f", id]);
        }
        // Networks next, or their bridges outlive the daemon.
        let nets = self
            .run(&["network", "ls", "-q", "--filter", "type=custom"])
            .stdout;
        for id in String::from_utf8(nets)
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = self.run(&["network", "rm", id]);
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.0.display().to_string();
        for line in mounts.lines().rev() {
            if let Some(point) = line.split(' ').nth(1)
                && point.starts_with(&root)
            {
                let _ = Command::new("umount").args(["-l", point]).status();
            }
        }
    }
}

/// allot serving the Docker plugin protocol on a socket of a name of its own in Docker's
/// plugin directory; the name is the network's `--ipam-driver`.
pub struct Plugin {
    server: Option<Server>,
    pub name: String,
    pub socket: PathBuf,
    pub dir: TempDir,
    flags: Vec<String>,
}

impl Plugin {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts allot with more `allot serve` flags (kept for its restarts).
    pub async fn start_with(flags: &[&str]) -> Self {
        let dir = TempDir::new("docker-allot");
        let name = format!("allot-it-{}", std::process::id());
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        let socket = Path::new("/run/docker/plugins").join(format!("{name}.sock"));
        let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        let server = Self::serve(&dir, &socket, &flags).await;
        Self {
            server: Some(server),
            name,
            socket,
            dir,
            flags,
        }
    }

    async fn serve(dir: &TempDir, socket: &Path, flags: &[String]) -> Server {
        let mut args = vec![
            "--docker-plugin-socket".to_owned(),
            socket.display().to_string(),
        ];
        args.extend(flags.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_with(&dir.db_url(), &dir.0, &args);
        wait_for_socket(socket).await;
        server
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("allot runs")
    }

    /// Kills allot with SIGKILL and starts it again on the same database and socket.
    pub async fn kill9_and_restart(&mut self) {
        self.kill9();
        self.restart().await;
    }

    /// Kills allot with SIGKILL; its socket stays, refusing connections.
    pub fn kill9(&mut self) {
        if let Some(old) = self.server.take() {
            old.kill9();
        }
    }

    /// Starts allot again on the same database and socket.
    pub async fn restart(&mut self) {
        self.server = Some(Self::serve(&self.dir, &self.socket, &self.flags).await);
    }

    /// The `allot` command against this server, with `DOCKER_HOST` set to `docker`'s.
    pub fn cli(&self, docker: &Dockerd, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_allot"));
        cmd.args(["--server", &self.server().addr.to_string()])
            .args(args)
            .env("DOCKER_HOST", &docker.host);
        cmd
    }

    /// `allot state` rows: pool id → (in use, free).
    pub fn state(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        let out = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["--server", &self.server().addr.to_string()])
            .args(["state", "--output", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let n = |k: &str| p[k].as_u64().unwrap();
                (
                    p["pool_id"].as_str().unwrap().to_owned(),
                    (
                        n("allocated_ips_in_subnet"),
                        n("available_ips_in_ip_range_pool"),
                    ),
                )
            })
            .collect()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The IPAM part of `docker network inspect`, with `from` written as `to` (the same network on
/// another subnet), the driver's name left out and the subnets in order.
fn ipam_of(docker: &Dockerd, network: &str, (from, to): (&str, &str)) -> String {
    let n = docker.inspect(&["network", "inspect", network]);
    let mut ipam = n["IPAM"].clone();
    ipam["Driver"] = Value::Null;
    // Docker lists a network's subnets in no fixed order.
    let mut config: Vec<String> = ipam["Config"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c.to_string().replace(from, to))
        .collect();
    config.sort();
    ipam["Config"] = Value::Null;
    format!("{} {config:?}", ipam.to_string().replace(from, to))
}

fn pool_count(plugin: &Plugin) -> usize {
    plugin.state().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_and_containers_on_allot_match_dockers_own() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().await;
    let plugin = Plugin::start().await;
    let docker = Dockerd::start();
    let driver = plugin.name.as_str();

    // The README's demo network, on allot and on Docker's default IPAM.
    let demo = |name: &str, net: &str, ipam: &[&str]| {
        let mut args = vec!["network", "create"];
        args.extend_from_slice(ipam);
        let (subnet, range, gw, aux) = (
            format!("{net}.0/24"),
            format!("{net}.128/31"),
            format!("{net}.1"),
            format!("a={net}.128"),
        );
        args.extend(["--subnet", &subnet, "--ip-range", &range, "--gateway", &gw]);
        args.extend(["--aux-address", &aux, name]);
        docker.ok(&args);
    };
    demo("demo", "192.168.110", &["--ipam-driver", driver]);
    demo("demo-default", "192.168.120", &[]);
    assert_eq!(
        ipam_of(&docker, "demo", ("192.168.110", "X")),
        ipam_of(&docker, "demo-default", ("192.168.120", "X")),
    );
    for (network, name) in [("demo", "c1"), ("demo-default", "d1")] {
        assert!(docker.container(name, network, &[]).status.success());
    }
    assert_eq!(docker.addresses("c1")[0].0, "192.168.110.129");
    assert_eq!(docker.addresses("d1")[0].0, "192.168.120.129");
    let id = "local/192.168.110.0/24/192.168.110.128/31";
    // In use: network and broadcast addresses, gateway, aux address, c1; the range is full.
    assert_eq!(plugin.state()[id], (5, 0));
    // Exhausted on both; allot's refusal carries Docker's driver words (Docker adds
    // "remote: " to a plugin's message, and words its own driver's at the network level).
    let ours = docker.container("c2", "demo", &[]);
    let theirs = docker.container("d2", "demo-default", &[]);
    let ours = String::from_utf8_lossy(&ours.stderr);
    assert!(
        ours.contains("no available addresses on this pool: no free address left in pool"),
        "{ours}"
    );
    assert!(
        String::from_utf8_lossy(&theirs.stderr).contains("no available IPv4 addresses"),
        "{theirs:?}"
    );
    docker.ok(&["rm", "-f", "c2", "d2"]);
    // A container removed gives its address back; the network removed gives back gateway,
    // aux address and pool.
    docker.ok(&["rm", "-f", "c1"]);
    assert_eq!(plugin.state()[id], (4, 1));
    let pools = pool_count(&plugin);
    docker.ok(&["network", "rm", "demo"]);
    assert_eq!(pool_count(&plugin), pools - 1);

    // Without --subnet: a default pool, shaped as Docker's (a /16, gateway .1).
    docker.ok(&["network", "create", "--ipam-driver", driver, "plain"]);
    docker.ok(&["network", "create", "plain-default"]);
    let shape = |network: &str| {
        let n = docker.inspect(&["network", "inspect", network]);
        let c = &n["IPAM"]["Config"][0];
        let subnet = c["Subnet"].as_str().unwrap().to_owned();
        let gateway = c["Gateway"].as_str().unwrap().to_owned();
        let (net, len) = subnet.split_once('/').unwrap();
        (
            len.to_owned(),
            gateway
                .strip_prefix(&net[..net.len() - 1])
                .map(str::to_owned),
        )
    };
    assert_eq!(shape("plain"), shape("plain-default"));
    assert_eq!(shape("plain"), ("16".to_owned(), Some("1".to_owned())));

    // --ipv6 with two subnets; containers with and without --ip/--ip6.
    for (name, ipam, n) in [
        ("six", vec!["--ipam-driver", driver], "1"),
        ("six-default", vec![], "2"),
    ] {
        let mut args = vec!["network", "create", "--ipv6"];
        args.extend(ipam);
        let (v6, v4) = (format!("fd00:7{n}::/64"), format!("10.7{n}.0.0/24"));
        args.extend(["--subnet", &v6, "--subnet", &v4, name]);
        docker.ok(&args);
    }
    assert_eq!(
        ipam_of(&docker, "six", ("71", "7N")),
        ipam_of(&docker, "six-default", ("72", "7N"))
    );
    for (network, n) in [("six", "1"), ("six-default", "2")] {
        let free = format!("{network}-a");
        let fixed = format!("{network}-b");
        assert!(docker.container(&free, network, &[]).status.success());
        let (ip, ip6) = (format!("10.7{n}.0.77"), format!("fd00:7{n}::77"));
        let run = docker.container(&fixed, network, &["--ip", &ip, "--ip6", &ip6]);
        assert!(run.status.success(), "{run:?}");
        assert_eq!(
            docker.addresses(&free),
            [(format!("10.7{n}.0.2"), format!("fd00:7{n}::2"))]
        );
        assert_eq!(docker.addresses(&fixed), [(ip, ip6)]);
        // The same address again: refused by both.
        let again = docker.container(
            &format!("{network}-c"),
            network,
            &["--ip", &format!("10.7{n}.0.77")],
        );
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(err.contains("Address already in use"), "{network}: {err}");
    }
    let six = plugin.state();
    assert_eq!(
        six["local/10.71.0.0/24"].0, 5,
        "network, broadcast, gateway, two containers"
    );
    drop(docker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_containers_at_once_on_a_slash_27() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().await;
    let mut plugin = Plugin::start().await;
    let docker = Dockerd::start();
    docker.ok(&[
        "network",
        "create",
        "--ipam-driver",
        &plugin.name,
        "--subnet",
        "10.27.0.0/27",
        "small",
    ]);
    // 32 addresses: network, broadcast and gateway taken, 29 for containers.
    let outcomes: Vec<bool> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..32)
            .map(|i| {
                let docker = &docker;
                s.spawn(move || {
                    docker
                        .container(&format!("p{i}"), "small", &[])
                        .status
                        .success()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 29);
    let mut seen = std::collections::BTreeSet::new();
    for (i, ok) in outcomes.iter().enumerate() {
        if *ok {
            assert!(seen.insert(docker.addresses(&format!("p{i}"))[0].0.clone()));
        }
    }
    assert_eq!(seen.len(), 29, "no address twice");
    assert_eq!(plugin.state()["local/10.27.0.0/27"], (32, 0));

    // allot killed with the network in place, started again: nothing lost, nothing twice.
    plugin.kill9_and_restart().await;
    assert_eq!(plugin.state()["local/10.27.0.0/27"], (32, 0));
    let first = outcomes.iter().position(|ok| *ok).unwrap();
    let freed = docker.addresses(&format!("p{first}"))[0].0.clone();
    docker.ok(&["rm", "-f", &format!("p{first}")]);
    assert_eq!(plugin.state()["local/10.27.0.0/27"], (31, 1));
    let run = docker.container("again", "small", &[]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(docker.addresses("again")[0].0, freed);
    drop(docker);
}

/// Docker's view of `network`: the addresses its containers' endpoints hold, sorted.
fn endpoints(docker: &Dockerd, network: &str) -> Vec<String> {
    let n = docker.inspect(&["network", "inspect", network]);
    let mut out: Vec<String> = n["Containers"]
        .as_object()
        .map(|c| {
            c.values()
                .filter_map(|e| e["IPv4Address"].as_str())
                .map(|a| a.split('/').next().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_restarted_keeps_allot_and_docker_agreeing() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().await;
    let plugin = Plugin::start().await;
    let mut docker = Dockerd::start();
    let args = [
        "network",
        "create",
        "--ipam-driver",
        &plugin.name,
        "--subnet",
        "10.28.0.0/24",
        "keep",
    ];
    docker.ok(&args);
    let pool = "local/10.28.0.0/24";
    assert!(
        docker
            .container("k1", "keep", &["--restart", "always"])
            .status
            .success()
    );
    assert!(docker.container("k2", "keep", &[]).status.success());
    assert_eq!(endpoints(&docker, "keep"), ["10.28.0.2", "10.28.0.3"]);
    assert_eq!(
        plugin.state()[pool].0,
        3 + 2,
        "network, broadcast, gateway, two containers"
    );
    for signal in ["TERM", "KILL"] {
        docker.restart(signal);
        // k1 comes back (restart policy), k2 stays stopped: allot holds exactly what Docker's
        // endpoints hold, besides the network, broadcast and gateway addresses.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut held = endpoints(&docker, "keep");
        while held.len() != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            held = endpoints(&docker, "keep");
        }
        assert_eq!(held.len(), 1, "after {signal}: k1 is back ({held:?})");
        assert_eq!(
            plugin.state()[pool].0,
            3 + 1,
            "after {signal}: allot agrees with Docker ({held:?}); dockerd: {}",
            docker
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Both start again, each with an address of its own.
    docker.ok(&["start", "k2"]);
    let mut held = endpoints(&docker, "keep");
    held.dedup();
    assert_eq!(held.len(), 2);
    assert_eq!(plugin.state()[pool].0, 3 + 2);
    drop(docker);
}

fn text(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The leak: a network `name` on `net`.0/24 with two containers; allot killed while Docker
/// removes the first (Docker removes it anyway and never retries), then started again. Returns
/// the pool id, whose first container's address allot still holds.
async fn leak(plugin: &mut Plugin, docker: &Dockerd, name: &str, net: &str) -> String {
    let subnet = format!("{net}.0/24");
    docker.ok(&[
        "network",
        "create",
        "--ipam-driver",
        &plugin.name,
        "--subnet",
        &subnet,
        name,
    ]);
    let (first, second) = (format!("{name}1"), format!("{name}2"));
    for c in [&first, &second] {
        assert!(docker.container(c, name, &[]).status.success());
    }
    assert_eq!(
        endpoints(docker, name),
        [format!("{net}.2"), format!("{net}.3")]
    );
    plugin.kill9();
    docker.ok(&["rm", "-f", &first]);
    assert!(
        docker.log().contains("Failed to release"),
        "dockerd said nothing"
    );
    plugin.restart().await;
    let pool = format!("local/{subnet}");
    assert_eq!(endpoints(docker, name), [format!("{net}.3")]);
    assert_eq!(plugin.state()[&pool].0, 3 + 2, "{first}'s address leaked");
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_lost_while_allot_was_down_is_repaired_by_reconcile() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().await;
    let mut plugin = Plugin::start().await;
    let docker = Dockerd::start();
    let pool = &leak(&mut plugin, &docker, "leaky", "10.29.0").await;
    // A pool no network uses is reported, not touched.
    text(
        &plugin
            .cli(&docker, &["pool", "request", "--pool", "10.30.0.0/24"])
            .output()
            .unwrap(),
    );

    // A dry run lists the leak and changes nothing.
    let dry = text(
        &plugin
            .cli(
                &docker,
                &["docker", "reconcile", "--dry-run", "--grace", "0s"],
            )
            .output()
            .unwrap(),
    );
    assert!(
        dry.contains("would release 10.29.0.2 in local/10.29.0.0/24 (network leaky ("),
        "{dry}"
    );
    assert!(
        dry.contains("pool local/10.30.0.0/24: no network of this Docker daemon uses it"),
        "{dry}"
    );
    assert_eq!(dry.matches("would release").count(), 1, "{dry}");
    assert_eq!(plugin.state()[pool].0, 3 + 2);

    // The real one, with a container made between its two readings: the leak is released,
    // the new container keeps its address.
    let reconcile = plugin
        .cli(&docker, &["docker", "reconcile", "--grace", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(docker.container("l3", "leaky", &[]).status.success());
    let done = text(&reconcile.wait_with_output().unwrap());
    assert_eq!(done.matches("released").count(), 1, "{done}");
    assert!(
        done.contains("released 10.29.0.2 in local/10.29.0.0/24"),
        "{done}"
    );
    let held = endpoints(&docker, "leaky");
    assert_eq!(held, ["10.29.0.3", "10.29.0.4"]);
    // Docker's view and allot's agree: its endpoints, plus network, broadcast and gateway.
    assert_eq!(plugin.state()[pool].0, 3 + held.len() as u64);
    assert!(docker.container("l4", "leaky", &[]).status.success());
    assert_eq!(docker.addresses("l4")[0].0, "10.29.0.2", "free again");
    drop(docker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allot_serve_reconciles_with_docker_by_itself() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().await;
    let docker = Dockerd::start();
    let host = docker.host.clone();
    let flags = ["--docker-host", &host, "--docker-reconcile-interval", "1s"];
    let mut plugin =
        Plugin::start_with(&[&flags[..], &["--docker-reconcile-grace", "1s"]].concat()).await;
    let pool = &leak(&mut plugin, &docker, "auto", "10.31.0").await;
    // Within a few rounds (1 s apart, each reading twice 1 s apart) the leak is gone; the
    // gateway and a2's address stay.
    let deadline = Instant::now() + Duration::from_secs(20);
    while plugin.state()[pool].0 != 3 + 1 {
        assert!(
            Instant::now() < deadline,
            "not reconciled: {:?}",
            plugin.state()[pool]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(endpoints(&docker, "auto"), ["10.31.0.3"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(plugin.state()[pool].0, 3 + 1, "nothing more released");
    assert!(docker.container("a3", "auto", &[]).status.success());
    assert_eq!(docker.addresses("a3")[0].0, "10.31.0.2");
    drop(docker);
}

/// A veth pair for a macvlan parent, removed when dropped.
struct Veth(String);

impl Veth {
    fn new(name: String) -> Self {
        let peer = format!("{name}p");
        let add = Command::new("ip")
            .args(["link", "add", &name, "type", "veth", "peer", "name", &peer])
            .status()
            .unwrap();
        assert!(add.success(), "ip link add {name}");
        for link in [&name, &peer] {
            assert!(
                Command::new("ip")
                    .args(["link", "set", link, "up"])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        Self(name)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macvlan_internal_and_ipam_options_match_dockers_own() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().await;
    let plugin = Plugin::start().await;
    let docker = Dockerd::start();
    let driver = plugin.name.as_str();
    let tag = format!("{:04x}", std::process::id() & 0xffff);
    let (ours, theirs) = (
        Veth::new(format!("alv{tag}a")),
        Veth::new(format!("alv{tag}b")),
    );
    // macvlan with two subnets, on allot and on Docker's driver, each on a veth of its own.
    for (name, parent, ipam, n) in [
        ("mac", &ours.0, vec!["--ipam-driver", driver], "4"),
        ("mac-default", &theirs.0, vec![], "5"),
    ] {
        let parent = format!("parent={parent}");
        let (a, b) = (format!("10.3{n}.1.0/24"), format!("10.3{n}.2.0/24"));
        let mut args = vec!["network", "create", "-d", "macvlan", "-o", &parent];
        args.extend(ipam);
        args.extend(["--subnet", &a, "--subnet", &b, name]);
        docker.ok(&args);
    }
    assert_eq!(
        ipam_of(&docker, "mac", ("10.34.", "X")),
        ipam_of(&docker, "mac-default", ("10.35.", "X"))
    );
    // The container's address comes from either subnet (Docker tries them in no fixed order).
    for (network, n) in [("mac", "4"), ("mac-default", "5")] {
        let c = format!("{network}-c");
        assert!(docker.container(&c, network, &[]).status.success());
        let got = docker.addresses(&c)[0].0.clone();
        let expected = [format!("10.3{n}.1.2"), format!("10.3{n}.2.2")];
        assert!(expected.contains(&got), "{network}: {got}");
    }
    let state = plugin.state();
    let used = |p: &str| state[p].0;
    assert_eq!(
        used("local/10.34.1.0/24") + used("local/10.34.2.0/24"),
        2 * 3 + 1,
        "network, broadcast and a gateway in each subnet, and the container"
    );

    // --internal and --ipam-opt: the same IPAM as Docker's (options kept by Docker, ignored
    // by both drivers).
    for (name, ipam, n) in [
        ("inner", vec!["--ipam-driver", driver], "6"),
        ("inner-default", vec![], "7"),
    ] {
        let subnet = format!("10.3{n}.0.0/24");
        let mut args = vec![
            "network",
            "create",
            "--internal",
            "--ipam-opt",
            "color=blue",
        ];
        args.extend(ipam);
        args.extend(["--subnet", &subnet, name]);
        docker.ok(&args);
        let c = format!("{name}-c");
        assert!(docker.container(&c, name, &[]).status.success());
        assert_eq!(docker.addresses(&c)[0].0, format!("10.3{n}.0.2"));
    }
    assert_eq!(
        ipam_of(&docker, "inner", ("10.36.", "X")),
        ipam_of(&docker, "inner-default", ("10.37.", "X"))
    );
    let inner = docker.inspect(&["network", "inspect", "inner"]);
    assert_eq!(inner["IPAM"]["Options"]["color"], "blue");
    assert_eq!(inner["Internal"], true);
    drop(docker);
    drop((ours, theirs));
}
