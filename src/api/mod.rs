//! The APIs: a thin tonic service over an [`Ipam`](crate::ipam::Ipam) driver with the one
//! error → status map, and Docker's remote IPAM plugin protocol on a unix socket. Of the
//! library's layers, only this module and `proto` know tonic and prost (`startup` and `cli`,
//! which build the server and the client, use tonic's transport too).

mod admin;
mod audit;
pub mod authn;
pub mod codec;
pub mod conn;
pub mod plugin;
mod quota;
mod reclaim;
mod retry;
mod service;
pub mod status;
pub mod tls;

pub use admin::AdminApi;
pub use service::IpamApi;

use crate::auth::Caller;

/// The caller of a call, as the authentication layer ([`authn`]) found it.
///
/// # Errors
/// `INTERNAL` if the call did not pass the layer (a server built without it: a bug).
pub(crate) fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            tracing::error!("a call reached a service without passing the authentication layer");
            tonic::Status::internal("internal error (details are in the server log)")
        })
}
