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

use crate::api::IpamApi;
use crate::config::DatabaseArgs;
use crate::config::DriverSpec;
use crate::engine::DefaultPool;
use crate::ipam::{Builtin, Ipam, NULL_SPACE, Null, Remote, Router, Tracked};
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

/// Loads the built-in driver over `store`, and routes Docker's `null` address space to the
/// null driver, as Docker does.
///
/// # Errors
/// The store cannot be read, or holds corrupt data.
pub async fn driver(
    store: Arc<dyn Store>,
    defaults: BTreeMap<String, Vec<DefaultPool>>,
) -> anyhow::Result<Arc<dyn Ipam>> {
    drivers(store, defaults, &[]).await
}

/// Loads every driver: the built-in one over `store` for every address space not routed
/// elsewhere, the null driver for Docker's `null` space (unless `routes` says otherwise), and
/// the drivers `routes` names, each remote plugin wrapped in a tracking record of its own.
///
/// # Errors
/// The store cannot be read or holds corrupt data. (A remote plugin that cannot be reached
/// yet is activated on first use.)
pub async fn drivers(
    store: Arc<dyn Store>,
    mut defaults: BTreeMap<String, Vec<DefaultPool>>,
    routes: &[(String, DriverSpec)],
) -> anyhow::Result<Arc<dyn Ipam>> {
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
                // The plugin's pool ids and the tracking record live under a tenant of their own.
                let tenant = format!("{DEFAULT_TENANT}+remote:{space}");
                let remote = Remote::connect(
                    endpoint.clone(),
                    remote_space.clone(),
                    *timeout,
                    Arc::clone(&store),
                    &tenant,
                )
                .await
                .with_context(|| format!("address space {space}: remote plugin {endpoint}"))?;
                let record = Builtin::load(
                    Arc::clone(&store),
                    &tenant,
                    BTreeMap::from([(space.clone(), Vec::new())]),
                )
                .await
                .with_context(|| format!("address space {space}: loading the tracking record"))?;
                let tracked: Arc<dyn Ipam> = Arc::new(Tracked::new(Arc::new(remote), record));
                spaces.insert(space.clone(), tracked);
            }
        }
    }
    let builtin = Builtin::load(store, DEFAULT_TENANT, defaults)
        .await
        .context("loading subnets from the store")?;
    Ok(Arc::new(Router::new(Arc::new(builtin), spaces)))
}

/// Serves the gRPC API for `ipam` on `listener` until `shutdown` resolves, then stops taking
/// connections and finishes the requests in flight, for at most `grace`: a client that keeps
/// an idle connection open does not hold the process up longer.
///
/// # Errors
/// The reflection service cannot be built, or the server fails.
pub async fn serve(
    incoming: Incoming<TcpListener>,
    ipam: Arc<dyn Ipam>,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> anyhow::Result<()> {
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
    let (stopping, stopped) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let server = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IpamServiceServer::new(IpamApi::new(ipam)))
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
