//! Memory and encoded size of subnet states, beside libnetwork's figures (see BENCHMARKS.md).
//! Run: `cargo bench --bench memory`. Deterministic: the same numbers on every machine.

// Set-up panics on failure (a bug to see at once); the address arithmetic truncates on purpose.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::net::IpAddr;

mod common;

use allot::engine::{AddressRequest, Subnet};
use common::{Rng, subnet_with};

fn report(what: &str, subnet: &Subnet, libnetwork: &str) {
    println!(
        "| {what} | {} | {} | {} | {libnetwork} |",
        subnet.addrs().bitmap().n_runs(),
        subnet.mem_bytes(),
        subnet.addrs().encode().len(),
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with --test or --bench flags; print either way.
    println!("| state | runs | memory (bytes) | encoded (bytes) | libnetwork |");
    println!("|---|---|---|---|---|");

    let (subnet, _) = subnet_with("10.0.0.0/8", "");
    report("empty /8", &subnet, "");
    let (subnet, _) = subnet_with("fd00:1::/48", "");
    report("empty IPv6 /48", &subnet, "");

    let (mut subnet, id) = subnet_with("10.0.0.0/16", "");
    while subnet.allocate(&id, &AddressRequest::default()).is_ok() {}
    report("full /16", &subnet, "");

    let (mut subnet, id) = subnet_with("10.0.0.0/16", "");
    let mut rng = Rng(7);
    let mut n = 0;
    while n < 32_768 {
        let host = 1 + (rng.next() % 65_534) as u32;
        let a = IpAddr::from((10u32 << 24 | host).to_be_bytes());
        let req = AddressRequest {
            address: Some(a),
            ..AddressRequest::default()
        };
        if subnet.allocate(&id, &req).is_ok() {
            n += 1;
        }
    }
    report(
        "/16 at 50% random fill",
        &subnet,
        "50.7 KB (24.6 KB serialized; flat bitmap 8 KB)",
    );

    let (mut subnet, id) = subnet_with("10.0.0.0/8", "");
    for _ in 0..1_000_000 {
        subnet.allocate(&id, &AddressRequest::default()).unwrap();
    }
    report("/8 holding 1M addresses in order", &subnet, "");

    let (mut subnet, id) = subnet_with("fd00:1::/64", "");
    let serial = AddressRequest {
        serial: true,
        ..AddressRequest::default()
    };
    for _ in 0..100_000 {
        subnet.allocate(&id, &serial).unwrap();
    }
    report("IPv6 /64 holding 100k serial addresses", &subnet, "");
}
