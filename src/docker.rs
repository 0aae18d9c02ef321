//! Reconciliation with a Docker daemon: what its networks' endpoints, gateways and auxiliary
//! addresses hold, read through the Docker Engine API (HTTP over its unix socket), against
//! what allot holds in the pools that serve those networks. An address allot holds that
//! Docker does not — leaked when Docker released it while allot was unreachable, which Docker
//! never retries — is released, once it has been seen so at two readings a grace period apart
//! (so a container being created, its address requested but its endpoint not yet written, is
//! never robbed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::cli::IpamClient;
use crate::engine::LOCAL_SPACE;
use crate::ipam::remote::UnixConnector;
use crate::proto::pb;

/// The Docker Engine API version asked for (Docker 20.10's).
const API: &str = "v1.41";

/// Largest answer read from the daemon.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A client of a Docker daemon's Engine API on its unix socket.
pub struct Engine {
    client: Client<UnixConnector, Full<Bytes>>,
    host: String,
}

/// A network as `GET /networks/{id}` describes it (the fields read).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Network {
    name: String,
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "IPAM")]
    ipam: NetworkIpam,
    containers: Option<HashMap<String, Endpoint>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkIpam {
    config: Option<Vec<IpamConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamConfig {
    subnet: Option<String>,
    #[serde(rename = "IPRange")]
    ip_range: Option<String>,
    gateway: Option<String>,
    auxiliary_addresses: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    #[serde(rename = "IPv4Address", default)]
    ipv4: String,
    #[serde(rename = "IPv6Address", default)]
    ipv6: String,
}

#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
}

impl Engine {
    /// A client of the daemon at `host` (`unix:///var/run/docker.sock`).
    ///
    /// # Errors
    /// A host that is not a unix socket.
    pub fn new(host: &str) -> anyhow::Result<Self> {
        let Some(path) = host.strip_prefix("unix://") else {
            anyhow::bail!("--docker-host {host}: expected unix:///PATH (the daemon's socket)");
        };
        let connector = UnixConnector(Arc::from(std::path::Path::new(path)));
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            host: host.to_owned(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let req = hyper::Request::get(format!("http://docker/{API}{path}"))
            .body(Full::new(Bytes::new()))
            .context("building a request")?;
        let resp = self
            .client
            .request(req)
            .await
            .with_context(|| format!("Docker at {}: GET {path}", self.host))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("Docker at {}: GET {path}: {e}", self.host))?
            .to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "Docker at {}: GET {path}: {status}: {}",
            self.host,
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body)
            .with_context(|| format!("Docker at {}: GET {path}: malformed answer", self.host))
    }

    /// Every network, with its endpoints.
    async fn networks(&self) -> anyhow::Result<Vec<Network>> {
        let listed: Vec<Listed> = self.get("/networks").await?;
        let mut out = Vec::new();
        for n in listed {
            match self.get(&format!("/networks/{}", n.id)).await {
                Ok(network) => out.push(network),
                // Removed between the listing and now: nothing of it to keep.
                Err(e) if format!("{e:#}").contains("404") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// What Docker holds, per pool id allot would give the network's subnet (and range): the
/// network's name and the addresses its endpoints, gateway and auxiliary addresses hold.
type View = BTreeMap<String, (String, BTreeSet<IpAddr>)>;

fn view(networks: &[Network]) -> View {
    let mut out = View::new();
    for n in networks {
        let endpoints: Vec<IpAddr> = n
            .containers
            .iter()
            .flatten()
            .flat_map(|(_, e)| [&e.ipv4, &e.ipv6])
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
        for c in n.ipam.config.iter().flatten() {
            let Some(subnet) = c.subnet.as_deref().and_then(|s| s.parse::<IpNet>().ok()) else {
                continue;
            };
            let range = c.ip_range.as_deref().filter(|r| !r.is_empty());
            let pool_id = match range.and_then(|r| r.parse::<IpNet>().ok()) {
                Some(r) => format!("{LOCAL_SPACE}/{subnet}/{r}"),
                None => format!("{LOCAL_SPACE}/{subnet}"),
            };
            let aux = c.auxiliary_addresses.iter().flatten().map(|(_, a)| a);
            let held: BTreeSet<IpAddr> = c
                .gateway
                .iter()
                .chain(aux)
                .filter_map(|a| a.parse().ok())
                .chain(endpoints.iter().copied())
                .filter(|a| subnet.contains(a))
                .collect();
            let name = format!("{} ({})", n.name, n.id.get(..12).unwrap_or(&n.id));
            out.insert(pool_id, (name, held));
        }
    }
    out
}

/// Where allot is reached: the IPAM service as a client (`allot docker reconcile`), or the
/// Docker plugin tenant's driver within the server (`allot serve --docker-host`).
#[async_trait::async_trait]
pub trait Allot: Send + Sync {
    /// The ids of the pools of the local address space.
    async fn pools(&self) -> anyhow::Result<Vec<String>>;
    /// Every address allot holds in `pool_id`, but the Docker gateways (held by their own
    /// name: Docker's API shows only those given by the user).
    async fn held(&self, pool_id: &str) -> anyhow::Result<BTreeSet<IpAddr>>;
    /// Releases `address` of `pool_id`.
    async fn release(&self, pool_id: &str, address: IpAddr) -> anyhow::Result<()>;
}

fn not_a_gateway(owner: &str) -> bool {
    owner != crate::api::plugin::GATEWAY_OWNER
}

#[async_trait::async_trait]
impl Allot for IpamClient {
    async fn pools(&self) -> anyhow::Result<Vec<String>> {
        let listed = crate::cli::every_pool(self, LOCAL_SPACE)
            .await
            .map_err(|s| anyhow::anyhow!("listing pools: {}", s.message()))?;
        Ok(listed.into_iter().map(|p| p.pool_id).collect())
    }

    async fn held(&self, pool_id: &str) -> anyhow::Result<BTreeSet<IpAddr>> {
        let mut out = BTreeSet::new();
        let mut token = String::new();
        loop {
            let page = self
                .clone()
                .list_allocations(pb::ListAllocationsRequest {
                    pool_id: pool_id.to_owned(),
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .map_err(|s| anyhow::anyhow!("listing pool {pool_id}: {}", s.message()))?
                .into_inner();
            out.extend(
                page.allocations
                    .iter()
                    .filter(|a| not_a_gateway(&a.owner))
                    .filter_map(|a| a.address.parse::<IpAddr>().ok()),
            );
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    async fn release(&self, pool_id: &str, address: IpAddr) -> anyhow::Result<()> {
        self.clone()
            .release_address(pb::ReleaseAddressRequest {
                pool_id: pool_id.to_owned(),
                address: address.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("releasing {address} in {pool_id}: {}", s.message()))?;
        Ok(())
    }
}

/// The Docker plugin tenant's driver, found anew for each call (as the plugin endpoint does).
pub struct InServer {
    pub tenants: Arc<crate::ipam::Tenants>,
    pub tenant: String,
}

impl InServer {
    async fn driver(&self) -> anyhow::Result<Arc<dyn crate::ipam::Ipam>> {
        self.tenants
            .driver(&self.tenant)
            .await
            .map_err(|e| anyhow::anyhow!("tenant {}: {e}", self.tenant))
    }
}

fn pool_id(id: &str) -> anyhow::Result<crate::engine::PoolId> {
    id.parse()
        .map_err(|e: crate::engine::Error| anyhow::anyhow!("{e}"))
}

#[async_trait::async_trait]
impl Allot for InServer {
    async fn pools(&self) -> anyhow::Result<Vec<String>> {
        let driver = self.driver().await?;
        let every = crate::ipam::PoolPage::ALL;
        let pools = driver.list_pools(Some(LOCAL_SPACE), &every).await?;
        Ok(pools.iter().map(ToString::to_string).collect())
    }

    async fn held(&self, id: &str) -> anyhow::Result<BTreeSet<IpAddr>> {
        let (driver, id) = (self.driver().await?, pool_id(id)?);
        let mut out = BTreeSet::new();
        let mut after = None;
        loop {
            let page = crate::ipam::AllocationPage {
                after,
                owner_prefix: String::new(),
                owned_only: false,
                limit: 1000,
            };
            let found = driver.list_allocations(&id, &page).await?;
            after = found.last().map(|(a, _)| *a);
            let full = found.len() == page.limit;
            out.extend(
                found
                    .into_iter()
                    .filter(|(_, h)| h.as_ref().is_none_or(|h| not_a_gateway(h.owner.as_str())))
                    .map(|(a, _)| a),
            );
            if !full {
                return Ok(out);
            }
        }
    }

    async fn release(&self, id: &str, address: IpAddr) -> anyhow::Result<()> {
        let (driver, id) = (self.driver().await?, pool_id(id)?);
        driver.release_address(&id, address, None).await?;
        Ok(())
    }
}

/// One reading: per pool that serves a Docker network, what allot holds and Docker does not.
async fn unheld(
    allot: &dyn Allot,
    engine: &Engine,
) -> anyhow::Result<(View, BTreeMap<String, BTreeSet<IpAddr>>, Vec<String>)> {
    let docker = view(&engine.networks().await?);
    let pools = allot.pools().await?;
    let mut unheld = BTreeMap::new();
    let mut unused = Vec::new();
    for pool_id in pools {
        match docker.get(&pool_id) {
            Some((_, held)) => {
                let extra: BTreeSet<IpAddr> = allot
                    .held(&pool_id)
                    .await?
                    .difference(held)
                    .copied()
                    .collect();
                unheld.insert(pool_id, extra);
            }
            None => unused.push(pool_id),
        }
    }
    Ok((docker, unheld, unused))
}

/// What a reconciliation found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// (pool id, the network it serves, address) released — or, in a dry run, to release.
    pub released: Vec<(String, String, IpAddr)>,
    /// Pools of the local address space that no network of this daemon uses.
    pub unused_pools: Vec<String>,
}

/// Reconciles allot with the daemon: reads both, waits `grace`, reads both again, and
/// releases (unless `dry_run`) every address allot held and Docker did not at both readings.
///
/// # Errors
/// Docker or allot cannot be read; a release is refused.
pub async fn reconcile(
    allot: &dyn Allot,
    engine: &Engine,
    grace: Duration,
    dry_run: bool,
) -> anyhow::Result<Report> {
    let (_, first, _) = unheld(allot, engine).await?;
    tokio::time::sleep(grace).await;
    let (docker, second, unused_pools) = unheld(allot, engine).await?;
    let mut report = Report {
        unused_pools,
        ..Report::default()
    };
    for (pool_id, now) in &second {
        let Some(before) = first.get(pool_id) else {
            continue;
        };
        let network = docker
            .get(pool_id)
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        for &address in now.intersection(before) {
            if !dry_run {
                allot.release(pool_id, address).await?;
                tracing::info!(pool_id, %address, network, "docker reconcile: released");
            }
            report
                .released
                .push((pool_id.clone(), network.clone(), address));
        }
    }
    Ok(report)
}

/// Reconciles every `interval` until `stop` turns true (`allot serve --docker-host`), logging
/// what it releases and the pools no network uses; a failed round is logged and the next one
/// tried.
pub async fn reconcile_every(
    allot: InServer,
    engine: Engine,
    (interval, grace): (Duration, Duration),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let round = tokio::select! {
            r = reconcile(&allot, &engine, grace, false) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match round {
            Ok(report) => {
                for pool_id in &report.unused_pools {
                    tracing::debug!(
                        pool_id,
                        "docker reconcile: no network of the daemon uses it"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "docker reconcile failed"),
        }
    }
}
