//! The audit trail: one structured log line per mutation and per admin call, with target
//! `allot::audit`, so that it can be routed apart (`RUST_LOG=allot::audit=info`). It names the
//! tenant, the credential (a token's id, a certificate's subject — never a secret), the RPC,
//! the pool and address where there are (for an admin call, the tenant or token it concerns,
//! as `subject`), and the result's status code; the log line's time stamp is the call's.

use tonic::Status;

use super::status::code_name;
use crate::auth::Caller;
use crate::engine::error::shown;

/// Logs one call of `rpc` by `caller` on `pool` and `address` ("" where there is none).
pub fn record<T>(
    caller: &Caller,
    rpc: &str,
    pool: &str,
    address: &str,
    result: &Result<T, Status>,
) {
    tracing::info!(
        target: "allot::audit",
        tenant = %caller.tenant,
        credential = %caller.credential,
        rpc,
        pool = %shown(pool),
        address = %shown(address),
        code = code(result),
        "audit"
    );
}

/// Logs one admin call of `rpc` by `caller` on `subject` (the tenant or token it concerns).
pub fn record_admin<T>(caller: &Caller, rpc: &str, subject: &str, result: &Result<T, Status>) {
    tracing::info!(
        target: "allot::audit",
        tenant = %caller.tenant,
        credential = %caller.credential,
        rpc,
        subject = %shown(subject),
        code = code(result),
        "audit"
    );
}

fn code<T>(result: &Result<T, Status>) -> &'static str {
    match result {
        Ok(_) => "OK",
        Err(status) => code_name(status.code()),
    }
}
