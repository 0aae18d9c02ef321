//! Who is calling: a request's credentials (a bearer token, or the client certificate a TLS
//! connection proved) checked against the directory, and the role the call needs checked
//! against the caller's. Tokens found are cached; the cache forgets a tenant's entries when the
//! directory changes here or, as the store announces, on another replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Presented, Role, SecretHash, TokenId};
use crate::ipam::Error;
use crate::store::{DEFAULT_TENANT, Event, Follower, Quota, Store, TokenRecord};

/// The metadata key naming the tenant an admin acts for.
pub const TENANT_HEADER: &str = "x-allot-tenant";

/// The metadata key of a refusal for going over a tenant's rate: milliseconds to wait.
pub const RETRY_AFTER_HEADER: &str = "x-allot-retry-after-ms";

/// Longest a token or quota read from the store is used without reading it again.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// Unknown token ids remembered (so that a flood of made-up tokens does not reach the
/// store each time); the memory is cleared when it fills.
const MAX_UNKNOWN: usize = 10_000;

/// Who a call is made by: the tenant it acts for and the role it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: Arc<str>,
    pub role: Role,
    /// How it proved it, for the audit trail: `token:<id>`, `cert:<subject>`, or `none`.
    pub credential: Arc<str>,
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health checks and reflection, which say nothing of any tenant.
    Nothing,
    /// At least this role.
    Role(Role),
}

impl Need {
    /// What a gRPC method (`/package.Service/Method`) needs. Unknown methods need a read
    /// token (and then are answered UNIMPLEMENTED), so that nothing answers a stranger.
    #[must_use]
    pub fn of_method(path: &str) -> Self {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        match service {
            "grpc.health.v1.Health"
            | "grpc.reflection.v1.ServerReflection"
            | "grpc.reflection.v1alpha.ServerReflection" => Self::Nothing,
            "ipam.v1.IpamService" => match method {
                "ListPools"
                | "GetIpamState"
                | "ListAllocations"
                | "GetDefaultAddressSpaces"
                | "GetCapabilities" => Self::Role(Role::Read),
                _ => Self::Role(Role::Write),
            },
            "ipam.admin.v1.AdminService" => Self::Role(Role::Admin),
            _ => Self::Role(Role::Read),
        }
    }
}

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nobody is asked anything: every caller acts for the default tenant with role `write`
    /// (loopback only; `--auth none`).
    Open,
    /// A token (or a client certificate) is required on every call but health and reflection.
    Tokens,
}

/// The verdict on the certificate a client presented on a TLS connection (`api::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCert {
    /// Signed by the client CA, valid now, naming `tenant` in its subject's common name.
    Verified {
        tenant: String,
        /// The subject, as shown in the audit trail.
        subject: String,
    },
    /// Not to be trusted, and why.
    Refused { reason: String },
}

/// Checks credentials against the directory.
pub struct Authenticator {
    mode: Mode,
    store: Arc<dyn Store>,
    // The admin token read from `--admin-token-file`: its id and secret hash. It acts for the
    // default tenant unless it names another.
    bootstrap: Option<(TokenId, SecretHash)>,
    // The role a client certificate grants.
    cert_role: Role,
    // The caller of every call in `Mode::Open`.
    open: Caller,
    cache: Mutex<Cache>,
    watcher: Follower,
}

struct Cache {
    // A token found: its secret's hash, and who it makes the caller.
    known: HashMap<TokenId, (SecretHash, Caller)>,
    unknown: std::collections::HashSet<TokenId>,
    // Each tenant's quota, as last read.
    quotas: HashMap<String, Quota>,
    // When the entries above were last all forgotten.
    since: Instant,
    // Each rate-limited tenant's bucket (kept across invalidations: a quota change keeps
    // what was spent).
    buckets: HashMap<String, Bucket>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            known: HashMap::new(),
            unknown: std::collections::HashSet::new(),
            quotas: HashMap::new(),
            since: Instant::now(),
            buckets: HashMap::new(),
        }
    }
}

impl Cache {
    /// Forgets every token and quota read (not what the rate buckets spent).
    fn forget(&mut self) {
        let buckets = std::mem::take(&mut self.buckets);
        *self = Self {
            buckets,
            ..Self::default()
        };
    }
}

/// A token bucket: `rate` calls per second, bursts of as many.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A call refused for going over its tenant's rate: when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl Authenticator {
    /// Returns an authenticator in `mode` over the directory of `store`, taking `bootstrap`
    /// (a token string) as an admin token of the default tenant, and following the store's
    /// announcements to forget what other replicas change.
    ///
    /// # Errors
    /// `bootstrap` is not a token.
    pub async fn new(
        mode: Mode,
        store: Arc<dyn Store>,
        bootstrap: Option<&str>,
        cert_role: Role,
    ) -> Result<Arc<Self>, super::Malformed> {
        let bootstrap = match bootstrap {
            Some(token) => {
                let presented: Presented = token.trim().parse()?;
                Some((presented.id, presented.hash()))
            }
            None => None,
        };
        let events = if mode == Mode::Tokens {
            store.subscribe(crate::store::Interest::Directory).await
        } else {
            None
        };
        let auth = Arc::new(Self {
            mode,
            store,
            bootstrap,
            cert_role,
            open: Caller {
                tenant: Arc::from(DEFAULT_TENANT),
                role: Role::Write,
                credential: Arc::from("none"),
            },
            cache: Mutex::default(),
            watcher: Follower::default(),
        });
        // Forget cached tokens and quotas as the store announces directory changes (all of
        // them when announcements may have been missed).
        if let Some(events) = events {
            auth.watcher.start(&auth, events, |auth, event| async move {
                match event {
                    Event::Directory { tenant } => auth.invalidate(&tenant),
                    Event::Resync => auth.invalidate_all(),
                    Event::Changed { .. } => {}
                }
            });
        }
        Ok(auth)
    }

    /// The mode callers are authenticated in.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Inserts and removes only: a poisoned cache is still consistent.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        // Announcements make changes take effect at once; this bounds how long one that
        // never came (a store without them, a notice lost) can leave a revoked token working.
        if cache.since.elapsed() > CACHE_TTL {
            cache.forget();
        }
        cache
    }

    /// Forgets what is cached of `tenant`'s tokens (after a change of the directory), and
    /// every token id remembered as unknown (one may have been created).
    pub fn invalidate(&self, tenant: &str) {
        let mut cache = self.cache();
        cache.known.retain(|_, (_, c)| &*c.tenant != tenant);
        cache.unknown.clear();
        cache.quotas.remove(tenant);
    }

    fn invalidate_all(&self) {
        self.cache().forget();
    }

    /// Returns `tenant`'s quota (all zeros, none, for a tenant without one or not found), from
    /// the cache or the store.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn quota(&self, tenant: &str) -> Result<Quota, Error> {
        if let Some(q) = self.cache().quotas.get(tenant) {
            return Ok(*q);
        }
        let quota = self.store.quota(tenant).await?.unwrap_or_default();
        self.cache().quotas.insert(tenant.to_owned(), quota);
        Ok(quota)
    }

    /// Counts one call of `tenant` against its rate (`requests_per_second`, on this replica).
    ///
    /// # Errors
    /// `Exhausted` with when to retry, past the rate; a store error reading the quota.
    pub async fn admit(&self, tenant: &str) -> Result<(), (Error, Option<RetryAfter>)> {
        let rate = self
            .quota(tenant)
            .await
            .map_err(|e| (e, None))?
            .requests_per_second;
        if rate == 0 {
            return Ok(());
        }
        #[allow(clippy::cast_precision_loss)] // rates are far below 2^52
        let rate = rate as f64;
        let now = Instant::now();
        let mut cache = self.cache();
        let bucket = cache.buckets.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
        Err((
            Error::Refused {
                kind: crate::ipam::Kind::Exhausted,
                message: format!(
                    "tenant {tenant:?} is over its rate of {rate} requests per second: retry in \
                     {} ms",
                    wait.as_millis().max(1)
                ),
            },
            Some(RetryAfter(wait)),
        ))
    }

    /// Finds a token by id, from the cache or the store: its secret's hash and its caller.
    async fn token(&self, id: TokenId) -> Result<Option<(SecretHash, Caller)>, Error> {
        {
            let cache = self.cache();
            if let Some(t) = cache.known.get(&id) {
                return Ok(Some(t.clone()));
            }
            if cache.unknown.contains(&id) {
                return Ok(None);
            }
        }
        let found = self.store.token(id).await?.map(|t: TokenRecord| {
            let caller = Caller {
                tenant: Arc::from(t.tenant),
                role: t.role,
                credential: Arc::from(format!("token:{}", t.id)),
            };
            (t.hash, caller)
        });
        let mut cache = self.cache();
        match &found {
            Some(t) => {
                cache.known.insert(id, t.clone());
            }
            None => {
                if cache.unknown.len() >= MAX_UNKNOWN {
                    cache.unknown.clear();
                }
                cache.unknown.insert(id);
            }
        }
        Ok(found)
    }

    /// Finds who calls `method` (a gRPC path) with these credentials, and checks that it may:
    /// `authorization` and `tenant` are the metadata values as received (`None` when absent,
    /// `Err` when not text), `cert` the client certificate the connection proved.
    ///
    /// # Errors
    /// `Unauthenticated` without valid credentials, `PermissionDenied` for a role short of the
    /// method's need or a tenant it may not act for, `Invalid` for a malformed tenant name,
    /// `Unavailable` when the store cannot be asked.
    pub async fn authenticate(
        &self,
        method: &str,
        authorization: Option<Result<&str, ()>>,
        tenant: Option<Result<&str, ()>>,
        cert: Option<&PeerCert>,
    ) -> Result<Option<Caller>, Error> {
        let Need::Role(need) = Need::of_method(method) else {
            return Ok(None);
        };
        let caller = match self.mode {
            Mode::Open => self.open.clone(),
            Mode::Tokens => self.identify(authorization, cert).await?,
        };
        let caller = act_for(caller, tenant)?;
        if caller.role < need {
            let shown = engine_shown(method);
            return Err(Error::PermissionDenied(if self.mode == Mode::Open {
                format!(
                    "{shown} needs role {need}, and authentication is off (--auth none): \
                     tenants and tokens are managed with --auth token"
                )
            } else {
                format!(
                    "{shown} needs role {need}; {} has role {}",
                    caller.credential, caller.role
                )
            }));
        }
        Ok(Some(caller))
    }

    /// The caller the credentials prove: a token first, else a client certificate.
    async fn identify(
        &self,
        authorization: Option<Result<&str, ()>>,
        cert: Option<&PeerCert>,
    ) -> Result<Caller, Error> {
        let unauthenticated = |why: &str| Error::Unauthenticated(why.to_owned());
        let value = match authorization {
            None => {
                return match cert {
                    Some(PeerCert::Verified { tenant, subject }) => Ok(Caller {
                        tenant: Arc::from(tenant.as_str()),
                        role: self.cert_role,
                        credential: Arc::from(format!("cert:{subject}")),
                    }),
                    Some(PeerCert::Refused { reason }) => Err(unauthenticated(reason)),
                    None => Err(unauthenticated(
                        "missing credentials: send the metadata 'authorization: Bearer <token>'",
                    )),
                };
            }
            Some(Err(())) => return Err(unauthenticated("malformed authorization metadata")),
            Some(Ok(value)) => value,
        };
        let token = value.strip_prefix("Bearer ").ok_or_else(|| {
            unauthenticated("the authorization metadata must read 'Bearer <token>'")
        })?;
        let presented: Presented = token
            .trim()
            .parse()
            .map_err(|e: super::Malformed| unauthenticated(&format!("malformed token: {e}")))?;
        if let Some((id, hash)) = &self.bootstrap
            && *id == presented.id
        {
            if presented.matches(hash) {
                return Ok(Caller {
                    tenant: Arc::from(DEFAULT_TENANT),
                    role: Role::Admin,
                    credential: Arc::from(format!("token:{id}")),
                });
            }
            return Err(unauthenticated("unknown or revoked token"));
        }
        match self.token(presented.id).await? {
            Some((hash, caller)) if presented.matches(&hash) => Ok(caller),
            _ => Err(unauthenticated("unknown or revoked token")),
        }
    }
}

/// The method's name as shown in a refusal (`RequestPool`).
fn engine_shown(method: &str) -> String {
    crate::engine::error::shown(method.rsplit('/').next().unwrap_or(method))
}

/// The caller acting for the tenant `x-allot-tenant` names: an admin may name any; anyone else
/// only its own.
fn act_for(caller: Caller, tenant: Option<Result<&str, ()>>) -> Result<Caller, Error> {
    let named = match tenant {
        None => return Ok(caller),
        Some(Err(())) => return Err(invalid_tenant("metadata x-allot-tenant is not text")),
        Some(Ok(named)) => named,
    };
    super::check_tenant_name(named).map_err(|reason| {
        invalid_tenant(&format!(
            "metadata {TENANT_HEADER} {}: {reason}",
            crate::engine::error::shown(named)
        ))
    })?;
    if named == &*caller.tenant {
        return Ok(caller);
    }
    if caller.role == Role::Admin {
        return Ok(Caller {
            tenant: Arc::from(named),
            ..caller
        });
    }
    Err(Error::PermissionDenied(format!(
        "only an admin may act for another tenant ({TENANT_HEADER}); {} has role {}",
        caller.credential, caller.role
    )))
}

fn invalid_tenant(message: &str) -> Error {
    Error::Invalid(message.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ipam::Kind;
    use crate::store::{Directory, MemoryStore};

    const READ: &str = "/ipam.v1.IpamService/ListPools";
    const WRITE: &str = "/ipam.v1.IpamService/RequestAddress";
    const ADMIN: &str = "/ipam.admin.v1.AdminService/ListTenants";

    async fn token(store: &MemoryStore, tenant: &str, role: Role) -> String {
        let issued = super::super::issue().unwrap();
        store.create_tenant(tenant, 1).await.unwrap();
        let record = TokenRecord {
            id: issued.id,
            tenant: tenant.to_owned(),
            role,
            hash: issued.hash,
            description: String::new(),
            created_at: 1,
        };
        assert!(store.create_token(&record).await.unwrap());
        format!("Bearer {}", issued.token)
    }

    fn kind(r: Result<Option<Caller>, Error>) -> Result<Option<(String, Role)>, Kind> {
        r.map(|c| c.map(|c| (c.tenant.to_string(), c.role)))
            .map_err(|e| e.kind())
    }

    #[tokio::test]
    async fn roles_tenants_and_credentials_decide() {
        let store = Arc::new(MemoryStore::new());
        let admin = super::super::issue().unwrap();
        let auth = Authenticator::new(Mode::Tokens, store.clone(), Some(&admin.token), Role::Write)
            .await
            .unwrap();
        let admin = format!("Bearer {}", admin.token);
        let reader = token(&store, "acme", Role::Read).await;
        let writer = token(&store, "acme", Role::Write).await;
        let check = |method: &'static str, authz: Option<&str>, tenant: Option<&str>| {
            let auth = Arc::clone(&auth);
            let (authz, tenant) = (authz.map(str::to_owned), tenant.map(str::to_owned));
            async move {
                kind(
                    auth.authenticate(
                        method,
                        authz.as_deref().map(Ok),
                        tenant.as_deref().map(Ok),
                        None,
                    )
                    .await,
                )
            }
        };
        let acme = |role| Ok(Some(("acme".to_owned(), role)));
        assert_eq!(check(READ, Some(&reader), None).await, acme(Role::Read));
        assert_eq!(
            check(WRITE, Some(&reader), None).await,
            Err(Kind::PermissionDenied)
        );
        assert_eq!(check(WRITE, Some(&writer), None).await, acme(Role::Write));
        assert_eq!(
            check(ADMIN, Some(&writer), None).await,
            Err(Kind::PermissionDenied)
        );
        assert_eq!(
            check(ADMIN, Some(&admin), None).await,
            Ok(Some(("default".to_owned(), Role::Admin)))
        );
        // Acting for a tenant: an admin for any, others for their own only.
        assert_eq!(
            check(WRITE, Some(&admin), Some("acme")).await,
            Ok(Some(("acme".to_owned(), Role::Admin)))
        );
        assert_eq!(
            check(WRITE, Some(&writer), Some("acme")).await,
            acme(Role::Write)
        );
        assert_eq!(
            check(WRITE, Some(&writer), Some("beta")).await,
            Err(Kind::PermissionDenied)
        );
        assert_eq!(
            check(WRITE, Some(&admin), Some("Bad+Name")).await,
            Err(Kind::Invalid)
        );
        // No, malformed, unknown credentials.
        assert_eq!(check(READ, None, None).await, Err(Kind::Unauthenticated));
        assert_eq!(
            check(READ, Some("Basic abc"), None).await,
            Err(Kind::Unauthenticated)
        );
        assert_eq!(
            check(READ, Some("Bearer allot_x"), None).await,
            Err(Kind::Unauthenticated)
        );
        let unknown = format!("Bearer {}", super::super::issue().unwrap().token);
        assert_eq!(
            check(READ, Some(&unknown), None).await,
            Err(Kind::Unauthenticated)
        );
        // The bootstrap id with another secret is refused.
        let mut forged = admin.clone();
        forged.replace_range(forged.len() - 4.., "0000");
        if forged != admin {
            assert_eq!(
                check(READ, Some(&forged), None).await,
                Err(Kind::Unauthenticated)
            );
        }
        // Health and reflection need nothing; unknown methods need a token.
        assert_eq!(
            check("/grpc.health.v1.Health/Check", None, None).await,
            Ok(None)
        );
        assert_eq!(
            check("/x.Y/Z", None, None).await,
            Err(Kind::Unauthenticated)
        );
        // Metadata that is not text.
        let binary = auth.authenticate(READ, Some(Err(())), None, None).await;
        assert_eq!(kind(binary), Err(Kind::Unauthenticated));
        let binary = auth
            .authenticate(READ, Some(Ok(reader.as_str())), Some(Err(())), None)
            .await;
        assert_eq!(kind(binary), Err(Kind::Invalid));
    }

    #[tokio::test]
    async fn a_revoked_token_is_refused_once_its_tenant_is_invalidated() {
        let store = Arc::new(MemoryStore::new());
        let auth = Authenticator::new(Mode::Tokens, store.clone(), None, Role::Write)
            .await
            .unwrap();
        let writer = token(&store, "acme", Role::Write).await;
        let call = || auth.authenticate(WRITE, Some(Ok(writer.as_str())), None, None);
        assert!(call().await.is_ok());
        let id: TokenId = writer["Bearer allot_".len()..][..16].parse().unwrap();
        assert_eq!(
            store.revoke_token(id).await.unwrap(),
            Some("acme".to_owned())
        );
        auth.invalidate("acme");
        assert_eq!(kind(call().await), Err(Kind::Unauthenticated));
    }

    #[tokio::test]
    async fn open_mode_is_the_default_tenant_with_write() {
        let auth = Authenticator::new(Mode::Open, Arc::new(MemoryStore::new()), None, Role::Write)
            .await
            .unwrap();
        let caller = auth.authenticate(WRITE, None, None, None).await;
        assert_eq!(kind(caller), Ok(Some(("default".to_owned(), Role::Write))));
        let admin = auth.authenticate(ADMIN, None, None, None).await;
        assert_eq!(kind(admin), Err(Kind::PermissionDenied));
    }

    #[tokio::test]
    async fn a_client_certificate_names_the_tenant() {
        let auth = Authenticator::new(Mode::Tokens, Arc::new(MemoryStore::new()), None, Role::Read)
            .await
            .unwrap();
        let cert = PeerCert::Verified {
            tenant: "acme".into(),
            subject: "CN=acme".into(),
        };
        let read = auth.authenticate(READ, None, None, Some(&cert)).await;
        assert_eq!(kind(read), Ok(Some(("acme".to_owned(), Role::Read))));
        let write = auth.authenticate(WRITE, None, None, Some(&cert)).await;
        assert_eq!(kind(write), Err(Kind::PermissionDenied));
    }
}
