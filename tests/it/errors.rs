//! Every error code, with a message naming the pool and address; malformed input never
//! panics the server.

use std::collections::HashMap;
use std::sync::Arc;

use allot::proto::pb;
use allot::store::{SqliteStore, Store};
use sqlx::Connection;
use tonic::Code;

use crate::helpers::*;

fn check(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, words: &[&str]) {
    let err = r.expect_err("an error");
    assert_eq!(err.code(), code, "{err:?}");
    for w in words {
        assert!(err.message().contains(w), "{:?} lacks {w:?}", err.message());
    }
}

#[tokio::test]
async fn every_error_has_its_code_and_names_what_it_concerns() {
    for (_, store, _dir) in backends().await {
        let app = spawn_app(store).await;
        let mut c = app.client.clone();
        let id = request_pool(&mut c, "10.9.0.0/30", "").await.unwrap();
        // ALREADY_EXISTS: overlap, and an address in use.
        check(
            request_pool(&mut c, "10.9.0.0/24", "").await,
            Code::AlreadyExists,
            &["10.9.0.0/24", "local/10.9.0.0/30"],
        );
        request_address(&mut c, &id, "10.9.0.1", &[]).await.unwrap();
        check(
            request_address(&mut c, &id, "10.9.0.1", &[]).await,
            Code::AlreadyExists,
            &["10.9.0.1", "local/10.9.0.0/30"],
        );
        // RESOURCE_EXHAUSTED: the /30 has two hosts.
        request_address(&mut c, &id, "", &[]).await.unwrap();
        check(
            request_address(&mut c, &id, "", &[]).await,
            Code::ResourceExhausted,
            &["local/10.9.0.0/30"],
        );
        // FAILED_PRECONDITION: the broadcast address is reserved.
        check(
            release_address(&mut c, &id, "10.9.0.3").await,
            Code::FailedPrecondition,
            &["10.9.0.3", "broadcast"],
        );
        // INVALID_ARGUMENT: an address outside the subnet.
        check(
            request_address(&mut c, &id, "10.9.1.1", &[]).await,
            Code::InvalidArgument,
            &["10.9.1.1", "outside", "10.9.0.0/30"],
        );
        // NOT_FOUND: a well-formed id of no pool, in every RPC that takes one.
        let missing = "local/10.77.0.0/16";
        check(
            request_address(&mut c, missing, "", &[]).await,
            Code::NotFound,
            &[missing],
        );
        check(
            release_address(&mut c, missing, "10.77.0.1").await,
            Code::NotFound,
            &[missing],
        );
        check(
            c.release_pool(pb::ReleasePoolRequest {
                pool_id: missing.into(),
            })
            .await,
            Code::NotFound,
            &[missing],
        );
        check(
            c.get_ipam_state(pb::GetIpamStateRequest {
                pool_ids: vec![missing.into()],
                ..Default::default()
            })
            .await,
            Code::NotFound,
            &[missing],
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn malformed_input_is_refused_and_the_server_keeps_serving() {
    let (_, store, _dir) = backends().await.remove(1);
    let app = spawn_app(store).await;
    let mut c = app.client.clone();
    let id = request_pool(&mut c, "10.8.0.0/24", "").await.unwrap();
    let huge = "9".repeat(3 << 20);
    let pool = |space: &str, pool: &str, sub_pool: &str, v6: bool| pb::RequestPoolRequest {
        address_space: space.into(),
        pool: pool.into(),
        sub_pool: sub_pool.into(),
        options: HashMap::new(),
        v6,
        ..Default::default()
    };
    let bad_pools = [
        pool("local", "10.1.2.300/24", "", false),
        pool("local", "10.1.2.0/33", "", false),
        pool("local", "10.1.2.5/24", "", false),
        pool("local", "fd00::/64", "", false),
        pool("local", "10.1.0.0/16", "fd00::/120", false),
        pool("local", "10.1.0.0/16", "10.2.0.0/24", false),
        pool("local", "", "10.1.0.0/24", false),
        pool("", "10.1.0.0/16", "", false),
        pool("no/such", "10.1.0.0/16", "", false),
        pool("nosuchspace", "10.1.0.0/16", "", false),
        pool("local", &huge, "", false),
        pool("local", "::ffff:10.0.0.0/120", "", true),
        pool("local", "010.001.000.000/24", "", false),
        pool("local", "10.1.0.0/024", "", false),
        pool("local", "\u{0}\u{ffff}", "", false),
        pb::RequestPoolRequest {
            options: HashMap::from([("colour".to_owned(), "red".to_owned())]),
            ..pool("local", "10.1.0.0/16", "", false)
        },
    ];
    for req in bad_pools {
        let shown = format!("{:.60?}", req.pool);
        let err = c.request_pool(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{shown}: {err:?}");
        assert!(err.message().len() < 300, "messages stay short: {shown}");
    }
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Code);
    let bad_addresses: [Case; 12] = [
        ("", "", &[], Code::InvalidArgument),
        (&id, "10.8.0.1/8", &[], Code::InvalidArgument),
        (&id, "010.008.000.005", &[], Code::InvalidArgument),
        (&id, "10.8.0.5/024", &[], Code::InvalidArgument),
        ("local", "", &[], Code::InvalidArgument),
        ("local/10.8.0.0/24/x", "", &[], Code::InvalidArgument),
        (&huge, "", &[], Code::InvalidArgument),
        ("local/10.99.0.0/24", "", &[], Code::NotFound),
        (&id, "banana", &[], Code::InvalidArgument),
        (&id, "fd00::1", &[], Code::InvalidArgument),
        (
            &id,
            "",
            &[("com.docker.network.ipam.serial", "yes")],
            Code::InvalidArgument,
        ),
        (
            &id,
            "",
            &[("com.example.unknown", "1")],
            Code::InvalidArgument,
        ),
    ];
    for (pool_id, address, options, code) in bad_addresses {
        let err = request_address(&mut c, pool_id, address, options)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{pool_id:.40} {address}: {err:?}");
    }
    let err = c
        .get_ipam_state(pb::GetIpamStateRequest {
            pool_ids: vec!["garbage".into()],
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    // Still serving, and nothing was allocated by the refused requests.
    assert_eq!(
        request_address(&mut c, &id, "", &[]).await.unwrap(),
        "10.8.0.1/24"
    );
    assert_eq!(state(&mut c, &id).await.allocated_ips_in_subnet, 3);
    // The subnet's own prefix length is welcome: it is how addresses are answered.
    assert_eq!(
        request_address(&mut c, &id, "10.8.0.9/24", &[])
            .await
            .unwrap(),
        "10.8.0.9/24"
    );
    app.stop().await;
}

/// A message with field 1 as a varint: `RequestPoolRequest` has a string there.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(uint64, tag = "1")]
    field: u64,
}

/// Bytes that do not decode as the request are the caller's mistake, not the server's.
#[tokio::test]
async fn undecodable_requests_are_invalid_argument() {
    let app = spawn_app(Arc::new(allot::store::MemoryStore::new())).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Garbage, pb::RequestPoolResponse>::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/ipam.v1.IpamService/RequestPool");
    let err = grpc
        .unary(tonic::Request::new(Garbage { field: 7 }), path, codec)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("malformed"), "{err:?}");
    app.stop().await;
}

/// Another process holding SQLite's write lock past the busy timeout: the request fails with
/// UNAVAILABLE (retryable), changes nothing, and succeeds once the lock is gone.
#[tokio::test]
async fn a_locked_database_is_unavailable_and_recovers() {
    let dir = TempDir::new("locked");
    let store = SqliteStore::connect(&dir.db_url()).await.unwrap();
    let app = spawn_app(Arc::new(store)).await;
    let mut c = app.client.clone();
    let id = request_pool(&mut c, "10.6.0.0/24", "").await.unwrap();
    let mut other = sqlx::SqliteConnection::connect(&dir.db_url())
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let err = request_address(&mut c, &id, "", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    assert_eq!(
        request_address(&mut c, &id, "", &[]).await.unwrap(),
        "10.6.0.1/24"
    );
    assert_eq!(state(&mut c, &id).await.allocated_ips_in_subnet, 3);
    app.stop().await;
}

/// A second `allot serve` on a SQLite file another one is serving refuses to start, naming
/// the file and the process holding it; the file is its owner's alone (0600).
#[tokio::test]
async fn a_sqlite_file_in_use_is_refused_and_private() {
    let dir = TempDir::new("two-writers");
    let url = dir.db_url();
    let first = Server::start(&url, &dir.0);
    let err = serve_refused(&url, &[]).await;
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let path = dir.0.join("allot.db");
    let pid = format!("pid {}", first.child.id());
    assert!(
        err.contains(&path.display().to_string()) && err.contains("in use") && err.contains(&pid),
        "{err}"
    );
    // The first one still serves.
    let mut c = first.client().await;
    request_pool(&mut c, "10.7.0.0/24", "").await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    for file in ["allot.db", "allot.db-wal"] {
        let mode = std::fs::metadata(dir.0.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
    // Once it is gone, the file is free again.
    drop(first);
    let second = Server::start(&url, &dir.0);
    let mut c = second.client().await;
    assert_eq!(
        request_pool(&mut c, "10.7.0.0/24", "")
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
}

/// Stored subnets that overlap (written by something other than allot) are refused at
/// startup with the two subnets named, not served.
#[tokio::test]
async fn overlapping_stored_subnets_are_refused_at_startup() {
    let dir = TempDir::new("overlap");
    {
        let store = SqliteStore::connect(&dir.db_url()).await.unwrap();
        for net in ["10.80.0.0/16", "10.80.0.0/24"] {
            let subnet = allot::engine::Subnet::with_pools(net.parse().unwrap(), [None]).unwrap();
            store
                .create_subnet("default", "local", &subnet)
                .await
                .unwrap();
        }
    }
    let err = serve_refused(&dir.db_url(), &[]).await;
    assert!(
        err.contains("10.80.0.0/16") && err.contains("10.80.0.0/24") && err.contains("overlaps"),
        "{err}"
    );
}

/// A subnet whose stored state is damaged: the client gets INTERNAL with no details (they go
/// to the log), and the other pools keep working.
#[tokio::test]
async fn corrupt_stored_state_is_internal_and_redacted() {
    let dir = TempDir::new("corrupt");
    let app = spawn_app(Arc::new(SqliteStore::connect(&dir.db_url()).await.unwrap())).await;
    let mut c = app.client.clone();
    let id = request_pool(&mut c, "10.5.0.0/24", "").await.unwrap();
    let other = request_pool(&mut c, "10.4.0.0/24", "").await.unwrap();
    // Lock the database so a write fails (the cell must then reload), and damage the row.
    let mut db = sqlx::SqliteConnection::connect(&dir.db_url())
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut db)
        .await
        .unwrap();
    let err = request_address(&mut c, &id, "", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    sqlx::query("UPDATE subnets SET state = x'01ff' WHERE subnet = '10.5.0.0/24'")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut db).await.unwrap();
    let err = request_address(&mut c, &id, "", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(
        !err.message().contains("corrupt"),
        "details stay in the log: {}",
        err.message()
    );
    assert_eq!(
        request_address(&mut c, &other, "", &[]).await.unwrap(),
        "10.4.0.1/24"
    );
    app.stop().await;
}
