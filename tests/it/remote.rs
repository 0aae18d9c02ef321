//! The full loop: gRPC → allot A's `remote` driver → the plugin socket of allot B (a second
//! real process) → B's built-in driver. A tracks what passes through it, so `GetIpamState`
//! answers on both sides, and agrees; pools of all three drivers come back in one call.

use allot::proto::pb;
use tonic::Code;

use crate::helpers::*;

fn counts(s: &pb::PoolState) -> (u64, u64, u64) {
    (
        s.allocated_ips_in_subnet,
        s.available_ips_in_ip_range_pool,
        s.available_ips_in_subnet_ranges,
    )
}

async fn pool_in(
    c: &mut Client,
    space: &str,
    pool: &str,
    sub_pool: &str,
) -> Result<String, tonic::Status> {
    c.request_pool(pb::RequestPoolRequest {
        address_space: space.into(),
        pool: pool.into(),
        sub_pool: sub_pool.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().pool_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_plugin_is_driven_and_tracked_and_both_sides_agree() {
    let dir = TempDir::new("remote");
    let b_dir = dir.0.join("b");
    let a_dir = dir.0.join("a");
    std::fs::create_dir_all(&b_dir).unwrap();
    std::fs::create_dir_all(&a_dir).unwrap();
    let socket = b_dir.join("plugin.sock");
    let b_url = format!("sqlite://{}", b_dir.join("allot.db").display());
    let a_url = format!("sqlite://{}", a_dir.join("allot.db").display());
    let b_flags = [
        "--docker-plugin-socket".to_owned(),
        socket.display().to_string(),
    ];
    let b_flags: Vec<&str> = b_flags.iter().map(String::as_str).collect();
    let route = format!(
        "space=far,driver=remote,endpoint=unix://{},timeout=2s",
        socket.display()
    );
    let a_flags = ["--address-space", route.as_str()];
    // A starts while the plugin is not there yet: only its space is unavailable.
    let a = Server::start_with(&a_url, &a_dir, &a_flags);
    let mut ca = a.client().await;
    let err = pool_in(&mut ca, "far", "10.60.0.0/24", "10.60.0.128/25")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    request_pool(&mut ca, "10.59.0.0/24", "")
        .await
        .expect("the built-in spaces work meanwhile");
    let b = Server::start_with(&b_url, &b_dir, &b_flags);
    wait_for_socket(&socket).await;
    let mut cb = b.client().await;

    // Through A, in its space "far", served by B's default local space.
    let id = pool_in(&mut ca, "far", "10.60.0.0/24", "10.60.0.128/25")
        .await
        .unwrap();
    assert_eq!(id, "far/10.60.0.0/24/10.60.0.128/25");
    let gateway = [("RequestAddressType", "com.docker.network.gateway")];
    assert_eq!(
        request_address(&mut ca, &id, "10.60.0.1", &gateway)
            .await
            .unwrap(),
        "10.60.0.1/24"
    );
    assert_eq!(
        request_address(&mut ca, &id, "", &[]).await.unwrap(),
        "10.60.0.128/24"
    );
    assert_eq!(
        request_address(&mut ca, &id, "", &[]).await.unwrap(),
        "10.60.0.129/24"
    );
    release_address(&mut ca, &id, "10.60.0.128").await.unwrap();
    // B's refusal comes back through A.
    let err = request_address(&mut ca, &id, "10.60.0.129", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("10.60.0.129"), "{err:?}");

    // Options go to the remote plugin; the built-in driver takes none.
    let with_option = |space: &str, pool: &str| pb::RequestPoolRequest {
        address_space: space.into(),
        pool: pool.into(),
        options: [("com.example.network-view".to_owned(), "lab".to_owned())].into(),
        ..Default::default()
    };
    let opt_id = ca
        .request_pool(with_option("far", "10.62.0.0/24"))
        .await
        .unwrap()
        .into_inner()
        .pool_id;
    let err = ca
        .request_pool(with_option("local", "10.63.0.0/24"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("com.example.network-view"),
        "{err:?}"
    );
    ca.release_pool(pb::ReleasePoolRequest { pool_id: opt_id })
        .await
        .unwrap();

    // Both sides agree: A from its record (tracked), B from its driver.
    let on_a = state(&mut ca, &id).await;
    let on_b = state(&mut cb, "local/10.60.0.0/24/10.60.0.128/25").await;
    assert_eq!(counts(&on_a), (4, 126, 126), "{on_a:?}");
    assert_eq!(counts(&on_a), counts(&on_b));
    assert_eq!(
        (on_a.driver.as_str(), on_a.source()),
        ("remote", pb::UtilizationSource::Tracked)
    );
    assert_eq!(
        (on_b.driver.as_str(), on_b.source()),
        ("builtin", pb::UtilizationSource::Driver)
    );

    // Pools of all three drivers in one call, each marked by its source.
    let local = request_pool(&mut ca, "10.61.0.0/24", "").await.unwrap();
    let null = pool_in(&mut ca, "null", "", "").await.unwrap();
    let all = ca
        .get_ipam_state(pb::GetIpamStateRequest {
            pool_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pools;
    let seen: Vec<(&str, &str, pb::UtilizationSource)> = all
        .iter()
        .map(|s| (s.pool_id.as_str(), s.driver.as_str(), s.source()))
        .collect();
    assert_eq!(
        seen,
        [
            (id.as_str(), "remote", pb::UtilizationSource::Tracked),
            (
                "local/10.59.0.0/24",
                "builtin",
                pb::UtilizationSource::Driver
            ),
            (local.as_str(), "builtin", pb::UtilizationSource::Driver),
            (null.as_str(), "null", pb::UtilizationSource::Driver),
        ]
    );

    // A restart of A keeps the plugin's pool ids and the record.
    drop(ca);
    assert_eq!(a.terminate().code(), Some(0));
    let a = Server::start_with(&a_url, &a_dir, &a_flags);
    let mut ca = a.client().await;
    assert_eq!(counts(&state(&mut ca, &id).await), (4, 126, 126));
    assert_eq!(
        request_address(&mut ca, &id, "", &[]).await.unwrap(),
        "10.60.0.128/24"
    );

    // The plugin down: A's calls fail with UNAVAILABLE, its tracked state still answers, and
    // it works again when the plugin is back.
    drop(cb);
    assert_eq!(b.terminate().code(), Some(0));
    let err = request_address(&mut ca, &id, "", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "remote driver unavailable, retry later");
    assert_eq!(counts(&state(&mut ca, &id).await), (5, 125, 125));
    let b = Server::start_with(&b_url, &b_dir, &b_flags);
    wait_for_socket(&socket).await;
    assert_eq!(
        request_address(&mut ca, &id, "", &[]).await.unwrap(),
        "10.60.0.130/24"
    );
    let mut cb = b.client().await;
    assert_eq!(
        counts(&state(&mut ca, &id).await),
        counts(&state(&mut cb, "local/10.60.0.0/24/10.60.0.128/25").await)
    );

    // Releasing the pool through A releases it at B.
    ca.release_pool(pb::ReleasePoolRequest {
        pool_id: id.clone(),
    })
    .await
    .unwrap();
    let left = cb
        .list_pools(pb::ListPoolsRequest {
            address_space: "local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        request_address(&mut ca, &id, "", &[])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}
