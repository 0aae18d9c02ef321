//! What a runtime hands `allot-cni`: the network configuration on stdin (its `ipam` section
//! names the server and the pool) and the `CNI_*` environment variables, both checked before
//! anything is asked of the server.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{CniError, Code};
use crate::engine::LOCAL_SPACE;
use crate::engine::id::{check_space_name, parse_prefix};
use crate::engine::owners::Owner;

/// The cniVersions this plugin speaks, oldest first.
pub const SUPPORTED: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The owner every `allot-cni` gateway address is held by: it has no `/`, so no
/// `<container id>/<ifname>` can spell it, and `GC` always counts it live.
pub const GATEWAY_OWNER: &str = "allot-cni:gateway";

/// The parts of the network configuration the plugin reads.
#[derive(Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub ipam: IpamConf,
    /// GC: the attachments still in use.
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// CHECK: what ADD returned.
    #[serde(rename = "prevResult")]
    pub prev_result: Option<PrevResult>,
}

/// An attachment the runtime still uses (GC).
#[derive(Debug, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The part of a previous result CHECK compares with.
#[derive(Debug, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub ips: Vec<PrevIp>,
}

#[derive(Debug, Deserialize)]
pub struct PrevIp {
    pub address: String,
}

/// The `ipam` section, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub kind: String,
    /// `http://HOST:PORT` or `https://HOST:PORT` (with `ca_file`).
    pub server: String,
    /// The CA that signed an https server's certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// A file holding the token to call with.
    pub token_file: Option<PathBuf>,
    /// An existing pool, by id; or:
    pub pool_id: Option<String>,
    /// a subnet (with an optional `range` in it, in `address_space`), whose pool is created on
    /// first use.
    pub subnet: Option<String>,
    pub range: Option<String>,
    pub address_space: Option<String>,
    /// The gateway given in results and kept out of containers' reach; by default the first
    /// address after the subnet's network address.
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub dns: Option<Dns>,
}

/// A route handed back in the result as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings handed back in the result as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Which pool the configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolRef {
    Id(String),
    Subnet {
        space: String,
        subnet: IpNet,
        range: Option<IpNet>,
    },
}

/// The configuration, checked.
#[derive(Debug)]
pub struct Config {
    pub cni_version: String,
    pub ipam: IpamConf,
    pub pool: PoolRef,
    /// The subnet, when known from the configuration or the pool id (for the gateway).
    pub subnet: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub valid_attachments: Option<Vec<Attachment>>,
    pub prev_result: Option<PrevResult>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

/// The cniVersion of a configuration, if it is one this plugin speaks.
///
/// # Errors
/// `IncompatibleVersion`.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "cniVersion {version:?} is not supported (supported: {})",
                SUPPORTED.join(", ")
            ),
        ))
    }
}

/// Parses and checks the configuration on stdin.
///
/// # Errors
/// `DecodeFailure` for what is not JSON; `IncompatibleVersion`; `InvalidConfig` for anything
/// else wrong, naming it.
pub fn parse(stdin: &[u8]) -> Result<Config, CniError> {
    let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::DecodeFailure,
            format!("the network configuration is not JSON: {e}"),
        )
    })?;
    if let Some(version) = value.get("cniVersion").and_then(|v| v.as_str()) {
        check_version(version)?;
    }
    let conf: NetConf = serde_json::from_value(value)
        .map_err(|e| invalid(format!("the network configuration: {e}")))?;
    check_version(&conf.cni_version)?;
    let ipam = conf.ipam;
    if ipam.kind != "allot-cni" {
        return Err(invalid(format!(
            "ipam.type is {:?}, this plugin is \"allot-cni\"",
            ipam.kind
        )));
    }
    check_server(&ipam)?;
    let pool = pool_ref(&ipam)?;
    let subnet = match &pool {
        PoolRef::Subnet { subnet, .. } => Some(*subnet),
        PoolRef::Id(id) => id.parse::<crate::engine::PoolId>().ok().map(|p| p.subnet()),
    };
    let gateway = match (ipam.gateway, subnet) {
        (Some(gw), Some(net)) if !net.contains(&gw) => {
            return Err(invalid(format!("ipam.gateway {gw} is not in {net}")));
        }
        (Some(gw), _) => Some(gw),
        (None, Some(net)) => first_host(net),
        (None, None) => None,
    };
    for route in &ipam.routes {
        parse_prefix(&route.dst)
            .map_err(|e| invalid(format!("ipam.routes: dst {:?}: {e}", route.dst)))?;
    }
    Ok(Config {
        cni_version: conf.cni_version,
        ipam,
        pool,
        subnet,
        gateway,
        valid_attachments: conf.valid_attachments,
        prev_result: conf.prev_result,
    })
}

fn check_server(ipam: &IpamConf) -> Result<(), CniError> {
    let server = &ipam.server;
    if server.starts_with("https://") {
        if ipam.ca_file.is_none() {
            return Err(invalid(format!(
                "ipam.server {server:?} is https: ipam.ca_file must name the CA that signed its \
                 certificate"
            )));
        }
    } else if server.starts_with("http://") {
        if ipam.ca_file.is_some() {
            return Err(invalid(format!(
                "ipam.ca_file is given but ipam.server {server:?} is not https"
            )));
        }
    } else {
        return Err(invalid(format!(
            "ipam.server {server:?}: expected http://HOST:PORT or https://HOST:PORT"
        )));
    }
    Ok(())
}

fn pool_ref(ipam: &IpamConf) -> Result<PoolRef, CniError> {
    match (&ipam.pool_id, &ipam.subnet) {
        (Some(id), None) => {
            if ipam.range.is_some() || ipam.address_space.is_some() {
                return Err(invalid(
                    "ipam.range and ipam.address_space go with ipam.subnet, not ipam.pool_id",
                ));
            }
            if id.is_empty() {
                return Err(invalid("ipam.pool_id is empty"));
            }
            Ok(PoolRef::Id(id.clone()))
        }
        (None, Some(subnet)) => {
            let net = parse_prefix(subnet)
                .map_err(|e| invalid(format!("ipam.subnet {subnet:?}: {e}")))?;
            let range = ipam
                .range
                .as_deref()
                .map(|r| parse_prefix(r).map_err(|e| invalid(format!("ipam.range {r:?}: {e}"))))
                .transpose()?;
            if let Some(r) = range
                && !net.contains(&r)
            {
                return Err(invalid(format!("ipam.range {r} is not in {net}")));
            }
            let space = ipam
                .address_space
                .clone()
                .unwrap_or_else(|| LOCAL_SPACE.to_owned());
            check_space_name(&space).map_err(|e| invalid(format!("ipam.address_space: {e}")))?;
            Ok(PoolRef::Subnet {
                space,
                subnet: net,
                range,
            })
        }
        (Some(_), Some(_)) => Err(invalid(
            "ipam.pool_id and ipam.subnet both given: name the pool one way",
        )),
        (None, None) => Err(invalid(
            "ipam needs pool_id (an existing pool) or subnet (created on first use)",
        )),
    }
}

/// The first address after the network address, when the subnet has room for one besides.
fn first_host(net: IpNet) -> Option<IpAddr> {
    let tiny = match net {
        IpNet::V4(n) => n.prefix_len() >= 31,
        IpNet::V6(n) => n.prefix_len() >= 127,
    };
    if tiny {
        return None;
    }
    net.hosts().find(|a| *a != net.network())
}

/// What the `CNI_*` variables say.
#[derive(Debug)]
pub struct Env {
    pub container_id: String,
    pub ifname: String,
}

impl Env {
    /// Reads and checks the variables `ADD`, `DEL` and `CHECK` need.
    ///
    /// # Errors
    /// `InvalidEnv` naming the missing or malformed variable.
    pub fn read(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let need = |name: &str| {
            var(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CniError::new(Code::InvalidEnv, format!("{name} is not set")))
        };
        let container_id = need("CNI_CONTAINERID")?;
        let ifname = need("CNI_IFNAME")?;
        check_container_id(&container_id)?;
        check_ifname(&ifname)?;
        Ok(Self {
            container_id,
            ifname,
        })
    }

    /// The owner of this attachment's address: `<container id>/<ifname>`.
    ///
    /// # Errors
    /// `InvalidEnv` when the two make no owner (too long).
    pub fn owner(&self) -> Result<Owner, CniError> {
        owner_of(&self.container_id, &self.ifname)
    }
}

/// The owner of an attachment: `<container id>/<ifname>`.
///
/// # Errors
/// `InvalidEnv` when the two make no owner (too long).
pub fn owner_of(container_id: &str, ifname: &str) -> Result<Owner, CniError> {
    Owner::new(&format!("{container_id}/{ifname}")).map_err(|e| {
        CniError::new(
            Code::InvalidEnv,
            format!("container id and interface make no owner: {e}"),
        )
    })
}

/// The spec's container id: letters, digits, `_`, `.`, `-`, starting with a letter or digit.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut bytes = id.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnv,
            format!(
                "CNI_CONTAINERID {id:?}: letters, digits, '_', '.' and '-' only, starting with a \
                 letter or digit"
            ),
        ))
    }
}

/// The spec's interface name: at most 15 bytes, not `.` or `..`, no `/`, `:` or white space.
fn check_ifname(name: &str) -> Result<(), CniError> {
    let ok = name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_IFNAME {name:?}: at most 15 bytes, no '/', ':' or white space"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn conf(ipam: &str) -> Vec<u8> {
        format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{ipam}}}"#).into_bytes()
    }

    fn code_of(stdin: &[u8]) -> u32 {
        parse(stdin).unwrap_err().code as u32
    }

    #[test]
    fn a_subnet_config_gives_the_pool_and_its_gateway() {
        let c = parse(&conf(
            r#"{"type":"allot-cni","server":"http://127.0.0.1:1","subnet":"10.9.0.0/24","range":"10.9.0.128/25"}"#,
        ))
        .unwrap();
        assert_eq!(
            c.pool,
            PoolRef::Subnet {
                space: "local".into(),
                subnet: "10.9.0.0/24".parse().unwrap(),
                range: Some("10.9.0.128/25".parse().unwrap()),
            }
        );
        assert_eq!(c.gateway, Some("10.9.0.1".parse().unwrap()));
        let c = parse(&conf(
            r#"{"type":"allot-cni","server":"http://h:1","pool_id":"local/fd00::/64"}"#,
        ))
        .unwrap();
        assert_eq!(c.gateway, Some("fd00::1".parse().unwrap()));
        let c = parse(&conf(
            r#"{"type":"allot-cni","server":"http://h:1","subnet":"10.9.0.0/31"}"#,
        ))
        .unwrap();
        assert_eq!(c.gateway, None, "no room for a gateway");
    }

    #[test]
    fn bad_configurations_are_told_with_their_codes() {
        assert_eq!(code_of(b"{not json"), 6);
        assert_eq!(code_of(br#"{"cniVersion":"0.2.0","ipam":{}}"#), 1);
        for ipam in [
            r#"{"type":"host-local","server":"http://h:1","pool_id":"x"}"#,
            r#"{"type":"allot-cni","server":"h:1","pool_id":"x"}"#,
            r#"{"type":"allot-cni","server":"https://h:1","pool_id":"x"}"#,
            r#"{"type":"allot-cni","server":"http://h:1","ca_file":"/c","pool_id":"x"}"#,
            r#"{"type":"allot-cni","server":"http://h:1"}"#,
            r#"{"type":"allot-cni","server":"http://h:1","pool_id":"x","subnet":"10.0.0.0/8"}"#,
            r#"{"type":"allot-cni","server":"http://h:1","subnet":"10.0.0.1/8"}"#,
            r#"{"type":"allot-cni","server":"http://h:1","subnet":"10.0.0.0/8","range":"11.0.0.0/16"}"#,
            r#"{"type":"allot-cni","server":"http://h:1","subnet":"10.0.0.0/8","gateway":"11.0.0.1"}"#,
            r#"{"type":"allot-cni","server":"http://h:1","pool_id":"x","range":"10.0.0.0/16"}"#,
            r#"{"type":"allot-cni","server":"http://h:1","pool-id":"x"}"#,
            r#"{"type":"allot-cni","server":"http://h:1","pool_id":"x","routes":[{"dst":"nope"}]}"#,
            r#"{"type":"allot-cni","server":"http://h:1","subnet":"10.0.0.0/8","address_space":"a/b"}"#,
        ] {
            assert_eq!(code_of(&conf(ipam)), 7, "{ipam}");
        }
    }

    #[test]
    fn the_environment_is_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let ok = Env::read(&env(&[
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_IFNAME", "eth0"),
        ]));
        assert_eq!(ok.unwrap().owner().unwrap().as_str(), "c0ffee/eth0");
        for bad in [
            &[("CNI_IFNAME", "eth0")][..],
            &[("CNI_CONTAINERID", "c0ffee")][..],
            &[("CNI_CONTAINERID", "-x"), ("CNI_IFNAME", "eth0")][..],
            &[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "a/b")][..],
            &[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "sixteen-bytes-xx")][..],
        ] {
            assert_eq!(Env::read(&env(bad)).unwrap_err().code as u32, 4);
        }
    }
}
