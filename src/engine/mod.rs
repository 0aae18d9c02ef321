//! The allocation engine: pure values and functions, no I/O, no async, no locks, no clock.
//!
//! Reading order: [`bitmap`] (run-length-encoded bits over 128-bit ordinals), [`addrset`] (one
//! subnet's addresses mapped onto a bitmap, with the serial cursor), [`pool`] (Docker's pool
//! rules: spaces, subnets, sub-pools, reservations, default pools, utilization), [`error`].
//! Drivers lock, load and persist around these values; nothing here may depend on tokio,
//! sqlx or tonic.

pub mod addrset;
pub mod bitmap;
mod codec;
pub mod error;
pub mod pool;

pub use addrset::{AddrSet, OrdRange};
pub use bitmap::{Bitmap, Run, RunDelta};
pub use error::{Error, ErrorKind};
pub use pool::{
    AddressRequest, DefaultPool, GATEWAY_ADDRESS_TYPE, GLOBAL_SPACE, LOCAL_SPACE, PoolId, PoolPlan,
    PoolRequest, PoolSet, REQUEST_ADDRESS_TYPE, SERIAL_OPTION, Space, Subnet, SubnetSpec,
    Utilization, overlapping, plan_pool, saturating_u64,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
