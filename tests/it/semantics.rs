//! DESIGN.md's semantics through the API, on every store backend.

use std::collections::HashSet;
use std::sync::Arc;

use allot::proto::pb;

use crate::helpers::*;

#[tokio::test]
async fn worked_example_gateway_and_aux_address() {
    for (name, store, _dir) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let id = request_pool(&mut c, "192.168.10.0/24", "192.168.10.128/31")
            .await
            .unwrap();
        assert_eq!(id, "local/192.168.10.0/24/192.168.10.128/31", "{name}");
        let gateway = [("RequestAddressType", "com.docker.network.gateway")];
        assert_eq!(
            request_address(&mut c, &id, "192.168.10.1", &gateway)
                .await
                .unwrap(),
            "192.168.10.1/24"
        );
        request_address(&mut c, &id, "192.168.10.128", &[])
            .await
            .unwrap();
        let s = state(&mut c, &id).await;
        assert_eq!(s.allocated_ips_in_subnet, 4, "{name}");
        assert_eq!(s.available_ips_in_ip_range_pool, 1, "{name}");
        assert_eq!(s.subnet, "192.168.10.0/24");
        assert_eq!(s.ip_range, "192.168.10.128/31");
        assert_eq!(
            request_address(&mut c, &id, "", &[]).await.unwrap(),
            "192.168.10.129/24"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn worked_example_overlapping_sub_pools() {
    for (name, store, _dir) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let wide = request_pool(&mut c, "192.168.0.0/24", "192.168.0.0/25")
            .await
            .unwrap();
        let narrow = request_pool(&mut c, "192.168.0.0/24", "192.168.0.64/26")
            .await
            .unwrap();
        let all = c
            .get_ipam_state(pb::GetIpamStateRequest {
                pool_ids: vec![],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .pools;
        assert_eq!(all.len(), 2, "{name}");
        let by_id = |id: &str| all.iter().find(|p| p.pool_id == id).unwrap().clone();
        let (w, n) = (by_id(&wide), by_id(&narrow));
        assert_eq!(
            (w.allocated_ips_in_subnet, n.allocated_ips_in_subnet),
            (2, 2)
        );
        assert_eq!(w.available_ips_in_ip_range_pool, 127);
        assert_eq!(n.available_ips_in_ip_range_pool, 64);
        assert_eq!(w.available_ips_in_subnet_ranges, 127, "union, not 191");
        assert_eq!(n.available_ips_in_subnet_ranges, 127);
        app.stop().await;
    }
}

#[tokio::test]
async fn counts_past_two_to_the_64_are_exact_strings() {
    let (_, store, _dir) = backends().await.remove(0);
    let app = spawn_app(store).await;
    let mut c = app.client.clone();
    let id = request_pool(&mut c, "fd00:1::/56", "").await.unwrap();
    let s = state(&mut c, &id).await;
    assert_eq!(s.available_ips_in_ip_range_pool, u64::MAX, "saturates");
    assert_eq!(
        s.available_ips_in_ip_range_pool_exact,
        ((1u128 << 72) - 1).to_string()
    );
    assert_eq!(s.allocated_ips_in_subnet_exact, "1", "the anycast address");
    app.stop().await;
}

#[tokio::test]
async fn serial_allocation_and_default_pools_through_the_api() {
    let (_, store, _dir) = backends().await.remove(1);
    let app = spawn_app(store).await;
    let mut c = app.client.clone();
    let id = request_pool(&mut c, "", "").await.unwrap();
    assert_eq!(id, "local/172.17.0.0/16", "Docker's first default pool");
    let serial = [("com.docker.network.ipam.serial", "true")];
    let a = request_address(&mut c, &id, "", &serial).await.unwrap();
    let b = request_address(&mut c, &id, "", &serial).await.unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("172.17.0.1/16", "172.17.0.2/16"));
    release_address(&mut c, &id, "172.17.0.1").await.unwrap();
    assert_eq!(
        request_address(&mut c, &id, "", &serial).await.unwrap(),
        "172.17.0.3/16",
        "serial continues after the most recent"
    );
    assert_eq!(
        request_address(&mut c, &id, "", &[]).await.unwrap(),
        "172.17.0.1/16",
        "lowest-free fills the hole"
    );
    // A released address given back in the CIDR form the API returned it in.
    release_address(&mut c, &id, "172.17.0.1/16").await.unwrap();
    let pools = c
        .list_pools(pb::ListPoolsRequest {
            address_space: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].pool, "172.17.0.0/16");
    assert_eq!(pools[0].address_space, "local");
    c.release_pool(pb::ReleasePoolRequest {
        pool_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(
        c.get_ipam_state(pb::GetIpamStateRequest {
            pool_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pools
        .is_empty()
    );
    app.stop().await;
}

/// 64 clients at once on one /24, each allocating until the pool is exhausted: every address
/// handed out exactly once, and all 254 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_allocations_never_hand_out_an_address_twice() {
    for (name, store, _dir) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let id = request_pool(&mut c, "10.50.0.0/24", "").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (mut c, id) = (app.client.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    match request_address(&mut c, &id, "", &[]).await {
                        Ok(a) => got.push(a),
                        Err(e) if e.code() == tonic::Code::ResourceExhausted => return got,
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(
            distinct.len(),
            all.len(),
            "{name}: an address was handed out twice"
        );
        assert_eq!(all.len(), 254, "{name}: every host address, once");
        assert_eq!(state(&mut c, &id).await.allocated_ips_in_subnet, 256);
        app.stop().await;
    }
}

/// Group commit: concurrent allocations in one subnet share transactions. The subnet's stored
/// version counts its commits, so 256 acknowledged allocations from 64 clients at once took
/// fewer than 256 of them, and each was answered only once it was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mutations_of_one_subnet_share_commits() {
    use sqlx::Connection;
    let dir = TempDir::new("group-commit");
    let store = allot::store::SqliteStore::connect(&dir.db_url())
        .await
        .unwrap();
    let app = spawn_app(std::sync::Arc::new(store)).await;
    let mut c = app.client.clone();
    let id = request_pool(&mut c, "10.60.0.0/16", "").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (mut c, id) = (app.client.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(request_address(&mut c, &id, "", &[]).await.unwrap());
            }
            got
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 256, "256 distinct addresses");
    let mut db = sqlx::SqliteConnection::connect(&dir.db_url())
        .await
        .unwrap();
    let version: i64 =
        sqlx::query_scalar("SELECT version FROM subnets WHERE subnet = '10.60.0.0/16'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let commits = version - 1;
    assert!(
        commits < 256,
        "{commits} commits for 256 allocations: nothing was batched"
    );
    assert_eq!(state(&mut c, &id).await.allocated_ips_in_subnet, 258);
    app.stop().await;
}

/// Pools of the built-in and the null driver in one GetIpamState: a state for each, marked
/// with its driver and where its counts come from.
#[tokio::test]
async fn one_state_call_answers_for_every_driver() {
    let app = spawn_app(std::sync::Arc::new(allot::store::MemoryStore::new())).await;
    let mut c = app.client.clone();
    let local = request_pool(&mut c, "10.33.0.0/24", "").await.unwrap();
    let null = c
        .request_pool(pb::RequestPoolRequest {
            address_space: "null".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(null.pool_id, "null/0.0.0.0/0");
    assert_eq!(null.pool, "0.0.0.0/0");
    let err = request_address(&mut c, &null.pool_id, "", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let states = c
        .get_ipam_state(pb::GetIpamStateRequest {
            pool_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pools;
    let ids: Vec<&str> = states.iter().map(|s| s.pool_id.as_str()).collect();
    assert_eq!(ids, [local.as_str(), "null/0.0.0.0/0"]);
    assert_eq!(states[0].driver, "builtin");
    assert_eq!(states[0].source(), pb::UtilizationSource::Driver);
    assert_eq!(states[0].allocated_ips_in_subnet, 2);
    assert_eq!(states[1].driver, "null");
    assert_eq!(states[1].source(), pb::UtilizationSource::Driver);
    assert_eq!(
        (
            states[1].allocated_ips_in_subnet,
            states[1].available_ips_in_ip_range_pool
        ),
        (0, 0)
    );
    assert!(
        states
            .iter()
            .all(|s| s.error.is_empty() && s.error_code.is_empty())
    );
    app.stop().await;
}

/// The same sub-pool asked for many times at once, on a subnet that exists: exactly one
/// request creates it, every other one is an overlap (ALREADY_EXISTS), on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_pool_asked_for_at_once_is_created_once() {
    for (name, store, _keep) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        request_pool(&mut c, "10.34.0.0/24", "").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut c = app.client.clone();
            tasks.push(tokio::spawn(async move {
                request_pool(&mut c, "10.34.0.0/24", "10.34.0.128/25").await
            }));
        }
        let mut created = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(id) => {
                    assert_eq!(id, "local/10.34.0.0/24/10.34.0.128/25");
                    created += 1;
                }
                Err(e) => assert_eq!(e.code(), tonic::Code::AlreadyExists, "{name}: {e:?}"),
            }
        }
        assert_eq!(created, 1, "{name}");
        app.stop().await;
    }
}

/// `GetIpamState` of every pool while pools come and go: a pool released between the listing
/// and the lookup is left out, never a NOT_FOUND for the whole call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_pool_state_holds_while_pools_come_and_go() {
    let dir = TempDir::new("churn");
    let store = allot::store::SqliteStore::connect(&dir.db_url())
        .await
        .unwrap();
    let app = spawn_app(Arc::new(store)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut churn = Vec::new();
    for _ in 0..8 {
        let (mut c, stop) = (app.client.clone(), Arc::clone(&stop));
        churn.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = request_pool(&mut c, "", "").await.unwrap();
                c.release_pool(pb::ReleasePoolRequest { pool_id: id })
                    .await
                    .unwrap();
            }
        }));
    }
    let mut c = app.client.clone();
    let mut seen = 0;
    for _ in 0..500 {
        let state = c
            .get_ipam_state(pb::GetIpamStateRequest {
                pool_ids: vec![],
                ..Default::default()
            })
            .await
            .expect("every pool's state, whatever comes and goes");
        seen += state.into_inner().pools.len();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in churn {
        t.await.unwrap();
    }
    assert!(seen > 0, "pools were there to be seen");
    app.stop().await;
}
