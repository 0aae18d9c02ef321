//! TLS with real certificates made by the real `openssl` for each test: server-only and
//! mutual, through the real binary, the CLI and real grpcurl; certificates rotated while
//! connections stay open.

use std::process::Command;
use std::time::Duration;

use allot::proto::pb;
use tonic::transport::Channel;

use crate::grpcurl::grpcurl;
use crate::helpers::*;

async fn list_pools(channel: Channel, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    let mut request = tonic::Request::new(pb::ListPoolsRequest::default());
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    pb::ipam_service_client::IpamServiceClient::new(channel)
        .list_pools(request)
        .await
        .map(|r| {
            r.into_inner()
                .pools
                .into_iter()
                .map(|p| p.pool_id)
                .collect()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tokens_and_client_certificates() {
    let dir = TempDir::new("tls");
    let pki = Pki::new(&dir.0, "ca");
    pki.issue("server", "localhost", true, None);
    pki.issue("acme", "acme", false, None);
    pki.issue(
        "expired",
        "acme",
        false,
        Some(("20200101000000Z", "20200102000000Z")),
    );
    pki.issue("nameless", "Not A Tenant!", false, None);
    let stranger = Pki::new(&dir.0, "stranger");
    stranger.issue("acme", "acme", false, None);
    let (admin, admin_file) = admin_token_file(&dir.0);
    let server = Server::start_with(
        &dir.db_url(),
        &dir.0,
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
            "--tls-client-ca",
            &pki.path("ca.pem"),
            "--admin-token-file",
            &admin_file,
        ],
    );
    let port = server.addr.port();
    let https = format!("https://localhost:{port}");
    let ca = pki.path("ca.pem");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["--server", &https, "--ca-cert", &ca])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Server-only TLS, with a token: the CLI.
    let (ok, _, err) = cli(&["--token-file", &admin_file, "tenant", "create", "acme"]);
    assert!(ok, "{err}");
    // Mutual TLS: the certificate is the tenant acme, role write.
    let (acme_cert, acme_key) = (pki.path("acme.pem"), pki.path("acme.key"));
    let as_acme = [
        "--client-cert",
        acme_cert.as_str(),
        "--client-key",
        acme_key.as_str(),
    ];
    let (ok, out, err) =
        cli(&[&as_acme[..], &["pool", "request", "--pool", "10.7.0.0/24"]].concat());
    assert!(ok && out == "local/10.7.0.0/24\n", "{out}{err}");
    // The admin sees it in acme, not in its own tenant.
    let (ok, out, err) = cli(&[
        "--token-file",
        &admin_file,
        "--tenant",
        "acme",
        "pool",
        "list",
    ]);
    assert!(ok && out == "local/10.7.0.0/24\n", "{out}{err}");
    // Certificates refused, each saying why; no credentials at all.
    for (cert, why) in [
        (pki.path("expired.pem"), "expired"),
        (stranger.path("acme.pem"), "client certificate refused"),
        (pki.path("nameless.pem"), "not a tenant name"),
    ] {
        let key = cert.replace(".pem", ".key");
        let (ok, _, err) = cli(&["--client-cert", &cert, "--client-key", &key, "pool", "list"]);
        assert!(
            !ok && err.contains("UNAUTHENTICATED") && err.contains(why),
            "{cert}: {err}"
        );
    }
    let (ok, _, err) = cli(&["pool", "list"]);
    assert!(
        !ok && err.contains("UNAUTHENTICATED: missing credentials"),
        "{err}"
    );
    // Plaintext to the TLS port, and a server certificate not trusted: no connection.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(list_pools(plain, Some(&admin)).await.is_err());
    }
    assert!(channel(port, &stranger.path("ca.pem"), None).await.is_err());

    // Real grpcurl: server TLS with a token, then mutual TLS with the certificate.
    let (code, out) = grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &format!("authorization: Bearer {admin}"),
        "-H",
        "x-allot-tenant: acme",
        &format!("localhost:{port}"),
        "ipam.v1.IpamService/ListPools",
    ])
    .await;
    assert!(code == 0 && out.contains("local/10.7.0.0/24"), "{out}");
    let (code, out) = grpcurl(&[
        "-cacert",
        &ca,
        "-cert",
        &acme_cert,
        "-key",
        &acme_key,
        "-d",
        r#"{"pool_id": "local/10.7.0.0/24"}"#,
        &format!("localhost:{port}"),
        "ipam.v1.IpamService/RequestAddress",
    ])
    .await;
    assert!(code == 0 && out.contains("10.7.0.1/24"), "{out}");
    let (code, out) = grpcurl(&["-cacert", &ca, &format!("localhost:{port}"), "list"]).await;
    assert!(
        code == 0 && out.contains("ipam.admin.v1.AdminService"),
        "{out}"
    );
    let (code, out) = grpcurl(&[
        "-cacert",
        &ca,
        &format!("localhost:{port}"),
        "ipam.v1.IpamService/ListPools",
    ])
    .await;
    assert!(code != 0 && out.contains("Unauthenticated"), "{out}");

    // Rotation: a new server certificate from another CA, read on SIGHUP. A connection
    // opened before keeps working; new ones get the new certificate.
    let before = channel(port, &ca, Some((&acme_cert, &acme_key)))
        .await
        .unwrap();
    assert_eq!(
        list_pools(before.clone(), None).await.unwrap(),
        ["local/10.7.0.0/24"]
    );
    let next = Pki::new(&dir.0, "next");
    next.issue("server", "localhost", true, None);
    std::fs::copy(next.path("server.pem"), pki.path("server.pem")).unwrap();
    std::fs::copy(next.path("server.key"), pki.path("server.key")).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if channel(port, &next.path("ca.pem"), None).await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        channel(port, &ca, None).await.is_err(),
        "the old certificate is gone"
    );
    assert_eq!(
        list_pools(before.clone(), None).await.unwrap(),
        ["local/10.7.0.0/24"],
        "the connection opened before the rotation still serves"
    );
    // And without a signal: the files changing is enough.
    let third = Pki::new(&dir.0, "third");
    third.issue("server", "localhost", true, None);
    std::fs::copy(third.path("server.key"), pki.path("server.key")).unwrap();
    std::fs::copy(third.path("server.pem"), pki.path("server.pem")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while channel(port, &third.path("ca.pem"), None).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the changed files were never read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(list_pools(before, None).await.is_ok());
}
