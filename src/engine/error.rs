//! The engine's one error type. Every variant names the pool, subnet or address concerned, so a
//! message is useful on its own; [`Error::kind`] sorts them into the few classes the API maps
//! to status codes.

use std::net::IpAddr;

/// What went wrong in a pool or address operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid prefix {input:?}: {reason}")]
    InvalidPrefix { input: String, reason: &'static str },
    #[error("invalid sub-pool {sub_pool:?} of pool {pool:?}: {reason}")]
    InvalidSubPool {
        pool: String,
        sub_pool: String,
        reason: &'static str,
    },
    #[error("invalid address space {name:?}: {reason}")]
    InvalidAddressSpace { name: String, reason: &'static str },
    #[error("invalid address {input:?} for pool {pool_id}: {reason}")]
    InvalidAddress {
        pool_id: String,
        input: String,
        reason: &'static str,
    },
    #[error("invalid option {key:?}={value:?}: {reason}")]
    InvalidOption {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("invalid owner {owner:?}: {reason}")]
    InvalidOwner { owner: String, reason: &'static str },
    #[error("invalid pool id {input:?}: {reason}")]
    InvalidPoolId { input: String, reason: &'static str },
    #[error("pool {requested} overlaps existing pool {existing}")]
    Overlap { requested: String, existing: String },
    #[error("pool {pool_id} not found")]
    PoolNotFound { pool_id: String },
    #[error("address {address} is already in use in pool {pool_id}")]
    AddressInUse { pool_id: String, address: IpAddr },
    #[error("address {address} is outside subnet {subnet} of pool {pool_id}")]
    OutOfRange {
        pool_id: String,
        subnet: String,
        address: IpAddr,
    },
    #[error("no free address left in pool {pool_id}")]
    Exhausted { pool_id: String },
    #[error("address {address} is the {what} of pool {pool_id} and cannot be released")]
    ReservedAddress {
        pool_id: String,
        address: IpAddr,
        what: &'static str,
    },
    #[error(
        "address {address} of pool {pool_id} is held {}, not by {}",
        match &holders.1 { Some(h) => format!("by {h}"), None => "without an owner".to_owned() },
        holders.0
    )]
    NotHolder {
        pool_id: String,
        address: IpAddr,
        /// The owner that asked, and the one that holds the address (if any). Boxed: kept
        /// small, the error travels in every `Result` of the engine.
        holders: Box<(String, Option<String>)>,
    },
    #[error("no free {wanted} subnet left in the default address pools of address space {space}")]
    NoMoreSubnets { space: String, wanted: String },
    #[error("corrupt encoded subnet state: {reason}")]
    Corrupt { reason: &'static str },
}

/// The classes of [`Error`] that callers tell apart (and the API maps to status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's input is malformed or inconsistent.
    Invalid,
    /// The pool does not exist.
    NotFound,
    /// The pool overlaps another, or the address is taken.
    AlreadyExists,
    /// Nothing left to hand out.
    Exhausted,
    /// The request is well-formed but refused in the current state.
    FailedPrecondition,
    /// Persisted state is damaged: not the caller's fault.
    Internal,
}

impl Error {
    /// Returns the class of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidPrefix { .. }
            | Self::InvalidSubPool { .. }
            | Self::InvalidAddressSpace { .. }
            | Self::InvalidAddress { .. }
            | Self::InvalidPoolId { .. }
            | Self::InvalidOption { .. }
            | Self::InvalidOwner { .. }
            | Self::OutOfRange { .. } => ErrorKind::Invalid,
            Self::PoolNotFound { .. } => ErrorKind::NotFound,
            Self::Overlap { .. } | Self::AddressInUse { .. } => ErrorKind::AlreadyExists,
            Self::Exhausted { .. } | Self::NoMoreSubnets { .. } => ErrorKind::Exhausted,
            Self::ReservedAddress { .. } | Self::NotHolder { .. } => ErrorKind::FailedPrecondition,
            Self::Corrupt { .. } => ErrorKind::Internal,
        }
    }
}

/// Quotes user input in an error message, cut to a sane length so a megabyte of garbage does
/// not come back as a megabyte of error.
#[must_use]
pub fn shown(input: &str) -> String {
    const MAX: usize = 64;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut cut = MAX;
    while !input.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &input[..cut], input.len())
}
