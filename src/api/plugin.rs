//! allot as a Docker IPAM plugin: libnetwork's remote IPAM protocol
//! ([`protocol`](crate::ipam::protocol), typed once for both directions) on a unix socket,
//! backed by whichever driver serves the address space. A Docker daemon then creates networks
//! with `--ipam-driver allot`, and their utilization shows in `GetIpamState` and `allot state`.
//!
//! The endpoints are routed by axum; connections are served by hyper here, under the same
//! account as gRPC's (`api::conn`: a cap, eviction, timeouts) and with a header-read timeout.
//! Errors follow the protocol: a driver's refusal is HTTP 200 with `{"Error": "..."}`; a
//! malformed request is 400, an unknown endpoint 404 and any method but `POST` 405, each with
//! `{"Err": "..."}`. Options this driver does not know are ignored, as Docker's built-in driver
//! does; known ones are checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tower_service::Service;
use tracing::Instrument;

use super::audit;
use super::conn::Incoming as Connections;
use crate::engine::{self, AddressRequest, PoolRequest};
use crate::ipam::protocol::{self as wire, CONTENT_TYPE};
use crate::ipam::{self, Ipam, Tenants};
use crate::proto;

/// The content type of every request and answer (the protocol's).
pub use crate::ipam::protocol::CONTENT_TYPE as PLUGIN_CONTENT_TYPE;

/// Largest request body taken (Docker's are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// An answer: a status and a JSON body, with the protocol's content type.
struct Reply(StatusCode, Vec<u8>);

impl Reply {
    fn new(status: StatusCode, body: &impl Serialize) -> Self {
        // Plain structs of strings and maps: serializing them cannot fail.
        Self(
            status,
            serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
        )
    }

    fn ok(body: &impl Serialize) -> Self {
        Self::new(StatusCode::OK, body)
    }

    /// A driver's refusal: 200 with `Error`, in Docker's default driver's words where it has
    /// them, allot's detail after.
    fn refused(e: &ipam::Error) -> Self {
        let message = match docker_wording(e) {
            Some(words) => format!("{words}: {}", e.public_message()),
            None => e.public_message(),
        };
        Self::ok(&wire::Failure::refusal(message))
    }

    /// A failure of the call itself: 400, 404 or 405 with `Err`.
    fn failed(status: StatusCode, message: String) -> Self {
        Self::new(status, &wire::Failure::call(message))
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (self.0, [(header::CONTENT_TYPE, CONTENT_TYPE)], self.1).into_response()
    }
}

impl From<ipam::Error> for Reply {
    fn from(e: ipam::Error) -> Self {
        Self::refused(&e)
    }
}

impl From<engine::Error> for Reply {
    fn from(e: engine::Error) -> Self {
        Self::refused(&e.into())
    }
}

/// What Docker's default IPAM driver says for the same refusal (libnetwork's `ipamapi`
/// errors), which Docker users search for and scripts match.
fn docker_wording(e: &ipam::Error) -> Option<&'static str> {
    use engine::Error as E;
    let ipam::Error::Engine(e) = e else {
        return None;
    };
    Some(match e {
        E::Exhausted { .. } => "no available addresses on this pool",
        E::AddressInUse { .. } => "Address already in use",
        E::Overlap { .. } => "Pool overlaps with other one on this address space",
        E::OutOfRange { .. } => "requested address is out of range",
        E::NoMoreSubnets { .. } => "all predefined address pools have been fully subnetted",
        E::InvalidAddressSpace { .. } => "invalid address space",
        E::InvalidPrefix { .. } => "invalid address pool",
        E::InvalidSubPool { .. } => "invalid address subpool",
        _ => return None,
    })
}

/// The owner of every gateway the Docker plugin endpoint allocates (no `/` in it, so no
/// `<container id>/<ifname>` can spell it).
pub const GATEWAY_OWNER: &str = "docker:gateway";

fn gateway_owner() -> Result<engine::owners::Owner, ipam::Error> {
    engine::owners::Owner::new(GATEWAY_OWNER)
        .map_err(|e| ipam::Error::Internal(format!("the gateway's owner: {e}")))
}

/// Whether the driver of pool `id` keeps owners (the built-in one does; a remote plugin and
/// the null driver do not).
async fn keeps_owners(ipam: &dyn Ipam, id: &engine::PoolId) -> bool {
    let states = ipam.utilization(std::slice::from_ref(id)).await;
    states.is_ok_and(|s| {
        s.first()
            .is_some_and(|p| p.driver == crate::ipam::BUILTIN_DRIVER)
    })
}

/// Records the outcome of a call that changes something: the audit line, and a refusal at
/// `info` with its reason (an operator's answer to "why did `docker run` fail?").
fn record<T>(tenant: &str, rpc: &str, pool: &str, address: &str, result: &Result<T, ipam::Error>) {
    audit::plugin(tenant, rpc, pool, address, result);
    if let Err(e) = result {
        refused(rpc, pool, address, e);
    }
}

fn refused(rpc: &str, pool: &str, address: &str, reason: &dyn std::fmt::Display) {
    tracing::info!(
        rpc,
        pool = %engine::error::shown(pool),
        address = %engine::error::shown(address),
        %reason,
        "docker plugin: refused"
    );
}

/// A request body, read (at most [`MAX_BODY`]) and decoded; 400 when it cannot be.
struct Call<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Call<T> {
    type Rejection = Reply;

    async fn from_request(req: Request, _: &S) -> Result<Self, Reply> {
        let path = req.uri().path().to_owned();
        let bad = |message: String| {
            refused(path.rsplit('.').next().unwrap_or(&path), "", "", &message);
            Reply::failed(StatusCode::BAD_REQUEST, message)
        };
        let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| bad(format!("cannot read the request body: {e}")))?;
        serde_json::from_slice(&body)
            .map(Call)
            .map_err(|e| bad(format!("malformed request: {e}")))
    }
}

/// The tenant the socket serves, and where its driver is found.
#[derive(Clone)]
struct Served {
    tenants: Arc<Tenants>,
    tenant: Arc<str>,
}

/// The served tenant's driver, found anew for each call (a tenant deleted meanwhile is
/// refused as missing), and the tenant's name.
struct Driver(Arc<dyn Ipam>, Arc<str>);

impl FromRequestParts<Served> for Driver {
    type Rejection = Reply;

    async fn from_request_parts(parts: &mut Parts, served: &Served) -> Result<Self, Reply> {
        match served.tenants.driver(&served.tenant).await {
            Ok(driver) => Ok(Self(driver, Arc::clone(&served.tenant))),
            Err(e) => {
                // A mutation refused before its handler ran is audited here.
                let path = parts.uri.path();
                if [
                    wire::REQUEST_POOL,
                    wire::RELEASE_POOL,
                    wire::REQUEST_ADDRESS,
                    wire::RELEASE_ADDRESS,
                ]
                .contains(&path)
                {
                    let rpc = path.rsplit('.').next().unwrap_or(path);
                    let result: Result<(), _> = Err(e.clone());
                    audit::plugin(&served.tenant, rpc, "", "", &result);
                }
                refused(path.rsplit('.').next().unwrap_or(path), "", "", &e);
                Err(e.into())
            }
        }
    }
}

/// The protocol's endpoints for `served`.
fn routes(served: Served) -> axum::Router {
    axum::Router::new()
        .route(wire::ACTIVATE, post(activate))
        .route(wire::GET_CAPABILITIES, post(capabilities))
        .route(wire::GET_DEFAULT_ADDRESS_SPACES, post(address_spaces))
        .route(wire::REQUEST_POOL, post(request_pool))
        .route(wire::RELEASE_POOL, post(release_pool))
        .route(wire::REQUEST_ADDRESS, post(request_address))
        .route(wire::RELEASE_ADDRESS, post(release_address))
        .fallback(|req: Request| async move {
            let path = engine::error::shown(req.uri().path());
            let message = format!("{path} is not an endpoint of this IPAM plugin");
            refused(&path, "", "", &message);
            Reply::failed(StatusCode::NOT_FOUND, message)
        })
        .method_not_allowed_fallback(|req: Request| async move {
            let message = "the plugin protocol uses POST".to_owned();
            refused(req.uri().path(), "", "", &message);
            Reply::failed(StatusCode::METHOD_NOT_ALLOWED, message)
        })
        .with_state(served)
}

async fn activate() -> Reply {
    tracing::debug!("docker plugin: Activate");
    Reply::ok(&wire::Activated {
        implements: vec!["IpamDriver".to_owned()],
    })
}

async fn capabilities(Driver(ipam, _): Driver) -> Reply {
    let caps = ipam.capabilities();
    tracing::debug!(?caps, "docker plugin: GetCapabilities");
    Reply::ok(&wire::Capabilities {
        requires_mac_address: caps.requires_mac_address,
        requires_request_replay: caps.requires_request_replay,
    })
}

async fn address_spaces(Driver(ipam, _): Driver) -> Reply {
    let (local, global) = ipam.default_address_spaces();
    tracing::debug!(local, global, "docker plugin: GetDefaultAddressSpaces");
    Reply::ok(&wire::AddressSpaces {
        local_default_address_space: local,
        global_default_address_space: global,
    })
}

async fn request_pool(
    Driver(ipam, tenant): Driver,
    Call(b): Call<wire::RequestPool>,
) -> Result<Reply, Reply> {
    tracing::debug!(request = ?b, "docker plugin: RequestPool");
    for key in b.options.keys() {
        tracing::debug!(key, "docker plugin: ignoring a pool option");
    }
    let result = async {
        engine::id::check_space_name(&b.address_space)?;
        let req = PoolRequest::parse(&b.pool, &b.sub_pool, b.v6)?;
        ipam.request_pool(&b.address_space, &req).await
    }
    .await;
    let pool = result
        .as_ref()
        .map_or_else(|_| b.pool.clone(), ToString::to_string);
    record(&tenant, "RequestPool", &pool, "", &result);
    let id = result?;
    Ok(Reply::ok(&wire::PoolGiven {
        pool_id: id.to_string(),
        pool: id.subnet().to_string(),
        data: wire::Options::new(),
    }))
}

async fn release_pool(
    Driver(ipam, tenant): Driver,
    Call(b): Call<wire::ReleasePool>,
) -> Result<Reply, Reply> {
    tracing::debug!(request = ?b, "docker plugin: ReleasePool");
    let result = async {
        let id = proto::pool_id(&b.pool_id)?;
        ipam.release_pool(&id).await
    }
    .await;
    record(&tenant, "ReleasePool", &b.pool_id, "", &result);
    result?;
    Ok(Reply::ok(&wire::Done {}))
}

async fn request_address(
    Driver(ipam, tenant): Driver,
    Call(b): Call<wire::RequestAddress>,
) -> Result<Reply, Reply> {
    tracing::debug!(request = ?b, "docker plugin: RequestAddress");
    let result = async {
        let id = proto::pool_id(&b.pool_id)?;
        let mut req = AddressRequest::parse(&id, &b.address, &b.options)?;
        // Only the options allot reads itself count, as with Docker's own driver: the others
        // (an endpoint's MAC address, say) are not passed on.
        for key in std::mem::take(&mut req.options).keys() {
            tracing::debug!(key, "docker plugin: ignoring an address option");
        }
        if req.gateway && keeps_owners(&*ipam, &id).await {
            // Held by a name of its own, so that a reconciliation with Docker (which does not
            // show the gateway it chose) knows the address is in use.
            req.owner = Some(gateway_owner()?);
        }
        let address = ipam.request_address(&id, &req).await?;
        if req.gateway {
            tracing::info!(pool_id = %id, %address, "docker plugin: gateway allocated");
        }
        Ok(address)
    }
    .await;
    let shown = result
        .as_ref()
        .map_or_else(|_| b.address.clone(), ToString::to_string);
    record(&tenant, "RequestAddress", &b.pool_id, &shown, &result);
    let address = result?;
    Ok(Reply::ok(&wire::AddressGiven {
        address: address.to_string(),
        data: wire::Options::new(),
    }))
}

async fn release_address(
    Driver(ipam, tenant): Driver,
    Call(b): Call<wire::ReleaseAddress>,
) -> Result<Reply, Reply> {
    tracing::debug!(request = ?b, "docker plugin: ReleaseAddress");
    let result = async {
        let id = proto::pool_id(&b.pool_id)?;
        let address = engine::request::parse_address(&id, &b.address)?;
        ipam.release_address(&id, address, None).await
    }
    .await;
    record(&tenant, "ReleaseAddress", &b.pool_id, &b.address, &result);
    result?;
    Ok(Reply::ok(&wire::Done {}))
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The path of a plugin socket this process bound: removed at the end, unless another
/// process has put a socket of its own there meanwhile.
pub struct SocketPath {
    path: PathBuf,
    // (device, inode) of the socket file as bound.
    id: Option<(u64, u64)>,
}

impl SocketPath {
    fn file_id(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        if self.id.is_some() && Self::file_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A bound plugin socket.
pub struct Socket {
    pub listener: UnixListener,
    pub path: SocketPath,
}

/// Binds the plugin socket at `path`. A socket file left by an earlier run (nobody answers on
/// it) is replaced; one another process is serving is not.
///
/// # Errors
/// The path is served by another process, is taken by something that is not a socket, or
/// cannot be bound.
pub fn bind(path: &Path) -> std::io::Result<Socket> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    format!("{} is served by another process", path.display()),
                ));
            }
            // Stale: left by a process that is gone.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) => return Err(e),
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    Ok(Socket {
        listener,
        path: SocketPath {
            path: path.to_owned(),
            id: SocketPath::file_id(path),
        },
    })
}

/// Serves the plugin protocol for `ipam` on the connections of `incoming` (whose socket is
/// at `path`, removed at the end) for `tenant` until `stop` turns true; connections in flight
/// finish their request.
pub async fn serve(
    mut incoming: Connections<UnixListener>,
    path: SocketPath,
    tenants: Arc<Tenants>,
    tenant: String,
    mut stop: watch::Receiver<bool>,
) {
    let _socket = path;
    let header_timeout = incoming.limits().handshake_timeout;
    let routes = routes(Served {
        tenants,
        tenant: Arc::from(tenant),
    });
    loop {
        let stream = tokio::select! {
            conn = incoming.next() => conn,
            () = stopped(&mut stop) => return,
        };
        let routes = routes.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let span = tracing::info_span!("DockerPlugin", path = %req.uri().path());
                // An axum `Router` is always ready: it may be called without `poll_ready`.
                routes.clone().call(req).instrument(span)
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "docker plugin: connection ended");
                    }
                }
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
