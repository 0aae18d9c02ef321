//! The one place that turns errors into gRPC statuses.

use tonic::{Code, Status};

use crate::ipam::{Error, Kind};

/// Maps an IPAM error to its status. Client mistakes carry the error's own message (it names
/// the pool and address); storage and internal failures are logged in full, with their source
/// chain, and reach the client redacted.
#[must_use]
pub fn status(err: &Error) -> Status {
    let code = match err.kind() {
        Kind::Invalid => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::AlreadyExists => Code::AlreadyExists,
        Kind::Exhausted => Code::ResourceExhausted,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::Aborted => Code::Aborted,
        Kind::Unavailable => Code::Unavailable,
        Kind::Internal => Code::Internal,
    };
    match code {
        Code::Internal => {
            tracing::error!(error = %chain(err), "internal error");
            Status::internal("internal error (details are in the server log)")
        }
        Code::Unavailable => {
            tracing::warn!(error = %chain(err), "storage unavailable");
            Status::unavailable("storage unavailable, retry later")
        }
        Code::Aborted => {
            tracing::warn!(error = %chain(err), "concurrent change");
            Status::aborted(format!("{err}; retry"))
        }
        code => Status::new(code, err.to_string()),
    }
}

/// The error and its sources, one after the other.
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
