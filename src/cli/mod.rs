//! The `allot` command: the server (`serve`, `migrate`) and a gRPC client for operators
//! (`pool`, `address`, `state`; `tenant`, `token`, `quota` for admins).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

mod admin;
mod client;

pub use client::{IpamClient, Target, every_pool, every_state};

use crate::api::conn::{Gate, Incoming, Limits, raise_fd_limit};
use crate::api::tls::Tls;
use crate::config::{DatabaseArgs, ServeArgs};
use crate::engine::{GATEWAY_ADDRESS_TYPE, REQUEST_ADDRESS_TYPE, SERIAL_OPTION};
use crate::proto::pb;
use crate::{startup, telemetry};

/// allot: IP address management. `allot serve` runs the service; the other commands talk to
/// a running one.
#[derive(Debug, Parser)]
#[command(name = "allot", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line (and the environment), or exits saying what is wrong. Of a
    /// token and a token file, the one given on the command line wins over the other's
    /// environment variable; both on the command line, or both in the environment, is an error.
    #[must_use]
    pub fn parse_args() -> Self {
        use clap::parser::ValueSource::{CommandLine, EnvVariable};
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().get_matches();
        let mut cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        match (
            matches.value_source("token"),
            matches.value_source("token_file"),
        ) {
            (Some(EnvVariable), Some(CommandLine)) => cli.target.token = None,
            (Some(CommandLine), Some(EnvVariable)) => cli.target.token_file = None,
            (Some(a), Some(b)) if a == b => Self::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "a token and a token file were both given (--token/ALLOT_TOKEN, \
                     --token-file/ALLOT_TOKEN_FILE): give one",
                )
                .exit(),
            _ => {}
        }
        cli
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service (SQLite file allot.db in the working directory by default).
    Serve(Box<ServeArgs>),
    /// Create or upgrade the database schema, then exit.
    Migrate(DatabaseArgs),
    /// Request, release or list pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Request or release addresses.
    #[command(subcommand)]
    Address(AddressCommand),
    /// Show how full every pool (or the pools named) is.
    State {
        /// Pool ids (`<space>/<subnet>[/<sub-pool>]`); none for every pool.
        pool_ids: Vec<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Create, delete or list tenants (admin token).
    #[command(subcommand)]
    Tenant(admin::TenantCommand),
    /// Create, revoke or list a tenant's tokens (admin token).
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Set or show a tenant's quota (admin token).
    #[command(subcommand)]
    Quota(admin::QuotaCommand),
    /// Make the first admin token, for `allot serve --admin-token-file` (no server needed).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Reconcile allot with a Docker daemon whose networks use it.
    #[command(subcommand)]
    Docker(DockerCommand),
    /// Release the addresses of a pool whose owners are not alive (owned ones only).
    Gc {
        /// The pool's id: `<space>/<subnet>[/<sub-pool>]`.
        pool_id: String,
        /// A file listing the owners still alive, one per line.
        #[arg(long)]
        live_owners_file: std::path::PathBuf,
        /// Leave addresses held for less than this many seconds.
        #[arg(long, default_value_t = 0)]
        min_age_seconds: i64,
        /// Only list what would be released.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DockerCommand {
    /// Release what allot holds for the daemon's networks and no endpoint, gateway or
    /// auxiliary address of theirs holds (seen so twice, --grace apart); list pools that no
    /// network of the daemon uses.
    Reconcile {
        /// The daemon's API socket.
        #[arg(
            long,
            env = "DOCKER_HOST",
            default_value = "unix:///var/run/docker.sock"
        )]
        docker_host: String,
        /// How long an address must stay unheld by Docker before it is released (a container
        /// being created holds its address before its endpoint is written).
        #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
        grace: std::time::Duration,
        /// Only list what would be released.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool and print its id.
    Request {
        /// Address space.
        #[arg(long, default_value = "local")]
        space: String,
        /// Subnet (CIDR); omit for the next free one from the default pools.
        #[arg(long, default_value = "")]
        pool: String,
        /// Ip-range inside the subnet (CIDR).
        #[arg(long, default_value = "")]
        sub_pool: String,
        /// IPv6 pool.
        #[arg(long)]
        v6: bool,
        /// A driver option `KEY=VALUE` (Docker's --ipam-opt), for a remote plugin; repeatable.
        #[arg(long = "option", value_parser = parse_option)]
        options: Vec<(String, String)>,
        /// An id that makes the request safe to retry: the same id (within 24 hours) gets the
        /// same pool back.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Delete a pool (its subnet goes with its last pool).
    Release {
        /// The pool's id, as `pool request` printed it: `<space>/<subnet>[/<sub-pool>]`.
        pool_id: String,
    },
    /// List pools.
    List {
        /// Only this address space.
        #[arg(long, default_value = "")]
        space: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AddressCommand {
    /// Allocate an address and print it (with the subnet's prefix length).
    Request {
        /// The pool's id: `<space>/<subnet>[/<sub-pool>]`.
        pool_id: String,
        /// The address wanted; omit for the next free one.
        address: Option<String>,
        /// Serial allocation: continue after the most recent allocation.
        #[arg(long)]
        serial: bool,
        /// Mark the request as a gateway request.
        #[arg(long)]
        gateway: bool,
        /// A driver option `KEY=VALUE`, for a remote plugin; repeatable.
        #[arg(long = "option", value_parser = parse_option)]
        options: Vec<(String, String)>,
        /// Who will hold it (e.g. `<container id>/<ifname>`): asked again, the same owner gets
        /// the same address.
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// List a pool's addresses in use, with their owners (every page).
    List {
        /// The pool's id: `<space>/<subnet>[/<sub-pool>]`.
        pool_id: String,
        /// Only the addresses held by an owner starting with this.
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// Free an address (freeing a free one succeeds).
    Release {
        /// The pool's id: `<space>/<subnet>[/<sub-pool>]`.
        pool_id: String,
        /// The address, as `address request` printed it or without its prefix length.
        address: String,
        /// Only if this owner holds it.
        #[arg(long, default_value = "")]
        owner: String,
    },
}

/// Output format of `allot state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Runs the command line.
///
/// # Errors
/// Anything that goes wrong, as one line for the user.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => {
            println!("{}", startup::migrate(&args).await?);
            Ok(())
        }
        Command::Pool(cmd) => pool(&cli.target, cmd).await,
        Command::Address(cmd) => address(&cli.target, cmd).await,
        Command::State { pool_ids, output } => state(&cli.target, pool_ids, output).await,
        Command::Tenant(cmd) => admin::tenant(&cli.target, cmd).await,
        Command::Token(cmd) => admin::token(&cli.target, cmd).await,
        Command::Quota(cmd) => admin::quota(&cli.target, cmd).await,
        Command::Gc {
            pool_id,
            live_owners_file,
            min_age_seconds,
            dry_run,
        } => {
            gc(
                &cli.target,
                pool_id,
                &live_owners_file,
                min_age_seconds,
                dry_run,
            )
            .await
        }
        Command::Admin(cmd) => admin::local(cmd),
        Command::Docker(DockerCommand::Reconcile {
            docker_host,
            grace,
            dry_run,
        }) => docker_reconcile(&cli.target, &docker_host, grace, dry_run).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(
        args.log_format,
        std::io::stderr().is_terminal(),
        std::io::stderr,
    );
    let store = startup::open_store(&args.database).await?;
    let auth = startup::authenticator(&args, Arc::clone(&store)).await?;
    let tls = startup::tls(&args)?;
    // Held for as long as the server runs: re-reads the certificates.
    let _reloading = tls.as_ref().map(Tls::watch).transpose()?;
    let tenants = startup::tenants(store, args.default_pools(), &args.address_spaces).await?;
    let listener = startup::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    if args.database.database_url == "memory:" {
        tracing::warn!("database memory: nothing is persisted; every pool is lost on exit");
    }
    if auth.mode() == crate::auth::Mode::Open {
        tracing::warn!(
            "authentication is off (loopback only): every caller acts for the tenant default; \
             give --admin-token-file to require tokens"
        );
    }
    let gate = Gate::new(Limits {
        max_connections: raise_fd_limit(usize::try_from(args.max_connections)?),
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
    });
    let (stop, stopping) = tokio::sync::watch::channel(false);
    if let Some(path) = &args.docker_plugin_socket {
        let socket = crate::api::plugin::bind(path)
            .with_context(|| format!("docker plugin socket {}", path.display()))?;
        tracing::info!(socket = %path.display(), "serving the docker ipam plugin protocol");
        tokio::spawn(crate::api::plugin::serve(
            Incoming::new(socket.listener, gate.clone(), "docker plugin"),
            socket.path,
            Arc::clone(&tenants),
            args.security.docker_plugin_tenant.clone(),
            stopping.clone(),
        ));
    }
    if let Some(host) = &args.docker_host {
        let engine = crate::docker::Engine::new(host)?;
        tracing::info!(docker_host = %host, every = ?args.docker_reconcile_interval, "reconciling with docker");
        let allot = crate::docker::InServer {
            tenants: Arc::clone(&tenants),
            tenant: args.security.docker_plugin_tenant.clone(),
        };
        let every = (args.docker_reconcile_interval, args.docker_reconcile_grace);
        tokio::spawn(crate::docker::reconcile_every(
            allot,
            engine,
            every,
            stopping.clone(),
        ));
    }
    // Before "listening": a signal sent from then on stops the server gracefully.
    let signal = startup::shutdown_signal()?;
    tracing::info!(%addr, database = %args.database.redacted_url(), "allot listening");
    let shutdown = async move {
        signal.await;
        let _ = stop.send(true);
    };
    let incoming = Incoming::new(listener, gate, "grpc");
    let service = startup::Service { tenants, auth, tls };
    startup::serve(incoming, service, shutdown, args.shutdown_grace).await
}

async fn gc(
    target: &Target,
    pool_id: String,
    live_owners_file: &std::path::Path,
    min_age_seconds: i64,
    dry_run: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(live_owners_file)
        .with_context(|| format!("reading {}", live_owners_file.display()))?;
    let live_owners = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let mut c = target.ipam().await?;
    let r = c
        .garbage_collect(pb::GarbageCollectRequest {
            pool_ids: vec![pool_id],
            live_owners,
            min_age_seconds,
            dry_run,
        })
        .await
        .map_err(failed)?
        .into_inner();
    let verb = if dry_run { "would release" } else { "released" };
    for x in &r.collected {
        println!("{verb} {} ({})", x.address, x.owner);
    }
    eprintln!("{} address(es) {verb}", r.collected.len());
    Ok(())
}

async fn docker_reconcile(
    target: &Target,
    docker_host: &str,
    grace: std::time::Duration,
    dry_run: bool,
) -> anyhow::Result<()> {
    let engine = crate::docker::Engine::new(docker_host)?;
    let client = target.ipam().await?;
    let report = crate::docker::reconcile(&client, &engine, grace, dry_run).await?;
    let verb = if dry_run { "would release" } else { "released" };
    for (pool_id, network, address) in &report.released {
        println!(
            "{verb} {address} in {pool_id} (network {network}): no endpoint, gateway or \
             auxiliary address holds it"
        );
    }
    for pool_id in &report.unused_pools {
        println!("pool {pool_id}: no network of this Docker daemon uses it");
    }
    eprintln!("{} address(es) {verb}", report.released.len());
    Ok(())
}

/// An error and its causes on one line, each said once: transport errors repeat their
/// cause's words ("tcp connect error: tcp connect error: …").
#[must_use]
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if last.contains(&said) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&said);
        last = said;
    }
    line
}

/// Turns a status into a one-line error.
#[allow(clippy::needless_pass_by_value)] // used as `map_err(failed)`
pub(crate) fn failed(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {}",
        crate::api::status::code_name(status.code()),
        status.message()
    )
}

/// Parses `KEY=VALUE`.
fn parse_option(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{input:?} is not KEY=VALUE")),
    }
}

async fn pool(target: &Target, cmd: PoolCommand) -> anyhow::Result<()> {
    let mut c = target.ipam().await?;
    match cmd {
        PoolCommand::Request {
            space,
            pool,
            sub_pool,
            v6,
            options,
            request_id,
        } => {
            let r = c
                .request_pool(pb::RequestPoolRequest {
                    address_space: space,
                    pool,
                    sub_pool,
                    options: options.into_iter().collect(),
                    v6,
                    request_id,
                })
                .await
                .map_err(failed)?;
            println!("{}", r.get_ref().pool_id);
        }
        PoolCommand::Release { pool_id } => {
            c.release_pool(pb::ReleasePoolRequest {
                pool_id: pool_id.clone(),
            })
            .await
            .map_err(failed)?;
            println!("released {pool_id}");
        }
        PoolCommand::List { space } => {
            let pools = every_pool(&c, &space).await.map_err(failed)?;
            for p in &pools {
                println!("{}", p.pool_id);
            }
            if pools.is_empty() {
                // On stderr: a script reading the ids sees none.
                eprintln!("(no pools)");
            }
        }
    }
    Ok(())
}

async fn address(target: &Target, cmd: AddressCommand) -> anyhow::Result<()> {
    let mut c = target.ipam().await?;
    match cmd {
        AddressCommand::Request {
            pool_id,
            address,
            serial,
            gateway,
            options,
            owner,
        } => {
            let mut options: HashMap<String, String> = options.into_iter().collect();
            if serial {
                options.insert(SERIAL_OPTION.to_owned(), "true".to_owned());
            }
            if gateway {
                options.insert(
                    REQUEST_ADDRESS_TYPE.to_owned(),
                    GATEWAY_ADDRESS_TYPE.to_owned(),
                );
            }
            let r = c
                .request_address(pb::RequestAddressRequest {
                    pool_id,
                    address: address.unwrap_or_default(),
                    options,
                    owner,
                })
                .await
                .map_err(failed)?;
            println!("{}", r.get_ref().address);
        }
        AddressCommand::List { pool_id, owner } => {
            let mut rows = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = c
                    .list_allocations(pb::ListAllocationsRequest {
                        pool_id: pool_id.clone(),
                        owner_prefix: owner.clone(),
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(failed)?
                    .into_inner();
                for a in page.allocations {
                    let since = a
                        .allocated_at
                        .map_or_else(|| "-".to_owned(), |t| admin::date(t.seconds));
                    let holder = if a.owner.is_empty() {
                        "-".to_owned()
                    } else {
                        a.owner
                    };
                    rows.push(vec![a.address, holder, since]);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print!("{}", admin::table(&["ADDRESS", "OWNER", "SINCE"], &rows));
        }
        AddressCommand::Release {
            pool_id,
            address,
            owner,
        } => {
            c.release_address(pb::ReleaseAddressRequest {
                pool_id: pool_id.clone(),
                address: address.clone(),
                owner,
            })
            .await
            .map_err(failed)?;
            println!("released {address} in {pool_id}");
        }
    }
    Ok(())
}

async fn state(target: &Target, pool_ids: Vec<String>, output: Output) -> anyhow::Result<()> {
    let mut c = target.ipam().await?;
    let pools = if pool_ids.is_empty() {
        every_state(&c).await.map_err(failed)?
    } else {
        let named = pb::GetIpamStateRequest {
            pool_ids,
            ..Default::default()
        };
        c.get_ipam_state(named)
            .await
            .map_err(failed)?
            .into_inner()
            .pools
    };
    match output {
        Output::Json => println!("{}", state_json(&pools)),
        Output::Table => print!("{}", state_table(&pools)),
    }
    Ok(())
}

/// `allot state --output json`: one object per pool, counts as numbers (saturating at 2^64-1)
/// and as exact decimal strings.
#[must_use]
pub fn state_json(pools: &[pb::PoolState]) -> String {
    let items: Vec<serde_json::Value> = pools
        .iter()
        .map(|p| {
            serde_json::json!({
                "pool_id": p.pool_id,
                "address_space": p.address_space,
                "subnet": p.subnet,
                "ip_range": p.ip_range,
                "allocated_ips_in_subnet": p.allocated_ips_in_subnet,
                "allocated_ips_in_subnet_exact": p.allocated_ips_in_subnet_exact,
                "available_ips_in_ip_range_pool": p.available_ips_in_ip_range_pool,
                "available_ips_in_ip_range_pool_exact": p.available_ips_in_ip_range_pool_exact,
                "available_ips_in_subnet_ranges": p.available_ips_in_subnet_ranges,
                "available_ips_in_subnet_ranges_exact": p.available_ips_in_subnet_ranges_exact,
                "driver": p.driver,
                "source": source_name(p),
                "error_code": p.error_code,
                "error": p.error,
            })
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// Where a state's counts come from, as the CLI shows it.
fn source_name(p: &pb::PoolState) -> &'static str {
    match p.source() {
        pb::UtilizationSource::Tracked => "tracked",
        pb::UtilizationSource::Driver | pb::UtilizationSource::Unspecified => "driver",
    }
}

/// Width of the utilization bar, in characters.
const BAR: usize = 20;

/// `allot state`: pool, driver, subnet, range, addresses in use in the subnet, free in the
/// range, and a bar of how much of the range is taken (or the driver's error).
#[must_use]
pub fn state_table(pools: &[pb::PoolState]) -> String {
    let header = [
        "POOL",
        "DRIVER",
        "SUBNET",
        "RANGE",
        "IN USE",
        "FREE",
        "RANGE USED",
    ];
    let rows: Vec<[String; 7]> = pools
        .iter()
        .map(|p| {
            let range = if p.ip_range.is_empty() {
                &p.subnet
            } else {
                &p.ip_range
            };
            let driver = match (p.driver.as_str(), source_name(p)) {
                ("", _) => "-".to_owned(),
                (d, "tracked") => format!("{d} (tracked)"),
                (d, _) => d.to_owned(),
            };
            let (used, free, bar) = if !p.error_code.is_empty() {
                let e = format!("error: {} {}", p.error_code, p.error);
                ("-".to_owned(), "-".to_owned(), e)
            } else if p.driver == "null" {
                (
                    "0".to_owned(),
                    "0".to_owned(),
                    "- (no addresses)".to_owned(),
                )
            } else {
                (
                    p.allocated_ips_in_subnet_exact.clone(),
                    p.available_ips_in_ip_range_pool_exact.clone(),
                    bar(range, &p.available_ips_in_ip_range_pool_exact),
                )
            };
            [
                p.pool_id.clone(),
                driver,
                p.subnet.clone(),
                if p.ip_range.is_empty() {
                    "-".to_owned()
                } else {
                    p.ip_range.clone()
                },
                used,
                free,
                bar,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 7]| {
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Counts right-aligned, text left-aligned; no padding after the last column.
            let _ = match i {
                4 | 5 => write!(out, "{cell:>w$}  "),
                6 => write!(out, "{cell}"),
                _ => write!(out, "{cell:<w$}  "),
            };
        }
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        out.push_str("(no pools)\n");
    }
    out
}

/// `[#####...............]  25.0%`: the share of `range` no longer free.
fn bar(range: &str, free: &str) -> String {
    let (Ok(net), Ok(free)) = (range.parse::<IpNet>(), free.parse::<u128>()) else {
        return String::new();
    };
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let size = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
    let used = size.saturating_sub(free);
    // Display only: f64 rounding is fine here.
    #[allow(clippy::cast_precision_loss)]
    let share = used as f64 / size as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let filled = ((share * BAR as f64).round() as usize).min(BAR);
    format!(
        "[{}{}] {:5.1}%",
        "#".repeat(filled),
        ".".repeat(BAR - filled),
        share * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pool_id: &str, subnet: &str, range: &str, used: &str, free: &str) -> pb::PoolState {
        pb::PoolState {
            pool_id: pool_id.into(),
            subnet: subnet.into(),
            ip_range: range.into(),
            allocated_ips_in_subnet_exact: used.into(),
            available_ips_in_ip_range_pool_exact: free.into(),
            ..pb::PoolState::default()
        }
    }

    #[test]
    fn the_state_table_lines_up_and_shows_the_share_of_the_range_used() {
        let t = state_table(&[
            state(
                "local/192.168.10.0/24/192.168.10.128/31",
                "192.168.10.0/24",
                "192.168.10.128/31",
                "4",
                "1",
            ),
            state(
                "local/fd00::/64",
                "fd00::/64",
                "",
                "1",
                "18446744073709551615",
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("POOL "));
        assert!(
            lines[1].ends_with("[##########..........]  50.0%"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("[....................]   0.0%"),
            "{}",
            lines[2]
        );
        // Columns start at the same place on every line.
        let col = |l: &str, what: &str| l.find(&format!("  {what}")).unwrap();
        assert_eq!(col(lines[0], "SUBNET"), col(lines[1], "192.168.10.0/24"));
        assert_eq!(col(lines[0], "SUBNET"), col(lines[2], "fd00::/64"));
        assert!(state_table(&[]).ends_with("RANGE USED\n(no pools)\n"));
    }

    #[test]
    fn the_state_table_shows_drivers_sources_and_errors() {
        let mut tracked = state("far/10.9.0.0/16", "10.9.0.0/16", "", "3", "65533");
        tracked.driver = "remote".into();
        tracked.set_source(pb::UtilizationSource::Tracked);
        let mut failed = state("far/10.8.0.0/16", "10.8.0.0/16", "", "0", "0");
        failed.driver = "remote".into();
        failed.error_code = "UNAVAILABLE".into();
        failed.error = "remote driver: plugin unreachable".into();
        let mut null = state("null/0.0.0.0/0", "0.0.0.0/0", "", "0", "0");
        null.driver = "null".into();
        let t = state_table(&[tracked, failed, null]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains("remote (tracked)"), "{}", lines[1]);
        assert!(
            lines[2].ends_with("error: UNAVAILABLE remote driver: plugin unreachable"),
            "{}",
            lines[2]
        );
        assert!(lines[3].ends_with("- (no addresses)"), "{}", lines[3]);
        let json: serde_json::Value =
            serde_json::from_str(&state_json(&[state("a/10.0.0.0/8", "", "", "", "")]))
                .expect("json");
        assert_eq!(json[0]["source"], "driver");
    }
}
