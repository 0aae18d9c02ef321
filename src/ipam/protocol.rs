//! libnetwork's remote IPAM plugin protocol, typed once for both directions: allot serves it
//! to Docker (`api::plugin`) and speaks it to other plugins (`remote`). HTTP/1.1 `POST`s with
//! JSON bodies; field names as libnetwork spells them (`PoolID`, `V6`, `RequiresMACAddress`).
//!
//! A driver's refusal is HTTP 200 with `{"Error": "..."}`; a malformed request is 400 and an
//! unknown endpoint 404, each with `{"Err": "..."}`. Fields a side does not send default (an
//! absent `Options` is empty, as is `null`), and fields a side does not know are ignored.

use serde::{Deserialize, Deserializer, Serialize};

/// The content type of every request and answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The endpoints, by path.
pub const ACTIVATE: &str = "/Plugin.Activate";
pub const GET_CAPABILITIES: &str = "/IpamDriver.GetCapabilities";
pub const GET_DEFAULT_ADDRESS_SPACES: &str = "/IpamDriver.GetDefaultAddressSpaces";
pub const REQUEST_POOL: &str = "/IpamDriver.RequestPool";
pub const RELEASE_POOL: &str = "/IpamDriver.ReleasePool";
pub const REQUEST_ADDRESS: &str = "/IpamDriver.RequestAddress";
pub const RELEASE_ADDRESS: &str = "/IpamDriver.ReleaseAddress";

pub use crate::engine::Options;

/// Reads options as both sides carry them: `null` (or absent) is none.
fn options<'de, D: Deserializer<'de>>(d: D) -> Result<Options, D::Error> {
    Ok(Option::<Options>::deserialize(d)?.unwrap_or_default())
}

/// `Plugin.Activate`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Activated {
    pub implements: Vec<String>,
}

/// `IpamDriver.GetCapabilities`'s answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

/// `IpamDriver.GetDefaultAddressSpaces`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AddressSpaces {
    pub local_default_address_space: String,
    pub global_default_address_space: String,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPool {
    pub address_space: String,
    pub pool: String,
    pub sub_pool: String,
    #[serde(deserialize_with = "options")]
    pub options: Options,
    #[serde(rename = "V6")]
    pub v6: bool,
}

/// `IpamDriver.RequestPool`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PoolGiven {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    #[serde(deserialize_with = "options")]
    pub data: Options,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleasePool {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
    #[serde(deserialize_with = "options")]
    pub options: Options,
}

/// `IpamDriver.RequestAddress`'s answer: the address with the subnet's prefix length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AddressGiven {
    pub address: String,
    #[serde(deserialize_with = "options")]
    pub data: Options,
}

/// `IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
}

/// An answer with nothing to say (`{}`): the release endpoints'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// A refusal or a failure, as either status carries it: `Error` for a driver's refusal (200),
/// `Err` for a malformed request or an unknown endpoint (400, 404).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Failure {
    #[serde(rename = "Error", skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(rename = "Err", skip_serializing_if = "String::is_empty")]
    pub err: String,
}

impl Failure {
    /// A driver's refusal (sent with 200).
    #[must_use]
    pub fn refusal(message: String) -> Self {
        Self {
            error: message,
            err: String::new(),
        }
    }

    /// A failure of the call itself (sent with 400 or 404).
    #[must_use]
    pub fn call(message: String) -> Self {
        Self {
            error: String::new(),
            err: message,
        }
    }

    /// The message, whichever field carries it.
    #[must_use]
    pub fn message(&self) -> Option<&str> {
        [&self.error, &self.err]
            .into_iter()
            .find(|m| !m.is_empty())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn field_names_are_libnetworks() {
        let req: RequestPool = serde_json::from_str(
            r#"{"AddressSpace":"local","Pool":"10.0.0.0/24","SubPool":"","Options":null,"V6":false,"Extra":1}"#,
        )
        .unwrap();
        assert_eq!(req.pool, "10.0.0.0/24");
        assert!(req.options.is_empty());
        let caps = serde_json::to_string(&Capabilities {
            requires_mac_address: true,
            requires_request_replay: false,
        })
        .unwrap();
        assert_eq!(
            caps,
            r#"{"RequiresMACAddress":true,"RequiresRequestReplay":false}"#
        );
        let given = serde_json::to_string(&PoolGiven {
            pool_id: "local/10.0.0.0/24".into(),
            pool: "10.0.0.0/24".into(),
            data: Options::new(),
        })
        .unwrap();
        assert_eq!(
            given,
            r#"{"PoolID":"local/10.0.0.0/24","Pool":"10.0.0.0/24","Data":{}}"#
        );
        assert_eq!(serde_json::to_string(&Done {}).unwrap(), "{}");
        let refused: Failure = serde_json::from_str(r#"{"Error":"no"}"#).unwrap();
        assert_eq!(refused.message(), Some("no"));
        assert_eq!(
            serde_json::to_string(&Failure::call("bad".into())).unwrap(),
            r#"{"Err":"bad"}"#
        );
        let address: AddressGiven = serde_json::from_str(r#"{"Address":"10.0.0.2/24"}"#).unwrap();
        assert_eq!(address.address, "10.0.0.2/24");
    }
}
