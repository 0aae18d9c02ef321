//! allot: IP address management as a service.
//!
//! Modules in reading order: [`engine`] (the pure allocation engine), [`store`] (persistence
//! behind one trait).

pub mod engine;
pub mod store;
