//! The driver-agnostic IPAM interface. Generic code (the gRPC service, the state query)
//! reaches drivers only through [`Ipam`]; it never calls into a driver's internals.
//!
//! Drivers: [`Builtin`] (the engine, an in-memory cache of every subnet, and a store),
//! [`Null`] (Docker's null IPAM: pools without addresses), [`Remote`] (a client of a remote
//! libnetwork IPAM plugin), and [`Tracked`], which records what passes through a driver that
//! cannot count. [`Router`] serves each address space with the driver configured for it, and
//! is itself an [`Ipam`].

mod builtin;

/// The built-in driver's name (`PoolState::driver`, `GetIpamState`'s `driver`).
pub const BUILTIN_DRIVER: &str = "builtin";
mod null;
pub mod protocol;
pub mod remote;
mod router;
mod tenants;
mod tracked;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Bound;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::engine::owners::{Holder, Owner};
use crate::engine::{self, AddressRequest, ErrorKind, PoolId, PoolRequest, Utilization};
use crate::store;

pub use builtin::Builtin;
pub use null::{NULL_SPACE, Null};
pub use remote::{Endpoint, Remote};
pub use router::Router;
pub use tenants::{Build, Tenants};
pub use tracked::Tracked;

/// Options for a driver, beyond what allot reads itself (Docker's `Options` maps).
pub use crate::engine::Options;

/// Refuses options, for a driver that takes none.
///
/// # Errors
/// `InvalidOption` naming the first option.
fn refuse_options(options: &Options) -> Result<(), Error> {
    match options.iter().next() {
        Some((key, value)) => Err(Error::Engine(engine::Error::InvalidOption {
            key: engine::error::shown(key),
            value: engine::error::shown(value),
            reason: "unknown option (this driver takes none)",
        })),
        None => Ok(()),
    }
}

/// Refuses an owner, for a driver that keeps none.
///
/// # Errors
/// `InvalidOption` saying the driver keeps no owners.
fn refuse_owner(owner: Option<&Owner>) -> Result<(), Error> {
    match owner {
        Some(owner) => Err(Error::Engine(engine::Error::InvalidOption {
            key: "owner".to_owned(),
            value: engine::error::shown(owner.as_str()),
            reason: "this address space's driver keeps no owners",
        })),
        None => Ok(()),
    }
}

/// What a driver needs from its callers (Docker's `GetCapabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub requires_mac_address: bool,
    pub requires_request_replay: bool,
}

/// Where a pool's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The driver counted them itself.
    Driver,
    /// A tracking decorator counted what passed through it to a driver that cannot count.
    Tracked,
}

/// Why a pool's utilization could not be had: its driver failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolError {
    pub kind: Kind,
    pub message: String,
}

/// The utilization of one pool, or why its driver could not tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    pub id: PoolId,
    /// The name of the driver serving the pool.
    pub driver: String,
    pub source: Source,
    pub utilization: Result<Utilization, PoolError>,
}

impl PoolState {
    /// The state of a pool its driver counted.
    #[must_use]
    pub fn counted(id: &PoolId, driver: &str, utilization: Utilization) -> Self {
        Self {
            id: id.clone(),
            driver: driver.to_owned(),
            source: Source::Driver,
            utilization: Ok(utilization),
        }
    }

    /// The state of a pool whose driver failed with `err`.
    #[must_use]
    pub fn failed(id: &PoolId, driver: &str, err: &Error) -> Self {
        Self {
            id: id.clone(),
            driver: driver.to_owned(),
            source: Source::Driver,
            utilization: Err(PoolError {
                kind: err.kind(),
                message: err.public_message(),
            }),
        }
    }

    /// The state of a pool that does not exist.
    #[must_use]
    pub fn missing(id: &PoolId, driver: &str) -> Self {
        Self::failed(id, driver, &not_found(id))
    }

    /// Tells whether the pool does not exist.
    #[must_use]
    pub fn is_missing(&self) -> bool {
        matches!(&self.utilization, Err(e) if e.kind == Kind::NotFound)
    }
}

/// An IPAM driver.
#[async_trait]
pub trait Ipam: Send + Sync + 'static {
    /// Returns the driver's name, as configured (`builtin`, `null`, `remote`).
    fn name(&self) -> &str;

    /// Returns the default (local, global) address spaces.
    fn default_address_spaces(&self) -> (String, String);

    /// Returns what the driver needs from its callers.
    fn capabilities(&self) -> Capabilities;

    /// Creates a pool in `space`, passing the request's options (Docker's `--ipam-opt`) to
    /// the driver; a driver that takes no options refuses any (`InvalidOption`).
    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error>;

    /// Deletes a pool (its subnet goes with its last pool).
    async fn release_pool(&self, id: &PoolId) -> Result<(), Error>;

    /// Lists the pools of one address space, or of all, in pool id order (space, then
    /// subnet, then sub-pool), from where `page` starts and at most `page.limit` of them.
    async fn list_pools(&self, space: Option<&str>, page: &PoolPage) -> Result<Vec<PoolId>, Error>;

    /// Allocates an address; returns it with the subnet's prefix length. Options beyond the
    /// ones allot reads itself (serial, gateway) go to the driver, e.g. an endpoint's MAC
    /// address; a driver that takes no options refuses any (`InvalidOption`).
    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error>;

    /// Frees an address (freeing a free one succeeds). With `owner`, the address must be that
    /// owner's (`NotHolder` otherwise); a driver that keeps no owners refuses one.
    async fn release_address(
        &self,
        id: &PoolId,
        address: IpAddr,
        owner: Option<&Owner>,
    ) -> Result<(), Error>;

    /// Returns the utilization of each pool named, in that order: its figures, or why they
    /// cannot be had — a pool that does not exist is answered [`PoolState::missing`]. Callers
    /// wanting every pool list them first, a page at a time.
    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error>;

    /// Lists a pool's allocations a page at a time (see [`engine::Subnet::allocations`]). A
    /// driver that cannot list them says so.
    async fn list_allocations(
        &self,
        id: &PoolId,
        _page: &AllocationPage,
    ) -> Result<Vec<(IpAddr, Option<Holder>)>, Error> {
        Err(Error::Driver {
            driver: self.name().to_owned(),
            kind: Kind::FailedPrecondition,
            message: format!(
                "the {} driver cannot list the allocations of pool {id}",
                self.name()
            ),
        })
    }
}

/// Which page of pools to list: those after a pool id, in pool id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPage {
    /// After this pool (exclusive); from the first when `None`.
    pub after: Option<PoolId>,
    /// At most this many.
    pub limit: usize,
}

impl PoolPage {
    /// Every pool, on one page: for callers inside the server that need them all.
    pub const ALL: Self = Self {
        after: None,
        limit: usize::MAX,
    };

    /// Whether `id` comes after where the page starts.
    #[must_use]
    pub fn follows(&self, id: &PoolId) -> bool {
        self.after.as_ref().is_none_or(|after| id > after)
    }

    /// The page of `pools` (a map in pool id order), of `space` or of every space.
    #[must_use]
    pub fn of<V>(&self, pools: &BTreeMap<PoolId, V>, space: Option<&str>) -> Vec<PoolId> {
        let start = self
            .after
            .as_ref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        pools
            .range((start, Bound::Unbounded))
            .map(|(id, _)| id)
            .filter(|id| space.is_none_or(|s| id.space() == s))
            .take(self.limit)
            .cloned()
            .collect()
    }
}

/// Which page of a pool's allocations to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationPage {
    /// After this address (exclusive); from the start when `None`.
    pub after: Option<IpAddr>,
    /// Only owners starting with this, when not empty.
    pub owner_prefix: String,
    /// Only addresses with an owner.
    pub owned_only: bool,
    /// At most this many.
    pub limit: usize,
}

/// The error of an IPAM operation: the engine's or the store's. `Clone`, so that one
/// failure can answer every caller of a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A driver other than the built-in one refused or failed, in its own words.
    #[error("{driver} driver: {message}")]
    Driver {
        driver: String,
        kind: Kind,
        message: String,
    },
    /// The directory has no such tenant.
    #[error("tenant {0:?} not found")]
    TenantNotFound(String),
    /// A refusal of the directory's (a tenant that exists, a token not found), in its words.
    #[error("{message}")]
    Refused { kind: Kind, message: String },
    /// A malformed request outside the engine's terms (a tenant name, a quota).
    #[error("{0}")]
    Invalid(String),
    /// The caller did not prove who it is (no token, a malformed or unknown one).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The classes of [`Error`] callers tell apart; the API maps each to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    NotFound,
    AlreadyExists,
    Exhausted,
    FailedPrecondition,
    /// A concurrent change won: retrying may succeed.
    Aborted,
    /// Storage is down: retrying later may succeed.
    Unavailable,
    Internal,
    Unauthenticated,
    PermissionDenied,
}

impl Error {
    /// Returns the class of this error.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Self::Engine(e) => match e.kind() {
                ErrorKind::Invalid => Kind::Invalid,
                ErrorKind::NotFound => Kind::NotFound,
                ErrorKind::AlreadyExists => Kind::AlreadyExists,
                ErrorKind::Exhausted => Kind::Exhausted,
                ErrorKind::FailedPrecondition => Kind::FailedPrecondition,
                ErrorKind::Internal => Kind::Internal,
            },
            Self::Store(e) => match e {
                store::Error::NotFound { .. } | store::Error::Conflict { .. } => Kind::Aborted,
                store::Error::Unavailable(_) => Kind::Unavailable,
                store::Error::Corrupt { .. } | store::Error::Internal(_) => Kind::Internal,
            },
            Self::Driver { kind, .. } | Self::Refused { kind, .. } => *kind,
            Self::TenantNotFound(_) => Kind::NotFound,
            Self::Invalid(_) => Kind::Invalid,
            Self::Unauthenticated(_) => Kind::Unauthenticated,
            Self::PermissionDenied(_) => Kind::PermissionDenied,
            Self::Internal(_) => Kind::Internal,
        }
    }
}

impl Error {
    /// What a client may be told about this error: the one exit of every API (gRPC statuses,
    /// the Docker plugin's answers, per-pool states). Client mistakes are told as they are and
    /// a concurrent change says to retry; unavailable and internal failures are logged here,
    /// with their source chain, and told without details (which part is down, not where).
    #[must_use]
    pub fn public_message(&self) -> String {
        match self.kind() {
            Kind::Internal => {
                tracing::error!(error = %chain(self), "internal error");
                "internal error (details are in the server log)".to_owned()
            }
            Kind::Unavailable => {
                let what = match self {
                    Self::Driver { driver, .. } => format!("{driver} driver"),
                    _ => "storage".to_owned(),
                };
                tracing::warn!(error = %chain(self), "{what} unavailable");
                format!("{what} unavailable, retry later")
            }
            Kind::Aborted => {
                tracing::warn!(error = %chain(self), "concurrent change");
                format!("{self}; retry")
            }
            _ => self.to_string(),
        }
    }
}

impl Kind {
    /// The `google.rpc.Code` of this kind: its number and its canonical name. The API maps
    /// kinds to statuses through it, and reports name it (`GetIpamState`'s `error_code`).
    #[must_use]
    pub const fn rpc_code(self) -> (i32, &'static str) {
        match self {
            Self::Invalid => (3, "INVALID_ARGUMENT"),
            Self::NotFound => (5, "NOT_FOUND"),
            Self::AlreadyExists => (6, "ALREADY_EXISTS"),
            Self::Exhausted => (8, "RESOURCE_EXHAUSTED"),
            Self::FailedPrecondition => (9, "FAILED_PRECONDITION"),
            Self::Aborted => (10, "ABORTED"),
            Self::Internal => (13, "INTERNAL"),
            Self::Unavailable => (14, "UNAVAILABLE"),
            Self::Unauthenticated => (16, "UNAUTHENTICATED"),
            Self::PermissionDenied => (7, "PERMISSION_DENIED"),
        }
    }

    /// The canonical name of this kind's status code.
    #[must_use]
    pub const fn name(self) -> &'static str {
        self.rpc_code().1
    }
}

/// What a tenant holds: its pools, and the addresses allocated in them (the addresses a subnet
/// reserves itself not counted; a subnet shared by several pools counted once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub pools: u64,
    pub addresses: u64,
}

/// Counts what `ipam` holds, from its pools' utilization (a pool whose driver cannot tell is
/// counted without addresses).
///
/// # Errors
/// The driver cannot list its pools.
pub async fn usage(ipam: &dyn Ipam) -> Result<Usage, Error> {
    let ids = ipam.list_pools(None, &PoolPage::ALL).await?;
    let states = ipam.utilization(&ids).await?;
    let mut subnets = std::collections::BTreeMap::new();
    for state in &states {
        if let Ok(u) = &state.utilization {
            let net = state.id.subnet();
            let reserved = engine::reserved_addresses(net).count() as u128;
            subnets.insert(
                (state.id.space().to_owned(), net),
                u.allocated_in_subnet.saturating_sub(reserved),
            );
        }
    }
    Ok(Usage {
        pools: ids.len() as u64,
        addresses: engine::saturating_u64(subnets.values().sum()),
    })
}

/// An error and its sources, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The error for a pool that does not exist.
pub(crate) fn not_found(id: &PoolId) -> Error {
    Error::Engine(engine::Error::PoolNotFound {
        pool_id: id.to_string(),
    })
}
