//! The one place that turns errors into gRPC statuses.

use tonic::{Code, Status};

use crate::ipam::{Error, Kind};

/// Maps an IPAM error to its status: the kind's code, and the message a client may be told
/// ([`Error::public_message`], which logs what it may not).
#[must_use]
pub fn status(err: &Error) -> Status {
    Status::new(code(err.kind()), err.public_message())
}

/// The status code of each kind of error.
#[must_use]
pub fn code(kind: Kind) -> Code {
    Code::from_i32(kind.rpc_code().0)
}

/// A status code as gRPC spells it (`NOT_FOUND`), as grpcurl and the docs show it.
#[must_use]
pub const fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code_named_as_google_rpc_names_it() {
        let kinds = [
            (Kind::Invalid, Code::InvalidArgument),
            (Kind::NotFound, Code::NotFound),
            (Kind::AlreadyExists, Code::AlreadyExists),
            (Kind::Exhausted, Code::ResourceExhausted),
            (Kind::FailedPrecondition, Code::FailedPrecondition),
            (Kind::Aborted, Code::Aborted),
            (Kind::Unavailable, Code::Unavailable),
            (Kind::Internal, Code::Internal),
            (Kind::Unauthenticated, Code::Unauthenticated),
            (Kind::PermissionDenied, Code::PermissionDenied),
        ];
        for (kind, want) in kinds {
            assert_eq!(code(kind), want, "{kind:?}");
            // tonic's Debug is the CamelCase of the canonical SCREAMING_SNAKE name.
            let camel: String = kind
                .name()
                .split('_')
                .map(|w| w[..1].to_owned() + &w[1..].to_lowercase())
                .collect();
            assert_eq!(format!("{want:?}"), camel, "{kind:?}");
        }
    }
}
