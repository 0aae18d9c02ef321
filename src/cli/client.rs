//! The client side of the command line: a connection to the server, with the caller's
//! credentials (`--token`, `--token-file`, `--tenant`) on every call.

use anyhow::Context;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::TENANT_HEADER;
use crate::proto::admin_pb::admin_service_client::AdminServiceClient;
use crate::proto::pb::ipam_service_client::IpamServiceClient;

/// Where the server is and who calls it.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The server the client commands talk to (given before the command: `allot --server
    /// HOST:PORT state`).
    #[arg(long, env = "ALLOT_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// The token to call with (`allot_…`); prefer --token-file or ALLOT_TOKEN, which other
    /// users cannot see in the process list.
    #[arg(
        long,
        env = "ALLOT_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// A file holding the token to call with.
    #[arg(long, env = "ALLOT_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Act for this tenant (an admin token may name any; others only their own).
    #[arg(long, env = "ALLOT_TENANT")]
    pub tenant: Option<String>,
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
    fn credentials(&self) -> anyhow::Result<Credentials> {
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

    async fn channel(&self) -> anyhow::Result<Channel> {
        let url = if self.server.contains("://") {
            self.server.clone()
        } else {
            format!("http://{}", self.server)
        };
        if !url.starts_with("http://") {
            // tonic without TLS would talk plaintext to an https:// address.
            anyhow::bail!("server {url}: only http:// is supported (no TLS in this build)");
        }
        Channel::from_shared(url.clone())
            .with_context(|| format!("server {url}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))
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
