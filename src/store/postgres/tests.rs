//! Postgres-only checks, each in a fresh migrated database: the schema an operator reads,
//! the size of each write, and a cold start of many subnets.
use std::net::IpAddr;

use sqlx::PgPool;

use super::testdb::TestDb;
use super::*;
use crate::engine::{AddressRequest, PoolId};
use crate::store::conformance::stored_then_allocated;

fn store(pool: PgPool) -> PgStore {
    PgStore::from_pool(pool, Duration::from_secs(30))
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid prefix")
}

/// Subnets and ranges are `cidr`, run bounds `inet`, and every table is keyed by tenant.
#[tokio::test]
async fn the_schema_reads_as_addresses() {
    let db = TestDb::fresh().await;
    let pool = db.pool.clone();
    let types: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, udt_name::text \
         FROM information_schema.columns WHERE table_schema = 'public' \
         AND table_name IN ('subnets', 'pools', 'runs') ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .expect("columns");
    let of = |t: &str, c: &str| {
        types
            .iter()
            .find(|(tt, cc, _)| tt == t && cc == c)
            .map(|(_, _, u)| u.as_str())
    };
    assert_eq!(of("subnets", "subnet"), Some("cidr"));
    assert_eq!(of("pools", "sub_pool"), Some("cidr"));
    assert_eq!(of("runs", "first"), Some("inet"));
    assert_eq!(of("runs", "last"), Some("inet"));
    assert_eq!(of("subnets", "version"), Some("int8"));
    for table in ["subnets", "pools", "runs"] {
        assert_eq!(
            of(table, "tenant"),
            Some("text"),
            "{table} is keyed by tenant"
        );
    }

    // What an operator sees for the worked example of DESIGN.md.
    let s = store(pool.clone());
    let subnet = Subnet::with_pools(net("192.168.10.0/24"), [Some(net("192.168.10.128/31"))])
        .expect("inside");
    s.create_subnet("t1", "local", &subnet)
        .await
        .expect("create");
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT host(first), host(last), bits FROM runs WHERE subnet = '192.168.10.0/24' \
         ORDER BY first",
    )
    .fetch_all(&pool)
    .await
    .expect("runs");
    assert_eq!(
        rows,
        vec![
            ("192.168.10.0".to_owned(), "192.168.10.63".to_owned(), 1),
            ("192.168.10.64".to_owned(), "192.168.10.191".to_owned(), 0),
            (
                "192.168.10.192".to_owned(),
                "192.168.10.255".to_owned(),
                i64::MIN
            ),
        ],
        "a block holding the network address, free blocks, a block holding the broadcast"
    );
    let sub_pool: Option<String> = sqlx::query_scalar("SELECT sub_pool::text FROM pools")
        .fetch_one(&pool)
        .await
        .expect("pool");
    assert_eq!(sub_pool.as_deref(), Some("192.168.10.128/31"));
}

/// Stores `after` as `version` of a subnet that was `before`, changed in `blocks`.
async fn store_change(s: &PgStore, before: &Subnet, after: &Subnet, blocks: &[u128], version: u64) {
    let change = Change {
        before,
        after,
        blocks,
    };
    s.update_subnet("t1", "local", &change, version)
        .await
        .expect("write");
}

/// Counts the run rows the last change of a subnet inserted or updated: rows written by
/// one transaction share its id (`xmin`), and every change also rewrites the subnet row.
async fn rows_written_by_last_change(pool: &PgPool, subnet: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM runs r JOIN subnets s USING (tenant, space, subnet) \
         WHERE s.subnet = $1::cidr AND r.xmin::text = s.xmin::text",
    )
    .bind(subnet)
    .fetch_one(pool)
    .await
    .expect("count")
}

/// After thousands of allocations have fragmented a /16 into thousands of runs, each
/// further allocation or release writes a handful of rows, not the bitmap.
#[tokio::test]
async fn a_change_writes_only_the_runs_it_rewrote() {
    let db = TestDb::fresh().await;
    let pool = db.pool.clone();
    let s = store(pool.clone());
    let cidr = "10.50.0.0/16";
    let id = PoolId::new("local", net(cidr), None).expect("id");
    let mut subnet = Subnet::with_pools(net(cidr), [None]).expect("pool");
    s.create_subnet("t1", "local", &subnet)
        .await
        .expect("create");
    // Every third address of the first 24,000, in a few big changes.
    let mut version = 1;
    for chunk in 0..8u32 {
        let before = subnet.clone();
        let mut blocks = Vec::new();
        for i in 0..1000u32 {
            let n = (chunk * 1000 + i) * 3 + 1;
            let address = IpAddr::from([10, 50, (n >> 8) as u8, (n & 0xff) as u8]);
            let req = AddressRequest {
                address: Some(address),
                ..AddressRequest::default()
            };
            subnet.allocate(&id, &req).expect("free");
            blocks.push(u128::from(n) >> 6);
        }
        version += 1;
        store_change(&s, &before, &subnet, &blocks, version).await;
    }
    let n_runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(n_runs > 300, "fragmented: {n_runs} runs");
    let mut max_written = 0;
    for step in 0..200u32 {
        let before = subnet.clone();
        let address = if step % 2 == 0 {
            subnet
                .allocate(&id, &AddressRequest::default())
                .expect("room")
        } else {
            let a = IpAddr::from([10, 50, (step % 90) as u8, 1 + 3 * (step % 80) as u8]);
            subnet.release(&id, a).expect("release");
            a
        };
        let blocks = [subnet.addrs().ordinal(address).expect("inside") >> 6];
        version += 1;
        store_change(&s, &before, &subnet, &blocks, version).await;
        max_written = max_written.max(rows_written_by_last_change(&pool, cidr).await);
    }
    assert!(
        (1..=3).contains(&max_written),
        "at most 3 run rows per change, out of {n_runs}: {max_written}"
    );
    let loaded = s
        .load_subnet("t1", "local", net(cidr))
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(loaded.subnet, subnet);
}

/// A cold start rebuilds exactly the subnets that were there: many of them, both
/// families, with sub-pools, allocations, releases and serial cursors.
#[tokio::test]
async fn a_cold_start_rebuilds_every_subnet() {
    let db = TestDb::fresh().await;
    let pool = db.pool.clone();
    let s = store(pool.clone());
    let mut want = Vec::new();
    for i in 0..300u32 {
        let cidr = if i % 3 == 0 {
            net(&format!("fd00:{i:x}::/64"))
        } else {
            net(&format!("10.{}.{}.0/24", i / 256, i % 256))
        };
        let mut subnet = Subnet::with_pools(cidr, [None]).expect("pool");
        if i % 2 == 0 {
            let sub = IpNet::new(cidr.network(), cidr.prefix_len() + 1).expect("half");
            let id = PoolId::new("local", cidr, Some(sub)).expect("id");
            subnet.add_pool(&id).expect("inside");
        }
        s.create_subnet("t1", "local", &subnet)
            .await
            .expect("create");
        let id = PoolId::new("local", cidr, None).expect("id");
        let before = subnet.clone();
        let mut blocks = Vec::new();
        for k in 0..(i % 17) {
            let req = AddressRequest {
                serial: k % 2 == 0,
                ..AddressRequest::default()
            };
            let a = subnet.allocate(&id, &req).expect("room");
            blocks.push(subnet.addrs().ordinal(a).expect("inside") >> 6);
        }
        store_change(&s, &before, &subnet, &blocks, 2).await;
        want.push(("local".to_owned(), subnet, 2));
    }
    let fresh = store(pool);
    let mut got: Vec<_> = fresh
        .load("t1")
        .await
        .expect("load")
        .into_iter()
        .map(|r| (r.space, r.subnet, r.version))
        .collect();
    got.sort_by_key(|(_, s, _)| s.net());
    want.sort_by_key(|(_, s, _)| s.net());
    assert_eq!(got, want);
}

/// Two writers creating overlapping subnets: the second is refused with the first's
/// subnet named, whatever its cache knew.
#[tokio::test]
async fn creating_an_overlapping_subnet_names_the_one_stored() {
    let db = TestDb::fresh().await;
    let pool = db.pool.clone();
    let s = store(pool);
    let a = Subnet::with_pools(net("10.60.0.0/16"), [None]).expect("pool");
    s.create_subnet("t1", "local", &a).await.expect("create");
    let b = Subnet::with_pools(net("10.60.4.0/24"), [None]).expect("pool");
    match s.create_subnet("t1", "local", &b).await {
        Err(Error::Conflict { subnet, .. }) => assert_eq!(subnet, "10.60.0.0/16"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    s.create_subnet("t1", "global", &b)
        .await
        .expect("another space may hold it");
    s.create_subnet("t2", "local", &b)
        .await
        .expect("another tenant may hold it");
}

/// The overlap check asks only a new subnet's two neighbours in cidr order: over random
/// prefixes of every length, nested and disjoint, IPv4 and IPv6, it refuses exactly those
/// that overlap a stored subnet, and names one that does.
#[tokio::test]
async fn overlaps_are_found_by_the_neighbours_alone() {
    let db = TestDb::fresh().await;
    let s = store(db.pool.clone());
    let mut stored: Vec<IpNet> = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut refused, mut made) = (0, 0);
    for i in 0..400 {
        let r = next();
        let candidate = if i % 4 == 3 {
            let len = 40 + u8::try_from(r % 25).expect("small");
            let addr = std::net::Ipv6Addr::from((0xfd00_u128 << 112) | (u128::from(r) << 56));
            IpNet::new(IpAddr::V6(addr), len).expect("prefix").trunc()
        } else {
            let len = 12 + u8::try_from(r % 17).expect("small");
            let host = u32::try_from(r >> 40).expect("24 bits") << 4;
            let addr = std::net::Ipv4Addr::from((10 << 24) | (host & 0x00ff_ffff));
            IpNet::new(IpAddr::V4(addr), len).expect("prefix").trunc()
        };
        let overlapping: Vec<IpNet> = stored
            .iter()
            .copied()
            .filter(|s| s.contains(&candidate.network()) || candidate.contains(&s.network()))
            .collect();
        let subnet = Subnet::with_pools(candidate, [None]).expect("pool");
        match s.create_subnet("t1", "local", &subnet).await {
            Ok(_) => {
                assert!(
                    overlapping.is_empty(),
                    "{candidate} made over {overlapping:?}"
                );
                stored.push(candidate);
                made += 1;
            }
            Err(Error::Conflict { subnet, .. }) => {
                let named: IpNet = subnet.parse().expect("a prefix");
                assert!(overlapping.contains(&named), "{candidate}: named {named}");
                refused += 1;
            }
            Err(e) => panic!("{candidate}: {e}"),
        }
    }
    assert!(made > 20 && refused > 20, "made {made}, refused {refused}");
}

/// A locked subnet makes the next locker wait, then hands it the state committed under
/// the first lock.
#[tokio::test]
async fn a_lock_makes_the_next_writer_wait_and_reload() {
    let db = TestDb::fresh().await;
    let pool = db.pool.clone();
    let s = store(pool);
    let cidr = net("10.71.0.0/24");
    let mut subnet = Subnet::with_pools(cidr, [None]).expect("pool");
    s.create_subnet("t1", "local", &subnet)
        .await
        .expect("create");
    let mut first = s
        .lock_subnet("t1", "local", cidr, 1)
        .await
        .expect("lock")
        .expect("postgres locks");
    assert_eq!(first.version(), 1);
    assert!(
        first.take_reloaded().is_none(),
        "the cached version is current"
    );
    let other = s.clone();
    let second = tokio::spawn(async move {
        let mut lock = other
            .lock_subnet("t1", "local", cidr, 1)
            .await
            .expect("lock")
            .expect("postgres locks");
        (lock.version(), lock.take_reloaded())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second writer waits for the first"
    );
    let before = subnet.clone();
    let id = PoolId::new("local", cidr, None).expect("id");
    let a = subnet
        .allocate(&id, &AddressRequest::default())
        .expect("room");
    let blocks = [subnet.addrs().ordinal(a).expect("inside") >> 6];
    let change = Change {
        before: &before,
        after: &subnet,
        blocks: &blocks,
    };
    first.commit(&change, 2).await.expect("commit");
    let (version, reloaded) = second.await.expect("second writer");
    assert_eq!(version, 2);
    assert_eq!(reloaded.map(|r| r.subnet), Some(subnet));
    assert!(matches!(
        s.lock_subnet("t1", "local", net("10.72.0.0/24"), 1).await,
        Err(Error::NotFound { .. })
    ));
}

/// Changes are announced: a subscriber hears a resync, then each commit's version.
#[tokio::test]
async fn subscribers_hear_every_change() {
    let db = TestDb::fresh().await;
    let pool = db.pool.clone();
    let s = store(pool);
    let mut events = s
        .subscribe(crate::store::Interest::Tenant("t1".into()))
        .await
        .expect("postgres reports changes");
    assert_eq!(events.recv().await, Some(Event::Resync));
    let subnet = Subnet::with_pools(net("10.70.0.0/24"), [None]).expect("pool");
    s.create_subnet("t1", "local", &subnet)
        .await
        .expect("create");
    let changed = |version| Event::Changed {
        tenant: "t1".into(),
        space: "local".into(),
        subnet: net("10.70.0.0/24"),
        version,
    };
    assert_eq!(events.recv().await, Some(changed(1)));
    s.delete_subnet("t1", "local", net("10.70.0.0/24"), 1)
        .await
        .expect("delete");
    assert_eq!(events.recv().await, Some(changed(0)));
}

/// Directory changes are announced too, naming the tenant: what lets every replica drop a
/// revoked token or an old quota at once.
#[tokio::test]
async fn subscribers_hear_directory_changes() {
    use crate::store::{Directory, Quota};
    let db = TestDb::fresh().await;
    let s = store(db.pool.clone());
    let mut events = s
        .subscribe(crate::store::Interest::Directory)
        .await
        .expect("postgres reports changes");
    assert_eq!(events.recv().await, Some(Event::Resync));
    let tenant = || Event::Directory {
        tenant: "acme".into(),
    };
    assert!(s.create_tenant("acme", 1).await.expect("create"));
    assert_eq!(events.recv().await, Some(tenant()));
    let issued = crate::auth::issue().expect("random");
    let token = crate::store::TokenRecord {
        id: issued.id,
        tenant: "acme".into(),
        role: crate::auth::Role::Read,
        hash: issued.hash,
        description: String::new(),
        created_at: 1,
    };
    assert!(s.create_token(&token).await.expect("token"));
    assert_eq!(events.recv().await, Some(tenant()));
    assert_eq!(
        s.revoke_token(token.id).await.expect("revoke"),
        Some("acme".into())
    );
    assert_eq!(events.recv().await, Some(tenant()));
    assert!(s.set_quota("acme", &Quota::default()).await.expect("quota"));
    assert_eq!(events.recv().await, Some(tenant()));
    // Deleted with its pools: each subnet's deletion is announced to the tenant's drivers.
    let mut subnets = s
        .subscribe(crate::store::Interest::Tenant("acme".into()))
        .await
        .expect("postgres reports changes");
    let subnet = Subnet::with_pools(net("10.75.0.0/24"), [None]).expect("pool");
    s.create_subnet("acme", "local", &subnet)
        .await
        .expect("create");
    assert_eq!(
        s.delete_tenant("acme", true).await.expect("delete"),
        crate::store::TenantDeletion::Deleted
    );
    assert_eq!(events.recv().await, Some(tenant()));
    let changed = |version| Event::Changed {
        tenant: "acme".into(),
        space: "local".into(),
        subnet: net("10.75.0.0/24"),
        version,
    };
    assert_eq!(subnets.recv().await, Some(changed(1)));
    assert_eq!(subnets.recv().await, Some(changed(0)));
}

/// Every subscriber of one store hears every change through one `LISTEN` connection (a
/// process with a driver per tenant, or per tracked space, holds one, not one each), and a
/// subscriber that comes after the last one left starts it again.
#[tokio::test]
async fn subscribers_share_one_listening_connection() {
    let db = TestDb::fresh().await;
    let s = store(db.pool.clone());
    let listening = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&db.pool)
        .await
        .expect("activity");
        n
    };
    let mut a = s
        .subscribe(crate::store::Interest::Tenant("t1".into()))
        .await
        .expect("postgres reports changes");
    let mut b = s
        .clone()
        .subscribe(crate::store::Interest::Tenant("t1".into()))
        .await
        .expect("postgres reports changes");
    // A driver of another tenant hears nothing of t1's changes.
    let mut other = s
        .subscribe(crate::store::Interest::Tenant("t2".into()))
        .await
        .expect("postgres reports changes");
    // The listener's first words, to whoever had joined by then.
    assert_eq!(a.recv().await, Some(Event::Resync));
    let subnet = Subnet::with_pools(net("10.73.0.0/24"), [None]).expect("pool");
    s.create_subnet("t1", "local", &subnet)
        .await
        .expect("create");
    let created = Event::Changed {
        tenant: "t1".into(),
        space: "local".into(),
        subnet: net("10.73.0.0/24"),
        version: 1,
    };
    assert_eq!(a.recv().await, Some(created.clone()));
    loop {
        match b.recv().await {
            Some(Event::Resync) => {}
            other => {
                assert_eq!(other, Some(created));
                break;
            }
        }
    }
    assert_eq!(listening().await, 1, "one LISTEN connection for all");
    let theirs = Subnet::with_pools(net("10.74.0.0/24"), [None]).expect("pool");
    s.create_subnet("t2", "local", &theirs)
        .await
        .expect("create");
    loop {
        match other.recv().await {
            Some(Event::Resync) => {}
            next => {
                assert!(
                    matches!(&next, Some(Event::Changed { tenant, .. }) if tenant == "t2"),
                    "{next:?}"
                );
                break;
            }
        }
    }
    drop((a, b, other));
    let mut c = s
        .subscribe(crate::store::Interest::Tenant("t1".into()))
        .await
        .expect("postgres reports changes");
    s.delete_subnet("t1", "local", net("10.73.0.0/24"), 1)
        .await
        .expect("delete");
    loop {
        match c.recv().await {
            Some(Event::Resync) => {}
            other => {
                assert!(matches!(other, Some(Event::Changed { version: 0, .. })));
                break;
            }
        }
    }
}

/// Several subnets' changes (of two tenants) in one transaction: the one whose version no
/// longer matches changes nothing, the others commit, and one notification announces them.
#[tokio::test]
async fn a_batch_commits_every_subnet_but_the_one_that_lost_its_race() {
    let db = TestDb::fresh().await;
    let pool = db.pool.clone();
    let s = store(pool.clone());
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .expect("listener");
    let keys = [
        ("t1", "10.81.0.0/24"),
        ("t1", "10.82.0.0/24"),
        ("t2", "10.83.0.0/24"),
    ];
    let mut changes = Vec::new();
    for (tenant, cidr) in keys {
        let (before, after, blocks) = stored_then_allocated(&s, tenant, net(cidr)).await;
        changes.push((tenant, before, after, blocks));
    }
    listener.listen(CHANNEL).await.expect("listen");
    // The second one names a version another writer already took.
    let writes: Vec<SubnetWrite> = changes
        .iter()
        .enumerate()
        .map(|(i, (tenant, before, after, blocks))| {
            let change = Change {
                before,
                after,
                blocks,
            };
            SubnetWrite::of(tenant, "local", &change, if i == 1 { 3 } else { 2 })
        })
        .collect();
    let refs: Vec<&SubnetWrite> = writes.iter().collect();
    let matched = write::write_batch(&pool, &refs).await.expect("batch");
    assert_eq!(matched, [true, false, true]);

    for ((tenant, cidr), (_, before, after, _)) in keys.iter().zip(&changes) {
        let stored = s
            .load_subnet(tenant, "local", net(cidr))
            .await
            .expect("load")
            .expect("stored");
        if *cidr == "10.82.0.0/24" {
            assert_eq!((stored.version, &stored.subnet), (1, before), "unchanged");
        } else {
            assert_eq!((stored.version, &stored.subnet), (2, after), "committed");
        }
    }
    let heard = listener.recv().await.expect("notification");
    let events = notify::parse_notices(heard.payload()).expect("notices");
    let announced: Vec<(String, IpNet, u64)> = events
        .into_iter()
        .map(|e| match e {
            Event::Changed {
                tenant,
                subnet,
                version,
                ..
            } => (tenant, subnet, version),
            other => panic!("not a change: {other:?}"),
        })
        .collect();
    assert_eq!(
        announced,
        [
            ("t1".to_owned(), net("10.81.0.0/24"), 2),
            ("t2".to_owned(), net("10.83.0.0/24"), 2),
        ],
        "one notification for the transaction"
    );
    // Through the store, the loser is told which way it lost.
    let (tenant, before, after, blocks) = &changes[1];
    let change = Change {
        before,
        after,
        blocks,
    };
    assert!(matches!(
        s.update_subnet(tenant, "local", &change, 3).await,
        Err(Error::Conflict { .. })
    ));
    s.update_subnet(tenant, "local", &change, 2)
        .await
        .expect("retried at the right version");
}

/// Writes of many subnets at once, of tenants with long names: they commit in a few
/// transactions, each announced in one notification within the payload limit.
#[tokio::test]
async fn a_burst_of_writes_is_announced_in_a_few_notifications_that_fit() {
    let db = TestDb::fresh().await;
    let pool = db.pool.clone();
    let s = store(pool.clone());
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .expect("listener");
    let mut writes = Vec::new();
    for i in 0..300u32 {
        let tenant = format!("tenant-{i:0>48}");
        let cidr = net(&format!("10.{}.{}.0/24", i / 256, i % 256));
        let (before, after, blocks) = stored_then_allocated(&s, &tenant, cidr).await;
        let change = Change {
            before: &before,
            after: &after,
            blocks: &blocks,
        };
        writes.push(SubnetWrite::of(&tenant, "local", &change, 2));
    }
    listener.listen(CHANNEL).await.expect("listen");
    let n = writes.len();
    let mut tasks = tokio::task::JoinSet::new();
    for write in writes {
        let s = s.clone();
        tasks.spawn(async move { s.writes().write(write).await });
    }
    while let Some(matched) = tasks.join_next().await {
        assert!(matched.expect("task").expect("written"), "versions match");
    }
    let (mut heard, mut notifications) = (0, 0);
    while heard < n {
        let note = listener.recv().await.expect("notification");
        let payload = note.payload();
        assert!(
            payload.len() <= notify::MAX_PAYLOAD,
            "{} bytes",
            payload.len()
        );
        heard += notify::parse_notices(payload).expect("notices").len();
        notifications += 1;
    }
    assert_eq!(heard, n);
    assert!(
        notifications < n / 4,
        "{notifications} notifications for {heard} changes"
    );
}
