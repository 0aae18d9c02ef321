//! The gRPC API: a thin tonic service over an [`Ipam`](crate::ipam::Ipam) driver, and the one
//! error → status map. Only this module and `proto` know tonic and prost.

mod service;
pub mod status;

pub use service::IpamApi;
