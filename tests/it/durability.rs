//! The real binary on a SQLite file: restarts keep everything, kill -9 loses no acknowledged
//! allocation, SIGTERM finishes what is in flight and exits cleanly.

use std::sync::{Arc, Mutex};

use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn a_restart_keeps_pools_addresses_state_and_the_serial_cursor() {
    let dir = TempDir::new("restart");
    let url = dir.db_url();
    let server = Server::start(&url, &dir.0);
    let mut c = server.client().await;
    let id = request_pool(&mut c, "192.168.10.0/24", "192.168.10.128/31")
        .await
        .unwrap();
    let v6 = request_pool(&mut c, "fd00:5::/64", "").await.unwrap();
    request_address(&mut c, &id, "192.168.10.1", &[])
        .await
        .unwrap();
    request_address(&mut c, &id, "192.168.10.128", &[])
        .await
        .unwrap();
    let serial = [("com.docker.network.ipam.serial", "true")];
    for _ in 0..3 {
        request_address(&mut c, &v6, "", &serial).await.unwrap();
    }
    release_address(&mut c, &v6, "fd00:5::2").await.unwrap();
    let before = (state(&mut c, &id).await, state(&mut c, &v6).await);
    drop(c);
    assert_eq!(server.terminate().code(), Some(0));

    let server = Server::start(&url, &dir.0);
    let mut c = server.client().await;
    assert_eq!((state(&mut c, &id).await, state(&mut c, &v6).await), before);
    assert_eq!(
        request_address(&mut c, &id, "192.168.10.1", &[])
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        request_address(&mut c, &v6, "", &serial).await.unwrap(),
        "fd00:5::4/64",
        "the serial cursor survived: not the freed ::2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_allocation() {
    let dir = TempDir::new("kill9");
    let url = dir.db_url();
    let server = Server::start(&url, &dir.0);
    let mut c = server.client().await;
    let id = request_pool(&mut c, "10.40.0.0/16", "").await.unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (mut c, id, acked) = (server.client().await, id.clone(), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            // Until the server dies under us.
            while let Ok(a) = request_address(&mut c, &id, "", &[]).await {
                acked.lock().unwrap().push(a);
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = Server::start(&url, &dir.0);
    let mut c = server.client().await;
    for a in &acked {
        let addr = a.split('/').next().unwrap();
        let err = request_address(&mut c, &id, addr, &[]).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::AlreadyExists,
            "{a} was acknowledged, then lost"
        );
    }
    let in_use = state(&mut c, &id).await.allocated_ips_in_subnet;
    // Requests in flight at the kill may have committed without a reply: never fewer.
    assert!(
        in_use >= acked.len() as u64 + 2,
        "{in_use} < {} + 2",
        acked.len()
    );
}

/// kill -9 while 64 clients allocate and release over 16 pools, so that the group commit's
/// transactions carry many subnets' changes: every acknowledged change survives, an
/// allocation as an address in use, a release as a free one (serial allocation never comes
/// back to a released address here). On SQLite and on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_batch_across_subnets_loses_no_acknowledged_change() {
    let dir = TempDir::new("kill9-batch");
    let pg = PgDb::fresh("kill9_batch").await;
    for url in [dir.db_url(), pg.url.clone()] {
        kill_9_under_load_on_16_pools(&url, &dir.0).await;
    }
}

async fn kill_9_under_load_on_16_pools(url: &str, dir: &std::path::Path) {
    const POOLS: usize = 16;
    const CLIENTS: usize = 64;
    let server = Server::start(url, dir);
    let mut c = server.client().await;
    let mut pools = Vec::new();
    for i in 0..POOLS {
        let id = request_pool(&mut c, &format!("10.{}.0.0/16", 100 + i), "")
            .await
            .unwrap();
        // Addresses the clients release while the others allocate past them.
        for j in 1..=CLIENTS / POOLS * 8 {
            let want = format!("10.{}.0.{j}", 100 + i);
            request_address(&mut c, &id, &want, &[]).await.unwrap();
        }
        pools.push(id);
    }
    let allocated = Arc::new(Mutex::new(Vec::new()));
    let released = Arc::new(Mutex::new(Vec::new()));
    let serial = [("com.docker.network.ipam.serial", "true")];
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (mut c, id) = (server.client().await, pools[client % POOLS].clone());
        let (allocated, released) = (Arc::clone(&allocated), Arc::clone(&released));
        let pool = 100 + client % POOLS;
        // Each client releases addresses of its own among those taken above.
        let mut mine = (0..8).map(move |k| format!("10.{pool}.0.{}", client / POOLS * 8 + k + 1));
        tasks.push(tokio::spawn(async move {
            // Until the server dies under us.
            loop {
                match request_address(&mut c, &id, "", &serial).await {
                    Ok(a) => allocated.lock().unwrap().push((id.clone(), a)),
                    Err(_) => return,
                }
                if let Some(addr) = mine.next() {
                    match release_address(&mut c, &id, &addr).await {
                        Ok(()) => released.lock().unwrap().push((id.clone(), addr)),
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    while allocated.lock().unwrap().len() < 2_000 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let allocated = allocated.lock().unwrap().clone();
    let released = released.lock().unwrap().clone();
    assert!(!released.is_empty(), "some releases were acknowledged");

    let server = Server::start(url, dir);
    let mut c = server.client().await;
    for (id, a) in &allocated {
        let addr = a.split('/').next().unwrap();
        let err = request_address(&mut c, id, addr, &[]).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::AlreadyExists,
            "{a} in {id} was acknowledged, then lost"
        );
    }
    for (id, addr) in &released {
        request_address(&mut c, id, addr, &[])
            .await
            .unwrap_or_else(|e| panic!("{addr} in {id} was released, then in use again: {e}"));
    }
    server.kill9();
}

#[tokio::test]
async fn sigterm_stops_cleanly() {
    let dir = TempDir::new("sigterm");
    let server = Server::start(&dir.db_url(), &dir.0);
    let mut c = server.client().await;
    request_pool(&mut c, "10.41.0.0/24", "").await.unwrap();
    drop(c);
    assert_eq!(server.terminate().code(), Some(0));
}

/// A client that keeps its connection open cannot hold the server up past the grace period.
#[tokio::test]
async fn an_idle_client_does_not_block_shutdown() {
    let dir = TempDir::new("idle");
    let server = Server::start(&dir.db_url(), &dir.0);
    let mut c = server.client().await;
    request_pool(&mut c, "10.42.0.0/24", "").await.unwrap();
    let exited = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::task::spawn_blocking(move || server.terminate()),
    )
    .await
    .expect("the server exits despite the open connection")
    .unwrap();
    assert_eq!(exited.code(), Some(0));
    drop(c);
}
