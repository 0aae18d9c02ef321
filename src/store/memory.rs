//! An in-memory store: the same contract as the SQL backends, for tests and `memory:`.
//! It keeps the encoded form, so it exercises the same encode/decode path they do.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use ipnet::IpNet;

use super::directory::{Directory, Quota, TenantDeletion, TenantRecord, TokenRecord, belongs_to};
use super::{
    Change, Error, OwnerRow, Store, SubnetRecord, decode_subnet, owner_rows_of, pool_key,
    with_owner_rows,
};
use crate::auth::TokenId;
use crate::engine::Subnet;

type Key = (String, String, IpNet);

/// A stored subnet: version, encoded state, pool keys, owner rows by address.
type Row = (u64, Vec<u8>, Vec<String>, BTreeMap<String, OwnerRow>);

/// Subnets in a map, lost when the process exits.
#[derive(Debug)]
pub struct MemoryStore {
    rows: Mutex<BTreeMap<Key, Row>>,
    // The last version of each deleted subnet.
    retired: Mutex<BTreeMap<Key, u64>>,
    // (tenant, pool id) → remote pool id.
    remote: Mutex<BTreeMap<(String, String), String>>,
    directory: Mutex<Tenants>,
}

/// The directory, as the SQL stores' three tables.
#[derive(Debug, Default)]
struct Tenants {
    tenants: BTreeMap<String, u64>,
    tokens: BTreeMap<TokenId, TokenRecord>,
    quotas: BTreeMap<String, Quota>,
    // (tenant, request id) → (request, pool id, made at).
    pool_requests: BTreeMap<(String, String), (String, String, u64)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// Returns a store holding only the tenant `default`, as a new database does.
    #[must_use]
    pub fn new() -> Self {
        let mut directory = Tenants::default();
        directory
            .tenants
            .insert(super::DEFAULT_TENANT.to_owned(), super::unix_now());
        Self {
            rows: Mutex::default(),
            retired: Mutex::default(),
            remote: Mutex::default(),
            directory: Mutex::new(directory),
        }
    }

    fn directory(&self) -> std::sync::MutexGuard<'_, Tenants> {
        // Each change is a few inserts or removes that cannot panic half-way.
        self.directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), String>> {
        // One insert or remove per change: a poisoned map is still consistent.
        self.remote.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Row>> {
        // A panic while holding the lock cannot leave a row half-written (each write is one
        // insert or remove), so a poisoned map is still consistent.
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn key(tenant: &str, space: &str, net: IpNet) -> Key {
    (tenant.to_owned(), space.to_owned(), net)
}

fn row(subnet: &Subnet, version: u64) -> Row {
    (
        version,
        subnet.addrs().encode(),
        subnet.pools().map(pool_key).collect(),
        owner_rows_of(subnet).into_iter().collect(),
    )
}

fn record(
    space: &str,
    subnet: IpNet,
    (version, state, pools, owners): &Row,
) -> Result<SubnetRecord, Error> {
    let decoded = decode_subnet(space, &subnet.to_string(), state, pools)?;
    Ok(SubnetRecord {
        space: space.to_owned(),
        subnet: with_owner_rows(space, decoded, owners.clone().into_iter().collect())?,
        version: *version,
    })
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, tenant: &str) -> Result<Vec<SubnetRecord>, Error> {
        self.rows()
            .iter()
            .filter(|((t, _, _), _)| t == tenant)
            .map(|((_, space, subnet), row)| record(space, *subnet, row))
            .collect()
    }

    async fn load_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
    ) -> Result<Option<SubnetRecord>, Error> {
        let rows = self.rows();
        let k = key(tenant, space, net);
        rows.get(&k).map(|row| record(space, k.2, row)).transpose()
    }

    async fn version(&self, tenant: &str, space: &str, net: IpNet) -> Result<Option<u64>, Error> {
        Ok(self.rows().get(&key(tenant, space, net)).map(|row| row.0))
    }

    async fn create_subnet(
        &self,
        tenant: &str,
        space: &str,
        subnet: &Subnet,
    ) -> Result<u64, Error> {
        let mut rows = self.rows();
        let k = key(tenant, space, subnet.net());
        // The stored subnets of a space are disjoint: only the last at or before the new one
        // can hold its first address, and only the first after it can start inside it.
        let net = subnet.net();
        let lowest = IpNet::V4(ipnet::Ipv4Net::default());
        let before = rows
            .range(key(tenant, space, lowest)..=k.clone())
            .next_back();
        let after = rows.range(k.clone()..).next();
        let overlap = [before, after]
            .into_iter()
            .flatten()
            .map(|((t, s, stored), _)| (t, s, *stored))
            .find(|(t, s, n)| {
                *t == tenant && *s == space && (n.contains(&net.network()) || net.contains(n))
            });
        if let Some((_, _, existing)) = overlap {
            return Err(Error::Conflict {
                space: space.to_owned(),
                subnet: existing.to_string(),
            });
        }
        let retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        let version = retired.get(&k).map_or(1, |last| last + 1);
        rows.insert(k, row(subnet, version));
        Ok(version)
    }

    async fn update_subnet(
        &self,
        tenant: &str,
        space: &str,
        change: &Change<'_>,
        version: u64,
    ) -> Result<(), Error> {
        let subnet = change.after;
        let mut rows = self.rows();
        let k = key(tenant, space, subnet.net());
        match rows.get_mut(&k) {
            None => Err(Error::NotFound {
                space: space.to_owned(),
                subnet: k.2.to_string(),
            }),
            Some(stored) if stored.0 + 1 != version => Err(Error::Conflict {
                space: space.to_owned(),
                subnet: k.2.to_string(),
            }),
            Some(stored) => {
                // The owner rows the change wrote, as the SQL stores apply them: the others
                // stay as they are (no cost per owner on each change).
                let mut owners = std::mem::take(&mut stored.3);
                for (address, row) in change.owner_rows() {
                    match row {
                        Some(row) => owners.insert(address, row),
                        None => owners.remove(&address),
                    };
                }
                *stored = (
                    version,
                    subnet.addrs().encode(),
                    subnet.pools().map(pool_key).collect(),
                    owners,
                );
                Ok(())
            }
        }
    }

    async fn delete_subnet(
        &self,
        tenant: &str,
        space: &str,
        net: IpNet,
        version: u64,
    ) -> Result<(), Error> {
        let mut rows = self.rows();
        let k = key(tenant, space, net);
        match rows.get(&k) {
            None => Err(Error::NotFound {
                space: space.to_owned(),
                subnet: k.2.to_string(),
            }),
            Some(stored) if stored.0 != version => Err(Error::Conflict {
                space: space.to_owned(),
                subnet: k.2.to_string(),
            }),
            Some(_) => {
                rows.remove(&k);
                self.retired
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(k, version);
                Ok(())
            }
        }
    }

    async fn put_remote_pool(
        &self,
        tenant: &str,
        pool_id: &str,
        remote_id: &str,
    ) -> Result<(), Error> {
        self.remote().insert(
            (tenant.to_owned(), pool_id.to_owned()),
            remote_id.to_owned(),
        );
        Ok(())
    }

    async fn delete_remote_pool(&self, tenant: &str, pool_id: &str) -> Result<(), Error> {
        self.remote()
            .remove(&(tenant.to_owned(), pool_id.to_owned()));
        Ok(())
    }

    async fn remote_pools(&self, tenant: &str) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .remote()
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, id), remote)| (id.clone(), remote.clone()))
            .collect())
    }

    async fn versions(&self, tenant: &str) -> Result<Vec<(String, IpNet, u64)>, Error> {
        let mut out = Vec::new();
        for ((t, space, net), (version, ..)) in self.rows().iter() {
            if t == tenant {
                out.push((space.clone(), *net, *version));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Directory for MemoryStore {
    async fn create_tenant(&self, name: &str, created_at: u64) -> Result<bool, Error> {
        let mut dir = self.directory();
        if dir.tenants.contains_key(name) {
            return Ok(false);
        }
        dir.tenants.insert(name.to_owned(), created_at);
        Ok(true)
    }

    async fn delete_tenant(&self, name: &str, force: bool) -> Result<TenantDeletion, Error> {
        let mut dir = self.directory();
        if !dir.tenants.contains_key(name) {
            return Ok(TenantDeletion::Missing);
        }
        let mut rows = self.rows();
        let pools: usize = rows
            .iter()
            .filter(|((t, _, _), _)| belongs_to(t, name))
            .map(|(_, (_, _, pools, _))| pools.len())
            .sum();
        if pools > 0 && !force {
            return Ok(TenantDeletion::HoldsPools(pools as u64));
        }
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        rows.retain(|k, (version, ..)| {
            let keep = !belongs_to(&k.0, name);
            if !keep {
                retired.insert(k.clone(), *version);
            }
            keep
        });
        self.remote().retain(|(t, _), _| !belongs_to(t, name));
        dir.tenants.remove(name);
        dir.tokens.retain(|_, t| t.tenant != name);
        dir.quotas.remove(name);
        dir.pool_requests.retain(|(t, _), _| t != name);
        Ok(TenantDeletion::Deleted)
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>, Error> {
        Ok(self
            .directory()
            .tenants
            .iter()
            .map(|(name, created_at)| TenantRecord {
                name: name.clone(),
                created_at: *created_at,
            })
            .collect())
    }

    async fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, Error> {
        Ok(self
            .directory()
            .tenants
            .get(name)
            .map(|created_at| TenantRecord {
                name: name.to_owned(),
                created_at: *created_at,
            }))
    }

    async fn create_token(&self, token: &TokenRecord) -> Result<bool, Error> {
        let mut dir = self.directory();
        if !dir.tenants.contains_key(&token.tenant) {
            return Ok(false);
        }
        if dir.tokens.contains_key(&token.id) {
            return Err(Error::Internal("token id already stored".into()));
        }
        dir.tokens.insert(token.id, token.clone());
        Ok(true)
    }

    async fn revoke_token(&self, id: TokenId) -> Result<Option<String>, Error> {
        Ok(self.directory().tokens.remove(&id).map(|t| t.tenant))
    }

    async fn tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>, Error> {
        Ok(self
            .directory()
            .tokens
            .values()
            .filter(|t| t.tenant == tenant)
            .cloned()
            .collect())
    }

    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, Error> {
        Ok(self.directory().tokens.get(&id).cloned())
    }

    async fn set_quota(&self, tenant: &str, quota: &Quota) -> Result<bool, Error> {
        let mut dir = self.directory();
        if !dir.tenants.contains_key(tenant) {
            return Ok(false);
        }
        dir.quotas.insert(tenant.to_owned(), *quota);
        Ok(true)
    }

    async fn pool_request(
        &self,
        tenant: &str,
        request_id: &str,
        since: u64,
    ) -> Result<Option<(String, String)>, Error> {
        let dir = self.directory();
        Ok(dir
            .pool_requests
            .get(&(tenant.to_owned(), request_id.to_owned()))
            .filter(|(_, _, at)| *at >= since)
            .map(|(r, p, _)| (r.clone(), p.clone())))
    }

    async fn remember_pool_request(
        &self,
        tenant: &str,
        request_id: &str,
        (request, pool_id): (&str, &str),
        (now, since): (u64, u64),
    ) -> Result<Option<(String, String)>, Error> {
        let mut dir = self.directory();
        dir.pool_requests.retain(|_, (_, _, at)| *at >= since);
        let key = (tenant.to_owned(), request_id.to_owned());
        if let Some((r, p, _)) = dir.pool_requests.get(&key) {
            return Ok(Some((r.clone(), p.clone())));
        }
        dir.pool_requests
            .insert(key, (request.to_owned(), pool_id.to_owned(), now));
        Ok(None)
    }

    async fn quota(&self, tenant: &str) -> Result<Option<Quota>, Error> {
        let dir = self.directory();
        Ok(dir
            .tenants
            .contains_key(tenant)
            .then(|| dir.quotas.get(tenant).copied().unwrap_or_default()))
    }
}
