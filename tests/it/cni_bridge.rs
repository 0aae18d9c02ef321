//! A real chain: Debian's `containernetworking-plugins` `bridge` plugin with allot-cni as its
//! IPAM, in real network namespaces. Two namespaces get addresses from allot and ping each
//! other through the bridge; `DEL` releases; a namespace deleted without `DEL` (a crashed
//! runtime) is released by `GC` with the survivors as the valid attachments.
//!
//! Needs root, `ip netns`, the plugins and busybox (for ping): installed with apt-get when
//! missing and running as root (scripts/test.sh does it first). A machine that cannot is a
//! failure under CI, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::cni::{held, plugin, pool_of, with};
use crate::helpers::*;

const BRIDGE: &str = "/usr/lib/cni/bridge";

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// Whether the chain can run here (installing what is missing when it can).
fn ready() -> bool {
    prerequisites(
        || Path::new(BRIDGE).exists() && have("busybox") && have("ip"),
        &["containernetworking-plugins", "busybox-static", "iproute2"],
        "the bridge chain needs root, ip, busybox and containernetworking-plugins",
    )
}

/// Network namespaces and a bridge, removed when dropped (also when the test fails).
struct Net {
    namespaces: Vec<String>,
    bridge: String,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

fn netns_add(net: &mut Net, name: String) -> PathBuf {
    let out = run("ip", &["netns", "add", &name]);
    assert!(out.status.success(), "ip netns add {name}: {out:?}");
    net.namespaces.push(name.clone());
    PathBuf::from("/var/run/netns").join(name)
}

fn ping(ns: &str, address: &str) -> bool {
    run(
        "ip",
        &[
            "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", address,
        ],
    )
    .status
    .success()
}

#[tokio::test]
async fn a_bridge_chain_in_real_namespaces() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("cni-bridge");
    let server = Server::start(&dir.db_url(), &dir.0);
    let mut c = server.client().await;
    // The runtime's CNI_PATH: the bridge plugin finds its IPAM plugin there by type.
    let bin = dir.0.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BRIDGE, bin.join("bridge")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_allot-cni"), bin.join("allot-cni")).unwrap();

    let tag = format!("{:04x}", std::process::id() & 0xffff);
    let octet = std::process::id() % 200 + 20;
    let subnet = format!("10.252.{octet}.0/24");
    let mut net = Net {
        namespaces: Vec::new(),
        bridge: format!("allotbr{tag}"),
    };
    // Debian's bridge (plugins 1.1.1) speaks up to cniVersion 1.0.0. No isGateway: the
    // namespaces reach each other on the bridge without touching the host's forwarding.
    let conf = json!({
        "cniVersion": "1.0.0", "name": "allot-chain", "type": "bridge",
        "bridge": net.bridge, "isGateway": false, "ipMasq": false,
        "ipam": {"type": "allot-cni", "server": format!("http://{}", server.addr), "subnet": subnet},
    })
    .to_string()
    .into_bytes();
    let env = |command: &str, id: &str, netns: &Path| {
        vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", id.to_owned()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", bin.display().to_string()),
        ]
    };

    let mut addresses = Vec::new();
    let mut paths = Vec::new();
    for i in 0..3 {
        let path = netns_add(&mut net, format!("allot-{tag}-{i}"));
        let added = plugin(
            BRIDGE.as_ref(),
            &env("ADD", &format!("ctr{i}"), &path),
            &conf,
        )
        .await;
        assert!(added.ok, "bridge ADD ctr{i}: {}", added.out);
        // The bridge's own result: the interface in the namespace carries allot's address.
        assert_eq!(added.out["ips"][0]["gateway"], format!("10.252.{octet}.1"));
        addresses.push(added.address());
        paths.push(path);
    }
    assert_eq!(
        addresses,
        (2..5)
            .map(|h| format!("10.252.{octet}.{h}"))
            .collect::<Vec<_>>()
    );
    let inside = run(
        "ip",
        &["-n", &net.namespaces[0], "-4", "addr", "show", "eth0"],
    );
    assert!(
        String::from_utf8_lossy(&inside.stdout).contains(&format!("{}/24", addresses[0])),
        "{inside:?}"
    );
    assert!(ping(&net.namespaces[0], &addresses[1]), "ns0 -> ns1");
    assert!(ping(&net.namespaces[1], &addresses[0]), "ns1 -> ns0");

    let pool_id = pool_of(&mut c, &subnet).await;
    let owners = |list: Vec<(String, String)>| list.into_iter().map(|(_, o)| o).collect::<Vec<_>>();
    assert_eq!(
        owners(held(&mut c, &pool_id).await),
        ["allot-cni:gateway", "ctr0/eth0", "ctr1/eth0", "ctr2/eth0"]
    );

    // DEL through the bridge releases in allot.
    let deleted = plugin(BRIDGE.as_ref(), &env("DEL", "ctr0", &paths[0]), &conf).await;
    assert!(deleted.ok, "bridge DEL: {}", deleted.out);
    assert_eq!(
        owners(held(&mut c, &pool_id).await),
        ["allot-cni:gateway", "ctr1/eth0", "ctr2/eth0"]
    );

    // A crashed runtime: ctr2's namespace goes without DEL. GC (cniVersion 1.1.0, which
    // Debian's bridge does not speak yet, so the runtime's GC reaches allot-cni directly)
    // with the survivors as valid attachments releases it.
    let out = run("ip", &["netns", "del", &net.namespaces[2]]);
    assert!(out.status.success());
    let gc_conf = with(
        with(conf.clone(), "cniVersion", &json!("1.1.0")),
        "cni.dev/valid-attachments",
        &json!([{"containerID": "ctr1", "ifname": "eth0"}]),
    );
    let gc_env = [
        ("CNI_COMMAND", "GC".to_owned()),
        ("CNI_PATH", bin.display().to_string()),
    ];
    let gc = plugin(&bin.join("allot-cni"), &gc_env, &gc_conf).await;
    assert!(gc.ok, "GC: {}", gc.out);
    assert_eq!(
        held(&mut c, &pool_id).await,
        [
            (format!("10.252.{octet}.1"), "allot-cni:gateway".to_owned()),
            (addresses[1].clone(), "ctr1/eth0".to_owned()),
        ]
    );
    let deleted = plugin(BRIDGE.as_ref(), &env("DEL", "ctr1", &paths[1]), &conf).await;
    assert!(deleted.ok, "{}", deleted.out);
    drop(net);
}
