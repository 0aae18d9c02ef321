//! `allot-cni`: a CNI IPAM plugin (spec 1.1.0, speaking cniVersion 0.3.1 to 1.1.0) that asks
//! allot for addresses over gRPC. A runtime, or a main plugin such as `bridge`, runs it once
//! per operation with the verb in `CNI_COMMAND`, the network configuration on stdin, and
//! reads the result (or the spec's error object) on stdout.
//!
//! Every address is requested with the owner `<CNI_CONTAINERID>/<CNI_IFNAME>`, so an `ADD`
//! retried after a timeout gets the address the first one took, `DEL` releases exactly what
//! the attachment holds (nothing held: success), and `GC` releases what no valid attachment
//! holds. The gateway is held by [`config::GATEWAY_OWNER`], which `GC` keeps.

pub mod config;

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code as Grpc;

use crate::cli::{IpamClient, Target};
use crate::proto::pb;
use config::{Config, Env, GATEWAY_OWNER, PoolRef, SUPPORTED};

/// How long one call to allot may take, connection included, before the runtime is told to
/// try again later.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The spec's error codes, and this plugin's own (100 and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    InvalidEnv = 4,
    Io = 5,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    /// allot refused the request (the message says why: the pool is exhausted, the address is
    /// taken, the token may not do that, …).
    Refused = 100,
    /// `CHECK`: the attachment holds no address, or another than its previous result says.
    NotHeld = 101,
}

/// An error as the spec prints it.
#[derive(Debug)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
    /// What allot answered, when it was a refusal.
    grpc: Option<Grpc>,
}

impl CniError {
    #[must_use]
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
            grpc: None,
        }
    }

    fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error object.
    #[must_use]
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code as u32,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

/// What one invocation printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// The JSON printed on stdout, if any (a result, the version listing, or an error).
    pub stdout: Option<Value>,
    /// Whether it succeeded (exit status 0).
    pub ok: bool,
}

/// Runs one invocation: `var` reads the environment, `stdin` is what the runtime wrote.
pub async fn run(var: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    // Errors are printed in the configuration's version when it has a supported one.
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| SUPPORTED[SUPPORTED.len() - 1].to_owned());
    match invoke(var, stdin, &version).await {
        Ok(stdout) => Outcome { stdout, ok: true },
        Err(e) => Outcome {
            stdout: Some(e.to_json(&version)),
            ok: false,
        },
    }
}

async fn invoke(
    var: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    version: &str,
) -> Result<Option<Value>, CniError> {
    let command = var("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        // The input may be empty or carry only a cniVersion.
        return Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED,
        })));
    }
    let verb = match command.as_str() {
        "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" => command.as_str(),
        "" => return Err(CniError::new(Code::InvalidEnv, "CNI_COMMAND is not set")),
        other => {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, STATUS, GC or VERSION"),
            ));
        }
    };
    let conf = config::parse(stdin)?;
    let since = match verb {
        "CHECK" => "0.4.0",
        "STATUS" | "GC" => "1.1.0",
        _ => "0.3.1",
    };
    if SUPPORTED.iter().position(|v| *v == conf.cni_version)
        < SUPPORTED.iter().position(|v| *v == since)
    {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "config version {} does not allow {verb} (it needs {since} or later)",
                conf.cni_version
            ),
        ));
    }
    let session = |unreachable| Session::open(&conf, unreachable);
    match verb {
        "ADD" => {
            let env = Env::read(var)?;
            let s = session(Code::TryAgainLater).await?;
            s.add(&env).await.map(Some)
        }
        "DEL" => {
            let env = Env::read(var)?;
            let s = session(Code::TryAgainLater).await?;
            s.del(&env).await.map(|()| None)
        }
        "CHECK" => {
            let env = Env::read(var)?;
            let s = session(Code::TryAgainLater).await?;
            s.check(&env).await.map(|()| None)
        }
        "STATUS" => {
            let s = session(Code::NotAvailable).await?;
            s.status().await.map(|()| None)
        }
        _ => {
            let s = session(Code::TryAgainLater).await?;
            s.gc().await.map(|()| None)
        }
    }
}

/// Done, also when allot says the pool is gone: whatever it held went with it.
fn gone_is_done<T>(outcome: Result<T, CniError>) -> Result<(), CniError> {
    match outcome {
        Ok(_) => Ok(()),
        Err(e) if e.grpc == Some(Grpc::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A connection to allot for one invocation.
struct Session<'a> {
    conf: &'a Config,
    client: IpamClient,
    /// The code for "allot cannot be reached or cannot answer now".
    unreachable: Code,
}

impl<'a> Session<'a> {
    async fn open(conf: &'a Config, unreachable: Code) -> Result<Self, CniError> {
        let target = Target {
            server: conf.ipam.server.clone(),
            token: None,
            token_file: conf.ipam.token_file.clone(),
            tenant: None,
            ca_cert: conf.ipam.ca_file.clone(),
            client_cert: None,
            client_key: None,
        };
        let creds = target
            .credentials()
            .map_err(|e| CniError::new(Code::InvalidConfig, format!("ipam.token_file: {e:#}")))?;
        let endpoint = target
            .endpoint()
            .map_err(|e| CniError::new(Code::InvalidConfig, format!("ipam: {e:#}")))?;
        let channel = tokio::time::timeout(CALL_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .map_err(|e| {
                CniError::new(
                    unreachable,
                    format!("allot at {} cannot be reached", conf.ipam.server),
                )
                .details(format!("{e:#}"))
            })?;
        Ok(Self {
            conf,
            client: pb::ipam_service_client::IpamServiceClient::with_interceptor(channel, creds),
            unreachable,
        })
    }

    /// Turns a refusal into the spec's error: allot unavailable or slow is "try again later"
    /// (or "not available" for STATUS), a bad pool or token is the configuration's fault.
    fn refused(&self, what: &str, status: &tonic::Status) -> CniError {
        let code = match status.code() {
            Grpc::Unavailable | Grpc::DeadlineExceeded | Grpc::Aborted | Grpc::Cancelled => {
                self.unreachable
            }
            Grpc::InvalidArgument
            | Grpc::NotFound
            | Grpc::Unauthenticated
            | Grpc::PermissionDenied => Code::InvalidConfig,
            _ => Code::Refused,
        };
        let mut e = CniError::new(code, format!("{what}: {}", status.message()))
            .details(format!("allot answered {:?}", status.code()));
        e.grpc = Some(status.code());
        e
    }

    fn client(&self) -> IpamClient {
        self.client.clone()
    }

    /// One call, bounded in time.
    async fn call<T, F>(&self, what: &str, call: F) -> Result<T, CniError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let answered = tokio::time::timeout(CALL_TIMEOUT, call).await;
        self.answered(what, answered)
    }

    /// As [`Self::call`], but what allot does not find is `None`.
    async fn lookup<T, F>(&self, what: &str, call: F) -> Result<Option<T>, CniError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
            answered => self.answered(what, answered).map(Some),
        }
    }

    fn answered<T>(
        &self,
        what: &str,
        answered: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, CniError> {
        match answered {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(self.refused(what, &status)),
            Err(_) => Err(CniError::new(
                self.unreachable,
                format!("{what}: allot did not answer within {CALL_TIMEOUT:?}"),
            )),
        }
    }

    /// The pool's id: as configured, or the pool of the configured subnet (created when
    /// `create` and missing). `None`: there is no such pool.
    async fn pool_id(&self, create: bool) -> Result<Option<String>, CniError> {
        let (space, subnet, range) = match &self.conf.pool {
            PoolRef::Id(id) => return Ok(Some(id.clone())),
            PoolRef::Subnet {
                space,
                subnet,
                range,
            } => (space, subnet.to_string(), range.map(|r| r.to_string())),
        };
        // A pool's id is its space, subnet and range: asked for by id, it is there or not.
        let id = match &range {
            Some(range) => format!("{space}/{subnet}/{range}"),
            None => format!("{space}/{subnet}"),
        };
        let find = || async {
            let mut client = self.client();
            let asked = client.get_ipam_state(pb::GetIpamStateRequest {
                pool_ids: vec![id.clone()],
                ..Default::default()
            });
            let found = self.lookup(&format!("looking up pool {id}"), asked).await?;
            Ok::<_, CniError>(found.map(|_| id.clone()))
        };
        if let Some(id) = find().await? {
            return Ok(Some(id));
        }
        if !create {
            return Ok(None);
        }
        let made = self
            .call(
                &format!("creating pool {subnet} in {space}"),
                self.client().request_pool(pb::RequestPoolRequest {
                    address_space: space.clone(),
                    pool: subnet.clone(),
                    sub_pool: range.clone().unwrap_or_default(),
                    v6: subnet.contains(':'),
                    ..Default::default()
                }),
            )
            .await;
        match made {
            Ok(made) => Ok(Some(made.pool_id)),
            // Another ADD created it first: it is there now.
            Err(e) => match find().await? {
                Some(id) => Ok(Some(id)),
                None => Err(e),
            },
        }
    }

    async fn request(
        &self,
        pool_id: &str,
        address: Option<IpAddr>,
        owner: &str,
    ) -> Result<String, CniError> {
        let what = match address {
            Some(a) => format!("requesting {a} in pool {pool_id}"),
            None => format!("requesting an address in pool {pool_id}"),
        };
        let reply = self
            .call(
                &what,
                self.client().request_address(pb::RequestAddressRequest {
                    pool_id: pool_id.to_owned(),
                    address: address.map(|a| a.to_string()).unwrap_or_default(),
                    owner: owner.to_owned(),
                    ..Default::default()
                }),
            )
            .await?;
        Ok(reply.address)
    }

    async fn add(&self, env: &Env) -> Result<Value, CniError> {
        let owner = env.owner()?;
        let Some(pool_id) = self.pool_id(true).await? else {
            return Err(CniError::new(Code::Refused, "the pool was not created"));
        };
        if let Some(gw) = self.conf.gateway {
            // Held once for every container, by the gateway's own owner; in use already
            // (another orchestrator's gateway) is as good: no container gets it.
            match self.request(&pool_id, Some(gw), GATEWAY_OWNER).await {
                Ok(_) => {}
                Err(e) if e.grpc == Some(Grpc::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
        }
        let address = self.request(&pool_id, None, owner.as_str()).await?;
        Ok(self.result(&address))
    }

    /// The spec's result for `address` ("10.1.0.5/24"), in the configuration's version.
    fn result(&self, address: &str) -> Value {
        let mut ip = json!({ "address": address });
        if let Some(gw) = self.conf.gateway {
            ip["gateway"] = json!(gw.to_string());
        }
        if self.conf.cni_version.starts_with("0.") {
            // Before 1.0.0 every IP said its family.
            ip["version"] = json!(if address.contains(':') { "6" } else { "4" });
        }
        let mut result = json!({
            "cniVersion": self.conf.cni_version,
            "ips": [ip],
        });
        if !self.conf.ipam.routes.is_empty() {
            result["routes"] = json!(self.conf.ipam.routes);
        }
        if let Some(dns) = &self.conf.ipam.dns {
            result["dns"] = json!(dns);
        }
        result
    }

    async fn del(&self, env: &Env) -> Result<(), CniError> {
        let owner = env.owner()?;
        let Some(pool_id) = self.pool_id(false).await? else {
            return Ok(());
        };
        let released = self
            .call(
                &format!("releasing what {owner} holds in pool {pool_id}"),
                self.client().release_owner(pb::ReleaseOwnerRequest {
                    owner: owner.to_string(),
                    pool_ids: vec![pool_id],
                }),
            )
            .await;
        gone_is_done(released)
    }

    async fn check(&self, env: &Env) -> Result<(), CniError> {
        let owner = env.owner()?;
        let Some(pool_id) = self.pool_id(false).await? else {
            return Err(CniError::new(Code::NotHeld, "the pool does not exist"));
        };
        let listed = self
            .call(
                &format!("listing what {owner} holds in pool {pool_id}"),
                self.client().list_allocations(pb::ListAllocationsRequest {
                    pool_id: pool_id.clone(),
                    owner_prefix: owner.to_string(),
                    page_size: 1000,
                    page_token: String::new(),
                }),
            )
            .await?;
        let held: Vec<IpAddr> = listed
            .allocations
            .iter()
            .filter(|a| a.owner == owner.as_str())
            .filter_map(|a| a.address.parse().ok())
            .collect();
        if held.is_empty() {
            return Err(CniError::new(
                Code::NotHeld,
                format!("{owner} holds no address in pool {pool_id}"),
            ));
        }
        let previous = self.conf.prev_result.iter().flat_map(|r| &r.ips);
        for ip in previous {
            let addr = ip.address.split('/').next().unwrap_or_default();
            if !addr.parse().is_ok_and(|a: IpAddr| held.contains(&a)) {
                return Err(CniError::new(
                    Code::NotHeld,
                    format!("{owner} does not hold {} in pool {pool_id}", ip.address),
                ));
            }
        }
        Ok(())
    }

    async fn status(&self) -> Result<(), CniError> {
        let Some(pool_id) = self.pool_id(false).await? else {
            // Created on the first ADD.
            return Ok(());
        };
        let state = self
            .call(
                &format!("reading pool {pool_id}"),
                self.client().get_ipam_state(pb::GetIpamStateRequest {
                    pool_ids: vec![pool_id.clone()],
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| CniError::new(Code::NotAvailable, e.msg).details(e.details))?;
        let exhausted = state
            .pools
            .iter()
            .any(|p| p.available_ips_in_ip_range_pool_exact == "0");
        if exhausted {
            return Err(CniError::new(
                Code::NotAvailable,
                format!("pool {pool_id} has no free address"),
            ));
        }
        Ok(())
    }

    async fn gc(&self) -> Result<(), CniError> {
        let Some(valid) = &self.conf.valid_attachments else {
            return Err(CniError::new(
                Code::InvalidConfig,
                "GC needs cni.dev/valid-attachments (an empty list releases every attachment)",
            ));
        };
        let mut live = vec![GATEWAY_OWNER.to_owned()];
        for a in valid {
            live.push(config::owner_of(&a.container_id, &a.ifname)?.to_string());
        }
        let Some(pool_id) = self.pool_id(false).await? else {
            return Ok(());
        };
        let collected = self
            .call(
                &format!("collecting pool {pool_id}"),
                self.client().garbage_collect(pb::GarbageCollectRequest {
                    pool_ids: vec![pool_id],
                    live_owners: live,
                    min_age_seconds: 0,
                    dry_run: false,
                }),
            )
            .await;
        gone_is_done(collected)
    }
}
