//! One conformance suite for every store backend: each check takes a fresh, empty store.

use ipnet::IpNet;

use std::net::IpAddr;

use super::{Change, Error, Store, SubnetRecord};
use crate::engine::{AddressRequest, PoolId, Subnet};

fn net(s: &str) -> IpNet {
    s.parse().expect("valid prefix")
}

/// A subnet with pools and a few allocations, some serial, one released.
/// A subnet of one pool, stored for `tenant` as created, and the same after one allocation:
/// (before, after, the block the allocation changed), for a test to write as version 2.
pub(crate) async fn stored_then_allocated<S: Store + ?Sized>(
    store: &S,
    tenant: &str,
    cidr: IpNet,
) -> (Subnet, Subnet, Vec<u128>) {
    let before = Subnet::with_pools(cidr, [None]).expect("pool");
    store
        .create_subnet(tenant, "local", &before)
        .await
        .expect("create");
    let id = PoolId::new("local", cidr, None).expect("id");
    let mut after = before.clone();
    let address = after
        .allocate(&id, &AddressRequest::default())
        .expect("free");
    let block = crate::engine::block_of(after.addrs().ordinal(address).expect("inside"));
    (before, after, vec![block])
}

fn busy_subnet(cidr: &str, sub_pools: &[&str]) -> Subnet {
    let subs: Vec<Option<IpNet>> = sub_pools
        .iter()
        .map(|sub| (!sub.is_empty()).then(|| net(sub)))
        .collect();
    let mut subnet = Subnet::with_pools(net(cidr), subs.iter().copied()).expect("inside");
    let ids: Vec<PoolId> = subs
        .iter()
        .map(|&sub| PoolId::new("local", net(cidr), sub).expect("valid id"))
        .collect();
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
    let before = s.clone();
    let a = s.allocate(&id, &AddressRequest::default()).expect("room");
    let blocks = [block_of(&s, a)];
    let change = Change {
        before: &before,
        after: &s,
        blocks: &blocks,
    };
    store
        .update_subnet("t1", "local", &change, 2)
        .await
        .expect("v2");
    assert!(
        matches!(
            store.update_subnet("t1", "local", &change, 2).await,
            Err(Error::Conflict { .. })
        ),
        "a second writer of version 2 loses"
    );
    let other = busy_subnet("10.3.0.0/24", &[""]);
    let unchanged = Change {
        before: &other,
        after: &other,
        blocks: &[],
    };
    assert!(matches!(
        store.update_subnet("t1", "local", &unchanged, 2).await,
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
    assert!(
        matches!(
            store.delete_subnet("t1", "local", s.net(), 2).await,
            Err(Error::NotFound { .. })
        ),
        "deleting a subnet that is not stored"
    );
}

fn block_of(subnet: &Subnet, address: IpAddr) -> u128 {
    crate::engine::block_of(subnet.addrs().ordinal(address).expect("inside"))
}

/// Many small changes, each stored as a change of the one before (a store that keeps runs as
/// rows writes only what changed), rebuild exactly the subnet in memory: allocations and
/// releases that split and merge runs, serial ones that move the cursor, pools added and
/// removed, on IPv4 and IPv6, on a subnet smaller than one block and on one of many blocks.
pub async fn changes_rebuild_the_subnet<S: Store>(store: &S) {
    for (cidr, sub_pool) in [
        ("10.6.0.0/22", "10.6.1.0/24"),
        ("10.7.0.0/30", "10.7.0.2/31"),
        ("fd00:6::/118", "fd00:6::100/120"),
    ] {
        let mut s = Subnet::with_pools(net(cidr), [None]).expect("the whole subnet");
        store
            .create_subnet("t1", "local", &s)
            .await
            .expect("create");
        let whole = PoolId::new("local", net(cidr), None).expect("id");
        let sub = PoolId::new("local", net(cidr), Some(net(sub_pool))).expect("id");
        let mut held: Vec<IpAddr> = Vec::new();
        // A fixed pseudo-random walk (xorshift), so a failure reproduces.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for version in 2..=120u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let before = s.clone();
            let mut blocks = Vec::new();
            match seed % 8 {
                0 if s.has_pool(Some(net(sub_pool))) => {
                    s.remove_pool(&sub).expect("present");
                }
                0 => s.add_pool(&sub).expect("inside"),
                1..=3 if !held.is_empty() => {
                    #[allow(clippy::cast_possible_truncation)]
                    let a = held.swap_remove((seed >> 8) as usize % held.len());
                    s.release(&whole, a).expect("releasable");
                    blocks.push(block_of(&s, a));
                }
                _ => {
                    let req = AddressRequest {
                        serial: seed & 16 != 0,
                        ..AddressRequest::default()
                    };
                    if let Ok(a) = s.allocate(&whole, &req) {
                        held.push(a);
                        blocks.push(block_of(&s, a));
                    }
                }
            }
            let change = Change {
                before: &before,
                after: &s,
                blocks: &blocks,
            };
            store
                .update_subnet("t1", "local", &change, version)
                .await
                .expect("next version");
        }
        let loaded = store
            .load_subnet("t1", "local", net(cidr))
            .await
            .expect("load")
            .expect("stored");
        assert_eq!(loaded.version, 120, "{cidr}");
        assert_eq!(loaded.subnet, s, "{cidr}");
        assert_eq!(loaded.subnet.addrs().cursor(), s.addrs().cursor(), "{cidr}");
    }
}

/// Remote pools are recorded, replaced, listed per tenant and forgotten.
pub async fn records_remote_pools<S: Store>(store: &S) {
    store
        .put_remote_pool("t1", "far/10.9.0.0/16", "opaque-1")
        .await
        .expect("put");
    store
        .put_remote_pool("t1", "far/10.9.0.0/16", "opaque-2")
        .await
        .expect("replace");
    store
        .put_remote_pool("t2", "far/10.9.0.0/16", "other")
        .await
        .expect("another tenant");
    assert_eq!(
        store.remote_pools("t1").await.expect("list"),
        vec![("far/10.9.0.0/16".to_owned(), "opaque-2".to_owned())]
    );
    store
        .delete_remote_pool("t1", "far/10.9.0.0/16")
        .await
        .expect("delete");
    store
        .delete_remote_pool("t1", "far/10.9.0.0/16")
        .await
        .expect("deleting again succeeds");
    assert!(store.remote_pools("t1").await.expect("list").is_empty());
    assert_eq!(store.remote_pools("t2").await.expect("list").len(), 1);
}

/// `versions` lists what is stored, per tenant.
pub async fn lists_versions<S: Store>(store: &S) {
    let a = busy_subnet("10.8.0.0/24", &[""]);
    store
        .create_subnet("t1", "local", &a)
        .await
        .expect("create");
    store
        .create_subnet("t2", "global", &a)
        .await
        .expect("create");
    assert_eq!(
        store.versions("t1").await.expect("versions"),
        vec![("local".to_owned(), a.net(), 1)]
    );
}

/// `version` tells the stored version of one subnet, and that a deleted one is gone.
pub async fn reports_one_version<S: Store>(store: &S) {
    let a = busy_subnet("10.9.0.0/24", &[""]);
    let version = || store.version("t1", "local", a.net());
    assert_eq!(version().await.expect("version"), None);
    store
        .create_subnet("t1", "local", &a)
        .await
        .expect("create");
    assert_eq!(version().await.expect("version"), Some(1));
    let mut b = a.clone();
    let id = PoolId::new("local", a.net(), None).expect("valid id");
    let address = b.allocate(&id, &AddressRequest::default()).expect("room");
    let block = crate::engine::block_of(b.addrs().ordinal(address).expect("inside"));
    let change = Change {
        before: &a,
        after: &b,
        blocks: &[block],
    };
    store
        .update_subnet("t1", "local", &change, 2)
        .await
        .expect("update");
    assert_eq!(version().await.expect("version"), Some(2));
    assert_eq!(
        store
            .version("t2", "local", a.net())
            .await
            .expect("version"),
        None,
        "another tenant's subnet"
    );
    store
        .delete_subnet("t1", "local", a.net(), 2)
        .await
        .expect("delete");
    assert_eq!(version().await.expect("version"), None);
    // Created again, it continues after the deleted one: a version names one state.
    let again = store.create_subnet("t1", "local", &a).await;
    assert_eq!(again.expect("create again"), 3);
    assert_eq!(version().await.expect("version"), Some(3));
    assert_eq!(
        store
            .load_subnet("t1", "local", a.net())
            .await
            .expect("load")
            .map(|r| r.version),
        Some(3)
    );
}

/// A store several drivers share refuses a subnet overlapping a stored one, and names it.
pub async fn refuses_overlapping_subnets<S: Store>(store: &S) {
    let wide = busy_subnet("10.7.0.0/16", &[""]);
    let narrow = busy_subnet("10.7.3.0/24", &[""]);
    store
        .create_subnet("t1", "local", &wide)
        .await
        .expect("create");
    match store.create_subnet("t1", "local", &narrow).await {
        Err(Error::Conflict { space, subnet }) => {
            assert_eq!((space.as_str(), subnet.as_str()), ("local", "10.7.0.0/16"));
        }
        other => panic!("expected a conflict naming 10.7.0.0/16, got {other:?}"),
    }
    store
        .create_subnet("t1", "global", &narrow)
        .await
        .expect("another address space");
    store
        .create_subnet("t2", "local", &narrow)
        .await
        .expect("another tenant");
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

/// The one subnet of tenant t1, loaded both ways (which must agree).
async fn loaded<S: Store>(store: &S) -> Subnet {
    let one = store
        .load_subnet("t1", "local", net("10.9.0.0/24"))
        .await
        .expect("load one")
        .expect("stored");
    let all = store.load("t1").await.expect("load");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].subnet, one.subnet, "both loads agree");
    one.subnet
}

/// Owners are kept: written with their subnet and with each change (an owned allocation, a
/// release), read back by both loads, and gone with the subnet.
pub async fn keeps_owners<S: Store>(store: &S) {
    use crate::engine::owners::Owner;
    let id: PoolId = "local/10.9.0.0/24".parse().expect("pool id");
    let owned = |owner: &str, at_ms| AddressRequest {
        owner: Some(Owner::new(owner).expect("owner")),
        at_ms,
        ..AddressRequest::default()
    };
    let mut s0 = Subnet::create(&id).expect("subnet");
    s0.allocate(&id, &owned("c0/eth0", 1_700_000_000_000))
        .expect("room");
    let v = store
        .create_subnet("t1", "local", &s0)
        .await
        .expect("create");
    assert_eq!(loaded(store).await, s0, "created with its owner");
    // An owned allocation, an unowned one, and a release of the first owner's address.
    let mut s1 = s0.clone();
    let a = s1
        .allocate(&id, &owned("c1/eth0", 1_700_000_000_001))
        .expect("room");
    s1.allocate(&id, &AddressRequest::default()).expect("room");
    let first = s1.allocate(&id, &owned("c0/eth0", 0)).expect("held");
    s1.release(&id, first).expect("release");
    let blocks = vec![0];
    let change = Change {
        before: &s0,
        after: &s1,
        blocks: &blocks,
    };
    assert_eq!(change.owner_rows().len(), 2, "one new holder, one gone");
    store
        .update_subnet("t1", "local", &change, v + 1)
        .await
        .expect("update");
    let back = loaded(store).await;
    assert_eq!(back, s1);
    let holder = back
        .owners()
        .holder(back.addrs().ordinal(a).expect("in subnet"))
        .expect("held");
    assert_eq!(
        (holder.owner.as_str(), holder.since_ms),
        ("c1/eth0", 1_700_000_000_001)
    );
    assert_eq!(back.owners().len(), 1);
    // Gone with the subnet: created again, it has none.
    store
        .delete_subnet("t1", "local", net("10.9.0.0/24"), v + 1)
        .await
        .expect("delete");
    let fresh = Subnet::create(&id).expect("subnet");
    store
        .create_subnet("t1", "local", &fresh)
        .await
        .expect("create again");
    assert!(loaded(store).await.owners().is_empty());
}

fn token(tenant: &str, role: crate::auth::Role) -> super::TokenRecord {
    let issued = crate::auth::issue().expect("random source");
    super::TokenRecord {
        id: issued.id,
        tenant: tenant.to_owned(),
        role,
        hash: issued.hash,
        description: format!("{role} token of {tenant}"),
        created_at: 1_700_000_000,
    }
}

/// Tenants, tokens and quotas: created, listed, refused where the tenant is missing, and gone
/// with the tenant.
pub async fn keeps_a_directory<S: Store>(store: &S) {
    use super::{Quota, TenantDeletion};
    use crate::auth::Role;
    let names = |v: Vec<super::TenantRecord>| v.into_iter().map(|t| t.name).collect::<Vec<_>>();
    // A new store holds the default tenant, as a migrated database does.
    assert_eq!(names(store.tenants().await.expect("list")), ["default"]);
    assert!(
        store
            .create_tenant("acme", 1_700_000_000)
            .await
            .expect("create")
    );
    assert!(
        !store.create_tenant("acme", 1).await.expect("again"),
        "exists"
    );
    assert!(
        store
            .create_tenant("beta", 1_700_000_001)
            .await
            .expect("create")
    );
    assert_eq!(
        names(store.tenants().await.expect("list")),
        ["acme", "beta", "default"]
    );
    let acme = store.tenant("acme").await.expect("one").expect("exists");
    assert_eq!(acme.created_at, 1_700_000_000, "not overwritten");
    assert_eq!(store.tenant("gamma").await.expect("one"), None);

    let (w, r, other) = (
        token("acme", Role::Write),
        token("acme", Role::Read),
        token("beta", Role::Admin),
    );
    for t in [&w, &r, &other] {
        assert!(store.create_token(t).await.expect("create token"));
    }
    assert!(
        !store
            .create_token(&token("gamma", Role::Read))
            .await
            .expect("no tenant")
    );
    assert_eq!(store.token(w.id).await.expect("find"), Some(w.clone()));
    let mut acme_tokens = vec![w.clone(), r.clone()];
    acme_tokens.sort_by_key(|t| t.id);
    assert_eq!(store.tokens("acme").await.expect("list"), acme_tokens);
    assert_eq!(
        store.revoke_token(r.id).await.expect("revoke"),
        Some("acme".to_owned())
    );
    assert_eq!(store.revoke_token(r.id).await.expect("again"), None);
    assert_eq!(store.token(r.id).await.expect("find"), None);

    assert_eq!(
        store.quota("acme").await.expect("get"),
        Some(Quota::default())
    );
    assert_eq!(store.quota("gamma").await.expect("get"), None);
    let q = Quota {
        max_pools: 3,
        max_addresses: 1 << 40,
        requests_per_second: 50,
    };
    assert!(store.set_quota("acme", &q).await.expect("set"));
    assert!(store.set_quota("acme", &q).await.expect("set again"));
    assert!(!store.set_quota("gamma", &q).await.expect("no tenant"));
    assert_eq!(store.quota("acme").await.expect("get"), Some(q));

    // A tenant holding pools (its own, or a remote pool's record) is deleted only by force,
    // and takes its subnets, remote pools, tokens and quota along; nobody else's.
    let s = busy_subnet("10.7.0.0/16", &["", "10.7.1.0/24"]);
    store
        .create_subnet("acme", "local", &s)
        .await
        .expect("create");
    store
        .create_subnet("acme+remote:x", "x", &s)
        .await
        .expect("create");
    store
        .put_remote_pool("acme+remote:x", "x/10.7.0.0/16", "r1")
        .await
        .expect("remote");
    store
        .create_subnet("acmex", "local", &s)
        .await
        .expect("a tenant named alike");
    assert_eq!(
        store.delete_tenant("acme", false).await.expect("refused"),
        TenantDeletion::HoldsPools(4)
    );
    assert_eq!(
        store.delete_tenant("gamma", true).await.expect("missing"),
        TenantDeletion::Missing
    );
    assert_eq!(
        store.delete_tenant("acme", true).await.expect("forced"),
        TenantDeletion::Deleted
    );
    assert_eq!(
        names(store.tenants().await.expect("list")),
        ["beta", "default"]
    );
    assert!(store.load("acme").await.expect("load").is_empty());
    assert!(store.load("acme+remote:x").await.expect("load").is_empty());
    assert!(
        store
            .remote_pools("acme+remote:x")
            .await
            .expect("remote")
            .is_empty()
    );
    assert_eq!(
        store.load("acmex").await.expect("load").len(),
        1,
        "another tenant's"
    );
    assert_eq!(store.token(w.id).await.expect("find"), None);
    assert_eq!(store.token(other.id).await.expect("find"), Some(other));
    // Created again, the tenant starts empty, and its subnets continue their versions.
    assert!(
        store
            .create_tenant("acme", 1_800_000_000)
            .await
            .expect("again")
    );
    assert_eq!(
        store.quota("acme").await.expect("get"),
        Some(Quota::default())
    );
    assert!(store.tokens("acme").await.expect("list").is_empty());
    assert_eq!(
        store
            .create_subnet("acme", "local", &s)
            .await
            .expect("create"),
        2
    );
    assert_eq!(
        store.delete_tenant("beta", false).await.expect("empty"),
        TenantDeletion::Deleted
    );
}

/// Generates one test per check, each on a fresh store: `#[attribute] (arguments) => store`,
/// the store built in the test from its arguments (temporaries in the expression, such as a
/// fresh Postgres database, live until the check ends). Without a list of checks, every
/// check every backend passes.
macro_rules! conformance_tests {
    (#[$attr:meta] $params:tt => $fresh:expr) => {
        crate::store::conformance::conformance_tests!(
            #[$attr] $params => $fresh;
            round_trips_subnets,
            refuses_duplicates_and_stale_versions,
            keeps_tenants_apart,
            changes_rebuild_the_subnet,
            lists_versions,
            reports_one_version,
            records_remote_pools,
            keeps_a_directory,
            keeps_owners,
        );
    };
    (#[$attr:meta] $params:tt => $fresh:expr; $($check:ident),+ $(,)?) => {
        $(
            #[$attr]
            async fn $check $params {
                crate::store::conformance::$check(&$fresh).await;
            }
        )+
    };
}
pub(crate) use conformance_tests;

mod memory {
    use crate::store::MemoryStore;

    super::conformance_tests!(#[tokio::test] () => MemoryStore::new());
    super::conformance_tests!(
        #[tokio::test] () => MemoryStore::new();
        refuses_overlapping_subnets
    );
}

mod sqlite {
    super::conformance_tests!(
        #[tokio::test] () => crate::store::SqliteStore::connect("sqlite::memory:")
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

mod postgres {
    //! The same checks on PostgreSQL, each in a fresh migrated database (dropped after it).
    use crate::store::postgres::testdb::TestDb;

    super::conformance_tests!(#[tokio::test] () => TestDb::fresh().await.store());
    super::conformance_tests!(
        #[tokio::test] () => TestDb::fresh().await.store();
        refuses_overlapping_subnets
    );
}
