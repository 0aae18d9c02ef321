//! allot as a Docker IPAM plugin: the real binary with `--docker-plugin-socket`, driven over
//! its unix socket by a client that sends exactly what Docker's daemon sends (libnetwork's
//! `ipams/remote` client: POSTs, bodies and field names as in the protocol, the plugin content
//! type), across a restart, with the protocol's error conventions.

use std::path::Path;

use allot::api::plugin::PLUGIN_CONTENT_TYPE;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::helpers::*;

/// One call as the daemon makes it: `POST path` with `body` (empty for the calls that carry
/// no arguments). Returns the status, the content type and the JSON answer.
async fn call(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String, Value) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("plugin socket");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("Host", "plugin")
        .header("Accept", PLUGIN_CONTENT_TYPE)
        .header("Content-Type", PLUGIN_CONTENT_TYPE)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("answer");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).expect("a JSON answer");
    (status, content_type, value)
}

/// A call that must succeed: 200, the plugin content type, and no `Error`.
async fn ok(socket: &Path, path: &str, body: Value) -> Value {
    // The daemon's encoder ends the body with a newline.
    let (status, content_type, answer) = call(socket, "POST", path, &format!("{body}\n")).await;
    assert_eq!(status, 200, "{path}: {answer}");
    assert_eq!(content_type, PLUGIN_CONTENT_TYPE);
    assert!(
        answer.get("Error").is_none_or(|e| e.as_str() == Some("")),
        "{path}: {answer}"
    );
    answer
}

/// A call the driver refuses: 200 with a non-empty `Error` containing every word.
async fn refused(socket: &Path, path: &str, body: Value, words: &[&str]) {
    let (status, _, answer) = call(socket, "POST", path, &body.to_string()).await;
    assert_eq!(status, 200, "{path}: {answer}");
    let message = answer["Error"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{path}: {answer}");
    for w in words {
        assert!(message.contains(w), "{message:?} lacks {w:?}");
    }
}

fn pool_body(space: &str, pool: &str, sub_pool: &str) -> Value {
    json!({"AddressSpace": space, "Pool": pool, "SubPool": sub_pool, "Options": {}, "V6": false})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_creates_networks_on_allot_and_their_utilization_shows() {
    let dir = TempDir::new("plugin");
    let socket = dir.0.join("plugins").join("allot.sock");
    let socket_flag = socket.display().to_string();
    let flags = ["--docker-plugin-socket", socket_flag.as_str()];
    let server = Server::start_with(&dir.db_url(), &dir.0, &flags);
    wait_for_socket(&socket).await;

    // The handshake and the calls without arguments (empty bodies).
    let (status, content_type, answer) = call(&socket, "POST", "/Plugin.Activate", "").await;
    assert_eq!((status, content_type.as_str()), (200, PLUGIN_CONTENT_TYPE));
    assert_eq!(answer, json!({"Implements": ["IpamDriver"]}));
    let caps = ok(&socket, "/IpamDriver.GetCapabilities", json!(null)).await;
    assert_eq!(
        caps,
        json!({"RequiresMACAddress": false, "RequiresRequestReplay": false}),
        "allot persists: the daemon need not replay anything after a restart"
    );
    let spaces = ok(&socket, "/IpamDriver.GetDefaultAddressSpaces", json!(null)).await;
    assert_eq!(
        spaces,
        json!({"LocalDefaultAddressSpace": "local", "GlobalDefaultAddressSpace": "global"})
    );

    // docker network create --ipam-driver allot --subnet 192.168.10.0/24
    //   --ip-range 192.168.10.128/31 --gateway 192.168.10.1 --aux-address a=192.168.10.128
    let pool = ok(
        &socket,
        "/IpamDriver.RequestPool",
        pool_body("local", "192.168.10.0/24", "192.168.10.128/31"),
    )
    .await;
    let id = pool["PoolID"].as_str().expect("PoolID").to_owned();
    assert_eq!(id, "local/192.168.10.0/24/192.168.10.128/31");
    assert_eq!(pool["Pool"], "192.168.10.0/24");
    assert_eq!(pool["Data"], json!({}));
    let gateway = ok(
        &socket,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "192.168.10.1",
               "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )
    .await;
    assert_eq!(gateway["Address"], "192.168.10.1/24");
    ok(
        &socket,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "192.168.10.128", "Options": {}}),
    )
    .await;
    // A container: an address from the ip-range. Options the driver does not know (the
    // endpoint's MAC address) are ignored, as Docker's own driver does.
    let endpoint = ok(
        &socket,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "",
               "Options": {"com.docker.network.endpoint.macaddress": "02:42:c0:a8:0a:81"}}),
    )
    .await;
    assert_eq!(endpoint["Address"], "192.168.10.129/24");

    // The worked example of DESIGN.md, seen through gRPC.
    let mut c = server.client().await;
    let s = state(&mut c, &id).await;
    assert_eq!(
        (s.allocated_ips_in_subnet, s.available_ips_in_ip_range_pool),
        (5, 0)
    );
    assert_eq!(s.driver, "builtin");

    // The error conventions.
    refused(
        &socket,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "", "Options": {}}),
        // Docker's default driver's words first, allot's detail after.
        &[
            "no available addresses on this pool: ",
            &id,
            "no free address",
        ],
    )
    .await;
    refused(
        &socket,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "192.168.10.1", "Options": {}}),
        &["Address already in use: ", "192.168.10.1"],
    )
    .await;
    refused(
        &socket,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "10.0.0.1", "Options": {}}),
        &["requested address is out of range: ", "10.0.0.1"],
    )
    .await;
    refused(
        &socket,
        "/IpamDriver.RequestPool",
        pool_body("local", "192.168.0.0/16", ""),
        &[
            "Pool overlaps with other one on this address space: ",
            "192.168.10.0/24",
        ],
    )
    .await;
    refused(
        &socket,
        "/IpamDriver.ReleasePool",
        json!({"PoolID": "local/10.99.0.0/24"}),
        &["local/10.99.0.0/24"],
    )
    .await;
    let (status, _, answer) = call(&socket, "POST", "/IpamDriver.Frobnicate", "{}").await;
    assert_eq!(status, 404);
    assert!(
        answer["Err"]
            .as_str()
            .is_some_and(|e| e.contains("Frobnicate"))
    );
    let (status, _, answer) = call(&socket, "POST", "/IpamDriver.RequestPool", "{not json").await;
    assert_eq!(status, 400);
    assert!(
        answer["Err"]
            .as_str()
            .is_some_and(|e| e.contains("malformed"))
    );
    let (status, _, _) = call(&socket, "GET", "/Plugin.Activate", "").await;
    assert_eq!(status, 405);

    // Empty pools: the daemon may reject a subnet and ask again, so each is a new one.
    let a = ok(
        &socket,
        "/IpamDriver.RequestPool",
        pool_body("local", "", ""),
    )
    .await;
    let b = ok(
        &socket,
        "/IpamDriver.RequestPool",
        pool_body("local", "", ""),
    )
    .await;
    assert_ne!(a["Pool"], b["Pool"]);
    ok(
        &socket,
        "/IpamDriver.ReleasePool",
        json!({"PoolID": b["PoolID"]}),
    )
    .await;

    // A restart: the daemon does not replay (RequiresRequestReplay is false) and needs not.
    drop(c);
    assert_eq!(server.terminate().code(), Some(0));
    assert!(!socket.exists(), "the socket is removed on exit");
    let server = Server::start_with(&dir.db_url(), &dir.0, &flags);
    wait_for_socket(&socket).await;
    let mut c = server.client().await;
    let after = state(&mut c, &id).await;
    assert_eq!(after, s, "the state survived the restart");
    ok(
        &socket,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": id, "Address": "192.168.10.129"}),
    )
    .await;
    let again = ok(
        &socket,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "", "Options": {}}),
    )
    .await;
    assert_eq!(again["Address"], "192.168.10.129/24");
    // docker network rm: release the gateway, the auxiliary address, the endpoint, the pool.
    for address in ["192.168.10.1", "192.168.10.128", "192.168.10.129"] {
        ok(
            &socket,
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID": id, "Address": address}),
        )
        .await;
    }
    ok(&socket, "/IpamDriver.ReleasePool", json!({"PoolID": id})).await;
    let listed = c
        .list_pools(allot::proto::pb::ListPoolsRequest {
            address_space: "local".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert_eq!(
        listed.len(),
        1,
        "only the dynamic pool a is left: {listed:?}"
    );
    assert_eq!(listed[0].pool_id, a["PoolID"].as_str().unwrap());
}

/// The plugin socket serves the tenant `--docker-plugin-tenant` names: its networks are that
/// tenant's pools, seen with that tenant's token and by no other; a tenant that does not exist
/// is refused, and answers once created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_serves_one_tenant() {
    let dir = TempDir::new("plugin-tenant");
    let socket = dir.0.join("allot.sock");
    let (_, admin_flag) = admin_token_file(&dir.0);
    let socket_flag = socket.display().to_string();
    let server = Server::start_with(
        &dir.db_url(),
        &dir.0,
        &[
            "--docker-plugin-socket",
            &socket_flag,
            "--docker-plugin-tenant",
            "docker",
            "--admin-token-file",
            &admin_flag,
        ],
    );
    wait_for_socket(&socket).await;
    let body = pool_body("local", "10.33.0.0/24", "");
    refused(
        &socket,
        "/IpamDriver.RequestPool",
        body.clone(),
        &["tenant", "docker", "not found"],
    )
    .await;
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_allot"))
            .args([
                "--server",
                &server.addr.to_string(),
                "--token-file",
                &admin_flag,
            ])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(cli(&["tenant", "create", "docker"]).status.success());
    let pool = ok(&socket, "/IpamDriver.RequestPool", body).await;
    assert_eq!(pool["PoolID"], "local/10.33.0.0/24");
    let listed = |tenant: Option<&str>| {
        let mut args = vec![];
        if let Some(t) = tenant {
            args.extend(["--tenant", t]);
        }
        args.extend(["pool", "list"]);
        String::from_utf8(cli(&args).stdout).unwrap()
    };
    assert_eq!(listed(Some("docker")), "local/10.33.0.0/24\n");
    assert_eq!(listed(None), "", "not the admin's own tenant's");
    // The plugin's mutations are in the audit trail, refusals included.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let audit: Vec<String> = server
        .audit()
        .into_iter()
        .filter(|l| l.contains("\"credential\":\"docker-plugin\""))
        .collect();
    let seen = |code: &str| {
        audit.iter().any(|l| {
            l.contains("\"tenant\":\"docker\"")
                && l.contains("\"rpc\":\"RequestPool\"")
                && l.contains(&format!("\"code\":\"{code}\""))
        })
    };
    assert!(seen("NOT_FOUND") && seen("OK"), "{audit:#?}");
    // Refusals are logged at info with their reason, for the operator.
    let refusals = server.plugin_log();
    assert!(
        refusals.iter().any(|l| l.contains("docker plugin: refused")
            && l.contains("\"rpc\":\"RequestPool\"")
            && l.contains("tenant \\\"docker\\\" not found")),
        "{refusals:#?}"
    );
}
