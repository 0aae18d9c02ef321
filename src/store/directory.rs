//! The directory of tenants: who they are, the tokens that act for them and their quotas. It
//! lives in the store beside the subnets, so that every replica sharing a store shares it.

use async_trait::async_trait;

use super::Error;
use crate::auth::{Role, SecretHash, TokenId};

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A token as stored: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub tenant: String,
    pub role: Role,
    pub hash: SecretHash,
    pub description: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A tenant's limits; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub max_pools: u64,
    pub max_addresses: u64,
    pub requests_per_second: u64,
}

/// What deleting a tenant did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantDeletion {
    /// The tenant, its tokens, its quota and (when forced) its pools are gone.
    Deleted,
    /// No such tenant.
    Missing,
    /// Refused: the tenant still holds this many pools (and was not forced).
    HoldsPools(u64),
}

/// The tenants, their tokens and quotas. A tenant's subnets are those stored under its name
/// and under `<name>+…` (the records of its remote pools), which no tenant name can spell.
#[async_trait]
pub trait Directory: Send + Sync {
    /// Adds a tenant; `false` if one of that name exists.
    async fn create_tenant(&self, name: &str, created_at: u64) -> Result<bool, Error>;

    /// Deletes a tenant with its tokens and quota, and when `force` its subnets and pools;
    /// without `force`, refuses while it holds a pool.
    async fn delete_tenant(&self, name: &str, force: bool) -> Result<TenantDeletion, Error>;

    /// Lists the tenants, by name.
    async fn tenants(&self) -> Result<Vec<TenantRecord>, Error>;

    /// Returns one tenant, if it exists.
    async fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, Error>;

    /// Stores a new token; `false` if its tenant does not exist.
    async fn create_token(&self, token: &TokenRecord) -> Result<bool, Error>;

    /// Deletes a token; returns the tenant it belonged to, `None` if there was no such token.
    async fn revoke_token(&self, id: TokenId) -> Result<Option<String>, Error>;

    /// Lists a tenant's tokens, by id.
    async fn tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>, Error>;

    /// Returns one token, if it exists.
    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, Error>;

    /// Sets a tenant's quota; `false` if the tenant does not exist.
    async fn set_quota(&self, tenant: &str, quota: &Quota) -> Result<bool, Error>;

    /// Returns a tenant's quota (all zeros when none was set); `None` if it does not exist.
    async fn quota(&self, tenant: &str) -> Result<Option<Quota>, Error>;

    /// Returns what a pool request id was remembered with, made since `since` (Unix seconds):
    /// (the request, the pool id).
    async fn pool_request(
        &self,
        tenant: &str,
        request_id: &str,
        since: u64,
    ) -> Result<Option<(String, String)>, Error>;

    /// Remembers that `request_id` (asking `request`) made `pool_id`, unless it is already
    /// remembered (made since `since`): then returns what it was remembered with, and nothing
    /// changes. Forgets ids made before `since`.
    async fn remember_pool_request(
        &self,
        tenant: &str,
        request_id: &str,
        (request, pool_id): (&str, &str),
        (now, since): (u64, u64),
    ) -> Result<Option<(String, String)>, Error>;
}

/// Tells whether `stored` (a tenant column's value) belongs to `tenant`: its own rows and its
/// remote pools' records (`<tenant>+remote:<space>`).
#[must_use]
pub fn belongs_to(stored: &str, tenant: &str) -> bool {
    stored == tenant
        || stored
            .strip_prefix(tenant)
            .is_some_and(|rest| rest.starts_with('+'))
}
