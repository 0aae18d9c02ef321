//! allot: IP address management as a service.
//!
//! Modules in reading order: [`engine`], the pure allocation engine everything else builds on.

pub mod engine;
