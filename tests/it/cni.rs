//! `allot-cni` run as a runtime runs it: the verb and attachment in `CNI_*` variables, the
//! network configuration on stdin, the result or the spec's error object on stdout, exit
//! status 0 or 1 — for every verb, in every cniVersion it speaks, against a real server.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::Arc;

use allot::proto::pb;
use allot::store::MemoryStore;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

/// What one run of `allot-cni` printed and how it exited.
pub struct Ran {
    pub ok: bool,
    pub exit: Option<i32>,
    pub out: Value,
}

impl Ran {
    /// The spec's error code, when it failed.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "succeeded: {}", self.out);
        assert_eq!(self.exit, Some(1));
        self.out["code"].as_u64().expect("an error code")
    }

    /// The first address of a result, without its prefix length.
    pub fn address(&self) -> String {
        assert!(self.ok, "failed: {}", self.out);
        let a = self.out["ips"][0]["address"].as_str().expect("an address");
        a.split('/').next().unwrap().to_owned()
    }
}

/// Runs `allot-cni` with `CNI_COMMAND=command`, the attachment (container id, ifname) when
/// given, and `stdin`.
pub async fn cni(command: &str, attachment: Option<(&str, &str)>, stdin: &[u8]) -> Ran {
    let mut env = vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_PATH", "/nonexistent".to_owned()),
    ];
    if let Some((id, ifname)) = attachment {
        env.push(("CNI_CONTAINERID", id.to_owned()));
        env.push(("CNI_IFNAME", ifname.to_owned()));
        env.push(("CNI_NETNS", format!("/var/run/netns/{id}")));
    }
    plugin(env!("CARGO_BIN_EXE_allot-cni").as_ref(), &env, stdin).await
}

/// Runs a CNI plugin as a runtime does: only `env` in its environment, `stdin` on its input.
pub async fn plugin(program: &std::path::Path, env: &[(&str, String)], stdin: &[u8]) -> Ran {
    let mut child = tokio::process::Command::new(program)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let out_json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    Ran {
        ok: out.status.success(),
        exit: out.status.code(),
        out: out_json,
    }
}

/// A network configuration with `ipam`, in `version`, as bridge hands it to its IPAM plugin.
pub fn netconf(version: &str, ipam: &Value) -> Vec<u8> {
    json!({"cniVersion": version, "name": "allot-net", "type": "bridge", "ipam": ipam})
        .to_string()
        .into_bytes()
}

pub fn with(mut conf: Vec<u8>, key: &str, value: &Value) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&conf).unwrap();
    v[key] = value.clone();
    conf = v.to_string().into_bytes();
    conf
}

pub async fn held(c: &mut Client, pool_id: &str) -> Vec<(String, String)> {
    c.list_allocations(pb::ListAllocationsRequest {
        pool_id: pool_id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .allocations
    .into_iter()
    .map(|a| (a.address, a.owner))
    .collect()
}

pub async fn pool_of(c: &mut Client, subnet: &str) -> String {
    let pools = c
        .list_pools(pb::ListPoolsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pools;
    pools
        .into_iter()
        .find(|p| p.pool == subnet)
        .map(|p| p.pool_id)
        .expect("the pool allot-cni made")
}

#[tokio::test]
async fn every_verb_in_every_cni_version() {
    let app = spawn_app(Arc::new(MemoryStore::new())).await;
    let mut c = app.client.clone();
    let server = format!("http://{}", app.addr);
    for (n, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let subnet = format!("10.77.{n}.0/24");
        let ipam = json!({
            "type": "allot-cni", "server": server, "subnet": subnet,
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.77.0.53"], "search": ["example.org"]},
        });
        let conf = netconf(version, &ipam);
        let at = |v: &str| v >= "0.4.0";
        let att = Some(("c0ffee", "eth0"));

        // ADD: the pool is made on first use; the result as this version writes it.
        let add = cni("ADD", att, &conf).await;
        assert!(add.ok, "{version}: {}", add.out);
        assert_eq!(add.exit, Some(0));
        let mut ip =
            json!({"address": format!("10.77.{n}.2/24"), "gateway": format!("10.77.{n}.1")});
        if version.starts_with("0.") {
            ip["version"] = json!("4");
        }
        assert_eq!(
            add.out,
            json!({
                "cniVersion": version,
                "ips": [ip],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {"nameservers": ["10.77.0.53"], "search": ["example.org"]},
            }),
            "{version}"
        );
        // Retried (its reply lost to a timeout, say): the same address, nothing more taken.
        let again = cni("ADD", att, &conf).await;
        assert_eq!(again.out, add.out, "{version}");
        let other = cni("ADD", Some(("c0ffee", "eth1")), &conf).await;
        assert_eq!(other.address(), format!("10.77.{n}.3"));
        let pool_id = pool_of(&mut c, &subnet).await;
        assert_eq!(
            held(&mut c, &pool_id).await,
            [
                (format!("10.77.{n}.1"), "allot-cni:gateway".to_owned()),
                (format!("10.77.{n}.2"), "c0ffee/eth0".to_owned()),
                (format!("10.77.{n}.3"), "c0ffee/eth1".to_owned()),
            ],
            "{version}"
        );

        // CHECK, from 0.4.0: what ADD returned is still held.
        let check_conf = with(conf.clone(), "prevResult", &add.out);
        let check = cni("CHECK", att, &check_conf).await;
        if at(version) {
            assert!(check.ok && check.out.is_null(), "{version}: {}", check.out);
            let stale = with(
                conf.clone(),
                "prevResult",
                &json!({"cniVersion": version, "ips": [{"address": format!("10.77.{n}.9/24")}]}),
            );
            assert_eq!(cni("CHECK", att, &stale).await.code(), 101, "{version}");
        } else {
            assert_eq!(check.code(), 1, "{version}: CHECK is not in 0.3.1");
        }

        // STATUS and GC, from 1.1.0.
        let status = cni("STATUS", None, &conf).await;
        let gc_conf = with(
            conf.clone(),
            "cni.dev/valid-attachments",
            &json!([{"containerID": "c0ffee", "ifname": "eth0"}]),
        );
        let gc = cni("GC", None, &gc_conf).await;
        if version == "1.1.0" {
            assert!(status.ok && status.out.is_null(), "{}", status.out);
            assert!(gc.ok, "{}", gc.out);
            // eth1 was not a valid attachment; eth0 and the gateway stay.
            assert_eq!(held(&mut c, &pool_id).await.len(), 2);
        } else {
            assert_eq!(status.code(), 1, "{version}");
            assert_eq!(gc.code(), 1, "{version}");
            cni("DEL", Some(("c0ffee", "eth1")), &conf).await;
        }

        // DEL releases the attachment's address; DEL of what is gone succeeds.
        let del = cni("DEL", att, &conf).await;
        assert!(del.ok && del.out.is_null(), "{version}: {}", del.out);
        assert_eq!(
            held(&mut c, &pool_id).await,
            [(format!("10.77.{n}.1"), "allot-cni:gateway".to_owned())],
            "{version}"
        );
        assert!(cni("DEL", att, &conf).await.ok, "{version}: DEL again");
        if at(version) {
            assert_eq!(cni("CHECK", att, &check_conf).await.code(), 101);
        }

        // VERSION, with or without a configuration.
        let listed = cni(
            "VERSION",
            None,
            format!(r#"{{"cniVersion":"{version}"}}"#).as_bytes(),
        )
        .await;
        assert_eq!(
            listed.out,
            json!({"cniVersion": version, "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }
    let bare = cni("VERSION", None, b"").await;
    assert!(bare.ok);
    assert_eq!(bare.out["supportedVersions"].as_array().unwrap().len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn a_named_pool_ipv6_and_exhaustion() {
    let app = spawn_app(Arc::new(MemoryStore::new())).await;
    let mut c = app.client.clone();
    let server = format!("http://{}", app.addr);
    let pool_id = request_pool(&mut c, "fd00:77::/125", "").await.unwrap();
    let conf = netconf(
        "1.1.0",
        &json!({"type": "allot-cni", "server": server, "pool_id": pool_id}),
    );
    // fd00:77::/125: the gateway ::1, then ::2 to ::7 for containers (the network address
    // is reserved, IPv6 has no broadcast).
    let mut got = Vec::new();
    for i in 0..6 {
        let add = cni("ADD", Some((&format!("c{i}"), "eth0")), &conf).await;
        assert!(add.ok, "{}", add.out);
        assert_eq!(add.out["ips"][0]["gateway"], "fd00:77::1");
        assert!(add.out["ips"][0].get("version").is_none(), "not in 1.x");
        got.push(add.address());
    }
    assert_eq!(
        got,
        [
            "fd00:77::2",
            "fd00:77::3",
            "fd00:77::4",
            "fd00:77::5",
            "fd00:77::6",
            "fd00:77::7"
        ]
    );
    // Full: ADD is refused by allot (100), STATUS says the plugin cannot serve (50).
    let full = cni("ADD", Some(("c9", "eth0")), &conf).await;
    assert_eq!(full.code(), 100, "{}", full.out);
    assert!(
        full.out["msg"].as_str().unwrap().contains(&pool_id),
        "{}",
        full.out
    );
    let status = cni("STATUS", None, &conf).await;
    assert_eq!(status.code(), 50);
    assert!(
        status.out["msg"]
            .as_str()
            .unwrap()
            .contains("no free address")
    );
    assert!(cni("DEL", Some(("c0", "eth0")), &conf).await.ok);
    assert!(cni("STATUS", None, &conf).await.ok, "room again");
    app.stop().await;
}

#[tokio::test]
async fn malformed_configurations_and_environments() {
    let app = spawn_app(Arc::new(MemoryStore::new())).await;
    let server = format!("http://{}", app.addr);
    let att = Some(("c0ffee", "eth0"));
    let good = json!({"type": "allot-cni", "server": server, "subnet": "10.78.0.0/24"});
    assert_eq!(cni("ADD", att, b"{nope").await.code(), 6);
    assert_eq!(cni("ADD", att, &netconf("0.2.0", &good)).await.code(), 1);
    assert_eq!(
        cni("ADD", att, br#"{"cniVersion":"1.0.0"}"#).await.code(),
        7
    );
    for bad in [
        json!({"type": "allot-cni", "server": server}),
        json!({"type": "allot-cni", "server": server, "subnet": "10.78.0.1/24"}),
        json!({"type": "allot-cni", "server": server, "subnet": "10.78.0.0/24", "extra": 1}),
        json!({"type": "allot-cni", "server": "127.0.0.1:1", "subnet": "10.78.0.0/24"}),
        json!({"type": "allot-cni", "server": server, "pool_id": "local/10.79.0.0/24"}),
        json!({"type": "allot-cni", "server": server, "pool_id": "not a pool id"}),
        json!({"type": "allot-cni", "server": server, "subnet": "10.78.0.0/24",
               "token_file": "/nonexistent/token"}),
    ] {
        let ran = cni("ADD", att, &netconf("1.0.0", &bad)).await;
        assert_eq!(ran.code(), 7, "{bad}: {}", ran.out);
        assert_eq!(
            ran.out["cniVersion"], "1.0.0",
            "errors in the config's version"
        );
    }
    let conf = netconf("1.0.0", &good);
    assert_eq!(
        cni("ADD", None, &conf).await.code(),
        4,
        "no CNI_CONTAINERID"
    );
    assert_eq!(cni("ADD", Some(("c0ffee", "")), &conf).await.code(), 4);
    assert_eq!(cni("ADD", Some(("../x", "eth0")), &conf).await.code(), 4);
    assert_eq!(cni("BOGUS", att, &conf).await.code(), 4);
    assert_eq!(
        cni("GC", None, &netconf("1.1.0", &good)).await.code(),
        7,
        "no valid-attachments"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_missing_server_is_try_again_later() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ipam = json!({"type": "allot-cni", "server": format!("http://127.0.0.1:{port}"),
                      "subnet": "10.80.0.0/24"});
    let conf = netconf("1.1.0", &ipam);
    let att = Some(("c0ffee", "eth0"));
    for verb in ["ADD", "DEL", "CHECK"] {
        let ran = cni(verb, att, &conf).await;
        assert_eq!(ran.code(), 11, "{verb}: {}", ran.out);
        assert!(
            ran.out["msg"]
                .as_str()
                .unwrap()
                .contains("cannot be reached")
        );
    }
    let gc = with(conf.clone(), "cni.dev/valid-attachments", &json!([]));
    assert_eq!(cni("GC", None, &gc).await.code(), 11);
    assert_eq!(cni("STATUS", None, &conf).await.code(), 50);
}

#[tokio::test]
async fn https_with_a_token_file() {
    let dir = TempDir::new("cni-tls");
    let pki = Pki::new(&dir.0, "cni");
    pki.issue("server", "localhost", true, None);
    let (admin, _) = admin_token_file(&dir.0);
    let app = spawn_secure(Arc::new(MemoryStore::new()), &admin, &pki).await;
    let token = dir.0.join("token");
    std::fs::write(&token, format!("{admin}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ipam = |token_file: Option<&std::path::Path>| {
        let mut v = json!({"type": "allot-cni", "server": format!("https://localhost:{}", app.addr.port()),
                           "ca_file": pki.path("ca.pem"), "subnet": "10.81.0.0/24"});
        if let Some(t) = token_file {
            v["token_file"] = json!(t);
        }
        netconf("1.0.0", &v)
    };
    let att = Some(("c0ffee", "eth0"));
    let add = cni("ADD", att, &ipam(Some(&token))).await;
    assert_eq!(add.address(), "10.81.0.2");
    // No token: refused by the server, which is the configuration's fault.
    let refused = cni("ADD", att, &ipam(None)).await;
    assert_eq!(refused.code(), 7, "{}", refused.out);
    assert!(cni("DEL", att, &ipam(Some(&token))).await.ok);
    app.stop().await;
}
