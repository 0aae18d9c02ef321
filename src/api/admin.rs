//! The `ipam.admin.v1.AdminService` implementation: tenants, tokens and quotas in the store's
//! directory. The authentication layer lets only admins through; every call is audited. After
//! each change, this replica forgets what it cached of the tenant at once (other replicas do
//! when the store announces the change).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::audit;
use super::status::status;
use crate::auth::{self, Authenticator, Role, TokenId};
use crate::ipam::{self, Kind, Tenants};
use crate::proto::admin_pb as pb;
use crate::store::{Quota, Store, TenantDeletion, TokenRecord, unix_now};

/// Longest token description, in bytes.
const MAX_DESCRIPTION: usize = 256;

/// The admin service.
#[derive(Clone)]
pub struct AdminApi {
    store: Arc<dyn Store>,
    tenants: Arc<Tenants>,
    auth: Arc<Authenticator>,
}

impl AdminApi {
    /// Serves the directory of `store`, forgetting changed tenants in `tenants` and `auth`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, tenants: Arc<Tenants>, auth: Arc<Authenticator>) -> Self {
        Self {
            store,
            tenants,
            auth,
        }
    }

    /// Forgets what this replica cached of `tenant` after a change of its entries.
    fn changed(&self, tenant: &str) {
        self.auth.invalidate(tenant);
    }
}

fn refused(kind: Kind, message: String) -> Status {
    status(&ipam::Error::Refused { kind, message })
}

/// Checks a tenant name from a request.
fn tenant_name(name: &str) -> Result<&str, Status> {
    auth::check_tenant_name(name).map_err(|reason| {
        refused(
            Kind::Invalid,
            format!(
                "invalid tenant name {:?}: {reason}",
                crate::engine::error::shown(name)
            ),
        )
    })?;
    Ok(name)
}

/// A tenant that must exist: NOT_FOUND otherwise.
fn must_exist(found: bool, tenant: &str) -> Result<(), Status> {
    if found {
        Ok(())
    } else {
        Err(status(&ipam::Error::TenantNotFound(tenant.to_owned())))
    }
}

fn store_failed(e: crate::store::Error) -> Status {
    status(&ipam::Error::Store(e))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs `call` for `rpc` and audits it, naming `subject` (a tenant or a token).
async fn audited<T>(
    request_caller: Result<auth::Caller, Status>,
    rpc: &str,
    subject: &str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let caller = request_caller?;
    let result = call.await;
    audit::record_admin(&caller, rpc, subject, &result);
    result.map(Response::new)
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let name = &request.get_ref().name;
        audited(super::caller(&request), "CreateTenant", name, async {
            let name = tenant_name(name)?;
            let created_at = unix_now();
            if !self
                .store
                .create_tenant(name, created_at)
                .await
                .map_err(store_failed)?
            {
                return Err(refused(
                    Kind::AlreadyExists,
                    format!("tenant {name:?} already exists"),
                ));
            }
            self.changed(name);
            Ok(pb::CreateTenantResponse {
                tenant: Some(pb::Tenant {
                    name: name.to_owned(),
                    created_at: to_i64(created_at),
                }),
            })
        })
        .await
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        let r = request.get_ref();
        audited(super::caller(&request), "DeleteTenant", &r.name, async {
            let name = tenant_name(&r.name)?;
            match self
                .store
                .delete_tenant(name, r.force)
                .await
                .map_err(store_failed)?
            {
                TenantDeletion::Deleted => {
                    self.tenants.forget(name);
                    self.changed(name);
                    Ok(pb::DeleteTenantResponse {})
                }
                TenantDeletion::Missing => {
                    must_exist(false, name).map(|()| pb::DeleteTenantResponse {})
                }
                TenantDeletion::HoldsPools(n) => Err(refused(
                    Kind::FailedPrecondition,
                    format!(
                        "tenant {name:?} holds {n} pool(s): release them, or delete it with force"
                    ),
                )),
            }
        })
        .await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        audited(super::caller(&request), "ListTenants", "", async {
            let tenants = self.store.tenants().await.map_err(store_failed)?;
            Ok(pb::ListTenantsResponse {
                tenants: tenants
                    .into_iter()
                    .map(|t| pb::Tenant {
                        name: t.name,
                        created_at: to_i64(t.created_at),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = request.get_ref();
        audited(super::caller(&request), "CreateToken", &r.tenant, async {
            let tenant = tenant_name(&r.tenant)?;
            let role: Role = r.role.parse().map_err(|e| refused(Kind::Invalid, e))?;
            if r.description.len() > MAX_DESCRIPTION {
                return Err(refused(
                    Kind::Invalid,
                    format!("description longer than {MAX_DESCRIPTION} bytes"),
                ));
            }
            let issued = auth::issue().map_err(|e| {
                status(&ipam::Error::Internal(format!("the random source failed: {e}")))
            })?;
            let record = TokenRecord {
                id: issued.id,
                tenant: tenant.to_owned(),
                role,
                hash: issued.hash,
                description: r.description.clone(),
                created_at: unix_now(),
            };
            must_exist(
                self.store.create_token(&record).await.map_err(store_failed)?,
                tenant,
            )?;
            self.changed(tenant);
            tracing::info!(target: "allot::audit", token_id = %issued.id, tenant, %role, "token created");
            Ok(pb::CreateTokenResponse {
                token_id: issued.id.to_string(),
                token: issued.token,
            })
        })
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let r = request.get_ref();
        audited(super::caller(&request), "RevokeToken", &r.token_id, async {
            let id: TokenId = r.token_id.parse().map_err(|_| {
                refused(
                    Kind::Invalid,
                    format!(
                        "invalid token id {:?}: 16 lowercase hex digits expected",
                        crate::engine::error::shown(&r.token_id)
                    ),
                )
            })?;
            match self.store.revoke_token(id).await.map_err(store_failed)? {
                Some(tenant) => {
                    self.changed(&tenant);
                    Ok(pb::RevokeTokenResponse {})
                }
                None => Err(refused(Kind::NotFound, format!("token {id} not found"))),
            }
        })
        .await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let r = request.get_ref();
        audited(super::caller(&request), "ListTokens", &r.tenant, async {
            let tenant = tenant_name(&r.tenant)?;
            must_exist(
                self.store
                    .tenant(tenant)
                    .await
                    .map_err(store_failed)?
                    .is_some(),
                tenant,
            )?;
            let tokens = self.store.tokens(tenant).await.map_err(store_failed)?;
            Ok(pb::ListTokensResponse {
                tokens: tokens
                    .into_iter()
                    .map(|t| pb::Token {
                        token_id: t.id.to_string(),
                        tenant: t.tenant,
                        role: t.role.name().to_owned(),
                        description: t.description,
                        created_at: to_i64(t.created_at),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn set_quota(
        &self,
        request: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::SetQuotaResponse>, Status> {
        let r = request.get_ref();
        audited(super::caller(&request), "SetQuota", &r.tenant, async {
            let tenant = tenant_name(&r.tenant)?;
            let q = r.quota.unwrap_or_default();
            let quota = Quota {
                max_pools: q.max_pools,
                max_addresses: q.max_addresses,
                requests_per_second: q.requests_per_second,
            };
            let limit = u64::try_from(i64::MAX).unwrap_or(u64::MAX);
            if [
                quota.max_pools,
                quota.max_addresses,
                quota.requests_per_second,
            ]
            .iter()
            .any(|&n| n > limit)
            {
                return Err(refused(
                    Kind::Invalid,
                    format!("a limit above {limit}: use 0 for none"),
                ));
            }
            must_exist(
                self.store
                    .set_quota(tenant, &quota)
                    .await
                    .map_err(store_failed)?,
                tenant,
            )?;
            self.changed(tenant);
            Ok(pb::SetQuotaResponse {})
        })
        .await
    }

    async fn get_quota(
        &self,
        request: Request<pb::GetQuotaRequest>,
    ) -> Result<Response<pb::GetQuotaResponse>, Status> {
        let r = request.get_ref();
        audited(super::caller(&request), "GetQuota", &r.tenant, async {
            let tenant = tenant_name(&r.tenant)?;
            let Some(quota) = self.store.quota(tenant).await.map_err(store_failed)? else {
                return Err(status(&ipam::Error::TenantNotFound(tenant.to_owned())));
            };
            let driver = self.tenants.driver(tenant).await.map_err(|e| status(&e))?;
            let usage = ipam::usage(driver.as_ref()).await.map_err(|e| status(&e))?;
            Ok(pb::GetQuotaResponse {
                quota: Some(pb::Quota {
                    max_pools: quota.max_pools,
                    max_addresses: quota.max_addresses,
                    requests_per_second: quota.requests_per_second,
                }),
                pools: usage.pools,
                addresses: usage.addresses,
            })
        })
        .await
    }
}
