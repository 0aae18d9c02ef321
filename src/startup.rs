//! Builds the store, the driver and the gRPC server (with reflection and health), and runs it
//! until a shutdown signal, finishing the requests in flight.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::api::conn::Incoming;
use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;

use crate::api::authn::AuthLayer;
use crate::api::tls::{Tls, TlsFiles};
use crate::api::{AdminApi, IpamApi};
use crate::auth::{Authenticator, Mode};
use crate::config::{AuthMode, DatabaseArgs, DriverSpec, ServeArgs};
use crate::engine::DefaultPool;
use crate::ipam::{Build, Builtin, Ipam, NULL_SPACE, Null, Remote, Router, Tenants, Tracked};
use crate::proto::admin_pb::admin_service_server::AdminServiceServer;
use crate::proto::pb;
use crate::proto::pb::ipam_service_server::IpamServiceServer;
use crate::store::{DEFAULT_TENANT, MemoryStore, PgStore, SqliteStore, Store};

/// Opens the store a database URL names, creating and migrating it if needed.
///
/// # Errors
/// An unsupported or malformed URL, or a database that cannot be opened or migrated.
pub async fn open_store(args: &DatabaseArgs) -> anyhow::Result<Arc<dyn Store>> {
    let url = args.database_url.as_str();
    if url == "memory:" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    let shown = args.redacted_url();
    if url.starts_with("sqlite:") {
        let store = SqliteStore::connect(url)
            .await
            .with_context(|| format!("opening {shown}"))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PgStore::connect(url, args.database_timeout)
            .await
            .with_context(|| format!("opening {shown}"))?;
        return Ok(Arc::new(store));
    }
    bail!("unsupported database URL {shown:?}: expected sqlite://PATH, postgres://… or memory:")
}

/// Opens the database a URL names and brings its schema up to date (what `allot migrate`
/// does); returns what it did, as one line for the operator.
///
/// # Errors
/// As [`open_store`].
pub async fn migrate(args: &DatabaseArgs) -> anyhow::Result<String> {
    let url = args.database_url.as_str();
    let shown = args.redacted_url();
    let migrated = if url.starts_with("sqlite:") {
        let store = SqliteStore::connect(url).await;
        store
            .with_context(|| format!("opening {shown}"))?
            .migrated()
            .to_vec()
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PgStore::connect(url, args.database_timeout).await;
        store
            .with_context(|| format!("opening {shown}"))?
            .migrated()
            .to_vec()
    } else {
        open_store(args).await?;
        return Ok(format!(
            "database {shown} keeps nothing: no schema to migrate"
        ));
    };
    Ok(match migrated.as_slice() {
        [] => format!("database {shown} is up to date"),
        applied => {
            let names: Vec<String> = applied
                .iter()
                .map(|(version, description)| format!("{version} {description}"))
                .collect();
            format!("database {shown} migrated: {}", names.join(", "))
        }
    })
}

/// Loads the built-in driver of the default tenant over `store`, and routes Docker's `null`
/// address space to the null driver, as Docker does.
///
/// # Errors
/// The store cannot be read, or holds corrupt data.
pub async fn driver(
    store: Arc<dyn Store>,
    defaults: BTreeMap<String, Vec<DefaultPool>>,
) -> anyhow::Result<Arc<dyn Ipam>> {
    tenant_driver(store, &defaults, &[], DEFAULT_TENANT).await
}

/// Loads the drivers of every tenant (see [`tenant_driver`]), and builds those of tenants
/// created later on first use.
///
/// # Errors
/// The store cannot be read or holds corrupt data.
pub async fn tenants(
    store: Arc<dyn Store>,
    defaults: BTreeMap<String, Vec<DefaultPool>>,
    routes: &[(String, DriverSpec)],
) -> anyhow::Result<Arc<Tenants>> {
    let config = Arc::new((Arc::clone(&store), defaults, routes.to_vec()));
    let build: Build = Arc::new(move |tenant: String| {
        let config = Arc::clone(&config);
        Box::pin(async move {
            let (store, defaults, routes) = &*config;
            tenant_driver(Arc::clone(store), defaults, routes, &tenant)
                .await
                .map_err(|e| driver_error(&e))
        })
    });
    Tenants::load(store, build)
        .await
        .context("loading the tenants' subnets from the store")
}

/// The error of building a driver, in the driver's terms: a store failure stays one (so an
/// unavailable store is reported as such), anything else is internal.
fn driver_error(e: &anyhow::Error) -> crate::ipam::Error {
    let chained = e.chain();
    for cause in chained {
        if let Some(e) = cause.downcast_ref::<crate::ipam::Error>() {
            return e.clone();
        }
        if let Some(e) = cause.downcast_ref::<crate::store::Error>() {
            return e.clone().into();
        }
    }
    crate::ipam::Error::Internal(format!("{e:#}"))
}

/// Loads one tenant's drivers: the built-in one over `store` for every address space not
/// routed elsewhere, the null driver for Docker's `null` space (unless `routes` says
/// otherwise), and the drivers `routes` names, each remote plugin wrapped in a tracking record
/// of the tenant's own. The routes are the deployment's, the same for every tenant.
///
/// # Errors
/// The store cannot be read or holds corrupt data. (A remote plugin that cannot be reached
/// yet is activated on first use.)
pub async fn tenant_driver(
    store: Arc<dyn Store>,
    defaults: &BTreeMap<String, Vec<DefaultPool>>,
    routes: &[(String, DriverSpec)],
    tenant: &str,
) -> anyhow::Result<Arc<dyn Ipam>> {
    let mut defaults = defaults.clone();
    let null: Arc<dyn Ipam> = Arc::new(Null::new());
    let mut spaces: BTreeMap<String, Arc<dyn Ipam>> =
        BTreeMap::from([(NULL_SPACE.to_owned(), Arc::clone(&null))]);
    for (space, spec) in routes {
        match spec {
            DriverSpec::Builtin => {
                spaces.remove(space);
                defaults.entry(space.clone()).or_default();
            }
            DriverSpec::Null => {
                spaces.insert(space.clone(), Arc::clone(&null));
            }
            DriverSpec::Remote {
                endpoint,
                remote_space,
                timeout,
            } => {
                // The plugin's pool ids and the tracking record live under a tenant of their
                // own, which no tenant name can spell (`+`), and which goes with the tenant.
                let record_tenant = format!("{tenant}+remote:{space}");
                let remote = Remote::connect(
                    endpoint.clone(),
                    remote_space.clone(),
                    *timeout,
                    Arc::clone(&store),
                    &record_tenant,
                )
                .await
                .with_context(|| format!("address space {space}: remote plugin {endpoint}"))?;
                let record = Builtin::load(
                    Arc::clone(&store),
                    &record_tenant,
                    BTreeMap::from([(space.clone(), Vec::new())]),
                )
                .await
                .with_context(|| format!("address space {space}: loading the tracking record"))?;
                let tracked: Arc<dyn Ipam> = Arc::new(Tracked::new(Arc::new(remote), record));
                spaces.insert(space.clone(), tracked);
            }
        }
    }
    let builtin = Builtin::load(store, tenant, defaults)
        .await
        .with_context(|| format!("tenant {tenant}: loading subnets from the store"))?;
    Ok(Arc::new(Router::new(Arc::new(builtin), spaces)))
}

/// Decides how callers are authenticated from `args`, and refuses what would expose the
/// service: no authentication off loopback, plaintext tokens off loopback unless asked for.
///
/// # Errors
/// Contradicting flags, a refused listen address, an admin token file that cannot be read,
/// is open to others or holds no token, a malformed tenant name.
pub async fn authenticator(
    args: &ServeArgs,
    store: Arc<dyn Store>,
) -> anyhow::Result<Arc<Authenticator>> {
    let security = &args.security;
    crate::auth::check_tenant_name(&security.docker_plugin_tenant)
        .map_err(|reason| anyhow::anyhow!("--docker-plugin-tenant: {reason}"))?;
    let credentials = security.admin_token_file.is_some() || security.tls_client_ca.is_some();
    let mode = match (security.auth, credentials) {
        (Some(AuthMode::None), true) => bail!(
            "--auth none contradicts --admin-token-file and --tls-client-ca (which require \
             credentials on every call): give one or the other"
        ),
        (Some(AuthMode::Token), _) | (None, true) => Mode::Tokens,
        (Some(AuthMode::None) | None, false) => Mode::Open,
    };
    let ip = args.listen.ip();
    if !ip.is_loopback() {
        if mode == Mode::Open {
            bail!(
                "refusing to listen on {} without authentication: every caller could take \
                 and release any address. Give --admin-token-file (see `allot admin token \
                 create`), or listen on a loopback address",
                args.listen
            );
        }
        if security.tls_cert.is_none() && !security.insecure_plaintext {
            bail!(
                "refusing to listen on {} in plaintext: tokens would cross the network in \
                 clear. Give --tls-cert and --tls-key, or --insecure-plaintext to accept \
                 that, or listen on a loopback address",
                args.listen
            );
        }
    }
    let bootstrap = match &security.admin_token_file {
        Some(path) => Some(read_secret_file(path).context("--admin-token-file")?),
        None => None,
    };
    Authenticator::new(mode, store, bootstrap.as_deref(), security.tls_client_role)
        .await
        .map_err(|e| anyhow::anyhow!("--admin-token-file: {e}"))
}

/// Reads the TLS certificates `args` names, if any.
///
/// # Errors
/// A certificate without its key (or a client CA without either), or files that do not hold
/// a usable certificate and key.
pub fn tls(args: &ServeArgs) -> anyhow::Result<Option<Arc<Tls>>> {
    let s = &args.security;
    match (&s.tls_cert, &s.tls_key) {
        (None, None) => {
            if s.tls_client_ca.is_some() {
                bail!(
                    "--tls-client-ca needs --tls-cert and --tls-key (client certificates are \
                     part of TLS)"
                );
            }
            Ok(None)
        }
        (Some(cert), Some(key)) => Tls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: s.tls_client_ca.clone(),
        })
        .map(Some),
        _ => bail!("--tls-cert and --tls-key go together"),
    }
}

/// Reads a file holding a secret, refusing one that others than its owner may read or write.
///
/// # Errors
/// The file cannot be read, or is open to others.
pub fn read_secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {shown}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{shown} is open to group or others (mode {:o}): make it readable by its owner \
             only (chmod 600 {shown})",
            mode & 0o777
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {shown}"))?;
    Ok(text.trim().to_owned())
}

/// The most metadata (header bytes) one call may carry.
pub const MAX_METADATA: u32 = 64 * 1024;

/// What the gRPC listener serves: every tenant's driver, behind authentication, over TLS or
/// not.
pub struct Service {
    pub tenants: Arc<Tenants>,
    pub auth: Arc<Authenticator>,
    pub tls: Option<Arc<Tls>>,
}

/// Serves the gRPC API for every tenant of `tenants` on `listener` until `shutdown` resolves,
/// then stops taking connections and finishes the requests in flight, for at most `grace`: a
/// client that keeps an idle connection open does not hold the process up longer.
///
/// # Errors
/// The reflection service cannot be built, or the server fails.
pub async fn serve(
    incoming: Incoming<TcpListener>,
    service: Service,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> anyhow::Result<()> {
    let Service { tenants, auth, tls } = service;
    let handshake = incoming.limits().handshake_timeout;
    let incoming = crate::api::tls::accept(incoming, tls, handshake);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // grpcurl 1.8 speaks only v1alpha reflection; newer clients use v1: serve both.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IpamServiceServer<IpamApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    let (stopping, stopped) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let server = Server::builder()
        // A call's metadata may take 64 KiB (hyper's default is 16), in frames as large, so
        // that h2's cap on CONTINUATION frames does not cut a connection under it; past that,
        // HTTP/2 itself refuses the stream before any of allot's code sees it.
        .http2_max_header_list_size(MAX_METADATA)
        .max_frame_size(MAX_METADATA)
        .layer(AuthLayer::new(Arc::clone(&auth)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AdminServiceServer::new(AdminApi::new(
            Arc::clone(tenants.store()),
            Arc::clone(&tenants),
            Arc::clone(&auth),
        )))
        .add_service(IpamServiceServer::new(IpamApi::new(tenants, auth)))
        .serve_with_incoming_shutdown(incoming, signal);
    let grace_over = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served.context("serving gRPC"),
        () = grace_over => {
            tracing::warn!(?grace, "grace period over: closing the connections still open");
            Ok(())
        }
    }
}

/// Binds `addr`.
///
/// # Errors
/// The address is in use or not ours.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// Installs handlers for SIGINT and SIGTERM at once (so that a signal arriving before the
/// server runs still stops it gracefully) and returns what resolves on the first of them.
///
/// # Errors
/// The handlers cannot be installed.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutting down: finishing requests in flight");
    })
}
