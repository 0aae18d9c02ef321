//! The allocation engine: pure values and functions, no I/O, no async, no locks, no clock.
//!
//! Reading order: [`bitmap`] (run-length-encoded bits over 128-bit ordinals), [`addrset`] (one
//! subnet's addresses mapped onto a bitmap, with the serial cursor), [`id`] (pool ids and the
//! names in them), [`request`] (checked pool and address requests), [`subnet`] (one subnet:
//! its pools, reservations, utilization, and the rules of one subnet), [`plan`] (default
//! pools, and where a pool request goes among a space's subnets), [`error`]. Drivers lock,
//! load and persist around these values; nothing here may depend on tokio, sqlx or tonic.

pub mod addrset;
pub mod bitmap;
mod codec;
pub mod error;
pub mod id;
pub mod owners;
pub mod plan;
pub mod request;
pub mod subnet;

pub use addrset::{AddrSet, OrdRange};
pub use bitmap::{BLOCK_BITS, Bitmap, Run, RunDelta, block_of, block_span};
pub use error::{Error, ErrorKind};
pub use id::{GLOBAL_SPACE, LOCAL_SPACE, PoolId};
pub use plan::{DefaultPool, PoolPlan, overlapping, plan_pool};
pub use request::{
    AddressRequest, GATEWAY_ADDRESS_TYPE, Options, PoolRequest, REQUEST_ADDRESS_TYPE,
    SERIAL_OPTION, SubnetSpec,
};
pub use subnet::{Subnet, Utilization, reserved_addresses, saturating_u64};

#[cfg(test)]
pub(crate) mod model;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
