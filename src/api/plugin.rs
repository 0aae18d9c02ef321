//! allot as a Docker IPAM plugin: libnetwork's remote IPAM protocol (HTTP/1.1 `POST`s with
//! JSON bodies) on a unix socket, backed by whichever driver serves the address space. A
//! Docker daemon then creates networks with `--ipam-driver allot`, and their utilization shows
//! in `GetIpamState` and `allot state`.
//!
//! Errors follow the protocol: a driver's refusal is HTTP 200 with `{"Error": "..."}`; a
//! malformed request is 400 and an unknown endpoint 404, each with `{"Err": "..."}`. Options
//! this driver does not know are ignored, as Docker's built-in driver does; known ones are
//! checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::Instrument;

use super::conn::Incoming as Connections;
use crate::engine::{self, GATEWAY_ADDRESS_TYPE, PoolRequest, REQUEST_ADDRESS_TYPE, SERIAL_OPTION};
use crate::ipam::{self, Ipam};
use crate::proto;

/// The content type of every request and answer.
pub const PLUGIN_CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// Largest request body taken (Docker's are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestPoolBody {
    #[serde(default)]
    address_space: String,
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
    #[serde(default, rename = "V6")]
    v6: bool,
}

#[derive(Deserialize)]
struct PoolBody {
    #[serde(rename = "PoolID")]
    pool_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AddressBody {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
}

/// What went wrong with one call, as the protocol reports it.
enum Failure {
    /// The driver refused: 200 with `Error`.
    Refused(String),
    /// The request is malformed: 400 with `Err`.
    BadRequest(String),
    /// No such endpoint: 404 with `Err`.
    NotFound(String),
}

impl From<ipam::Error> for Failure {
    fn from(e: ipam::Error) -> Self {
        Self::Refused(e.public_message())
    }
}

impl From<engine::Error> for Failure {
    fn from(e: engine::Error) -> Self {
        Self::Refused(e.to_string())
    }
}

fn answer(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(PLUGIN_CONTENT_TYPE),
    );
    r
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::BadRequest(format!("malformed request: {e}")))
}

/// Keeps the options this driver knows, for `RequestAddress`; logs the others.
fn known_address_options(options: Option<HashMap<String, String>>) -> HashMap<String, String> {
    let mut known = HashMap::new();
    for (key, value) in options.unwrap_or_default() {
        if key == SERIAL_OPTION || key == REQUEST_ADDRESS_TYPE {
            known.insert(key, value);
        } else {
            tracing::debug!(key, "docker plugin: ignoring an address option");
        }
    }
    known
}

/// Answers one endpoint.
async fn call(ipam: &dyn Ipam, path: &str, body: &[u8]) -> Result<Value, Failure> {
    match path {
        "/Plugin.Activate" => Ok(json!({ "Implements": ["IpamDriver"] })),
        "/IpamDriver.GetCapabilities" => {
            let caps = ipam.capabilities();
            Ok(json!({
                "RequiresMACAddress": caps.requires_mac_address,
                "RequiresRequestReplay": caps.requires_request_replay,
            }))
        }
        "/IpamDriver.GetDefaultAddressSpaces" => {
            let (local, global) = ipam.default_address_spaces();
            Ok(json!({
                "LocalDefaultAddressSpace": local,
                "GlobalDefaultAddressSpace": global,
            }))
        }
        "/IpamDriver.RequestPool" => {
            let b: RequestPoolBody = parse(body)?;
            for key in b.options.unwrap_or_default().keys() {
                tracing::debug!(key, "docker plugin: ignoring a pool option");
            }
            engine::id::check_space_name(&b.address_space)?;
            let req = PoolRequest::parse(&b.pool, &b.sub_pool, b.v6)?;
            let id = ipam.request_pool(&b.address_space, &req).await?;
            Ok(json!({
                "PoolID": id.to_string(),
                "Pool": id.subnet().to_string(),
                "Data": {},
            }))
        }
        "/IpamDriver.ReleasePool" => {
            let b: PoolBody = parse(body)?;
            let id = proto::pool_id(&b.pool_id)?;
            ipam.release_pool(&id).await?;
            Ok(json!({}))
        }
        "/IpamDriver.RequestAddress" => {
            let b: AddressBody = parse(body)?;
            let id = proto::pool_id(&b.pool_id)?;
            let options = known_address_options(b.options);
            // Only the options allot reads itself are kept, as Docker's own driver does.
            let req = engine::AddressRequest::parse(&id, &b.address, &options)?;
            let address = ipam.request_address(&id, &req).await?;
            if options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_ADDRESS_TYPE) {
                tracing::info!(pool_id = %id, %address, "docker plugin: gateway allocated");
            }
            Ok(json!({ "Address": address.to_string(), "Data": {} }))
        }
        "/IpamDriver.ReleaseAddress" => {
            let b: AddressBody = parse(body)?;
            let id = proto::pool_id(&b.pool_id)?;
            let address = engine::request::parse_address(&id, &b.address)?;
            ipam.release_address(&id, address).await?;
            Ok(json!({}))
        }
        other => Err(Failure::NotFound(format!(
            "{} is not an endpoint of this IPAM plugin",
            engine::error::shown(other)
        ))),
    }
}

/// Answers one HTTP request.
async fn handle(ipam: Arc<dyn Ipam>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("DockerPlugin", path = %path);
    async move {
        if req.method() != Method::POST {
            return answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "Err": "the plugin protocol uses POST" }),
            );
        }
        let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    &json!({ "Err": format!("cannot read the request body: {e}") }),
                );
            }
        };
        match call(ipam.as_ref(), &path, &body).await {
            Ok(value) => answer(StatusCode::OK, &value),
            Err(Failure::Refused(message)) => answer(StatusCode::OK, &json!({ "Error": message })),
            Err(Failure::BadRequest(message)) => {
                answer(StatusCode::BAD_REQUEST, &json!({ "Err": message }))
            }
            Err(Failure::NotFound(message)) => {
                answer(StatusCode::NOT_FOUND, &json!({ "Err": message }))
            }
        }
    }
    .instrument(span)
    .await
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
/// at `path`, removed at the end) until `stop` turns true; connections in flight finish
/// their request.
pub async fn serve(
    mut incoming: Connections<UnixListener>,
    path: SocketPath,
    ipam: Arc<dyn Ipam>,
    mut stop: watch::Receiver<bool>,
) {
    let _socket = path;
    let header_timeout = incoming.limits().handshake_timeout;
    loop {
        let stream = tokio::select! {
            conn = incoming.next() => conn,
            () = stopped(&mut stop) => return,
        };
        let ipam = Arc::clone(&ipam);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ipam = Arc::clone(&ipam);
                async move { Ok::<_, std::convert::Infallible>(handle(ipam, req).await) }
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
