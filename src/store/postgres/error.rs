//! The error map: what PostgreSQL reports, in the store's terms.

use crate::store::Error;

/// Maps a driver error into the store's terms, by SQLSTATE: an unreachable, restarting or
/// overloaded server is `Unavailable`, a duplicate key or a serialization failure a
/// `Conflict`, anything else `Internal`.
pub(super) fn map_err(e: sqlx::Error, space: &str, subnet: &str) -> Error {
    let conflict = || Error::Conflict {
        space: space.to_owned(),
        subnet: subnet.to_owned(),
    };
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => conflict(),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // serialization_failure, deadlock_detected
            Some("40001" | "40P01") => conflict(),
            // connection_exception (08…), insufficient_resources (53…), operator
            // intervention: admin/crash shutdown, cannot connect now (57P0…)
            Some(code)
                if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P0") =>
            {
                Error::Unavailable(db.into())
            }
            _ => Error::Internal(db.into()),
        },
        e @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed) => Error::Unavailable(e.into()),
        e => Error::Internal(e.into()),
    }
}
