//! The `remote` driver: a client of libnetwork's remote IPAM plugin protocol (HTTP/1.1 `POST`s
//! with JSON bodies, over a unix socket or TCP), so allot can front Kuryr-, Infoblox- or
//! Weave-style plugins. It cannot count, so it is always wrapped in [`Tracked`](super::Tracked).
//!
//! allot names a remote pool like any other, `<space>/<subnet>[/<sub-pool>]`, and keeps the
//! plugin's own (opaque) pool id beside it in the store, so a restart loses neither.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OnceCell, RwLock};

use super::{Capabilities, Error, Ipam, Kind, PoolState, not_found};
use crate::engine::{
    AddressRequest, GATEWAY_ADDRESS_TYPE, PoolId, PoolRequest, REQUEST_ADDRESS_TYPE, SERIAL_OPTION,
    SubnetSpec,
};
use crate::store::Store;

/// The content type of the protocol.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

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
    // Kept-alive connections to the plugin, idle between calls (at most `MAX_IDLE`).
    idle: Mutex<Vec<Sender>>,
}

/// What the plugin said when activated.
struct Activation {
    capabilities: Capabilities,
    // The plugin's address space for allot's pools.
    space: String,
}

/// A connection's request half.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A plugin's answer, before its body is read.
type Answer = hyper::Response<hyper::body::Incoming>;

/// Most idle connections kept to one plugin.
const MAX_IDLE: usize = 64;

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
            endpoint,
            timeout,
            configured_space: remote_space,
            activation: OnceCell::new(),
            store,
            tenant: tenant.to_owned(),
            pools: RwLock::new(pools),
            idle: Mutex::new(Vec::new()),
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
                let activated = self.call("/Plugin.Activate", None).await?;
                let implements = activated["Implements"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !implements.iter().any(|i| i == "IpamDriver") {
                    return Err(unavailable(
                        &self.endpoint,
                        format!("not an IPAM driver (it implements {implements:?})"),
                    ));
                }
                // Optional for a plugin: a 404 means no capabilities.
                let capabilities = match self.call("/IpamDriver.GetCapabilities", None).await {
                    Ok(caps) => Capabilities {
                        requires_mac_address: caps["RequiresMACAddress"].as_bool().unwrap_or(false),
                        requires_request_replay: caps["RequiresRequestReplay"]
                            .as_bool()
                            .unwrap_or(false),
                    },
                    Err(_) => Capabilities::default(),
                };
                let space = match &self.configured_space {
                    Some(space) => space.clone(),
                    None => {
                        let spaces = self
                            .call("/IpamDriver.GetDefaultAddressSpaces", None)
                            .await?;
                        spaces["LocalDefaultAddressSpace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
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

    /// Opens a new HTTP/1.1 connection to the plugin.
    async fn connect_new(&self) -> Result<Sender, Error> {
        let io: Box<dyn Io> = match &self.endpoint {
            Endpoint::Unix(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| unavailable(&self.endpoint, e))?,
            ),
            Endpoint::Tcp(host) => Box::new(
                tokio::net::TcpStream::connect(host)
                    .await
                    .map_err(|e| unavailable(&self.endpoint, e))?,
            ),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unavailable(&self.endpoint, e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends `req` on an idle kept-alive connection, or a new one. A request that a reused
    /// connection could not send (the plugin closed it meanwhile) goes again on a new one;
    /// one that may have been sent is never sent twice.
    async fn send(&self, req: hyper::Request<Full<Bytes>>) -> Result<(Sender, Answer), Error> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut req = req;
        if let Some(mut sender) = idle
            && !sender.is_closed()
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(req).await {
                Ok(answer) => return Ok((sender, answer)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(unavailable(&self.endpoint, e.into_error())),
                },
            }
        }
        let mut sender = self.connect_new().await?;
        let answer = sender
            .send_request(req)
            .await
            .map_err(|e| unavailable(&self.endpoint, e))?;
        Ok((sender, answer))
    }

    /// Calls one endpoint; returns the answer, or the plugin's error.
    async fn call(&self, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let call = async {
            let body = body.map(|b| format!("{b}\n")).unwrap_or_default();
            let req = hyper::Request::post(path)
                .header("Host", "plugin")
                .header("Accept", CONTENT_TYPE)
                .header("Content-Type", CONTENT_TYPE)
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| Error::Internal(e.to_string()))?;
            let (sender, resp) = self.send(req).await?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unavailable(&self.endpoint, e))?
                .to_bytes();
            // Read to the end: the connection can carry the next call.
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
            drop(idle);
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if !status.is_success() {
                let message = answer["Err"]
                    .as_str()
                    .map_or_else(|| format!("HTTP {status}"), str::to_owned);
                return Err(refused(&self.endpoint, &message));
            }
            match answer["Error"].as_str() {
                Some(message) if !message.is_empty() => Err(refused(&self.endpoint, message)),
                _ => Ok(answer),
            }
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

/// A connection to a plugin, over a unix socket or TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

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
        let answer = self
            .call(
                "/IpamDriver.RequestPool",
                Some(json!({
                    "AddressSpace": remote_space,
                    "Pool": pool,
                    "SubPool": sub_pool,
                    "Options": req.options,
                    "V6": v6,
                })),
            )
            .await?;
        let remote_id = answer["PoolID"].as_str().unwrap_or_default().to_owned();
        let subnet: IpNet = answer["Pool"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| refused(&self.endpoint, &format!("RequestPool answered {answer}")))?;
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
                let released = self
                    .call(
                        "/IpamDriver.ReleasePool",
                        Some(json!({ "PoolID": remote_id })),
                    )
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
        self.call(
            "/IpamDriver.ReleasePool",
            Some(json!({ "PoolID": remote_id })),
        )
        .await?;
        self.store
            .delete_remote_pool(&self.tenant, &id.to_string())
            .await?;
        self.pools.write().await.remove(id);
        Ok(())
    }

    async fn list_pools(&self, space: Option<&str>) -> Result<Vec<PoolId>, Error> {
        Ok(self
            .pools
            .read()
            .await
            .keys()
            .filter(|id| space.is_none_or(|s| id.space() == s))
            .cloned()
            .collect())
    }

    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error> {
        let remote_id = self.remote_id(id).await?;
        let mut options: HashMap<&str, &str> = req
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if req.serial {
            options.insert(SERIAL_OPTION, "true");
        }
        if req.gateway {
            options.insert(REQUEST_ADDRESS_TYPE, GATEWAY_ADDRESS_TYPE);
        }
        let answer = self
            .call(
                "/IpamDriver.RequestAddress",
                Some(json!({
                    "PoolID": remote_id,
                    "Address": req.address.map(|a| a.to_string()).unwrap_or_default(),
                    "Options": options,
                })),
            )
            .await?;
        let address = answer["Address"].as_str().unwrap_or_default();
        address.parse::<IpNet>().map_err(|_| {
            refused(
                &self.endpoint,
                &format!("RequestAddress answered {address:?}, not an address with its prefix"),
            )
        })
    }

    async fn release_address(&self, id: &PoolId, address: IpAddr) -> Result<(), Error> {
        let remote_id = self.remote_id(id).await?;
        self.call(
            "/IpamDriver.ReleaseAddress",
            Some(json!({ "PoolID": remote_id, "Address": address.to_string() })),
        )
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
