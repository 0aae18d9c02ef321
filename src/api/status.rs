//! The one place that turns errors into gRPC statuses.

use tonic::{Code, Status};

use crate::ipam::{Error, Kind};

/// Maps an IPAM error to its status. Client mistakes carry the error's own message (it names
/// the pool and address); storage and internal failures are logged in full, with their source
/// chain, and reach the client redacted.
#[must_use]
pub fn status(err: &Error) -> Status {
    match code(err.kind()) {
        Code::Internal => {
            tracing::error!(error = %chain(err), "internal error");
            Status::internal("internal error (details are in the server log)")
        }
        Code::Unavailable => {
            // Which part is down, without its address (logged in full).
            let what = match err {
                Error::Driver { driver, .. } => format!("{driver} driver"),
                _ => "storage".to_owned(),
            };
            tracing::warn!(error = %chain(err), "{what} unavailable");
            Status::unavailable(format!("{what} unavailable, retry later"))
        }
        Code::Aborted => {
            tracing::warn!(error = %chain(err), "concurrent change");
            Status::aborted(format!("{err}; retry"))
        }
        code => Status::new(code, err.to_string()),
    }
}

/// The status code of each kind of error.
#[must_use]
pub fn code(kind: Kind) -> Code {
    match kind {
        Kind::Invalid => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::AlreadyExists => Code::AlreadyExists,
        Kind::Exhausted => Code::ResourceExhausted,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::Aborted => Code::Aborted,
        Kind::Unavailable => Code::Unavailable,
        Kind::Internal => Code::Internal,
    }
}

/// The canonical name of a kind's status code, as `google.rpc.Code` spells it.
#[must_use]
pub fn code_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Invalid => "INVALID_ARGUMENT",
        Kind::NotFound => "NOT_FOUND",
        Kind::AlreadyExists => "ALREADY_EXISTS",
        Kind::Exhausted => "RESOURCE_EXHAUSTED",
        Kind::FailedPrecondition => "FAILED_PRECONDITION",
        Kind::Aborted => "ABORTED",
        Kind::Unavailable => "UNAVAILABLE",
        Kind::Internal => "INTERNAL",
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
