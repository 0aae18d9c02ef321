//! Engine benchmarks, each beside the libnetwork figure it answers (see BENCHMARKS.md).
//!
//! Everything goes through the public `Subnet` API as the built-in driver calls it (the pool
//! check, address conversion, the counters, the bitmap), as libnetwork's figures go through its
//! allocator. Run: `cargo bench --bench engine`.
//! Per-address figures for the whole-/16 benchmarks are the median divided by the count shown.

// Benchmark set-up panics on failure (a bug to see at once), and the address arithmetic
// truncates on purpose.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::net::IpAddr;

mod common;

use allot::engine::{AddressRequest, Options, PoolId, Subnet};
use common::{Rng, subnet_with};
use divan::{Bencher, black_box};

fn main() {
    divan::main();
}

const LOWEST: AddressRequest = AddressRequest {
    address: None,
    serial: false,
    gateway: false,
    options: Options::new(),
    owner: None,
    at_ms: 0,
};
const SERIAL: AddressRequest = AddressRequest {
    address: None,
    serial: true,
    gateway: false,
    options: Options::new(),
    owner: None,
    at_ms: 0,
};

fn at(address: IpAddr) -> AddressRequest {
    AddressRequest {
        address: Some(address),
        ..LOWEST
    }
}

/// Every host address of 10.0.0.0/16 (65,534), in order.
fn hosts_16() -> Vec<IpAddr> {
    (1..65_535u32)
        .map(|i| IpAddr::from([10, 0, (i >> 8) as u8, i as u8]))
        .collect()
}

/// A /16 (optionally with a sub-pool) with half of its host addresses taken at random; returns
/// the taken ones.
fn half_full_16(sub_pool: &str, seed: u64) -> (Subnet, PoolId, Vec<IpAddr>, Rng) {
    let (mut subnet, id) = subnet_with("10.0.0.0/16", sub_pool);
    let mut rng = Rng(seed);
    let mut hosts = hosts_16();
    rng.shuffle(&mut hosts);
    hosts.truncate(32_768);
    for &a in &hosts {
        subnet.allocate(&id, &at(a)).unwrap();
    }
    (subnet, id, hosts, rng)
}

/// Every address of a /16, lowest free first; a fresh subnet per pass.
#[divan::bench(sample_count = 30)]
fn fill_16_lowest_free(bencher: Bencher) {
    bencher
        .counter(65_534u32)
        .with_inputs(|| subnet_with("10.0.0.0/16", ""))
        .bench_local_values(|(mut subnet, id)| {
            while subnet.allocate(&id, &LOWEST).is_ok() {}
            subnet
        });
}

fn release_request_pairs(bencher: Bencher, req: &AddressRequest) {
    let (mut subnet, id, mut taken, mut rng) = half_full_16("", 7);
    bencher.bench_local(|| {
        let i = rng.below(taken.len());
        subnet.release(&id, taken[i]).unwrap();
        taken[i] = subnet.allocate(&id, black_box(req)).unwrap();
    });
}

// Counts are pinned (samples × iterations, one state throughout a run) to those the libnetwork
// harness (../shared/bench/libnetwork) runs, so that both sides do the same operations.

/// 1,600 pairs.
#[divan::bench(sample_count = 100, sample_size = 16)]
fn release_request_pair_16_half_full(bencher: Bencher) {
    release_request_pairs(bencher, &LOWEST);
}

/// 1,600 pairs.
#[divan::bench(sample_count = 100, sample_size = 16)]
fn release_request_pair_16_half_full_serial(bencher: Bencher) {
    release_request_pairs(bencher, &SERIAL);
}

/// 200,000 pairs (libnetwork's `_long`): the state drifts with the count in serial mode.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn release_request_pair_16_half_full_long(bencher: Bencher) {
    release_request_pairs(bencher, &LOWEST);
}

/// 200,000 pairs.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn release_request_pair_16_half_full_serial_long(bencher: Bencher) {
    release_request_pairs(bencher, &SERIAL);
}

/// Every address of a full /16 released in random order; a fresh subnet per pass.
#[divan::bench(sample_count = 30)]
fn release_random_order_from_full_16(bencher: Bencher) {
    bencher
        .counter(65_534u32)
        .with_inputs(|| {
            let (mut subnet, id) = subnet_with("10.0.0.0/16", "");
            while subnet.allocate(&id, &LOWEST).is_ok() {}
            let mut hosts = hosts_16();
            Rng(11).shuffle(&mut hosts);
            (subnet, id, hosts)
        })
        .bench_local_values(|(mut subnet, id, hosts)| {
            for a in hosts {
                subnet.release(&id, a).unwrap();
            }
            subnet
        });
}

fn serial_pairs_v6_64_holding_100k(bencher: Bencher) {
    let (mut subnet, id) = subnet_with("fd00:1::/64", "");
    let mut taken: Vec<IpAddr> = (0..100_000)
        .map(|_| subnet.allocate(&id, &SERIAL).unwrap())
        .collect();
    let mut rng = Rng(13);
    bencher.bench_local(|| {
        let i = rng.below(taken.len());
        subnet.release(&id, taken[i]).unwrap();
        taken[i] = subnet.allocate(&id, &SERIAL).unwrap();
    });
}

/// 100 pairs.
#[divan::bench(sample_count = 100, sample_size = 1)]
fn serial_release_request_pair_v6_64_holding_100k(bencher: Bencher) {
    serial_pairs_v6_64_holding_100k(bencher);
}

/// 200,000 pairs.
#[divan::bench(sample_count = 100, sample_size = 2000)]
fn serial_release_request_pair_v6_64_holding_100k_long(bencher: Bencher) {
    serial_pairs_v6_64_holding_100k(bencher);
}

/// The whole `GetIpamState` answer for the pool: allocated in the /16,
/// free in the /17 range, free over the union of ranges.
#[divan::bench(sample_count = 100, sample_size = 256)]
fn utilization_17_range_of_16_half_full(bencher: Bencher) {
    let (subnet, id, _, _) = half_full_16("10.0.128.0/17", 17);
    bencher.bench_local(|| subnet.utilization(black_box(id.sub_pool())));
}

/// The free count of the /17 range alone, straight from the address set.
#[divan::bench(sample_count = 100, sample_size = 20)]
fn free_count_17_range_of_16_half_full(bencher: Bencher) {
    let (subnet, id, _, _) = half_full_16("10.0.128.0/17", 17);
    let addrs = subnet.addrs();
    let range = addrs.range(id.sub_pool());
    bencher.bench_local(|| addrs.free_in(black_box(range)));
}

/// Allocate-then-release of the next lowest address in a /8 already holding 1M addresses
/// allocated in order.
#[divan::bench(sample_count = 100, sample_size = 32)]
fn request_release_8_holding_1m_in_order(bencher: Bencher) {
    let (mut subnet, id) = subnet_with("10.0.0.0/8", "");
    for _ in 0..1_000_000 {
        subnet.allocate(&id, &LOWEST).unwrap();
    }
    bencher.bench_local(|| {
        let a = subnet.allocate(&id, &LOWEST).unwrap();
        subnet.release(&id, a).unwrap();
    });
}

/// Release+request pairs in a /8 holding 1M addresses scattered at random: the worst case for
/// run counts (about one run per allocated address).
#[divan::bench(sample_count = 20)]
fn release_request_pair_8_holding_1m_scattered(bencher: Bencher) {
    let (mut subnet, id) = subnet_with("10.0.0.0/8", "");
    let mut rng = Rng(19);
    let mut taken = Vec::with_capacity(1_000_000);
    while taken.len() < 1_000_000 {
        let n = 1 + (rng.next() % ((1 << 24) - 2)) as u32;
        let a = IpAddr::from((10u32 << 24 | n).to_be_bytes());
        if subnet.allocate(&id, &at(a)).is_ok() {
            taken.push(a);
        }
    }
    bencher.bench_local(|| {
        let i = rng.below(taken.len());
        subnet.release(&id, taken[i]).unwrap();
        let n = 1 + (rng.next() % ((1 << 24) - 2)) as u32;
        let a = IpAddr::from((10u32 << 24 | n).to_be_bytes());
        taken[i] = match subnet.allocate(&id, &at(a)) {
            Ok(a) => a,
            Err(_) => subnet.allocate(&id, &LOWEST).unwrap(),
        };
    });
}

/// Release+request pairs of random preferred addresses in an IPv6 /64 holding 200k addresses
/// scattered at random (e.g. derived from MAC addresses): every allocation splits an empty
/// run, the worst case for inserting into the run list.
#[divan::bench(sample_count = 20, sample_size = 1)]
fn release_request_pair_v6_64_holding_200k_scattered(bencher: Bencher) {
    let (mut subnet, id) = subnet_with("fd00:1::/64", "");
    let mut rng = Rng(23);
    let mut random_addr =
        move || IpAddr::from((0xfd00_0001_u128 << 96 | u128::from(rng.next() | 1)).to_be_bytes());
    let mut taken: Vec<IpAddr> = (0..200_000)
        .map(|_| subnet.allocate(&id, &at(random_addr())).unwrap())
        .collect();
    let mut pick = Rng(29);
    bencher.bench_local(|| {
        let i = pick.below(taken.len());
        subnet.release(&id, taken[i]).unwrap();
        taken[i] = subnet.allocate(&id, &at(random_addr())).unwrap();
    });
}
