//! The client side of the command line: a connection to the server, with the caller's
//! credentials (`--token`, `--token-file`, `--tenant`) on every call.

use anyhow::Context;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::auth::TENANT_HEADER;
use crate::proto::admin_pb::admin_service_client::AdminServiceClient;
use crate::proto::pb::ipam_service_client::IpamServiceClient;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the server is and who calls it.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The server the client commands talk to (given before the command: `allot --server
    /// HOST:PORT state`).
    #[arg(long, env = "ALLOT_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// The token to call with (`allot_…`); prefer --token-file or ALLOT_TOKEN, which other
    /// users cannot see in the process list.
    #[arg(long, env = "ALLOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// A file holding the token to call with.
    #[arg(long, env = "ALLOT_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Act for this tenant (an admin token may name any; others only their own).
    #[arg(long, env = "ALLOT_TENANT")]
    pub tenant: Option<String>,

    /// The CA that signed an https:// server's certificate (PEM); without it, none is trusted.
    #[arg(long, env = "ALLOT_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,

    /// A client certificate to present to an https:// server (PEM), with --client-key.
    #[arg(long, env = "ALLOT_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,

    /// The private key of --client-cert (PEM).
    #[arg(long, env = "ALLOT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,
}

/// The credentials added to every call.
#[derive(Clone, Default)]
pub struct Credentials {
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    tenant: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(value) = &self.tenant {
            request.metadata_mut().insert(TENANT_HEADER, value.clone());
        }
        Ok(request)
    }
}

pub type IpamClient = IpamServiceClient<InterceptedService<Channel, Credentials>>;
pub type AdminClient = AdminServiceClient<InterceptedService<Channel, Credentials>>;

impl Target {
    /// The credentials to call with, read and checked.
    ///
    /// # Errors
    /// An unreadable token file, a malformed token or tenant.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => Some(
                crate::startup::read_secret_file(path)
                    .with_context(|| format!("--token-file {}", path.display()))?,
            ),
            (None, None) => None,
        };
        let authorization = token
            .map(|t| {
                // Checked here, so that a typo is told at once and a secret is never echoed.
                t.parse::<crate::auth::Presented>()
                    .map_err(|e| anyhow::anyhow!("the token given: {e}"))?;
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the token given is not text"))
            })
            .transpose()?;
        let tenant = self
            .tenant
            .as_deref()
            .map(|t| {
                crate::auth::check_tenant_name(t)
                    .map_err(|reason| anyhow::anyhow!("--tenant {t:?}: {reason}"))?;
                t.parse()
                    .map_err(|_| anyhow::anyhow!("--tenant {t:?} is not text"))
            })
            .transpose()?;
        Ok(Credentials {
            authorization,
            tenant,
        })
    }

    /// Where to connect and how (TLS files read), without connecting yet.
    ///
    /// # Errors
    /// A malformed URL, certificates for a plaintext server, an unreadable certificate.
    pub fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let url = if self.server.contains("://") {
            self.server.clone()
        } else {
            format!("http://{}", self.server)
        };
        let mut endpoint = Channel::from_shared(url.clone())
            .with_context(|| format!("server {url}"))?
            .connect_timeout(CONNECT_TIMEOUT);
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(self.tls()?)
                .with_context(|| format!("server {url}"))?;
        } else if !url.starts_with("http://") {
            anyhow::bail!("server {url}: expected http:// or https://");
        } else if self.ca_cert.is_some() || self.client_cert.is_some() {
            // Certificates for a plaintext server are a mistake worth saying.
            anyhow::bail!("server {url}: --ca-cert and --client-cert need an https:// server");
        }
        Ok(endpoint)
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        let endpoint = self.endpoint()?;
        let url = endpoint.uri().to_string();
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))
    }

    /// The TLS settings of an https:// server: its CA, and the client certificate if given.
    fn tls(&self) -> anyhow::Result<ClientTlsConfig> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let Some(ca) = &self.ca_cert else {
            anyhow::bail!("an https:// server needs --ca-cert, the CA that signed its certificate");
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }

    /// A client of the IPAM service.
    ///
    /// # Errors
    /// Bad credentials, or the server cannot be reached.
    pub async fn ipam(&self) -> anyhow::Result<IpamClient> {
        let creds = self.credentials()?;
        Ok(IpamServiceClient::with_interceptor(
            self.channel().await?,
            creds,
        ))
    }

    /// A client of the admin service.
    ///
    /// # Errors
    /// Bad credentials, or the server cannot be reached.
    pub async fn admin(&self) -> anyhow::Result<AdminClient> {
        let creds = self.credentials()?;
        Ok(AdminServiceClient::with_interceptor(
            self.channel().await?,
            creds,
        ))
    }
}

/// Every item of a listing, following its pages: `page` asks for the page a token names
/// (empty: the first) and answers its items and the next token (empty after the last). A
/// server that hands back the token it was given would be asked forever: that is an error.
async fn follow<T, F, Fut>(mut page: F) -> Result<Vec<T>, tonic::Status>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token.clone()).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        if next == token {
            return Err(tonic::Status::internal(format!(
                "the server answered page token {token:?} with the same token: paging stopped"
            )));
        }
        token = next;
    }
}

/// Every pool of `space` (every space when empty), following `ListPools`' pages.
///
/// # Errors
/// The server refused a page.
pub async fn every_pool(
    client: &IpamClient,
    space: &str,
) -> Result<Vec<crate::proto::pb::Pool>, tonic::Status> {
    follow(|page_token| {
        let mut client = client.clone();
        let request = crate::proto::pb::ListPoolsRequest {
            address_space: space.to_owned(),
            page_size: 0,
            page_token,
        };
        async move {
            let page = client.list_pools(request).await?.into_inner();
            Ok((page.pools, page.next_page_token))
        }
    })
    .await
}

/// The state of every pool, following `GetIpamState`'s pages.
///
/// # Errors
/// The server refused a page.
pub async fn every_state(
    client: &IpamClient,
) -> Result<Vec<crate::proto::pb::PoolState>, tonic::Status> {
    follow(|page_token| {
        let mut client = client.clone();
        let request = crate::proto::pb::GetIpamStateRequest {
            pool_ids: Vec::new(),
            page_size: 0,
            page_token,
        };
        async move {
            let page = client.get_ipam_state(request).await?.into_inner();
            Ok((page.pools, page.next_page_token))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::follow;

    #[tokio::test]
    async fn following_pages_stops_at_a_token_that_does_not_move() {
        // Two pages, then a server stuck on its last token (without the check, the test
        // fails at the tenth page rather than hang).
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let stuck = follow(|token: String| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert!(n < 10, "still asking after {n} pages");
            async move {
                let next = if token.is_empty() { "a" } else { "b" };
                Ok((vec![token], next.to_owned()))
            }
        })
        .await;
        let err = stuck.expect_err("a token answered with itself is refused");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("\"b\""), "{}", err.message());
        // A listing that ends: every page's items, in order.
        let ends = follow(|token: String| async move {
            let next = match token.as_str() {
                "" => "a",
                "a" => "b",
                _ => "",
            };
            Ok((vec![token], next.to_owned()))
        })
        .await;
        assert_eq!(ends.ok(), Some(vec![String::new(), "a".into(), "b".into()]));
    }
}
