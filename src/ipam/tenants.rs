//! One driver per tenant: each tenant's pools are served by a driver of its own (a [`Router`]
//! over a built-in driver loaded with that tenant's subnets, and whatever the deployment routes
//! elsewhere), so no code path can mix two tenants' pools. The API finds the caller's tenant's
//! driver here, by name.
//!
//! Drivers are built at startup for every tenant in the directory, and on first use for a
//! tenant created later (here or by another replica). A tenant deleted — here, or by another
//! replica, as the store announces — is forgotten: its driver is dropped with its cache.
//!
//! [`Router`]: super::Router

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use super::{Error, Ipam};
use crate::store::{Event, Follower, Store};

/// What builds a tenant's driver.
pub type Build = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Arc<dyn Ipam>, Error>> + Send>>
        + Send
        + Sync,
>;

type Slot = Arc<OnceCell<Arc<dyn Ipam>>>;

/// How many tenants' drivers are built at once at startup.
const LOADERS: usize = 8;

/// The drivers of every tenant.
pub struct Tenants {
    store: Arc<dyn Store>,
    build: Build,
    // A slot per tenant asked for; filled once its driver is built. Removed when the tenant
    // is deleted, or when building its driver failed (the next call tries again).
    drivers: Mutex<HashMap<String, Slot>>,
    // The task forgetting tenants other replicas delete, if the store reports them.
    watcher: Follower,
}

impl Tenants {
    /// Builds the drivers of every tenant in the directory with `build`, and starts following
    /// the store's announcements to forget deleted tenants.
    ///
    /// # Errors
    /// The store cannot be read, or a tenant's driver cannot be built.
    pub async fn load(store: Arc<dyn Store>, build: Build) -> Result<Arc<Self>, Error> {
        let events = store.subscribe(crate::store::Interest::Directory).await;
        let tenants = Arc::new(Self {
            store,
            build,
            drivers: Mutex::default(),
            watcher: Follower::default(),
        });
        // A few tenants at a time: each is a few round trips to the store, which a thousand
        // tenants would otherwise wait for one after the other.
        let names: Vec<String> = tenants
            .store
            .tenants()
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        let queue = Arc::new(Mutex::new(names));
        let mut loaders = tokio::task::JoinSet::new();
        for _ in 0..LOADERS {
            let (tenants, queue) = (Arc::clone(&tenants), Arc::clone(&queue));
            loaders.spawn(async move {
                loop {
                    let next = queue.lock().unwrap_or_else(PoisonError::into_inner).pop();
                    let Some(name) = next else {
                        return Ok::<_, Error>(());
                    };
                    tenants.driver(&name).await?;
                }
            });
        }
        while let Some(loaded) = loaders.join_next().await {
            loaded.map_err(|e| Error::Internal(format!("loading a tenant: {e}")))??;
        }
        // Forget the tenants other replicas delete, as the store announces them.
        if let Some(events) = events {
            tenants
                .watcher
                .start(&tenants, events, |tenants, event| async move {
                    let only = match &event {
                        Event::Directory { tenant } => Some(tenant.as_str()),
                        Event::Resync => None,
                        Event::Changed { .. } => return,
                    };
                    if let Err(e) = tenants.prune(only).await {
                        // The next announcement or resync tries again.
                        tracing::warn!(error = %e, "cannot read the directory of tenants");
                    }
                });
        }
        Ok(tenants)
    }

    /// The store the tenants' drivers and the directory live in.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // Each change is one insert or remove: a poisoned map is still consistent.
        self.drivers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns `tenant`'s driver, building it if this is the first call for it.
    ///
    /// # Errors
    /// `TenantNotFound` when the directory has no such tenant; a store error.
    pub async fn driver(&self, tenant: &str) -> Result<Arc<dyn Ipam>, Error> {
        let slot = {
            let mut slots = self.slots();
            if let Some(driver) = slots.get(tenant).and_then(|s| s.get()) {
                return Ok(Arc::clone(driver));
            }
            Arc::clone(slots.entry(tenant.to_owned()).or_default())
        };
        let built = slot
            .get_or_try_init(|| async {
                if self.store.tenant(tenant).await?.is_none() {
                    return Err(Error::TenantNotFound(tenant.to_owned()));
                }
                (self.build)(tenant.to_owned()).await
            })
            .await;
        match built {
            Ok(driver) => Ok(Arc::clone(driver)),
            Err(e) => {
                // Not kept: a tenant created later, or a store back up, is tried again.
                self.slots()
                    .retain(|name, s| name != tenant || !Arc::ptr_eq(s, &slot));
                Err(e)
            }
        }
    }

    /// Drops `tenant`'s driver, after the tenant was deleted.
    pub fn forget(&self, tenant: &str) {
        self.slots().remove(tenant);
    }

    /// Drops the drivers of tenants the directory no longer has, after events may have been
    /// missed or when one was deleted elsewhere.
    async fn prune(&self, only: Option<&str>) -> Result<(), Error> {
        let loaded: Vec<String> = match only {
            Some(tenant) => vec![tenant.to_owned()],
            None => self.slots().keys().cloned().collect(),
        };
        for tenant in loaded {
            if self.store.tenant(&tenant).await?.is_none() {
                tracing::info!(tenant, "tenant deleted: its driver is dropped");
                self.forget(&tenant);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::{AddressRequest, PoolRequest};
    use crate::ipam::{Builtin, Kind, PoolPage};
    use crate::store::{MemoryStore, TenantDeletion};

    fn builtin(store: Arc<dyn Store>) -> Build {
        Arc::new(move |tenant: String| {
            let store = Arc::clone(&store);
            Box::pin(async move {
                let driver: Arc<dyn Ipam> =
                    Arc::new(Builtin::load(store, &tenant, BTreeMap::new()).await?);
                Ok(driver)
            })
        })
    }

    #[tokio::test]
    async fn tenants_have_drivers_of_their_own() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store.create_tenant("acme", 1).await.unwrap();
        let tenants = Tenants::load(Arc::clone(&store), builtin(Arc::clone(&store)))
            .await
            .unwrap();
        let missing = tenants.driver("beta").await.err().map(|e| e.kind());
        assert_eq!(missing, Some(Kind::NotFound));
        // Created after the start: found on first use.
        store.create_tenant("beta", 2).await.unwrap();
        let req = PoolRequest::parse("10.0.0.0/24", "", false).unwrap();
        let mut addresses = Vec::new();
        for tenant in ["acme", "beta"] {
            let driver = tenants.driver(tenant).await.unwrap();
            let id = driver.request_pool("local", &req).await.unwrap();
            let address = driver
                .request_address(&id, &AddressRequest::default())
                .await
                .unwrap();
            addresses.push((id, address));
        }
        // The same subnet and the same first address, independently.
        assert_eq!(addresses[0], addresses[1]);
        let acme = tenants.driver("acme").await.unwrap();
        assert_eq!(
            acme.list_pools(None, &PoolPage::ALL).await.unwrap().len(),
            1
        );
        // Deleted: forgotten, and refused as missing.
        assert_eq!(
            store.delete_tenant("acme", true).await.unwrap(),
            TenantDeletion::Deleted
        );
        tenants.forget("acme");
        let gone = tenants.driver("acme").await.err().map(|e| e.kind());
        assert_eq!(gone, Some(Kind::NotFound));
        let beta = tenants.driver("beta").await.unwrap();
        assert_eq!(
            beta.list_pools(None, &PoolPage::ALL).await.unwrap().len(),
            1
        );
    }
}
