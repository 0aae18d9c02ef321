//! The `remote` driver: a client of libnetwork's remote IPAM plugin protocol (HTTP/1.1 `POST`s
//! with JSON bodies, over a unix socket or TCP), so allot can front Kuryr-, Infoblox- or
//! Weave-style plugins. It cannot count, so it is always wrapped in [`Tracked`](super::Tracked).
//!
//! allot names a remote pool like any other, `<space>/<subnet>[/<sub-pool>]`, and keeps the
//! plugin's own (opaque) pool id beside it in the store, so a restart loses neither.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::sync::{OnceCell, RwLock};

use super::protocol::{self as wire, CONTENT_TYPE};
use super::{Capabilities, Error, Ipam, Kind, PoolPage, PoolState, not_found};
use crate::engine::owners::Owner;
use crate::engine::{
    AddressRequest, GATEWAY_ADDRESS_TYPE, PoolId, PoolRequest, REQUEST_ADDRESS_TYPE, SERIAL_OPTION,
    SubnetSpec,
};
use crate::store::Store;

/// Largest answer taken from a plugin.
const MAX_ANSWER: usize = 1024 * 1024;

/// Where a plugin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:///run/docker/plugins/x.sock`, a plain socket path, or `http://host:port`
    /// (`tcp://host:port`).
    ///
    /// # Errors
    /// A message for anything else.
    pub fn parse(input: &str) -> Result<Self, String> {
        if let Some(path) = input.strip_prefix("unix://") {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if input.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(input)));
        }
        for scheme in ["http://", "tcp://"] {
            if let Some(host) = input.strip_prefix(scheme) {
                let host = host.trim_end_matches('/');
                if !host.is_empty() && !host.contains('/') {
                    return Ok(Self::Tcp(host.to_owned()));
                }
            }
        }
        Err(format!(
            "plugin endpoint {input:?}: expected unix:///PATH, /PATH or http://HOST:PORT"
        ))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(h) => write!(f, "http://{h}"),
        }
    }
}

/// A remote IPAM plugin, and the pools allot holds there.
pub struct Remote {
    endpoint: Endpoint,
    timeout: Duration,
    // The plugin's address space for allot's pools, if configured (else its local default).
    configured_space: Option<String>,
    // Invariant: set once the plugin answered the handshake.
    activation: OnceCell<Activation>,
    store: Arc<dyn Store>,
    // The tenant under which the plugin's pool ids are stored.
    tenant: String,
    // Invariant: the pools allot holds at the plugin, with the plugin's ids (as stored).
    pools: RwLock<BTreeMap<PoolId, String>>,
    transport: Transport,
}

/// What the plugin said when activated.
struct Activation {
    capabilities: Capabilities,
    // The plugin's address space for allot's pools.
    space: String,
}

/// Most idle connections kept to one plugin.
const MAX_IDLE: usize = 64;

/// The HTTP/1.1 client of one plugin: hyper-util's, which keeps idle connections for the next
/// call and sends a request again on a new connection only when a reused one closed before
/// the request went out (never one that may have been sent).
enum Transport {
    Unix(Client<UnixConnector, Full<Bytes>>),
    Tcp(Client<HttpConnector, Full<Bytes>>),
}

impl Transport {
    fn new(endpoint: &Endpoint) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_max_idle_per_host(MAX_IDLE);
        match endpoint {
            Endpoint::Unix(path) => Self::Unix(builder.build(UnixConnector(path.as_path().into()))),
            Endpoint::Tcp(_) => {
                let mut tcp = HttpConnector::new();
                tcp.set_nodelay(true);
                Self::Tcp(builder.build(tcp))
            }
        }
    }

    async fn send(
        &self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Self::Unix(client) => client.request(req).await,
            Self::Tcp(client) => client.request(req).await,
        }
    }
}

/// Connects to a plugin's (or a Docker daemon's) unix socket, whatever the request's URI says.
#[derive(Clone)]
pub(crate) struct UnixConnector(pub(crate) Arc<Path>);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = Arc::clone(&self.0);
        Box::pin(async move { UnixStream::connect(&*path).await.map(TokioIo::new) })
    }
}

/// The deepest cause of an error: what went wrong, without the layers that wrapped it.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = e;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    deepest.to_string()
}

fn unavailable(endpoint: &Endpoint, what: impl std::fmt::Display) -> Error {
    Error::Driver {
        driver: "remote".into(),
        kind: Kind::Unavailable,
        message: format!("plugin at {endpoint}: {what}"),
    }
}

/// A plugin's refusal, in its own words. The protocol carries no error classes.
fn refused(endpoint: &Endpoint, message: &str) -> Error {
    Error::Driver {
        driver: "remote".into(),
        kind: Kind::FailedPrecondition,
        message: format!("plugin at {endpoint} refused: {message}"),
    }
}

impl Remote {
    /// Prepares the driver for the plugin at `endpoint` and loads the pools allot holds there
    /// from `store`. The plugin itself is activated (handshake, capabilities, default address
    /// space) on first use, and again until that succeeds: a plugin that is down when allot
    /// starts makes only its own address space unavailable, as Docker treats plugins.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn connect(
        endpoint: Endpoint,
        remote_space: Option<String>,
        timeout: Duration,
        store: Arc<dyn Store>,
        tenant: &str,
    ) -> Result<Self, Error> {
        let mut pools = BTreeMap::new();
        for (id, remote_id) in store.remote_pools(tenant).await? {
            match id.parse::<PoolId>() {
                Ok(id) => {
                    pools.insert(id, remote_id);
                }
                Err(e) => tracing::warn!(pool_id = id, error = %e, "ignoring a stored remote pool"),
            }
        }
        let remote = Self {
            transport: Transport::new(&endpoint),
            endpoint,
            timeout,
            configured_space: remote_space,
            activation: OnceCell::new(),
            store,
            tenant: tenant.to_owned(),
            pools: RwLock::new(pools),
        };
        if let Err(e) = remote.activation().await {
            tracing::warn!(error = %e, "remote ipam plugin not ready yet; retrying on first use");
        }
        Ok(remote)
    }

    /// The plugin's activation, done once it succeeds.
    async fn activation(&self) -> Result<&Activation, Error> {
        self.activation
            .get_or_try_init(|| async {
                let activated: wire::Activated = self.call(wire::ACTIVATE, None::<&()>).await?;
                if !activated.implements.iter().any(|i| i == "IpamDriver") {
                    return Err(unavailable(
                        &self.endpoint,
                        format!(
                            "not an IPAM driver (it implements {:?})",
                            activated.implements
                        ),
                    ));
                }
                // Optional for a plugin: a 404 means no capabilities.
                let capabilities = self
                    .call::<wire::Capabilities>(wire::GET_CAPABILITIES, None::<&()>)
                    .await
                    .map(|caps| Capabilities {
                        requires_mac_address: caps.requires_mac_address,
                        requires_request_replay: caps.requires_request_replay,
                    })
                    .unwrap_or_default();
                let space = match &self.configured_space {
                    Some(space) => space.clone(),
                    None => {
                        let spaces: wire::AddressSpaces = self
                            .call(wire::GET_DEFAULT_ADDRESS_SPACES, None::<&()>)
                            .await?;
                        spaces.local_default_address_space
                    }
                };
                tracing::info!(endpoint = %self.endpoint, space, "remote ipam plugin activated");
                Ok(Activation {
                    capabilities,
                    space,
                })
            })
            .await
    }

    /// Calls one endpoint with `body` (none: an empty body); returns the answer, or the
    /// plugin's refusal. Bounded by the driver's timeout.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let call = async {
            let mut bytes = match body {
                Some(body) => {
                    serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?
                }
                None => Vec::new(),
            };
            if !bytes.is_empty() {
                bytes.push(b'\n');
            }
            let authority = match &self.endpoint {
                Endpoint::Unix(_) => "plugin",
                Endpoint::Tcp(host) => host.as_str(),
            };
            let req = hyper::Request::post(format!("http://{authority}{path}"))
                .header("Accept", CONTENT_TYPE)
                .header("Content-Type", CONTENT_TYPE)
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| Error::Internal(e.to_string()))?;
            let resp = self
                .transport
                .send(req)
                .await
                .map_err(|e| unavailable(&self.endpoint, cause(&e)))?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unavailable(&self.endpoint, e))?
                .to_bytes();
            let failure: wire::Failure = serde_json::from_slice(&bytes).unwrap_or_default();
            if !status.is_success() {
                let message = failure
                    .message()
                    .map_or_else(|| format!("HTTP {status}"), str::to_owned);
                return Err(refused(&self.endpoint, &message));
            }
            if !failure.error.is_empty() {
                return Err(refused(&self.endpoint, &failure.error));
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| refused(&self.endpoint, &format!("malformed answer to {path}: {e}")))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(
                &self.endpoint,
                format!("no answer to {path} within {:?}", self.timeout),
            )),
        }
    }

    async fn remote_id(&self, id: &PoolId) -> Result<String, Error> {
        self.pools
            .read()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }
}

#[async_trait]
impl Ipam for Remote {
    fn name(&self) -> &str {
        "remote"
    }

    fn default_address_spaces(&self) -> (String, String) {
        let space = self
            .activation
            .get()
            .map(|a| a.space.clone())
            .or_else(|| self.configured_space.clone())
            .unwrap_or_default();
        (space.clone(), space)
    }

    fn capabilities(&self) -> Capabilities {
        // Until the plugin answers, it is taken to need nothing.
        self.activation
            .get()
            .map_or_else(Capabilities::default, |a| a.capabilities)
    }

    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error> {
        let (pool, v6) = match req.subnet {
            SubnetSpec::Exact(net) => (net.to_string(), matches!(net, IpNet::V6(_))),
            SubnetSpec::Dynamic {
                v6,
                prefix_len: Some(len),
            } => (
                if v6 {
                    format!("::/{len}")
                } else {
                    format!("0.0.0.0/{len}")
                },
                v6,
            ),
            SubnetSpec::Dynamic {
                v6,
                prefix_len: None,
            } => (String::new(), v6),
        };
        let sub_pool = req.sub_pool.map(|p| p.to_string()).unwrap_or_default();
        let remote_space = self.activation().await?.space.clone();
        let ask = wire::RequestPool {
            address_space: remote_space,
            pool,
            sub_pool,
            options: req.options.clone(),
            v6,
        };
        let given: wire::PoolGiven = self.call(wire::REQUEST_POOL, Some(&ask)).await?;
        let remote_id = given.pool_id;
        let subnet: IpNet = given.pool.parse().map_err(|_| {
            let answered = format!("RequestPool answered the pool {:?}", given.pool);
            refused(&self.endpoint, &answered)
        })?;
        if remote_id.is_empty() {
            return Err(refused(&self.endpoint, "RequestPool answered no PoolID"));
        }
        let recorded = match PoolId::new(space, subnet.trunc(), req.sub_pool) {
            Ok(id) => self
                .store
                .put_remote_pool(&self.tenant, &id.to_string(), &remote_id)
                .await
                .map(|()| id)
                .map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        match recorded {
            Ok(id) => {
                self.pools.write().await.insert(id.clone(), remote_id);
                Ok(id)
            }
            Err(e) => {
                // Without its id on record allot could never use or release the pool: give
                // it back to the plugin rather than leave it held there.
                let release = wire::ReleasePool {
                    pool_id: remote_id.clone(),
                };
                let released = self
                    .call::<wire::Done>(wire::RELEASE_POOL, Some(&release))
                    .await;
                if let Err(release) = released {
                    tracing::warn!(remote_id, error = %release, "a plugin pool allot could not record is left at the plugin");
                }
                Err(e)
            }
        }
    }

    async fn release_pool(&self, id: &PoolId) -> Result<(), Error> {
        let remote_id = self.remote_id(id).await?;
        let release = wire::ReleasePool { pool_id: remote_id };
        self.call::<wire::Done>(wire::RELEASE_POOL, Some(&release))
            .await?;
        self.store
            .delete_remote_pool(&self.tenant, &id.to_string())
            .await?;
        self.pools.write().await.remove(id);
        Ok(())
    }

    async fn list_pools(&self, space: Option<&str>, page: &PoolPage) -> Result<Vec<PoolId>, Error> {
        Ok(page.of(&*self.pools.read().await, space))
    }

    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error> {
        super::refuse_owner(req.owner.as_ref())?;
        let remote_id = self.remote_id(id).await?;
        let mut options = req.options.clone();
        if req.serial {
            options.insert(SERIAL_OPTION.to_owned(), "true".to_owned());
        }
        if req.gateway {
            options.insert(
                REQUEST_ADDRESS_TYPE.to_owned(),
                GATEWAY_ADDRESS_TYPE.to_owned(),
            );
        }
        let ask = wire::RequestAddress {
            pool_id: remote_id,
            address: req.address.map(|a| a.to_string()).unwrap_or_default(),
            options,
        };
        let given: wire::AddressGiven = self.call(wire::REQUEST_ADDRESS, Some(&ask)).await?;
        let address = given.address;
        address.parse::<IpNet>().map_err(|_| {
            refused(
                &self.endpoint,
                &format!("RequestAddress answered {address:?}, not an address with its prefix"),
            )
        })
    }

    async fn release_address(
        &self,
        id: &PoolId,
        address: IpAddr,
        owner: Option<&Owner>,
    ) -> Result<(), Error> {
        super::refuse_owner(owner)?;
        let remote_id = self.remote_id(id).await?;
        let release = wire::ReleaseAddress {
            pool_id: remote_id,
            address: address.to_string(),
        };
        self.call::<wire::Done>(wire::RELEASE_ADDRESS, Some(&release))
            .await?;
        Ok(())
    }

    async fn utilization(&self, _ids: &[PoolId]) -> Result<Vec<PoolState>, Error> {
        Err(Error::Driver {
            driver: "remote".into(),
            kind: Kind::FailedPrecondition,
            message: "the plugin protocol has no utilization: track the driver".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("unix:///run/docker/plugins/x.sock"),
            Ok(Endpoint::Unix("/run/docker/plugins/x.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("/tmp/x.sock"),
            Ok(Endpoint::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080/"),
            Ok(Endpoint::Tcp("127.0.0.1:8080".into()))
        );
        for bad in ["", "x.sock", "http://", "http://a/b", "ftp://host"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
