//! Set-up shared by the benchmark binaries.

use allot::engine::{PoolId, PoolRequest, Subnet};

/// xorshift64*: a deterministic, dependency-free source of random addresses and shuffles.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[allow(dead_code)] // not every benchmark binary shuffles
    pub fn below(&mut self, n: usize) -> usize {
        // n is small; the modulo bias is irrelevant here.
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    #[allow(dead_code)]
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// A subnet holding one pool, as the built-in driver keeps it.
pub fn subnet_with(pool: &str, sub_pool: &str) -> (Subnet, PoolId) {
    let v6 = pool.contains(':');
    let req = PoolRequest::parse(pool, sub_pool, v6).unwrap();
    let net = pool.parse().unwrap();
    let id = PoolId::new("local", net, req.sub_pool).unwrap();
    (Subnet::create(&id).unwrap(), id)
}
