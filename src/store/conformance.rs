//! One conformance suite for every store backend: each check takes a fresh, empty store.

use ipnet::IpNet;

use super::{Error, Store, SubnetRecord};
use crate::engine::{AddressRequest, PoolId, Subnet};

fn net(s: &str) -> IpNet {
    s.parse().expect("valid prefix")
}

/// A subnet with pools and a few allocations, some serial, one released.
fn busy_subnet(cidr: &str, sub_pools: &[&str]) -> Subnet {
    let mut subnet = Subnet::new(net(cidr));
    let mut ids = Vec::new();
    for sub in sub_pools {
        let sub = (!sub.is_empty()).then(|| net(sub));
        subnet.add_pool(sub).expect("sub-pool inside");
        ids.push(PoolId::new("local", net(cidr), sub).expect("valid id"));
    }
    let serial = AddressRequest {
        serial: true,
        ..AddressRequest::default()
    };
    for id in &ids {
        for _ in 0..5 {
            subnet.allocate(id, &serial).expect("room");
        }
    }
    let first = subnet
        .allocate(&ids[0], &AddressRequest::default())
        .expect("room");
    subnet.release(&ids[0], first).expect("releasable");
    subnet
}

pub async fn round_trips_subnets<S: Store>(store: &S) {
    let a = busy_subnet("10.1.0.0/16", &["", "10.1.2.0/24", "10.1.2.0/25"]);
    let b = busy_subnet("fd00:1::/64", &["fd00:1::/120"]);
    store
        .create_subnet("t1", "local", &a)
        .await
        .expect("create");
    store
        .create_subnet("t1", "global", &b)
        .await
        .expect("create");
    let mut loaded = store.load("t1").await.expect("load");
    loaded.sort_by_key(|r| r.space.clone());
    assert_eq!(
        loaded,
        vec![
            SubnetRecord {
                space: "global".into(),
                subnet: b.clone(),
                version: 1
            },
            SubnetRecord {
                space: "local".into(),
                subnet: a.clone(),
                version: 1
            },
        ]
    );
    let one = store
        .load_subnet("t1", "global", b.net())
        .await
        .expect("load one");
    assert_eq!(one.map(|r| r.subnet), Some(b));
    assert_eq!(
        store
            .load_subnet("t1", "local", net("10.9.0.0/16"))
            .await
            .ok(),
        Some(None)
    );
}

pub async fn refuses_duplicates_and_stale_versions<S: Store>(store: &S) {
    let mut s = busy_subnet("10.2.0.0/24", &[""]);
    store
        .create_subnet("t1", "local", &s)
        .await
        .expect("create");
    assert!(matches!(
        store.create_subnet("t1", "local", &s).await,
        Err(Error::Conflict { .. })
    ));
    let id = PoolId::new("local", s.net(), None).expect("id");
    s.allocate(&id, &AddressRequest::default()).expect("room");
    store.update_subnet("t1", "local", &s, 2).await.expect("v2");
    assert!(
        matches!(
            store.update_subnet("t1", "local", &s, 2).await,
            Err(Error::Conflict { .. })
        ),
        "a second writer of version 2 loses"
    );
    assert!(matches!(
        store
            .update_subnet("t1", "local", &busy_subnet("10.3.0.0/24", &[""]), 2)
            .await,
        Err(Error::NotFound { .. })
    ));
    let loaded = store.load("t1").await.expect("load");
    assert_eq!(loaded[0].version, 2);
    assert_eq!(loaded[0].subnet, s);
    assert!(matches!(
        store.delete_subnet("t1", "local", s.net(), 1).await,
        Err(Error::Conflict { .. })
    ));
    store
        .delete_subnet("t1", "local", s.net(), 2)
        .await
        .expect("delete");
    assert!(store.load("t1").await.expect("load").is_empty());
}

pub async fn keeps_tenants_apart<S: Store>(store: &S) {
    let a = busy_subnet("10.4.0.0/24", &[""]);
    store
        .create_subnet("t1", "local", &a)
        .await
        .expect("create");
    store
        .create_subnet("t2", "local", &a)
        .await
        .expect("the same subnet in another tenant");
    store
        .delete_subnet("t2", "local", a.net(), 1)
        .await
        .expect("delete");
    assert_eq!(store.load("t1").await.expect("load").len(), 1);
    assert!(store.load("t2").await.expect("load").is_empty());
}

/// Runs every check, each on a fresh store from `fresh`.
macro_rules! conformance_tests {
    ($fresh:expr) => {
        #[tokio::test]
        async fn round_trips_subnets() {
            crate::store::conformance::round_trips_subnets(&$fresh).await;
        }

        #[tokio::test]
        async fn refuses_duplicates_and_stale_versions() {
            crate::store::conformance::refuses_duplicates_and_stale_versions(&$fresh).await;
        }

        #[tokio::test]
        async fn keeps_tenants_apart() {
            crate::store::conformance::keeps_tenants_apart(&$fresh).await;
        }
    };
}
pub(crate) use conformance_tests;

mod memory {
    super::conformance_tests!(crate::store::MemoryStore::new());
}

mod sqlite {
    super::conformance_tests!(
        crate::store::SqliteStore::connect("sqlite::memory:")
            .await
            .expect("in-memory sqlite")
    );

    use crate::store::Store;

    /// A file database keeps everything across a reopen (what a restart does).
    #[tokio::test]
    async fn a_reopened_file_has_everything() {
        let dir = std::env::temp_dir().join(format!("allot-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite://{}", dir.join("reopen.db").display());
        let s = super::busy_subnet("10.5.0.0/16", &["", "10.5.1.0/24"]);
        {
            let store = crate::store::SqliteStore::connect(&url)
                .await
                .expect("open");
            store
                .create_subnet("t1", "local", &s)
                .await
                .expect("create");
        }
        let store = crate::store::SqliteStore::connect(&url)
            .await
            .expect("reopen");
        let loaded = store.load("t1").await.expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].subnet, s);
        std::fs::remove_dir_all(&dir).ok();
    }
}
