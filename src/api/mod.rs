//! The APIs: a thin tonic service over an [`Ipam`](crate::ipam::Ipam) driver with the one
//! error → status map, and Docker's remote IPAM plugin protocol on a unix socket. Of the
//! library's layers, only this module and `proto` know tonic and prost (`startup` and `cli`,
//! which build the server and the client, use tonic's transport too).

pub mod codec;
pub mod conn;
pub mod plugin;
mod service;
pub mod status;

pub use service::IpamApi;
