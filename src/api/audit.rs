//! The audit trail: one structured log line per mutation (through gRPC or the Docker plugin
//! socket) and per admin call, with target `allot::audit`, so that it can be routed apart
//! (`RUST_LOG=allot::audit=info`). It names the tenant, the credential (a token's id, a
//! certificate's subject, `docker-plugin`, `none` — never a secret), the RPC, the pool and
//! address where there are (for an admin call, the tenant or token it concerns, as `subject`),
//! and the result's status code; the log line's time stamp is the call's.

use tonic::Status;

use super::status::code_name;
use crate::auth::Caller;
use crate::engine::error::shown;
use crate::ipam;

/// The credential of the Docker plugin socket's calls.
const PLUGIN: &str = "docker-plugin";

/// Logs one call of `rpc` by `caller` on `pool` and `address` ("" where there is none).
pub fn record<T>(
    caller: &Caller,
    rpc: &str,
    pool: &str,
    address: &str,
    result: &Result<T, Status>,
) {
    line(
        &caller.tenant,
        &caller.credential,
        rpc,
        pool,
        address,
        code(result),
    );
}

/// Logs one call of `rpc` through the Docker plugin socket, for `tenant`.
pub fn plugin<T>(
    tenant: &str,
    rpc: &str,
    pool: &str,
    address: &str,
    result: &Result<T, ipam::Error>,
) {
    let code = result.as_ref().map_or_else(|e| e.kind().name(), |_| "OK");
    line(tenant, PLUGIN, rpc, pool, address, code);
}

fn line(tenant: &str, credential: &str, rpc: &str, pool: &str, address: &str, code: &str) {
    tracing::info!(
        target: "allot::audit",
        tenant,
        credential,
        rpc,
        pool = %shown(pool),
        address = %shown(address),
        code,
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
