//! Black-box tests: a real server on a real socket (or the real binary), driven over gRPC.
//! One binary, with the helpers in `helpers`.

// Test code: a broken precondition should fail the test at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod architecture;
mod cli;
mod cni;
mod cni_bridge;
mod docker;
mod durability;
mod errors;
mod grpcurl;
mod helpers;
mod history;
mod image;
mod outage;
mod owners;
mod paging;
mod plugin;
mod remote;
mod replicas;
mod semantics;
mod tenancy;
mod tls;
