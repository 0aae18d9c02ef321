//! The directory ([`Directory`](super::Directory)) on SQL: the same statements on SQLite and
//! PostgreSQL (both take `$n` parameters, `RETURNING` and `ON CONFLICT`), written once as a
//! macro over the store type. A store provides `pool`, `bounded` (its time limit on an
//! operation), `announce` (tells the other replicas, in the transaction, that a tenant's
//! entries changed) and `announce_deleted` (that its subnets are being deleted).

use super::directory::{Quota, TokenRecord};
use super::{Error, from_sql_version, to_sql_version};

/// Whether a stored tenant column belongs to tenant `$1`: its rows and its remote pools'
/// records (`<tenant>+…`), as [`belongs_to`](super::directory::belongs_to) says.
macro_rules! belongs {
    () => {
        "(tenant = $1 OR substr(tenant, 1, length($1) + 1) = $1 || '+')"
    };
}

/// A token row: id, tenant, role, secret hash, description, created at.
pub(super) type TokenRow = (String, String, String, Vec<u8>, String, i64);

pub(super) fn token_record(
    (id, tenant, role, hash, description, created_at): TokenRow,
) -> Result<TokenRecord, Error> {
    let corrupt = |what: &str| Error::Internal(format!("stored token {id:?}: bad {what}").into());
    Ok(TokenRecord {
        id: id.parse().map_err(|_| corrupt("id"))?,
        role: role.parse().map_err(|_| corrupt("role"))?,
        hash: crate::auth::SecretHash(hash.try_into().map_err(|_| corrupt("hash"))?),
        created_at: from_sql_version(created_at).map_err(|_| corrupt("time"))?,
        tenant,
        description,
    })
}

pub(super) fn quota_row(quota: &Quota) -> Result<(i64, i64, i64), Error> {
    Ok((
        to_sql_version(quota.max_pools)?,
        to_sql_version(quota.max_addresses)?,
        to_sql_version(quota.requests_per_second)?,
    ))
}

pub(super) fn quota_record((pools, addresses, rate): (i64, i64, i64)) -> Result<Quota, Error> {
    Ok(Quota {
        max_pools: from_sql_version(pools)?,
        max_addresses: from_sql_version(addresses)?,
        requests_per_second: from_sql_version(rate)?,
    })
}

/// Implements [`Directory`](super::Directory) for a SQL store.
macro_rules! sql_directory {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Directory for $store {
            async fn create_tenant(&self, name: &str, created_at: u64) -> Result<bool, Error> {
                self.bounded(async {
                    let mut tx = self.pool.begin().await.map_err(dir_err)?;
                    let created = sqlx::query(
                        "INSERT INTO tenants (name, created_at) VALUES ($1, $2) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(name)
                    .bind($crate::store::to_sql_version(created_at)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(dir_err)?
                    .rows_affected()
                        == 1;
                    Self::announce(&mut tx, name).await.map_err(dir_err)?;
                    tx.commit().await.map_err(dir_err)?;
                    Ok(created)
                })
                .await
            }

            async fn delete_tenant(
                &self,
                name: &str,
                force: bool,
            ) -> Result<$crate::store::TenantDeletion, Error> {
                use $crate::store::TenantDeletion;
                self.bounded(async {
                    let mut tx = self.pool.begin().await.map_err(dir_err)?;
                    let exists: Option<i64> =
                        sqlx::query_scalar("SELECT created_at FROM tenants WHERE name = $1")
                            .bind(name)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(dir_err)?;
                    if exists.is_none() {
                        return Ok(TenantDeletion::Missing);
                    }
                    let pools: i64 =
                        sqlx::query_scalar(concat!("SELECT count(*) FROM pools WHERE ", $crate::store::sql_directory::belongs!()))
                            .bind(name)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(dir_err)?;
                    if pools > 0 && !force {
                        return Ok(TenantDeletion::HoldsPools(
                            $crate::store::from_sql_version(pools)?,
                        ));
                    }
                    // Other replicas drop the subnets from their caches, as for any deletion.
                    Self::announce_deleted(&mut tx, name).await.map_err(dir_err)?;
                    // A subnet created again continues its versions (see `retired`).
                    for statement in [
                        concat!(
                            "INSERT INTO retired (tenant, space, subnet, version) \
                             SELECT tenant, space, subnet, version FROM subnets WHERE ",
                            $crate::store::sql_directory::belongs!(),
                            " ON CONFLICT (tenant, space, subnet) \
                             DO UPDATE SET version = excluded.version"
                        ),
                        concat!("DELETE FROM subnets WHERE ", $crate::store::sql_directory::belongs!()),
                        concat!("DELETE FROM remote_pools WHERE ", $crate::store::sql_directory::belongs!()),
                        "DELETE FROM pool_requests WHERE tenant = $1",
                    ] {
                        sqlx::query(statement)
                            .bind(name)
                            .execute(&mut *tx)
                            .await
                            .map_err(dir_err)?;
                    }
                    // Its tokens and quota go with it (ON DELETE CASCADE).
                    sqlx::query("DELETE FROM tenants WHERE name = $1")
                        .bind(name)
                        .execute(&mut *tx)
                        .await
                        .map_err(dir_err)?;
                    Self::announce(&mut tx, name).await.map_err(dir_err)?;
                    tx.commit().await.map_err(dir_err)?;
                    Ok(TenantDeletion::Deleted)
                })
                .await
            }

            async fn tenants(&self) -> Result<Vec<$crate::store::TenantRecord>, Error> {
                self.bounded(async {
                    let rows: Vec<(String, i64)> =
                        sqlx::query_as("SELECT name, created_at FROM tenants ORDER BY name")
                            .fetch_all(&self.pool)
                            .await
                            .map_err(dir_err)?;
                    rows.into_iter()
                        .map(|(name, created_at)| {
                            Ok($crate::store::TenantRecord {
                                name,
                                created_at: $crate::store::from_sql_version(created_at)?,
                            })
                        })
                        .collect()
                })
                .await
            }

            async fn tenant(
                &self,
                name: &str,
            ) -> Result<Option<$crate::store::TenantRecord>, Error> {
                self.bounded(async {
                    let created_at: Option<i64> =
                        sqlx::query_scalar("SELECT created_at FROM tenants WHERE name = $1")
                            .bind(name)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(dir_err)?;
                    created_at
                        .map(|created_at| {
                            Ok($crate::store::TenantRecord {
                                name: name.to_owned(),
                                created_at: $crate::store::from_sql_version(created_at)?,
                            })
                        })
                        .transpose()
                })
                .await
            }

            async fn create_token(&self, token: &$crate::store::TokenRecord) -> Result<bool, Error> {
                self.bounded(async {
                    let mut tx = self.pool.begin().await.map_err(dir_err)?;
                    let created = sqlx::query(
                        "INSERT INTO tokens \
                             (id, tenant, role, secret_hash, description, created_at) \
                         SELECT $1, name, $3, $4, $5, $6 FROM tenants WHERE name = $2",
                    )
                    .bind(token.id.to_string())
                    .bind(&token.tenant)
                    .bind(token.role.name())
                    .bind(token.hash.0.to_vec())
                    .bind(&token.description)
                    .bind($crate::store::to_sql_version(token.created_at)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(dir_err)?
                    .rows_affected()
                        == 1;
                    Self::announce(&mut tx, &token.tenant).await.map_err(dir_err)?;
                    tx.commit().await.map_err(dir_err)?;
                    Ok(created)
                })
                .await
            }

            async fn revoke_token(
                &self,
                id: $crate::auth::TokenId,
            ) -> Result<Option<String>, Error> {
                self.bounded(async {
                    let mut tx = self.pool.begin().await.map_err(dir_err)?;
                    let tenant: Option<String> =
                        sqlx::query_scalar("DELETE FROM tokens WHERE id = $1 RETURNING tenant")
                            .bind(id.to_string())
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(dir_err)?;
                    if let Some(tenant) = &tenant {
                        Self::announce(&mut tx, tenant).await.map_err(dir_err)?;
                    }
                    tx.commit().await.map_err(dir_err)?;
                    Ok(tenant)
                })
                .await
            }

            async fn tokens(&self, tenant: &str) -> Result<Vec<$crate::store::TokenRecord>, Error> {
                self.bounded(async {
                    let rows: Vec<$crate::store::sql_directory::TokenRow> = sqlx::query_as(
                        "SELECT id, tenant, role, secret_hash, description, created_at \
                         FROM tokens WHERE tenant = $1 ORDER BY id",
                    )
                    .bind(tenant)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(dir_err)?;
                    rows.into_iter()
                        .map($crate::store::sql_directory::token_record)
                        .collect()
                })
                .await
            }

            async fn token(
                &self,
                id: $crate::auth::TokenId,
            ) -> Result<Option<$crate::store::TokenRecord>, Error> {
                self.bounded(async {
                    let row: Option<$crate::store::sql_directory::TokenRow> = sqlx::query_as(
                        "SELECT id, tenant, role, secret_hash, description, created_at \
                         FROM tokens WHERE id = $1",
                    )
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(dir_err)?;
                    row.map($crate::store::sql_directory::token_record)
                        .transpose()
                })
                .await
            }

            async fn set_quota(
                &self,
                tenant: &str,
                quota: &$crate::store::Quota,
            ) -> Result<bool, Error> {
                let (pools, addresses, rate) = $crate::store::sql_directory::quota_row(quota)?;
                self.bounded(async {
                    let mut tx = self.pool.begin().await.map_err(dir_err)?;
                    let set = sqlx::query(
                        "INSERT INTO quotas \
                             (tenant, max_pools, max_addresses, requests_per_second) \
                         SELECT name, $2, $3, $4 FROM tenants WHERE name = $1 \
                         ON CONFLICT (tenant) DO UPDATE SET max_pools = excluded.max_pools, \
                             max_addresses = excluded.max_addresses, \
                             requests_per_second = excluded.requests_per_second",
                    )
                    .bind(tenant)
                    .bind(pools)
                    .bind(addresses)
                    .bind(rate)
                    .execute(&mut *tx)
                    .await
                    .map_err(dir_err)?
                    .rows_affected()
                        == 1;
                    Self::announce(&mut tx, tenant).await.map_err(dir_err)?;
                    tx.commit().await.map_err(dir_err)?;
                    Ok(set)
                })
                .await
            }

            async fn pool_request(
                &self,
                tenant: &str,
                request_id: &str,
                since: u64,
            ) -> Result<Option<(String, String)>, Error> {
                self.bounded(async {
                    sqlx::query_as(
                        "SELECT request, pool_id FROM pool_requests \
                         WHERE tenant = $1 AND request_id = $2 AND created_at >= $3",
                    )
                    .bind(tenant)
                    .bind(request_id)
                    .bind($crate::store::to_sql_version(since)?)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(dir_err)
                })
                .await
            }

            async fn remember_pool_request(
                &self,
                tenant: &str,
                request_id: &str,
                (request, pool_id): (&str, &str),
                (now, since): (u64, u64),
            ) -> Result<Option<(String, String)>, Error> {
                self.bounded(async {
                    let mut tx = self.pool.begin().await.map_err(dir_err)?;
                    let since = $crate::store::to_sql_version(since)?;
                    sqlx::query("DELETE FROM pool_requests WHERE created_at < $1")
                        .bind(since)
                        .execute(&mut *tx)
                        .await
                        .map_err(dir_err)?;
                    let inserted = sqlx::query(
                        "INSERT INTO pool_requests \
                             (tenant, request_id, request, pool_id, created_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (tenant, request_id) DO NOTHING",
                    )
                    .bind(tenant)
                    .bind(request_id)
                    .bind(request)
                    .bind(pool_id)
                    .bind($crate::store::to_sql_version(now)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(dir_err)?
                    .rows_affected()
                        == 1;
                    let earlier: Option<(String, String)> = if inserted {
                        None
                    } else {
                        sqlx::query_as(
                            "SELECT request, pool_id FROM pool_requests \
                             WHERE tenant = $1 AND request_id = $2",
                        )
                        .bind(tenant)
                        .bind(request_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(dir_err)?
                    };
                    tx.commit().await.map_err(dir_err)?;
                    Ok(earlier)
                })
                .await
            }

            async fn quota(&self, tenant: &str) -> Result<Option<$crate::store::Quota>, Error> {
                self.bounded(async {
                    let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = sqlx::query_as(
                        "SELECT q.max_pools, q.max_addresses, q.requests_per_second \
                         FROM tenants t LEFT JOIN quotas q ON q.tenant = t.name \
                         WHERE t.name = $1",
                    )
                    .bind(tenant)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(dir_err)?;
                    row.map(|(p, a, r)| {
                        $crate::store::sql_directory::quota_record((
                            p.unwrap_or(0),
                            a.unwrap_or(0),
                            r.unwrap_or(0),
                        ))
                    })
                    .transpose()
                })
                .await
            }
        }
    };
}

pub(super) use {belongs, sql_directory};
