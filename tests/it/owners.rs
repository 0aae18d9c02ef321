//! Owned allocations through the API (issue #11, first part): a retry by the same owner gets
//! the same address, even when the first reply was lost; a release naming an owner must name
//! the holder; owners survive a restart and hold across two replicas asking at once.

use std::time::Duration;

use allot::proto::pb;
use tonic::Code;

use crate::helpers::*;
use crate::replicas::wait_until_listed;

fn ask(pool_id: &str, owner: &str) -> pb::RequestAddressRequest {
    pb::RequestAddressRequest {
        pool_id: pool_id.into(),
        owner: owner.into(),
        ..Default::default()
    }
}

/// Runs the real `allot` client against `server`; its stdout, once it succeeded.
fn cli(server: &Server, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["--server", &server.addr.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn address(c: &mut Client, pool_id: &str, owner: &str) -> Result<String, tonic::Status> {
    c.request_address(ask(pool_id, owner))
        .await
        .map(|r| r.into_inner().address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_asking_again_gets_the_same_address() {
    for (backend, store, _keep) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let pool = request_pool(&mut c, "10.40.0.0/24", "").await.unwrap();
        let a = address(&mut c, &pool, "c1/eth0").await.unwrap();
        assert_eq!(a, "10.40.0.1/24", "{backend}");
        assert_eq!(
            address(&mut c, &pool, "c1/eth0").await.unwrap(),
            a,
            "{backend}: a retry"
        );
        assert_eq!(
            address(&mut c, &pool, "c2/eth0").await.unwrap(),
            "10.40.0.2/24"
        );
        assert_eq!(
            address(&mut c, &pool, "").await.unwrap(),
            "10.40.0.3/24",
            "no owner"
        );
        assert_eq!(
            address(&mut c, &pool, "").await.unwrap(),
            "10.40.0.4/24",
            "no owner"
        );
        assert_eq!(
            state(&mut c, &pool).await.allocated_ips_in_subnet,
            6,
            "{backend}"
        );
        // A release naming another owner is refused, naming the holder.
        let refused = c
            .release_address(pb::ReleaseAddressRequest {
                pool_id: pool.clone(),
                address: "10.40.0.1".into(),
                owner: "c2/eth0".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{backend}");
        assert!(
            refused.message().contains("held by c1/eth0"),
            "{}",
            refused.message()
        );
        c.release_address(pb::ReleaseAddressRequest {
            pool_id: pool.clone(),
            address: "10.40.0.1".into(),
            owner: "c1/eth0".into(),
        })
        .await
        .unwrap();
        // A malformed owner.
        let bad = address(&mut c, &pool, &"x".repeat(257)).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{backend}");
        app.stop().await;
    }
}

/// A reply lost: a call whose deadline passed after the server took it (the server goes on
/// and commits; the caller sees DEADLINE_EXCEEDED). Deadlines are tried from short to long
/// until one such call happened, seen as a failed call whose address is in use nonetheless;
/// the retry then gets that address, and no second one is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_reply_takes_no_second_address() {
    for (backend, store, _keep) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let pool = request_pool(&mut c, "10.41.0.0/24", "").await.unwrap();
        let mut lost_once = false;
        for (i, micros) in [20, 50, 100, 200, 400, 800, 1_600, 3_200, 6_400]
            .iter()
            .enumerate()
        {
            let owner = format!("c{i}/eth0");
            let before = state(&mut c, &pool).await.allocated_ips_in_subnet;
            let mut call = tonic::Request::new(ask(&pool, &owner));
            call.set_timeout(Duration::from_micros(*micros));
            if c.request_address(call).await.is_ok() {
                continue;
            }
            // Whatever the call set going is committed by now (its batch runs on without it).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let after = state(&mut c, &pool).await.allocated_ips_in_subnet;
            if after == before {
                continue; // the call never reached the driver
            }
            assert_eq!(after, before + 1, "{backend}");
            let again = address(&mut c, &pool, &owner).await.unwrap();
            let held = state(&mut c, &pool).await.allocated_ips_in_subnet;
            assert_eq!(
                held, after,
                "{backend}: the retry took no second address ({again})"
            );
            lost_once = true;
            break;
        }
        // On a store that commits in microseconds (memory) no deadline may fall between the
        // commit and the reply; on disk it always does.
        if backend != "memory" {
            assert!(
                lost_once,
                "{backend}: no reply was ever lost after its commit"
            );
        }
        app.stop().await;
    }
}

/// Owners are stored: after a restart (the real binary, SQLite), the owner still gets its
/// address back, through the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_survive_a_restart() {
    let dir = TempDir::new("owners-restart");
    let server = Server::start(&dir.db_url(), &dir.0);
    cli(&server, &["pool", "request", "--pool", "10.42.0.0/24"]);
    let first = cli(
        &server,
        &[
            "address",
            "request",
            "local/10.42.0.0/24",
            "--owner",
            "c1/eth0",
        ],
    );
    cli(&server, &["address", "request", "local/10.42.0.0/24"]);
    assert_eq!(server.terminate().code(), Some(0));
    let server = Server::start(&dir.db_url(), &dir.0);
    let again = cli(
        &server,
        &[
            "address",
            "request",
            "local/10.42.0.0/24",
            "--owner",
            "c1/eth0",
        ],
    );
    assert_eq!(again, first);
    cli(
        &server,
        &[
            "address",
            "release",
            "local/10.42.0.0/24",
            "10.42.0.1",
            "--owner",
            "c1/eth0",
        ],
    );
}

/// The same owner through two replicas at once (one Postgres): one address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_give_one_owner_one_address() {
    let db = PgDb::fresh("owners").await;
    let dir = TempDir::new("owners-replicas");
    let a = Server::start(&db.url, &dir.0);
    let b = Server::start(&db.url, &dir.0);
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let pool = request_pool(&mut ca, "10.43.0.0/24", "").await.unwrap();
    wait_until_listed(&mut cb, &[pool.as_str()]).await;
    for round in 0..20 {
        let owner = format!("c{round}/eth0");
        let (x, y) = tokio::join!(
            address(&mut ca, &pool, &owner),
            address(&mut cb, &pool, &owner)
        );
        assert_eq!(x.unwrap(), y.unwrap(), "round {round}");
    }
    let s = state(&mut ca, &pool).await;
    assert_eq!(s.allocated_ips_in_subnet, 2 + 20, "one address per owner");
}

/// ListAllocations: pages in address order, owners and times, a prefix filter, bad tokens
/// refused; the CLI follows the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_are_listed_page_by_page() {
    for (backend, store, _keep) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let pool = request_pool(&mut c, "10.44.0.0/24", "").await.unwrap();
        for i in 0..25 {
            let owner = if i % 5 == 0 {
                format!("k8s/pod{i}/eth0")
            } else {
                String::new()
            };
            address(&mut c, &pool, &owner).await.unwrap();
        }
        let page = |token: &str, size: i32, prefix: &str| pb::ListAllocationsRequest {
            pool_id: pool.clone(),
            owner_prefix: prefix.into(),
            page_size: size,
            page_token: token.into(),
        };
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let r = c
                .list_allocations(page(&token, 10, ""))
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            seen.extend(r.allocations);
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        assert_eq!(pages, 3, "{backend}: 10 + 10 + 5");
        let addresses: Vec<String> = seen.iter().map(|a| a.address.clone()).collect();
        let want: Vec<String> = (1..=25).map(|i| format!("10.44.0.{i}")).collect();
        assert_eq!(addresses, want, "{backend}");
        assert_eq!(seen[0].owner, "k8s/pod0/eth0");
        let at = seen[0].allocated_at.expect("an owner's time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            u64::try_from(at.seconds).unwrap().abs_diff(now) < 60,
            "{at:?}"
        );
        assert!(seen[1].owner.is_empty() && seen[1].allocated_at.is_none());
        // Owners with a prefix only.
        let owned = c
            .list_allocations(page("", 0, "k8s/"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(owned.allocations.len(), 5, "{backend}");
        assert!(owned.next_page_token.is_empty());
        // A token that is not this pool's, a negative size: INVALID_ARGUMENT.
        for bad in [
            page("192.168.0.1", 10, ""),
            page("x", 10, ""),
            page("", -1, ""),
        ] {
            let e = c.list_allocations(bad).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{backend}: {e:?}");
        }
        app.stop().await;
    }
}

/// `allot address list` follows the pages and shows owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_allocations() {
    let dir = TempDir::new("owners-cli");
    let server = Server::start(&dir.db_url(), &dir.0);
    cli(&server, &["pool", "request", "--pool", "10.45.0.0/16"]);
    let mut c = server.client().await;
    for i in 0..1500 {
        let owner = if i == 1200 { "c1/eth0" } else { "" };
        address(&mut c, "local/10.45.0.0/16", owner).await.unwrap();
    }
    let all = cli(&server, &["address", "list", "local/10.45.0.0/16"]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(
        lines.len(),
        1 + 1500,
        "a header and every address, over two pages"
    );
    assert!(lines[0].starts_with("ADDRESS "));
    assert!(lines[1].starts_with("10.45.0.1 "));
    let owned = cli(
        &server,
        &["address", "list", "local/10.45.0.0/16", "--owner", "c1/"],
    );
    let lines: Vec<&str> = owned.lines().collect();
    assert_eq!(lines.len(), 2, "{owned}");
    assert!(
        lines[1].starts_with("10.45.4.177 ") && lines[1].contains("c1/eth0"),
        "{owned}"
    );
    // allot gc: c1 is not in the live list, so its address goes (after a dry run).
    let live = dir.0.join("live");
    std::fs::write(&live, "c2/eth0\n").unwrap();
    let live = live.display().to_string();
    let gc = |dry: bool| {
        let mut args = vec![
            "gc",
            "local/10.45.0.0/16",
            "--live-owners-file",
            live.as_str(),
        ];
        if dry {
            args.push("--dry-run");
        }
        cli(&server, &args)
    };
    assert_eq!(gc(true), "would release 10.45.4.177 (c1/eth0)\n");
    assert_eq!(gc(false), "released 10.45.4.177 (c1/eth0)\n");
    assert_eq!(gc(false), "");
}

/// ReleaseOwner takes back everything an owner holds (in the pools named, or everywhere);
/// GarbageCollect what owners not alive have held long enough, never an unowned address, and
/// a dry run only lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_are_released_and_collected() {
    for (backend, store, _keep) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let p1 = request_pool(&mut c, "10.46.0.0/24", "").await.unwrap();
        let p2 = request_pool(&mut c, "10.47.0.0/24", "").await.unwrap();
        for pool in [&p1, &p2] {
            address(&mut c, pool, "dead/eth0").await.unwrap();
            address(&mut c, pool, "alive/eth0").await.unwrap();
            address(&mut c, pool, "").await.unwrap();
        }
        // A second address of the dead owner, asked for by name.
        c.request_address(pb::RequestAddressRequest {
            pool_id: p1.clone(),
            address: "10.46.0.9".into(),
            owner: "dead/eth0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let gc = |dry_run: bool, min_age_seconds: i64| pb::GarbageCollectRequest {
            pool_ids: vec![p1.clone()],
            live_owners: vec!["alive/eth0".into()],
            min_age_seconds,
            dry_run,
        };
        let listed = |r: &[pb::Released]| -> Vec<String> {
            r.iter()
                .map(|x| format!("{} {}", x.address, x.owner))
                .collect()
        };
        // Too young to collect.
        let young = c
            .garbage_collect(gc(false, 3600))
            .await
            .unwrap()
            .into_inner();
        assert!(young.collected.is_empty(), "{backend}");
        let dry = c.garbage_collect(gc(true, 0)).await.unwrap().into_inner();
        assert_eq!(
            listed(&dry.collected),
            ["10.46.0.1 dead/eth0", "10.46.0.9 dead/eth0"]
        );
        assert_eq!(
            state(&mut c, &p1).await.allocated_ips_in_subnet,
            6,
            "{backend}: dry"
        );
        let done = c.garbage_collect(gc(false, 0)).await.unwrap().into_inner();
        assert_eq!(listed(&done.collected), listed(&dry.collected), "{backend}");
        assert_eq!(
            state(&mut c, &p1).await.allocated_ips_in_subnet,
            4,
            "{backend}"
        );
        // The alive owner's addresses, everywhere.
        let released = c
            .release_owner(pb::ReleaseOwnerRequest {
                owner: "alive/eth0".into(),
                pool_ids: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            released
                .released
                .iter()
                .map(|r| format!("{} {}", r.pool_id, r.address))
                .collect::<Vec<_>>(),
            [
                "local/10.46.0.0/24 10.46.0.2",
                "local/10.47.0.0/24 10.47.0.2"
            ],
            "{backend}"
        );
        // Unowned addresses stay; the dead owner still holds p2's, untouched by p1's GC.
        assert_eq!(
            state(&mut c, &p1).await.allocated_ips_in_subnet,
            3,
            "{backend}"
        );
        assert_eq!(
            state(&mut c, &p2).await.allocated_ips_in_subnet,
            4,
            "{backend}"
        );
        // Bad requests.
        let no_owner = c
            .release_owner(pb::ReleaseOwnerRequest::default())
            .await
            .unwrap_err();
        assert_eq!(no_owner.code(), Code::InvalidArgument);
        let no_pool = c
            .garbage_collect(pb::GarbageCollectRequest::default())
            .await
            .unwrap_err();
        assert_eq!(no_pool.code(), Code::InvalidArgument);
        app.stop().await;
    }
}

/// RequestPool with a request_id: a retry returns the same pool (exact and dynamic), on
/// another replica too; an id reused for another request, or whose pool was released, says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_pool_request_returns_the_same_pool() {
    let ask = |pool: &str, request_id: &str| pb::RequestPoolRequest {
        address_space: "local".into(),
        pool: pool.into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    for (backend, store, _keep) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let made = |r: Result<tonic::Response<pb::RequestPoolResponse>, tonic::Status>| {
            r.map(|r| r.into_inner().pool_id)
        };
        let first = made(c.request_pool(ask("10.48.0.0/24", "net-1")).await).unwrap();
        let again = made(c.request_pool(ask("10.48.0.0/24", "net-1")).await).unwrap();
        assert_eq!(again, first, "{backend}: not ALREADY_EXISTS");
        // Dynamic: the next free subnet once, not twice.
        let d1 = made(c.request_pool(ask("", "net-2")).await).unwrap();
        let d2 = made(c.request_pool(ask("", "net-2")).await).unwrap();
        assert_eq!(d1, d2, "{backend}");
        // Without an id, as before.
        let dup = c.request_pool(ask("10.48.0.0/24", "")).await.unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists);
        // Reused for another request; its pool released since.
        let other = c
            .request_pool(ask("10.49.0.0/24", "net-1"))
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::InvalidArgument, "{backend}: {other:?}");
        c.release_pool(pb::ReleasePoolRequest {
            pool_id: first.clone(),
        })
        .await
        .unwrap();
        let gone = c
            .request_pool(ask("10.48.0.0/24", "net-1"))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{backend}: {gone:?}");
        app.stop().await;
    }
}

/// The same request_id through two replicas at once (one Postgres): one pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_make_one_pool_of_one_request_id() {
    let db = PgDb::fresh("request_ids").await;
    let dir = TempDir::new("request-ids");
    let a = Server::start(&db.url, &dir.0);
    let b = Server::start(&db.url, &dir.0);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    for round in 0..10 {
        let ask = pb::RequestPoolRequest {
            address_space: "local".into(),
            request_id: format!("net-{round}"),
            ..Default::default()
        };
        let (x, y) = tokio::join!(ca.request_pool(ask.clone()), cb.request_pool(ask));
        let (x, y) = (x.unwrap().into_inner(), y.unwrap().into_inner());
        assert_eq!(x.pool_id, y.pool_id, "round {round}");
    }
    // A pool the loser of a race made and released reaches the other replica's cache a few
    // milliseconds later: wait for the listings to settle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pools = ca
            .list_pools(pb::ListPoolsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .pools;
        if pools.len() == 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "one pool per request id: {pools:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
