//! allot: IP address management as a service.
//!
//! Modules in reading order: [`engine`] (the pure allocation engine), [`store`] (persistence
//! behind one trait), [`ipam`] (the driver trait and the built-in driver), [`proto`] (the
//! generated API and its conversions), [`api`] (the gRPC service and the error → status map),
//! [`auth`] (bearer tokens and roles, not served yet), then the binary's plumbing: [`config`], [`telemetry`], [`startup`], [`cli`].

pub mod api;
pub mod auth;
pub mod cli;
pub mod cni;
pub mod config;
pub mod docker;
pub mod engine;
pub mod ipam;
pub mod proto;
pub mod startup;
pub mod store;
pub mod telemetry;
