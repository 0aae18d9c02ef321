//! The store's error type, in domain terms: callers never see a driver's error type.

use crate::engine;

/// What went wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The subnet is not stored (deleted by someone else).
    #[error("subnet {subnet} of address space {space} is not stored")]
    NotFound { space: String, subnet: String },
    /// The stored version is not the one expected: another writer got there first.
    #[error("subnet {subnet} of address space {space} was changed concurrently")]
    Conflict { space: String, subnet: String },
    /// The database cannot be reached; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data does not decode.
    #[error("stored subnet {subnet} of address space {space} is corrupt")]
    Corrupt {
        space: String,
        subnet: String,
        #[source]
        source: engine::Error,
    },
    /// Anything else the database reported.
    #[error("store error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}
