//! Paging through every pool (`ListPools`, `GetIpamState`): each pool once, in pool id order,
//! while pools are created and released between pages and all along.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use allot::engine::PoolId;
use allot::proto::pb;

use crate::helpers::*;

/// Which call pages.
#[derive(Clone, Copy, Debug)]
enum Lister {
    Pools,
    States,
}

impl Lister {
    /// One page: the ids on it and the next token.
    async fn page(self, c: &mut Client, size: i32, token: String) -> (Vec<PoolId>, String) {
        let (ids, next): (Vec<String>, String) = match self {
            Self::Pools => {
                let page = c
                    .list_pools(pb::ListPoolsRequest {
                        address_space: String::new(),
                        page_size: size,
                        page_token: token,
                    })
                    .await
                    .expect("ListPools page")
                    .into_inner();
                let ids = page.pools.into_iter().map(|p| p.pool_id).collect();
                (ids, page.next_page_token)
            }
            Self::States => {
                let page = c
                    .get_ipam_state(pb::GetIpamStateRequest {
                        pool_ids: Vec::new(),
                        page_size: size,
                        page_token: token,
                    })
                    .await
                    .expect("GetIpamState page")
                    .into_inner();
                for s in &page.pools {
                    assert!(s.error.is_empty(), "{s:?}");
                    assert!(s.allocated_ips_in_subnet >= 1, "{s:?}");
                }
                let ids = page.pools.into_iter().map(|p| p.pool_id).collect();
                (ids, page.next_page_token)
            }
        };
        let ids = ids.iter().map(|s| s.parse().expect("a pool id")).collect();
        (ids, next)
    }
}

async fn create(c: &mut Client, space: &str, pool: &str, sub_pool: &str) -> PoolId {
    c.request_pool(pb::RequestPoolRequest {
        address_space: space.into(),
        pool: pool.into(),
        sub_pool: sub_pool.into(),
        v6: pool.contains(':'),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("pool {space} {pool} {sub_pool}: {e}"))
    .into_inner()
    .pool_id
    .parse()
    .expect("a pool id")
}

async fn release(c: &mut Client, id: &PoolId) {
    c.release_pool(pb::ReleasePoolRequest {
        pool_id: id.to_string(),
    })
    .await
    .unwrap_or_else(|e| panic!("release {id}: {e}"));
}

/// Pages through every pool, 7 at a time, releasing and creating pools ahead of the page
/// and behind it between pages, while another client creates and releases pools all along.
async fn pages_see_each_pool_once(backend: &str, c: &mut Client, lister: Lister) {
    // Kept all along: two spaces, IPv4 and IPv6, subnets shared by sub-pools.
    let mut kept = BTreeSet::new();
    for i in 0..30 {
        kept.insert(create(c, "global", &format!("10.3.{i}.0/24"), "").await);
        kept.insert(create(c, "local", &format!("10.1.{i}.0/24"), "").await);
    }
    for i in 0..10 {
        let net = format!("10.2.{i}.0/24");
        kept.insert(create(c, "local", &net, &format!("10.2.{i}.0/25")).await);
        kept.insert(create(c, "local", &net, &format!("10.2.{i}.128/25")).await);
        kept.insert(create(c, "local", &format!("fd00:{i}::/64"), "").await);
    }
    // Released one per page, some before the cursor reaches them and some after.
    let mut doomed = Vec::new();
    for i in 0..30 {
        doomed.push(create(c, "local", &format!("10.4.{i}.0/24"), "").await);
    }

    // Churn beside the paging: pools of their own, created and released all along.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (mut c, stop) = (c.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) && k < 32_768 {
                let net = format!("10.{}.{}.0/24", 128 + k / 256, k % 256);
                let id = create(&mut c, "local", &net, "").await;
                if !k.is_multiple_of(3) {
                    release(&mut c, &id).await;
                }
                k += 1;
            }
            k
        })
    };

    let mut seen: Vec<PoolId> = Vec::new();
    let (mut must, mut must_not) = (kept.clone(), BTreeSet::new());
    let mut token = String::new();
    let mut step = 0usize;
    loop {
        let (ids, next) = lister.page(c, 7, token).await;
        assert!(
            ids.len() <= 7,
            "{backend} {lister:?}: {} on a page of 7",
            ids.len()
        );
        if !next.is_empty() {
            match lister {
                Lister::Pools => {
                    assert_eq!(
                        ids.len(),
                        7,
                        "{backend} {lister:?}: a short page before the last"
                    );
                    assert_eq!(Some(&next), ids.last().map(ToString::to_string).as_ref());
                }
                // A page of states leaves out a pool the churn released between its listing
                // and its state (as GetIpamState documents), so it may be short; its token is
                // still the last pool listed, at or past every pool on the page.
                Lister::States => {
                    let cursor: PoolId = next.parse().expect("the token is a pool id");
                    assert!(
                        ids.iter().all(|id| *id <= cursor),
                        "{backend} {lister:?}: token {cursor} before a pool of its page"
                    );
                }
            }
        }
        seen.extend(ids);
        if next.is_empty() {
            break;
        }
        let cursor: PoolId = next.parse().expect("the token is the last pool id");
        // Between pages: release a doomed pool, create one in each space.
        if let Some(gone) = (!doomed.is_empty()).then(|| doomed.remove((step * 7) % doomed.len())) {
            release(c, &gone).await;
            if gone > cursor {
                must_not.insert(gone);
            }
        }
        for (space, net) in [
            ("local", format!("10.5.{step}.0/24")),
            ("global", format!("10.7.{step}.0/24")),
        ] {
            let made = create(c, space, &net, "").await;
            if made > cursor {
                must.insert(made);
            } else {
                must_not.insert(made);
            }
        }
        step += 1;
        token = next;
    }
    stop.store(true, Ordering::Relaxed);
    let churned = churn.await.expect("churn");

    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "{backend} {lister:?}: not in strictly increasing pool id order"
    );
    let seen: BTreeSet<PoolId> = seen.into_iter().collect();
    let missed: Vec<_> = must.difference(&seen).collect();
    assert!(missed.is_empty(), "{backend} {lister:?}: missed {missed:?}");
    let wrong: Vec<_> = must_not.intersection(&seen).collect();
    assert!(wrong.is_empty(), "{backend} {lister:?}: listed {wrong:?}");
    assert!(step >= 15, "{backend} {lister:?}: only {step} pages");
    assert!(churned > 0, "{backend} {lister:?}: the churn did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_pool_once_while_pools_come_and_go() {
    for (backend, store, _keep) in backends().await {
        for lister in [Lister::Pools, Lister::States] {
            let app = spawn_app(Arc::clone(&store)).await;
            let mut c = app.client.clone();
            pages_see_each_pool_once(backend, &mut c, lister).await;
            // Start the next round from no pools.
            let (every, next) = Lister::Pools.page(&mut c, 10_000, String::new()).await;
            assert!(next.is_empty());
            for id in every {
                release(&mut c, &id).await;
            }
            app.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_have_a_default_and_a_largest_size_and_the_cli_follows_them() {
    let app = spawn_app(Arc::new(allot::store::MemoryStore::new())).await;
    let n = 10_001;
    let mut made = BTreeSet::new();
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..8 {
        let mut c = app.client.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for k in (part..n).step_by(8) {
                let net = format!("10.{}.{}.0/24", k / 256, k % 256);
                ids.push(create(&mut c, "local", &net, "").await);
            }
            ids
        });
    }
    while let Some(ids) = tasks.join_next().await {
        made.extend(ids.expect("creating pools"));
    }
    assert_eq!(made.len(), n);
    let mut c = app.client.clone();
    for lister in [Lister::Pools, Lister::States] {
        // Default: 1000 a page.
        let (ids, next) = lister.page(&mut c, 0, String::new()).await;
        assert_eq!(ids.len(), 1000, "{lister:?}");
        assert_eq!(ids, made.iter().take(1000).cloned().collect::<Vec<_>>());
        assert_eq!(next, ids[999].to_string());
        // More than the largest page is read as the largest, 10,000.
        let (ids, next) = lister.page(&mut c, 1_000_000, String::new()).await;
        assert_eq!(ids.len(), 10_000, "{lister:?}");
        let (rest, last) = lister.page(&mut c, 1_000_000, next).await;
        assert_eq!(rest, made.iter().skip(10_000).cloned().collect::<Vec<_>>());
        assert!(last.is_empty());
    }

    // Refused: a negative size, a token no page gave, paging while naming pools.
    let refused = [
        c.list_pools(pb::ListPoolsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .map(|_| ()),
        c.list_pools(pb::ListPoolsRequest {
            page_token: "10.0.0.0/24".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        c.get_ipam_state(pb::GetIpamStateRequest {
            page_token: "local/10.0.0.0/33".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        c.get_ipam_state(pb::GetIpamStateRequest {
            pool_ids: vec!["local/10.0.0.0/24".into()],
            page_size: 5,
            ..Default::default()
        })
        .await
        .map(|_| ()),
    ];
    for (i, r) in refused.into_iter().enumerate() {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{i}: {e:?}");
        assert!(e.message().contains("page_"), "{i}: {}", e.message());
    }

    // The CLI follows the pages: every pool listed, every state shown.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_allot"))
            .arg("--server")
            .arg(app.addr.to_string())
            .args(args)
            .output()
            .expect("run allot");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let listed = run(&["pool", "list"]);
    let listed: Vec<PoolId> = listed.lines().map(|l| l.parse().expect("id")).collect();
    assert_eq!(listed, made.iter().cloned().collect::<Vec<_>>());
    let table = run(&["state"]);
    assert_eq!(table.lines().count(), n + 1, "a header and a row per pool");
    let json: serde_json::Value =
        serde_json::from_str(&run(&["state", "--output", "json"])).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(n));
    app.stop().await;
}
