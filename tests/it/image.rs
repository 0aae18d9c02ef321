//! The Dockerfile and compose.yaml under a real dockerd, without any image registry.
//!
//! The image is built from the repository by the Dockerfile's `prebuilt` target (an empty base
//! holding the statically linked binary of `scripts/static-binary.sh`), run as its defaults say
//! (SQLite in a volume, an admin token mounted, the port published on loopback) and called from
//! the host with the real CLI. Then compose.yaml is brought up with Debian's docker-compose
//! 1.29, which builds the same target, against a PostgreSQL image made here with debootstrap
//! (Debian's PostgreSQL 15 behind the official image's environment contract), standing in for
//! `postgres:16` from Docker Hub, which cannot be pulled here. Needs root, docker.io,
//! docker-compose and debootstrap: installed when missing; under CI or as root, a machine that
//! cannot have them fails the test.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::docker::{Dockerd, TURN};
use crate::helpers::*;

/// The repository: the build context, and where the cached PostgreSQL root filesystem goes.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The image compose builds, and the one `docker build` makes.
const IMAGE: &str = "allot-image:test";
const POSTGRES_IMAGE: &str = "allot-test-postgres:15";

/// uid:gid the image runs allot as.
const NOBODY: u32 = 65534;

/// The official PostgreSQL image's contract, as much as compose.yaml relies on:
/// `POSTGRES_USER`, `POSTGRES_PASSWORD`, `POSTGRES_DB`, the data in /var/lib/postgresql/data,
/// password authentication over the network, `pg_isready` on the PATH.
const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
set -eu
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data
as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"
mkdir -p "$data" /run/postgresql
chown postgres:postgres "$data" /run/postgresql
chmod 700 "$data"
if [ ! -s "$data/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" > /run/postgresql/pwfile
  chown postgres /run/postgresql/pwfile
  $as_postgres "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile=/run/postgresql/pwfile \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm /run/postgresql/pwfile
  echo "host all all all scram-sha-256" >> "$data/pg_hba.conf"
  echo "CREATE DATABASE \"$POSTGRES_DB\"" |
    $as_postgres "$bin/postgres" --single -D "$data" -j postgres >/dev/null
fi
exec $as_postgres "$bin/postgres" -D "$data" -c listen_addresses='*'
"#;

fn ready() -> bool {
    prerequisites(
        || {
            have("dockerd")
                && have("docker-compose")
                && have("debootstrap")
                && have("busybox")
                && buildkit_client().is_some()
        },
        &[
            "docker.io",
            "docker-compose",
            "debootstrap",
            "busybox-static",
        ],
        "the image tests need root, docker.io, docker-compose and debootstrap",
    )
}

/// A Docker client that builds with BuildKit on its own: the one of Debian's docker.io, the
/// daemon's own version. (A newer client hands builds to the buildx plugin, which Debian's
/// package does not have.)
fn buildkit_client() -> Option<PathBuf> {
    let out = Command::new("dpkg-query")
        .args(["-L", "docker.io"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .find(|p| p.ends_with("bin/docker") && p.exists())
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loopback port nothing listens on, for a container's published port.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The static binary, built (or found up to date) by the script the README names.
fn static_binary() {
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("scripts/static-binary.sh"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(&out, "scripts/static-binary.sh");
}

/// An admin token in `dir/admin-token`, owned by the image's user (mode 600, as allot wants).
fn token_for_the_image(dir: &Path) -> String {
    let (_, path) = admin_token_file(dir);
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    path
}

/// The allot CLI on the host, calling `port` on loopback with the admin token.
fn cli(port: u16, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["--server", &format!("http://127.0.0.1:{port}")])
        .args(["--token-file", token])
        .args(args)
        .output()
        .unwrap()
}

/// Waits until allot answers on `port`; its `allot state` then.
fn answering(port: u16, token: &str, logs: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = cli(port, token, &["state"]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "allot in the container did not answer: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A pool and one address in it, through the CLI: (pool id, the address).
fn pool_and_address(port: u16, token: &str, subnet: &str) -> (String, String) {
    let pool = ok(
        &cli(port, token, &["pool", "request", "--pool", subnet]),
        "pool request",
    );
    let addr = ok(
        &cli(port, token, &["address", "request", &pool]),
        "address request",
    );
    (pool, addr)
}

/// Debian's PostgreSQL 15 as an image, from a root filesystem made by debootstrap (kept in
/// target/docker between runs: it takes about a minute to make).
fn postgres_image(docker: &Dockerd) {
    let cache = Path::new(REPO).join("target/docker/postgres-15-rootfs.tar");
    if !cache.exists() {
        let root = Path::new(REPO).join("target/docker/postgres-rootfs");
        let _ = std::fs::remove_dir_all(&root);
        let out = Command::new("debootstrap")
            .args(["--variant=minbase", "--include=postgresql-15", "bookworm"])
            .arg(&root)
            .arg("http://deb.debian.org/debian")
            .output()
            .unwrap();
        ok(&out, "debootstrap");
        // What the image does not need: the package cache and manuals, and the cluster the
        // package made (the entrypoint makes its own, as the official image does).
        for gone in [
            "var/cache/apt/archives",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
            "var/lib/postgresql/15",
            "etc/postgresql/15",
        ] {
            let _ = std::fs::remove_dir_all(root.join(gone));
        }
        let entrypoint = root.join("usr/local/bin/postgres-entrypoint");
        std::fs::write(&entrypoint, POSTGRES_ENTRYPOINT).unwrap();
        std::fs::set_permissions(&entrypoint, std::fs::Permissions::from_mode(0o755)).unwrap();
        let partial = cache.with_extension("tar.new");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&partial)
            .arg(".")
            .output()
            .unwrap();
        ok(&out, "tar of the PostgreSQL root filesystem");
        std::fs::rename(&partial, &cache).unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }
    let out = docker
        .command("docker")
        .args(["import"])
        .args([
            "-c",
            "ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .args(["-c", r#"ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]"#])
        .args(["-c", "EXPOSE 5432"])
        .arg(&cache)
        .arg(POSTGRES_IMAGE)
        .output()
        .unwrap();
    ok(&out, "docker import of PostgreSQL");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_and_compose_yaml_run_allot_under_a_real_dockerd() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().await;
    static_binary();
    let docker = Dockerd::start();
    let client = buildkit_client().unwrap();
    let client = client.to_str().unwrap();
    let dir = TempDir::new("image");
    let token = token_for_the_image(&dir.0);

    // The image, from the repository, with no registry.
    let out = docker
        .command(client)
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "--target", "prebuilt", "-t", IMAGE, REPO])
        .output()
        .unwrap();
    ok(&out, "docker build --target prebuilt");
    let version = ok(
        &docker.run(&["run", "--rm", IMAGE, "--version"]),
        "allot --version in the image",
    );
    assert_eq!(version, format!("allot {}", env!("CARGO_PKG_VERSION")));
    let user = docker.ok(&["image", "inspect", IMAGE, "--format", "{{.Config.User}}"]);
    assert_eq!(
        user,
        format!("{NOBODY}:{NOBODY}"),
        "allot does not run as root"
    );

    // As the Dockerfile's defaults say: SQLite in the working directory (a volume here), the
    // admin token mounted, the port published on loopback, and nothing else.
    docker.ok(&["network", "create", "allot-image"]);
    let port = free_port();
    let run = |name: &str| {
        docker.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "allot-image",
            "-p",
            &format!("127.0.0.1:{port}:50051"),
            "-v",
            "allot-data:/var/lib/allot",
            "-v",
            &format!("{token}:/run/secrets/allot-admin-token:ro"),
            IMAGE,
        ])
    };
    run("allot");
    let logs = |name: &str| {
        let out = docker.run(&["logs", name]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let empty = answering(port, &token, || logs("allot"));
    assert!(empty.contains("(no pools)"), "{empty}");
    let (pool, addr) = pool_and_address(port, &token, "10.77.0.0/24");
    assert_eq!(addr, "10.77.0.1/24");
    let before = answering(port, &token, || logs("allot"));
    assert!(before.contains(&pool), "{before}");
    let started = logs("allot");
    assert!(
        started.contains("database=sqlite://allot.db"),
        "the default store: {started}"
    );
    // A new container on the same volume finds the pool and its address.
    docker.ok(&["rm", "-f", "allot"]);
    run("allot-again");
    assert_eq!(answering(port, &token, || logs("allot-again")), before);
    let (_, next) = pool_and_address(port, &token, "10.78.0.0/24");
    assert_eq!(next, "10.78.0.1/24");
    docker.ok(&["rm", "-f", "allot-again"]);

    // compose.yaml as it is, with what cannot come from Docker Hub here replaced: allot's
    // image built by compose from the `prebuilt` target, PostgreSQL made locally.
    postgres_image(&docker);
    let overrides = dir.0.join("compose.override.yaml");
    std::fs::write(
        &overrides,
        format!(
            "services:\n  postgres:\n    image: {POSTGRES_IMAGE}\n  allot:\n    image: {IMAGE}\n    \
             build:\n      context: {REPO}\n      target: prebuilt\n    volumes:\n      \
             - {token}:/run/secrets/allot-admin-token:ro\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let path = format!(
        "{}:{}",
        Path::new(client).parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let compose = |args: &[&str]| {
        docker
            .command("docker-compose")
            .current_dir(REPO)
            .args(["--project-name", "allotimagetest"])
            .args(["-f", "compose.yaml", "-f"])
            .arg(&overrides)
            .args(args)
            .env("ALLOT_PORT", port.to_string())
            .env("COMPOSE_DOCKER_CLI_BUILD", "1")
            .env("DOCKER_BUILDKIT", "1")
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    let compose_logs = || {
        let out = compose(&["logs", "--no-color"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&compose(&["up", "-d", "--build"]), "docker-compose up");
    let empty = answering(port, &token, compose_logs);
    assert!(empty.contains("(no pools)"), "{empty}");
    let (pool, addr) = pool_and_address(port, &token, "10.79.0.0/24");
    assert_eq!(addr, "10.79.0.1/24");
    // In PostgreSQL, in the database compose.yaml names.
    let sql = "SELECT count(*) FROM subnets WHERE subnet = '10.79.0.0/24'";
    let rows = ok(
        &compose(&[
            "exec", "-T", "postgres", "psql", "-U", "allot", "-d", "allot", "-Atc", sql,
        ]),
        "psql in the postgres service",
    );
    assert_eq!(rows, "1", "the pool is in compose's PostgreSQL");
    let before = answering(port, &token, compose_logs);
    assert!(before.contains(&pool), "{before}");
    ok(
        &compose(&["restart", "allot"]),
        "docker-compose restart allot",
    );
    assert_eq!(answering(port, &token, compose_logs), before);
    ok(&compose(&["down", "--volumes"]), "docker-compose down");
    let left = docker.ok(&["ps", "-aq"]);
    assert!(left.is_empty(), "compose down left containers: {left}");
}
