//! Server settings: defaults, overridden by `ALLOT_*` environment variables, overridden by
//! flags (clap reads both). Parsing a bad value is a one-line error, never a panic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::engine::{DefaultPool, GLOBAL_SPACE, LOCAL_SPACE};
use crate::ipam::Endpoint;

/// `allot serve` settings.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(long, env = "ALLOT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// How long a shutdown (SIGINT, SIGTERM) waits for requests in flight before closing the
    /// connections still open, e.g. `10s`, `500ms`.
    #[arg(long, env = "ALLOT_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Connections open at once, gRPC and the Docker plugin socket together; more are closed
    /// as they arrive. Lowered to what the open-file limit leaves room for (allot raises its
    /// soft limit to the hard one at startup).
    #[arg(long, env = "ALLOT_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Longest a new connection may take to send its first bytes before it is closed.
    #[arg(long, env = "ALLOT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Longest a connection may stay without a byte read or written before it is closed
    /// (clients reconnect by themselves).
    #[arg(long, env = "ALLOT_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// An address space served by another driver than the built-in one:
    /// `space=NAME,driver=null`, or `space=NAME,driver=remote,endpoint=ENDPOINT[,remote-space=NAME][,timeout=10s]`
    /// for a remote IPAM plugin at `unix:///PATH` or `http://HOST:PORT` (its pools are
    /// tracked, so their utilization is known). Repeat for several; in ALLOT_ADDRESS_SPACES
    /// separate them with `;`. Docker's `null` space is served by the null driver unless given.
    #[arg(
        long = "address-space",
        env = "ALLOT_ADDRESS_SPACES",
        value_delimiter = ';',
        value_parser = parse_address_space
    )]
    pub address_spaces: Vec<(String, DriverSpec)>,

    /// Also serve Docker's remote IPAM plugin protocol on this unix socket, e.g.
    /// `/run/docker/plugins/allot.sock` (then `docker network create --ipam-driver allot`).
    #[arg(long, env = "ALLOT_DOCKER_PLUGIN_SOCKET")]
    pub docker_plugin_socket: Option<std::path::PathBuf>,

    /// Reconcile the Docker plugin's pools with this Docker daemon periodically
    /// (`unix:///var/run/docker.sock`): release what no endpoint, gateway or auxiliary address
    /// of its networks holds, as `allot docker reconcile` does.
    #[arg(long, env = "ALLOT_DOCKER_HOST", requires = "docker_plugin_socket")]
    pub docker_host: Option<String>,

    /// How often to reconcile with --docker-host.
    #[arg(long, env = "ALLOT_DOCKER_RECONCILE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub docker_reconcile_interval: Duration,

    /// How long an address must stay unheld by Docker before reconciliation releases it.
    #[arg(long, env = "ALLOT_DOCKER_RECONCILE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub docker_reconcile_grace: Duration,

    /// Log format.
    #[arg(long, env = "ALLOT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A default address pool, replacing the built-in ones of its address space:
    /// `[space=NAME,]base=CIDR,size=LEN` (space defaults to local). Repeat for several; in
    /// ALLOT_DEFAULT_ADDRESS_POOLS separate them with `;`.
    #[arg(
        long = "default-address-pool",
        env = "ALLOT_DEFAULT_ADDRESS_POOLS",
        value_delimiter = ';',
        value_parser = parse_default_pool
    )]
    pub default_address_pools: Vec<(String, DefaultPool)>,

    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Who may call, and how they prove it.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// `token`: every call but health checks and reflection needs a token (`authorization:
    /// Bearer …`); `none`: every caller acts for the tenant `default`, allowed on a loopback
    /// address only. Default: `token` when --admin-token-file is given, else `none`.
    #[arg(long, env = "ALLOT_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// A file holding the first admin token (`allot admin token create --output PATH` makes
    /// one), readable by its owner only. Implies --auth token.
    #[arg(long, env = "ALLOT_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// The server's TLS certificate chain (PEM); with --tls-key, gRPC is served over TLS.
    /// Re-read on SIGHUP and when the file changes.
    #[arg(long, env = "ALLOT_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "ALLOT_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Accept client certificates signed by this CA (PEM): such a certificate authenticates as
    /// the tenant its subject's common name (CN) names. Implies --auth token.
    #[arg(long, env = "ALLOT_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// The role a client certificate grants: read, write or admin.
    #[arg(long, env = "ALLOT_TLS_CLIENT_ROLE", default_value = "write", value_parser = parse_role)]
    pub tls_client_role: crate::auth::Role,

    /// Allow a non-loopback --listen without TLS: tokens then cross the network in clear.
    #[arg(long, env = "ALLOT_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// The tenant the Docker plugin socket serves (the plugin protocol carries no credentials:
    /// whoever can open the socket acts for this tenant).
    #[arg(long, env = "ALLOT_DOCKER_PLUGIN_TENANT", default_value = crate::store::DEFAULT_TENANT)]
    pub docker_plugin_tenant: String,
}

fn parse_role(s: &str) -> Result<crate::auth::Role, String> {
    s.parse()
}

/// `--auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Tokens (or client certificates) required.
    Token,
    /// No authentication: loopback only.
    None,
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: `sqlite://PATH` (created if missing), `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
    /// (several replicas may share one), or `memory:` (nothing persisted).
    #[arg(long, env = "ALLOT_DATABASE_URL", default_value = "sqlite://allot.db")]
    pub database_url: String,

    /// Longest a Postgres operation may take, connecting included: past it the request
    /// fails with UNAVAILABLE instead of waiting for a server that is down. E.g. `2s`.
    #[arg(long, env = "ALLOT_DATABASE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub database_timeout: Duration,
}

impl DatabaseArgs {
    /// The URL with any password replaced by `***`, for logs and messages.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        redact(&self.database_url)
    }
}

/// Replaces the password of a `scheme://user:password@host…` URL by `***`.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Which driver serves an address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverSpec {
    Builtin,
    Null,
    Remote {
        endpoint: Endpoint,
        remote_space: Option<String>,
        timeout: Duration,
    },
}

/// How long a remote plugin may take to answer, unless `timeout=` says otherwise.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `space=NAME,driver=builtin|null|remote[,endpoint=…][,remote-space=NAME][,timeout=D]`.
fn parse_address_space(input: &str) -> Result<(String, DriverSpec), String> {
    let (mut space, mut driver, mut endpoint, mut remote_space, mut timeout) =
        (None, None, None, None, REMOTE_TIMEOUT);
    for part in input.split(',') {
        match part.trim().split_once('=') {
            Some(("space", v)) => {
                crate::engine::id::check_space_name(v).map_err(|e| e.to_string())?;
                space = Some(v.to_owned());
            }
            Some(("driver", v)) => driver = Some(v.to_owned()),
            Some(("endpoint", v)) => endpoint = Some(Endpoint::parse(v)?),
            Some(("remote-space", v)) => remote_space = Some(v.to_owned()),
            Some(("timeout", v)) => timeout = parse_duration(v)?,
            _ => {
                return Err(format!(
                    "expected space=NAME,driver=builtin|null|remote[,endpoint=…], got {input:?}"
                ));
            }
        }
    }
    let space = space.ok_or_else(|| format!("{input:?} needs space="))?;
    let spec = match (driver.as_deref(), endpoint) {
        (Some("builtin"), None) => DriverSpec::Builtin,
        (Some("null"), None) => DriverSpec::Null,
        (Some("remote"), Some(endpoint)) => DriverSpec::Remote {
            endpoint,
            remote_space,
            timeout,
        },
        (Some("remote"), None) => {
            return Err(format!("{input:?}: a remote driver needs endpoint="));
        }
        (Some("builtin" | "null"), Some(_)) => {
            return Err(format!("{input:?}: only a remote driver takes endpoint="));
        }
        (Some(other), _) => {
            return Err(format!(
                "{input:?}: unknown driver {other:?} (builtin, null or remote)"
            ));
        }
        (None, _) => return Err(format!("{input:?} needs driver=")),
    };
    Ok((space, spec))
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl ServeArgs {
    /// The default address pools of each address space: the built-in ones (Docker's), with
    /// every space named in `--default-address-pool` replaced by the pools given for it.
    #[must_use]
    pub fn default_pools(&self) -> BTreeMap<String, Vec<DefaultPool>> {
        let mut pools = BTreeMap::from([
            (LOCAL_SPACE.to_owned(), DefaultPool::local_defaults()),
            (GLOBAL_SPACE.to_owned(), DefaultPool::global_defaults()),
        ]);
        let mut given: BTreeMap<String, Vec<DefaultPool>> = BTreeMap::new();
        for (space, pool) in &self.default_address_pools {
            given.entry(space.clone()).or_default().push(*pool);
        }
        pools.extend(given);
        pools
    }
}

/// Parses `10s`, `500ms` or `2m`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let split = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (n, unit) = input.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{input:?} is not a duration like 10s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{input:?}: the unit must be ms, s or m")),
    }
}

/// Parses `[space=NAME,]base=CIDR,size=LEN`.
fn parse_default_pool(input: &str) -> Result<(String, DefaultPool), String> {
    let mut space = LOCAL_SPACE.to_owned();
    let (mut base, mut size) = (None, None);
    for part in input.split(',') {
        match part.trim().split_once('=') {
            Some(("space", v)) => {
                crate::engine::id::check_space_name(v).map_err(|e| e.to_string())?;
                space = v.to_owned();
            }
            Some(("base", v)) => {
                base = Some(
                    crate::engine::id::parse_prefix(v)
                        .map_err(|reason| format!("base {v:?}: {reason}"))?,
                );
            }
            Some(("size", v)) => {
                size = Some(
                    v.parse::<u8>()
                        .map_err(|_| format!("size {v:?} is not a prefix length"))?,
                );
            }
            _ => {
                return Err(format!(
                    "expected [space=NAME,]base=CIDR,size=LEN, got {input:?}"
                ));
            }
        }
    }
    let (Some(base), Some(size)) = (base, size) else {
        return Err(format!("{input:?} needs both base= and size="));
    };
    let pool = DefaultPool::new(base, size).map_err(|e| e.to_string())?;
    Ok((space, pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_spaces_parse_with_clear_errors() {
        assert_eq!(
            parse_address_space("space=none,driver=null"),
            Ok(("none".to_owned(), DriverSpec::Null))
        );
        assert_eq!(
            parse_address_space(
                "space=far,driver=remote,endpoint=unix:///run/x.sock,remote-space=local,timeout=2s"
            ),
            Ok((
                "far".to_owned(),
                DriverSpec::Remote {
                    endpoint: Endpoint::Unix("/run/x.sock".into()),
                    remote_space: Some("local".into()),
                    timeout: Duration::from_secs(2),
                }
            ))
        );
        for bad in [
            "",
            "space=far",
            "driver=null",
            "space=far,driver=remote",
            "space=far,driver=null,endpoint=/x.sock",
            "space=far,driver=magic",
            "space=far,driver=remote,endpoint=ftp://x",
            "space=a/b,driver=null",
        ] {
            assert!(parse_address_space(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://allot:s3cret@db:5432/allot"),
            "postgres://allot:***@db:5432/allot"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/postgres"),
            "postgres://postgres@127.0.0.1/postgres"
        );
        assert_eq!(redact("sqlite://allot.db"), "sqlite://allot.db");
        assert_eq!(redact("memory:"), "memory:");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "10", "10h", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_pools_parse_with_clear_errors() {
        let (space, pool) = parse_default_pool("base=10.10.0.0/16,size=24").unwrap();
        assert_eq!(space, "local");
        assert_eq!(pool.base().to_string(), "10.10.0.0/16");
        assert_eq!(pool.size(), 24);
        let (space, _) = parse_default_pool("space=global,base=fd00::/48,size=64").unwrap();
        assert_eq!(space, "global");
        for bad in [
            "",
            "base=10.0.0.0/16",
            "base=banana,size=24",
            "base=10.0.0.0/16,size=8",
            "base=10.0.0.1/16,size=24",
            "space=a/b,base=10.0.0.0/16,size=24",
            "colour=red",
        ] {
            assert!(parse_default_pool(bad).is_err(), "{bad}");
        }
    }
}
