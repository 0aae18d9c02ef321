//! Memory and encoded size of subnet states, beside libnetwork's figures (see BENCHMARKS.md).
//! Run: `cargo bench --bench memory`. Deterministic: the same numbers on every machine.

// Set-up panics on failure (a bug to see at once); the address arithmetic truncates on purpose.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::net::IpAddr;

mod common;

use allot::engine::{AddressRequest, Space};
use common::{Rng, space_with};

fn report(what: &str, space: &Space, libnetwork: &str) {
    let subnet = space.subnets().next().unwrap();
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

    let (space, _) = space_with("10.0.0.0/8", "");
    report("empty /8", &space, "");
    let (space, _) = space_with("fd00:1::/48", "");
    report("empty IPv6 /48", &space, "");

    let (mut space, id) = space_with("10.0.0.0/16", "");
    while space
        .request_address(&id, &AddressRequest::default())
        .is_ok()
    {}
    report("full /16", &space, "");

    let (mut space, id) = space_with("10.0.0.0/16", "");
    let mut rng = Rng(7);
    let mut n = 0;
    while n < 32_768 {
        let host = 1 + (rng.next() % 65_534) as u32;
        let a = IpAddr::from((10u32 << 24 | host).to_be_bytes());
        let req = AddressRequest {
            address: Some(a),
            ..AddressRequest::default()
        };
        if space.request_address(&id, &req).is_ok() {
            n += 1;
        }
    }
    report(
        "/16 at 50% random fill",
        &space,
        "50.7 KB (24.6 KB serialized; flat bitmap 8 KB)",
    );

    let (mut space, id) = space_with("10.0.0.0/8", "");
    for _ in 0..1_000_000 {
        space
            .request_address(&id, &AddressRequest::default())
            .unwrap();
    }
    report("/8 holding 1M addresses in order", &space, "");

    let (mut space, id) = space_with("fd00:1::/64", "");
    let serial = AddressRequest {
        serial: true,
        ..AddressRequest::default()
    };
    for _ in 0..100_000 {
        space.request_address(&id, &serial).unwrap();
    }
    report("IPv6 /64 holding 100k serial addresses", &space, "");
}
