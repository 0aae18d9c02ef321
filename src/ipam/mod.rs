//! The driver-agnostic IPAM interface. Generic code (the gRPC service, the state query)
//! reaches drivers only through [`Ipam`]; it never calls into a driver's internals.
//!
//! Drivers: [`Builtin`] (the engine, an in-memory cache of every subnet, and a store),
//! [`Null`] (Docker's null IPAM: pools without addresses), [`Remote`] (a client of a remote
//! libnetwork IPAM plugin), and [`Tracked`], which records what passes through a driver that
//! cannot count. [`Router`] serves each address space with the driver configured for it, and
//! is itself an [`Ipam`].

mod builtin;
mod null;
pub mod remote;
mod router;
mod tracked;

use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::engine::{self, AddressRequest, ErrorKind, PoolId, PoolRequest, Utilization};
use crate::store;

pub use builtin::Builtin;
pub use null::{NULL_SPACE, Null};
pub use remote::{Endpoint, Remote};
pub use router::Router;
pub use tracked::Tracked;

/// Options for a driver, beyond what allot reads itself (Docker's `Options` maps).
pub use crate::engine::Options;

/// Refuses options, for a driver that takes none.
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

/// An IPAM driver.
#[async_trait]
pub trait Ipam: Send + Sync + 'static {
    /// Returns the driver's name, as configured (`builtin`, `null`, `remote`).
    fn name(&self) -> &str;

    /// Returns the default (local, global) address spaces.
    fn default_address_spaces(&self) -> (String, String);

    /// Returns what the driver needs from its callers.
    fn capabilities(&self) -> Capabilities;

    /// Creates a pool in `space`.
    async fn request_pool(&self, space: &str, req: &PoolRequest) -> Result<PoolId, Error>;

    /// Creates a pool in `space`, passing `options` (Docker's `--ipam-opt`) to the driver. A
    /// driver that takes no options refuses any (`InvalidOption`).
    async fn request_pool_with(
        &self,
        space: &str,
        req: &PoolRequest,
        options: &Options,
    ) -> Result<PoolId, Error> {
        refuse_options(options)?;
        self.request_pool(space, req).await
    }

    /// Deletes a pool (its subnet goes with its last pool).
    async fn release_pool(&self, id: &PoolId) -> Result<(), Error>;

    /// Lists the pools of one address space, or of all, in address order.
    async fn list_pools(&self, space: Option<&str>) -> Result<Vec<PoolId>, Error>;

    /// Allocates an address; returns it with the subnet's prefix length.
    async fn request_address(&self, id: &PoolId, req: &AddressRequest) -> Result<IpNet, Error>;

    /// Allocates an address, passing `options` beyond the ones allot reads itself (serial,
    /// gateway) to the driver, e.g. an endpoint's MAC address. A driver that takes no options
    /// refuses any (`InvalidOption`).
    async fn request_address_with(
        &self,
        id: &PoolId,
        req: &AddressRequest,
        options: &Options,
    ) -> Result<IpNet, Error> {
        refuse_options(options)?;
        self.request_address(id, req).await
    }

    /// Frees an address (freeing a free one succeeds).
    async fn release_address(&self, id: &PoolId, address: IpAddr) -> Result<(), Error>;

    /// Returns the utilization of the pools named, in that order, or of every pool when none
    /// is named.
    async fn utilization(&self, ids: &[PoolId]) -> Result<Vec<PoolState>, Error>;
}

/// The error of an IPAM operation: the engine's or the store's.
#[derive(Debug, thiserror::Error)]
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
            Self::Driver { kind, .. } => *kind,
            Self::Internal(_) => Kind::Internal,
        }
    }
}

impl Error {
    /// An equal error for another caller (a batch's one store failure answers every job in
    /// it): same variant and message, the source chain kept as text.
    #[must_use]
    pub fn replicate(&self) -> Self {
        match self {
            Self::Engine(e) => Self::Engine(e.clone()),
            Self::Store(e) => Self::Store(e.replicate()),
            Self::Driver {
                driver,
                kind,
                message,
            } => Self::Driver {
                driver: driver.clone(),
                kind: *kind,
                message: message.clone(),
            },
            Self::Internal(s) => Self::Internal(s.clone()),
        }
    }
}

/// The pools a utilization call is about: those named, or every pool of `driver`.
async fn named_or_all<'a, D: Ipam + ?Sized>(
    driver: &D,
    ids: &'a [PoolId],
) -> Result<std::borrow::Cow<'a, [PoolId]>, Error> {
    if ids.is_empty() {
        Ok(driver.list_pools(None).await?.into())
    } else {
        Ok(ids.into())
    }
}

fn not_found(id: &PoolId) -> Error {
    Error::Engine(engine::Error::PoolNotFound {
        pool_id: id.to_string(),
    })
}
