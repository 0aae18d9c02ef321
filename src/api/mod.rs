//! The APIs: a thin tonic service over an [`Ipam`](crate::ipam::Ipam) driver with the one
//! error → status map, and Docker's remote IPAM plugin protocol on a unix socket. Only this
//! module and `proto` know tonic and prost.

pub mod codec;
pub mod conn;
pub mod plugin;
mod service;
pub mod status;

pub use service::IpamApi;
