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
    /// The database cannot be reached; retrying later may succeed. (The cause is in the
    /// message, not chained as a source, so a printed chain says it once.)
    #[error("store unavailable: {0}")]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
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
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// An equal error for another caller: same variant and message, sources kept as text.
    #[must_use]
    pub fn replicate(&self) -> Self {
        match self {
            Self::NotFound { space, subnet } => Self::NotFound {
                space: space.clone(),
                subnet: subnet.clone(),
            },
            Self::Conflict { space, subnet } => Self::Conflict {
                space: space.clone(),
                subnet: subnet.clone(),
            },
            Self::Unavailable(source) => Self::Unavailable(chain(source.as_ref()).into()),
            Self::Corrupt {
                space,
                subnet,
                source,
            } => Self::Corrupt {
                space: space.clone(),
                subnet: subnet.clone(),
                source: source.clone(),
            },
            Self::Internal(source) => Self::Internal(chain(source.as_ref()).into()),
        }
    }
}

/// An error and its sources, as one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
