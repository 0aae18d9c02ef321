//! The store's error type, in domain terms: callers never see a driver's error type.

use std::fmt;
use std::sync::Arc;

use crate::engine;

/// What went wrong talking to a store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The subnet is not stored (deleted by someone else).
    #[error("subnet {subnet} of address space {space} is not stored")]
    NotFound { space: String, subnet: String },
    /// The stored version is not the one expected: another writer got there first.
    #[error("subnet {subnet} of address space {space} was changed concurrently")]
    Conflict { space: String, subnet: String },
    /// The database cannot be reached; retrying later may succeed. (The cause is in the
    /// message, not chained as a source, so a printed chain says it once.)
    #[error("store unavailable: {0}")]
    Unavailable(Cause),
    /// Stored data does not decode.
    #[error("stored subnet {subnet} of address space {space} is corrupt")]
    Corrupt {
        space: String,
        subnet: String,
        #[source]
        source: engine::Error,
    },
    /// Anything else the database reported (the cause in the message, as for `Unavailable`).
    #[error("store error: {0}")]
    Internal(Cause),
}

/// The cause of an `Unavailable` or `Internal` store error, as the database reported it;
/// shared, so that one failure can answer every caller of a batch.
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl<E> From<E> for Cause
where
    Box<dyn std::error::Error + Send + Sync>: From<E>,
{
    fn from(e: E) -> Self {
        Self(Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
            e,
        )))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause's own message (database errors repeat their sources in it).
        self.0.fmt(f)
    }
}
