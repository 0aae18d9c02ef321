//! Narrative tests of the pool rules through their public interface: DESIGN.md's worked
//! examples, edge prefixes, and the error of every rule.

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::Space;
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid prefix")
}

fn local() -> Space {
    Space::new(LOCAL_SPACE, DefaultPool::local_defaults()).expect("valid space")
}

fn pool(space: &mut Space, pool: &str, sub_pool: &str) -> Result<PoolId, Error> {
    let v6 = pool.contains(':');
    space.request_pool(&PoolRequest::parse(pool, sub_pool, v6)?)
}

fn at(address: &str) -> AddressRequest {
    AddressRequest {
        address: Some(ip(address)),
        ..AddressRequest::default()
    }
}

fn any() -> AddressRequest {
    AddressRequest::default()
}

fn serial() -> AddressRequest {
    AddressRequest {
        serial: true,
        ..AddressRequest::default()
    }
}

#[test]
fn docker_worked_example_gateway_and_aux_address_in_a_slash_31_range() {
    // From the Docker pull request that introduced the IPAM status: subnet 192.168.10.0/24,
    // ip-range 192.168.10.128/31, gateway .1, auxiliary address .128.
    let mut s = local();
    let id = pool(&mut s, "192.168.10.0/24", "192.168.10.128/31").unwrap();
    assert_eq!(id.to_string(), "local/192.168.10.0/24/192.168.10.128/31");
    let gateway = AddressRequest {
        gateway: true,
        ..at("192.168.10.1")
    };
    assert_eq!(s.request_address(&id, &gateway), Ok(ip("192.168.10.1")));
    assert_eq!(
        s.request_address(&id, &at("192.168.10.128")),
        Ok(ip("192.168.10.128"))
    );
    let u = s.utilization(&id).unwrap();
    assert_eq!(u.allocated_in_subnet, 4, ".0, .255, .1 and .128");
    assert_eq!(u.free_in_range, 1, "only .129");
    assert_eq!(s.request_address(&id, &any()), Ok(ip("192.168.10.129")));
    assert_eq!(
        s.request_address(&id, &any()),
        Err(Error::Exhausted {
            pool_id: id.to_string()
        })
    );
}

#[test]
fn docker_worked_example_overlapping_sub_pools_are_counted_once() {
    let mut s = local();
    let wide = pool(&mut s, "192.168.0.0/24", "192.168.0.0/25").unwrap();
    let narrow = pool(&mut s, "192.168.0.0/24", "192.168.0.64/26").unwrap();
    let w = s.utilization(&wide).unwrap();
    let n = s.utilization(&narrow).unwrap();
    assert_eq!(w.allocated_in_subnet, 2, "network and broadcast");
    assert_eq!(
        n.allocated_in_subnet, 2,
        "shared by every pool of the subnet"
    );
    assert_eq!(w.free_in_range, 127);
    assert_eq!(n.free_in_range, 64);
    assert_eq!(w.free_in_union, 127, "not 191");
    assert_eq!(n.free_in_union, 127);
    // An allocation in the narrow range shows in both.
    assert_eq!(s.request_address(&narrow, &any()), Ok(ip("192.168.0.64")));
    assert_eq!(s.utilization(&wide).unwrap().free_in_range, 126);
    assert_eq!(s.utilization(&narrow).unwrap().free_in_range, 63);
    assert_eq!(s.utilization(&wide).unwrap().free_in_union, 126);
}

#[test]
fn disjoint_sub_pools_add_up_in_the_union() {
    let mut s = local();
    let a = pool(&mut s, "10.1.0.0/24", "10.1.0.0/28").unwrap();
    let _b = pool(&mut s, "10.1.0.0/24", "10.1.0.128/28").unwrap();
    assert_eq!(s.utilization(&a).unwrap().free_in_union, 15 + 16);
    // A pool without sub-pool makes the union the whole subnet.
    let mut t = local();
    let whole = pool(&mut t, "10.2.0.0/24", "").unwrap();
    let _sub = pool(&mut t, "10.2.0.0/24", "10.2.0.0/28").unwrap();
    assert_eq!(t.utilization(&whole).unwrap().free_in_union, 254);
}

#[test]
fn reserved_addresses_follow_the_rfcs_at_every_edge_prefix() {
    // (subnet, addresses in use at creation, free)
    let cases: [(&str, u128, u128); 11] = [
        ("0.0.0.0/0", 2, (1 << 32) - 2),
        ("10.0.0.0/8", 2, (1 << 24) - 2),
        ("10.0.0.0/30", 2, 2),
        ("10.0.0.0/31", 0, 2),
        ("10.0.0.7/32", 0, 1),
        ("::/0", 1, u128::MAX),
        ("fd00::/8", 1, (1 << 120) - 1),
        ("fd00::/64", 1, (1 << 64) - 1),
        ("fd00::/120", 1, 255),
        ("fd00::/127", 1, 1),
        ("fd00::1/128", 1, 0),
    ];
    for (n, used, free) in cases {
        let mut s = Space::new(LOCAL_SPACE, Vec::new()).unwrap();
        let v6 = n.contains(':');
        let req = PoolRequest::exact(net(n), None);
        let id = s.request_pool(&req).unwrap();
        assert_eq!(id.to_string().parse::<PoolId>(), Ok(id.clone()), "{n}");
        let u = s.utilization(&id).unwrap();
        assert_eq!(
            (u.allocated_in_subnet, u.free_in_range),
            (used, free),
            "{n}"
        );
        assert_eq!(u.free_in_union, free, "{n}");
        // The first dynamic address skips what is reserved.
        let first = s.request_address(&id, &any());
        if free == 0 {
            assert!(matches!(first, Err(Error::Exhausted { .. })), "{n}");
        } else {
            let want = if v6 || net(n).prefix_len() < 31 {
                ordinal_addr(net(n), 1)
            } else {
                net(n).network()
            };
            assert_eq!(first, Ok(want), "{n}");
        }
        for (addr, _) in subnet::reserved_addresses(net(n)) {
            assert!(
                matches!(
                    s.release_address(&id, addr),
                    Err(Error::ReservedAddress { .. })
                ),
                "{n} {addr}"
            );
            assert!(matches!(
                s.request_address(&id, &at(&addr.to_string())),
                Err(Error::AddressInUse { .. })
            ));
        }
    }
}

fn ordinal_addr(n: IpNet, ordinal: u128) -> IpAddr {
    AddrSet::new(n).addr(ordinal)
}

#[test]
fn slash_31_and_32_use_every_address() {
    let mut s = local();
    let p31 = pool(&mut s, "10.9.0.0/31", "").unwrap();
    assert_eq!(s.request_address(&p31, &any()), Ok(ip("10.9.0.0")));
    assert_eq!(s.request_address(&p31, &any()), Ok(ip("10.9.0.1")));
    assert!(matches!(
        s.request_address(&p31, &any()),
        Err(Error::Exhausted { .. })
    ));
    let p32 = pool(&mut s, "10.9.0.5/32", "").unwrap();
    assert_eq!(s.request_address(&p32, &any()), Ok(ip("10.9.0.5")));
    s.release_address(&p32, ip("10.9.0.5")).unwrap();
    assert_eq!(s.utilization(&p32).unwrap().free_in_range, 1);
}

#[test]
fn a_preferred_address_may_lie_outside_the_sub_pool_but_not_the_subnet() {
    let mut s = local();
    let id = pool(&mut s, "172.30.0.0/24", "172.30.0.128/25").unwrap();
    assert_eq!(
        s.request_address(&id, &at("172.30.0.5")),
        Ok(ip("172.30.0.5"))
    );
    assert_eq!(
        s.request_address(&id, &at("172.30.0.5")),
        Err(Error::AddressInUse {
            pool_id: id.to_string(),
            address: ip("172.30.0.5")
        })
    );
    let err = s.request_address(&id, &at("172.30.1.5")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert_eq!(
        err.to_string(),
        "address 172.30.1.5 is outside subnet 172.30.0.0/24 of pool \
         local/172.30.0.0/24/172.30.0.128/25"
    );
    assert!(matches!(
        s.request_address(&id, &at("fd00::1")),
        Err(Error::OutOfRange { .. })
    ));
    assert_eq!(s.request_address(&id, &any()), Ok(ip("172.30.0.128")));
}

#[test]
fn releasing_is_idempotent_and_checks_the_subnet() {
    let mut s = local();
    let id = pool(&mut s, "172.30.0.0/24", "").unwrap();
    assert_eq!(s.release_address(&id, ip("172.30.0.9")), Ok(()));
    assert_eq!(s.request_address(&id, &any()), Ok(ip("172.30.0.1")));
    assert_eq!(s.release_address(&id, ip("172.30.0.1")), Ok(()));
    assert_eq!(s.release_address(&id, ip("172.30.0.1")), Ok(()));
    assert!(matches!(
        s.release_address(&id, ip("172.31.0.1")),
        Err(Error::OutOfRange { .. })
    ));
    let err = s.release_address(&id, ip("172.30.0.255")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        err.to_string(),
        "address 172.30.0.255 is the broadcast address of pool local/172.30.0.0/24 and cannot \
         be released"
    );
}

#[test]
fn serial_allocation_continues_after_the_most_recent_and_wraps_in_the_range() {
    let mut s = local();
    let id = pool(&mut s, "10.5.0.0/24", "10.5.0.8/30").unwrap();
    let got: Vec<_> = (0..3)
        .map(|_| s.request_address(&id, &serial()).unwrap())
        .collect();
    assert_eq!(got, [ip("10.5.0.8"), ip("10.5.0.9"), ip("10.5.0.10")]);
    s.release_address(&id, ip("10.5.0.9")).unwrap();
    assert_eq!(s.request_address(&id, &serial()), Ok(ip("10.5.0.11")));
    assert_eq!(
        s.request_address(&id, &serial()),
        Ok(ip("10.5.0.9")),
        "wraps to the range start"
    );
    // A cursor left outside the range (by a preferred or another pool's allocation) restarts
    // at the range start.
    let other = pool(&mut s, "10.5.0.0/24", "10.5.0.64/26").unwrap();
    assert_eq!(s.request_address(&other, &serial()), Ok(ip("10.5.0.64")));
    s.release_address(&id, ip("10.5.0.10")).unwrap();
    assert_eq!(s.request_address(&id, &serial()), Ok(ip("10.5.0.10")));
}

#[test]
fn pools_overlap_by_docker_rules_and_beyond() {
    let mut s = local();
    let whole = pool(&mut s, "10.0.0.0/16", "").unwrap();
    let overlap = |r: Result<PoolId, Error>| matches!(r, Err(Error::Overlap { .. }));
    assert!(overlap(pool(&mut s, "10.0.0.0/16", "")), "same pool twice");
    assert!(overlap(pool(&mut s, "10.0.1.0/24", "")), "inside");
    assert!(overlap(pool(&mut s, "10.0.0.0/8", "")), "around");
    // Beyond libnetwork: a sub-pool request cannot create an overlapping subnet either.
    assert!(overlap(pool(&mut s, "10.0.1.0/24", "10.0.1.0/25")));
    let sub = pool(&mut s, "10.0.0.0/16", "10.0.1.0/24").unwrap();
    assert!(
        overlap(pool(&mut s, "10.0.0.0/16", "10.0.1.0/24")),
        "same sub-pool twice"
    );
    assert_eq!(
        pool(&mut s, "10.0.0.0/16", "10.0.1.0/24")
            .unwrap_err()
            .to_string(),
        "pool local/10.0.0.0/16/10.0.1.0/24 overlaps existing pool \
         local/10.0.0.0/16/10.0.1.0/24"
    );
    // The pool without sub-pool of an existing subnet is an overlap too (as in libnetwork).
    let mut t = local();
    pool(&mut t, "10.7.0.0/16", "10.7.1.0/24").unwrap();
    assert!(overlap(pool(&mut t, "10.7.0.0/16", "")));
    // A different space may hold the same subnet.
    let mut g = Space::new(GLOBAL_SPACE, DefaultPool::global_defaults()).unwrap();
    assert!(pool(&mut g, "10.0.0.0/16", "").is_ok());
    // The subnet lives until its last pool goes.
    s.release_pool(&whole).unwrap();
    assert!(overlap(pool(&mut s, "10.0.0.0/8", "")));
    assert_eq!(
        s.release_pool(&whole),
        Err(Error::PoolNotFound {
            pool_id: whole.to_string()
        })
    );
    s.release_pool(&sub).unwrap();
    assert!(pool(&mut s, "10.0.0.0/8", "").is_ok());
    assert_eq!(s.subnets.len(), 1);
}

#[test]
fn released_subnets_take_their_addresses_with_them() {
    let mut s = local();
    let id = pool(&mut s, "10.3.0.0/24", "").unwrap();
    s.request_address(&id, &at("10.3.0.77")).unwrap();
    s.release_pool(&id).unwrap();
    assert!(matches!(
        s.request_address(&id, &any()),
        Err(Error::PoolNotFound { .. })
    ));
    let id = pool(&mut s, "10.3.0.0/24", "").unwrap();
    assert_eq!(s.utilization(&id).unwrap().allocated_in_subnet, 2);
}

#[test]
fn default_pools_are_first_fit_by_address_and_reuse_gaps() {
    let mut s = local();
    let dynamic = |s: &mut Space, pool: &str, v6| {
        s.request_pool(&PoolRequest::parse(pool, "", v6).unwrap())
            .map(|id| id.subnet().to_string())
    };
    assert_eq!(dynamic(&mut s, "", false).unwrap(), "172.17.0.0/16");
    assert_eq!(dynamic(&mut s, "", false).unwrap(), "172.18.0.0/16");
    // A user-chosen subnet in the middle is skipped.
    pool(&mut s, "172.19.0.0/16", "").unwrap();
    pool(&mut s, "172.20.128.0/17", "").unwrap();
    assert_eq!(dynamic(&mut s, "", false).unwrap(), "172.21.0.0/16");
    // Releasing makes a gap that the next request reuses.
    let id: PoolId = "local/172.18.0.0/16".parse().unwrap();
    s.release_pool(&id).unwrap();
    assert_eq!(dynamic(&mut s, "", false).unwrap(), "172.18.0.0/16");
    // 0.0.0.0/N asks for length N from the same pools; ::/N for IPv6.
    assert_eq!(
        dynamic(&mut s, "0.0.0.0/24", false).unwrap(),
        "172.20.0.0/24"
    );
    assert_eq!(dynamic(&mut s, "", true).unwrap(), "fd00:a110:7::/64");
    assert_eq!(
        dynamic(&mut s, "::/56", true).unwrap(),
        "fd00:a110:7:100::/56"
    );
    assert_eq!(dynamic(&mut s, "", true).unwrap(), "fd00:a110:7:1::/64");
    // Nothing shorter than the bases fits.
    let err = dynamic(&mut s, "0.0.0.0/8", false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert_eq!(
        err.to_string(),
        "no free IPv4 /8 subnet left in the default address pools of address space local"
    );
}

#[test]
fn default_pools_run_out_with_a_clear_error() {
    let base = net("10.10.0.0/30");
    let mut s = Space::new("tiny", vec![DefaultPool::new(base, 31).unwrap()]).unwrap();
    let req = PoolRequest::parse("", "", false).unwrap();
    assert_eq!(s.request_pool(&req).unwrap().subnet(), net("10.10.0.0/31"));
    assert_eq!(s.request_pool(&req).unwrap().subnet(), net("10.10.0.2/31"));
    assert!(matches!(
        s.request_pool(&req),
        Err(Error::NoMoreSubnets { .. })
    ));
    assert!(matches!(
        s.request_pool(&PoolRequest::parse("", "", true).unwrap()),
        Err(Error::NoMoreSubnets { .. })
    ));
    assert!(DefaultPool::new(net("10.0.0.0/8"), 7).is_err());
    assert!(DefaultPool::new(net("10.0.0.0/8"), 33).is_err());
    assert!(DefaultPool::new("10.0.0.1/8".parse().unwrap(), 24).is_err());
}

#[test]
fn a_default_pool_covering_the_whole_space_works_at_the_edges() {
    let mut s = Space::new("edge", vec![DefaultPool::new(net("::/0"), 0).unwrap()]).unwrap();
    let req = PoolRequest::parse("", "", true).unwrap();
    assert_eq!(s.request_pool(&req).unwrap().subnet(), net("::/0"));
    assert!(s.request_pool(&req).is_err());
    let mut t = Space::new(
        "edge",
        vec![DefaultPool::new(net("0.0.0.0/0"), 32).unwrap()],
    )
    .unwrap();
    pool(&mut t, "255.255.255.254/31", "").unwrap();
    let req = PoolRequest::parse("", "", false).unwrap();
    assert_eq!(t.request_pool(&req).unwrap().subnet(), net("0.0.0.0/32"));
}

#[test]
fn malformed_requests_name_what_is_wrong() {
    let cases = [
        (
            "",
            "10.0.0.0/24",
            false,
            "a sub-pool needs an explicit pool",
        ),
        ("10.0.0.1/24", "", false, "host bits are set"),
        (
            "10.0.0.0/33",
            "",
            false,
            "not a prefix of the form address/length",
        ),
        (
            "banana",
            "",
            false,
            "not a prefix of the form address/length",
        ),
        (
            "10.0.0.0",
            "",
            false,
            "not a prefix of the form address/length",
        ),
        (
            "10.0.0.0/24",
            "",
            true,
            "an IPv4 pool was given with v6 set",
        ),
        (
            "fd00::/64",
            "",
            false,
            "an IPv6 pool was given without v6 set",
        ),
        ("10.0.0.0/24", "10.0.1.0/25", false, "not inside the pool"),
        ("10.0.0.0/24", "10.0.0.0/23", false, "not inside the pool"),
        (
            "10.0.0.0/24",
            "fd00::/120",
            false,
            "not the same address family as the pool",
        ),
        ("10.0.0.0/24", "10.0.0.1/25", false, "host bits are set"),
        (
            "0.0.0.0/24",
            "0.0.0.0/25",
            false,
            "a dynamic pool cannot carry a sub-pool",
        ),
    ];
    for (p, sub, v6, reason) in cases {
        let err = PoolRequest::parse(p, sub, v6).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{p} {sub}");
        assert!(err.to_string().ends_with(reason), "{p} {sub}: {err}");
    }
    let huge = "1".repeat(1 << 20);
    let err = PoolRequest::parse(&huge, "", false).unwrap_err();
    assert!(err.to_string().len() < 200, "input is cut in messages");
}

#[test]
fn pool_ids_round_trip_and_reject_garbage() {
    for id in [
        "local/192.168.10.0/24/192.168.10.128/31",
        "global/10.0.0.0/8",
        "local/fd00::/64/fd00::80/121",
        "tenant-a.space_1/0.0.0.0/0",
    ] {
        let parsed: PoolId = id.parse().unwrap();
        assert_eq!(parsed.to_string(), id);
    }
    for bad in [
        "",
        "local",
        "local/10.0.0.0",
        "local/10.0.0.0/24/10.0.0.0",
        "local/10.0.0.1/24",
        "local/10.0.0.0/24/10.0.1.0/25",
        "local/10.0.0.0/24/fd00::/120",
        "lo cal/10.0.0.0/24",
        "/10.0.0.0/24",
        "local/10.0.0.0/24/10.0.0.0/25/x",
    ] {
        let err = bad.parse::<PoolId>().unwrap_err();
        assert!(matches!(err, Error::InvalidPoolId { .. }), "{bad}: {err}");
    }
    let mut s = local();
    let unknown: PoolId = "local/10.0.0.0/24".parse().unwrap();
    assert_eq!(
        s.utilization(&unknown).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    pool(&mut s, "10.0.0.0/24", "").unwrap();
    let other_space: PoolId = "global/10.0.0.0/24".parse().unwrap();
    assert_eq!(
        s.release_pool(&other_space).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let missing_sub: PoolId = "local/10.0.0.0/24/10.0.0.0/25".parse().unwrap();
    assert!(matches!(
        s.request_address(&missing_sub, &any()),
        Err(Error::PoolNotFound { .. })
    ));
}

#[test]
fn address_space_names_are_checked() {
    assert!(id::check_space_name("").is_err());
    assert!(id::check_space_name("a/b").is_err());
    assert!(id::check_space_name(&"x".repeat(65)).is_err());
    assert!(id::check_space_name("tenant-7.local").is_ok());
}

#[test]
fn counts_saturate_to_u64_at_the_api_boundary() {
    assert_eq!(saturating_u64(5), 5);
    assert_eq!(saturating_u64(u128::from(u64::MAX)), u64::MAX);
    assert_eq!(saturating_u64(u128::from(u64::MAX) + 1), u64::MAX);
    let mut s = local();
    let id = pool(&mut s, "fd00::/56", "").unwrap();
    let u = s.utilization(&id).unwrap();
    assert_eq!(u.free_in_range, (1 << 72) - 1);
    assert_eq!(saturating_u64(u.free_in_range), u64::MAX);
}

#[test]
fn a_subnet_round_trips_through_its_encoding() {
    let mut s = local();
    let id = pool(&mut s, "fd00:1::/64", "fd00:1::/120").unwrap();
    for _ in 0..50 {
        s.request_address(&id, &serial()).unwrap();
    }
    s.release_address(&id, ip("fd00:1::7")).unwrap();
    let subnet = s.subnet(id.subnet()).unwrap();
    let bytes = subnet.addrs().encode();
    let addrs = AddrSet::decode(id.subnet(), &bytes).unwrap();
    let back = Subnet::from_parts(addrs, subnet.pools()).unwrap();
    assert_eq!(&back, subnet);
    let mut restored = local();
    restored.restore(back).unwrap();
    assert_eq!(
        restored.request_address(&id, &serial()),
        s.request_address(&id, &serial())
    );
    let wider = PoolId::new(LOCAL_SPACE, net("fd00:1::/48"), None).unwrap();
    assert!(restored.restore(Subnet::create(&wider).unwrap()).is_err());
}

/// One spelling per prefix: a lenient parser would hand out one address under two names.
#[test]
fn prefixes_have_one_spelling() {
    for good in [
        "10.0.0.0/24",
        "0.0.0.0/0",
        "fd00::/64",
        "::/0",
        "10.1.0.0/16",
    ] {
        assert_eq!(
            id::parse_prefix(good).map(|n| n.to_string()),
            Ok(good.to_owned())
        );
    }
    for bad in [
        "010.001.000.000/24",
        "10.1.0.0/024",
        "10.1.0.0/+24",
        "10.1.0.0/ 24",
        "::ffff:10.0.0.0/120",
        "::ffff:a00:0/120",
        "::ffff:0:0/96",
        "10.1.0.0",
        "10.1.0.0/33",
    ] {
        assert!(id::parse_prefix(bad).is_err(), "{bad} was accepted");
    }
    let mapped = PoolRequest::parse("::ffff:10.0.0.0/120", "", true);
    assert_eq!(mapped.map_err(|e| e.kind()), Err(ErrorKind::Invalid));
}

mod owners {
    //! Owned allocations: an owner asking a pool again gets what it holds there; releases
    //! that name an owner must name the holder.

    use crate::engine::owners::Owner;
    use crate::engine::subnet::Allocation;
    use crate::engine::{AddressRequest, Error, PoolId, Subnet};

    fn owned(owner: &str, address: Option<&str>) -> AddressRequest {
        AddressRequest {
            address: address.map(|a| a.parse().unwrap()),
            owner: Some(Owner::new(owner).unwrap()),
            at_ms: 1_000,
            ..AddressRequest::default()
        }
    }

    fn fresh(address: &str) -> Allocation {
        Allocation {
            address: address.parse().unwrap(),
            fresh: true,
        }
    }

    fn again(address: &str) -> Allocation {
        Allocation {
            address: address.parse().unwrap(),
            fresh: false,
        }
    }

    #[test]
    fn an_owner_asking_again_gets_its_address_back() {
        let id: PoolId = "local/10.0.0.0/24".parse().unwrap();
        let range: PoolId = "local/10.0.0.0/24/10.0.0.128/25".parse().unwrap();
        let mut s = Subnet::with_pools(id.subnet(), [None, range.sub_pool()]).unwrap();
        assert_eq!(
            s.request(&id, &owned("c1/eth0", None)),
            Ok(fresh("10.0.0.1"))
        );
        let before = s.clone();
        // A retry: the same address, nothing changed.
        assert_eq!(
            s.request(&id, &owned("c1/eth0", None)),
            Ok(again("10.0.0.1"))
        );
        assert_eq!(s, before);
        // Another owner, or none: a second address.
        assert_eq!(
            s.request(&id, &owned("c2/eth0", None)),
            Ok(fresh("10.0.0.2"))
        );
        assert_eq!(
            s.allocate(&id, &AddressRequest::default()),
            Ok("10.0.0.3".parse().unwrap())
        );
        // The same owner in the sub-pool: its address there (none yet), then that one.
        assert_eq!(
            s.request(&range, &owned("c1/eth0", None)),
            Ok(fresh("10.0.0.128"))
        );
        assert_eq!(
            s.request(&range, &owned("c1/eth0", None)),
            Ok(again("10.0.0.128"))
        );
        // More addresses only by name; naming one it holds is a retry too.
        assert_eq!(
            s.request(&id, &owned("c1/eth0", Some("10.0.0.9"))),
            Ok(fresh("10.0.0.9"))
        );
        assert_eq!(
            s.request(&id, &owned("c1/eth0", Some("10.0.0.9"))),
            Ok(again("10.0.0.9"))
        );
        assert!(matches!(
            s.request(&id, &owned("c1/eth0", Some("10.0.0.2"))),
            Err(Error::AddressInUse { .. })
        ));
        let holder = |s: &Subnet, a: &str| {
            let o = s.addrs().ordinal(a.parse().unwrap()).unwrap();
            s.owners()
                .holder(o)
                .map(|h| (h.owner.to_string(), h.since_ms))
        };
        assert_eq!(holder(&s, "10.0.0.1"), Some(("c1/eth0".into(), 1_000)));
        assert_eq!(holder(&s, "10.0.0.3"), None, "unowned");
    }

    #[test]
    fn a_release_naming_an_owner_must_name_the_holder() {
        let id: PoolId = "local/10.0.0.0/24".parse().unwrap();
        let mut s = Subnet::create(&id).unwrap();
        let a = s.allocate(&id, &owned("c1/eth0", None)).unwrap();
        let b = s.allocate(&id, &AddressRequest::default()).unwrap();
        let c1 = Owner::new("c1/eth0").unwrap();
        let c2 = Owner::new("c2/eth0").unwrap();
        let refused = s.release_by(&id, a, Some(&c2)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "address 10.0.0.1 of pool local/10.0.0.0/24 is held by c1/eth0, not by c2/eth0"
        );
        assert_eq!(refused.kind(), crate::engine::ErrorKind::FailedPrecondition);
        let unowned = s.release_by(&id, b, Some(&c1)).unwrap_err();
        assert!(
            unowned.to_string().contains("held without an owner"),
            "{unowned}"
        );
        assert_eq!(s.release_by(&id, a, Some(&c1)), Ok(true));
        assert!(s.owners().is_empty());
        // Free: released by anyone, nothing changes.
        assert_eq!(s.release_by(&id, a, Some(&c2)), Ok(false));
        // Without an owner, as before: anyone releases anything.
        assert_eq!(s.release(&id, b), Ok(true));
    }

    #[test]
    fn stored_owners_must_hold_addresses_in_use() {
        use crate::engine::owners::{Holder, Owners};
        let id: PoolId = "local/10.0.0.0/24".parse().unwrap();
        let mut s = Subnet::create(&id).unwrap();
        s.allocate(&id, &owned("c1/eth0", None)).unwrap();
        let held = |ordinal| {
            Owners::from_rows([(
                ordinal,
                Holder {
                    owner: Owner::new("x").unwrap(),
                    since_ms: 0,
                },
            )])
        };
        let plain = Subnet::from_parts(s.addrs().clone(), [None]).unwrap();
        assert!(plain.clone().with_owners(held(1)).is_ok());
        assert!(matches!(
            plain.clone().with_owners(held(7)),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            plain.with_owners(held(300)),
            Err(Error::Corrupt { .. })
        ));
    }
}

mod allocations {
    //! Listing a pool's allocations a page at a time.

    use crate::engine::owners::Owner;
    use crate::engine::{AddressRequest, PoolId, Subnet};
    use std::net::IpAddr;

    fn addrs(v: &[(IpAddr, Option<crate::engine::owners::Holder>)]) -> Vec<String> {
        v.iter().map(|(a, _)| a.to_string()).collect()
    }

    #[test]
    fn pages_follow_address_order_and_skip_reserved_addresses() {
        let id: PoolId = "local/10.0.0.0/24".parse().unwrap();
        let mut s = Subnet::create(&id).unwrap();
        for i in 0..10 {
            let req = AddressRequest {
                owner: (i % 2 == 0).then(|| Owner::new(&format!("c{i}/eth0")).unwrap()),
                at_ms: 5,
                ..AddressRequest::default()
            };
            s.allocate(&id, &req).unwrap();
        }
        let page = s.allocations(None, None, ("", false), 4);
        assert_eq!(
            addrs(&page),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        assert_eq!(
            page[0].1.as_ref().map(|h| h.owner.to_string()),
            Some("c0/eth0".into())
        );
        assert!(page[1].1.is_none());
        let next = s.allocations(None, Some(page[3].0), ("", false), 4);
        assert_eq!(
            addrs(&next),
            ["10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8"]
        );
        let last = s.allocations(None, Some(next[3].0), ("", false), 4);
        assert_eq!(
            addrs(&last),
            ["10.0.0.9", "10.0.0.10"],
            "no broadcast address"
        );
        assert!(
            s.allocations(None, Some(last[1].0), ("", false), 4)
                .is_empty()
        );
        // Only owners starting with a prefix.
        let owned = s.allocations(None, None, ("c", false), 100);
        assert_eq!(owned.len(), 5);
        assert_eq!(
            addrs(&s.allocations(None, None, ("c4", false), 100)),
            ["10.0.0.5"]
        );
        // A sub-pool's range only.
        let range: PoolId = "local/10.0.0.0/24/10.0.0.4/30".parse().unwrap();
        s.add_pool(&range).unwrap();
        assert_eq!(
            addrs(&s.allocations(range.sub_pool(), None, ("", false), 100)),
            ["10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"]
        );
    }

    #[test]
    fn a_million_allocations_of_a_slash_8_page_exactly() {
        let id: PoolId = "local/10.0.0.0/8".parse().unwrap();
        let mut s = Subnet::create(&id).unwrap();
        for i in 0..1_000_000u32 {
            let req = AddressRequest {
                owner: (i % 10 == 0).then(|| Owner::new(&format!("c{i}/eth0")).unwrap()),
                ..AddressRequest::default()
            };
            s.allocate(&id, &req).unwrap();
        }
        // Every allocation once, in address order, a page of 1,000 at a time.
        let (mut seen, mut owned, mut after, mut last) = (0, 0, None, None);
        loop {
            let page = s.allocations(None, after, ("", false), 1000);
            for (address, holder) in &page {
                assert!(last < Some(*address), "{address} after {last:?}");
                last = Some(*address);
                owned += usize::from(holder.is_some());
            }
            seen += page.len();
            match page.last() {
                Some((a, _)) if page.len() == 1000 => after = Some(*a),
                _ => break,
            }
        }
        assert_eq!((seen, owned), (1_000_000, 100_000));
        assert_eq!(last, Some("10.15.66.64".parse().unwrap()));
        // The owned ones only, the same way.
        let (mut n, mut after) = (0, None);
        loop {
            let page = s.allocations(None, after, ("c", true), 1000);
            n += page.len();
            match page.last() {
                Some((a, _)) if page.len() == 1000 => after = Some(*a),
                _ => break,
            }
        }
        assert_eq!(n, 100_000);
    }

    #[test]
    fn a_page_of_a_large_subnet_costs_what_it_holds() {
        let id: PoolId = "local/10.0.0.0/8".parse().unwrap();
        let mut s = Subnet::create(&id).unwrap();
        for _ in 0..100_000 {
            s.allocate(&id, &AddressRequest::default()).unwrap();
        }
        let after: IpAddr = "10.1.0.0".parse().unwrap();
        let page = s.allocations(None, Some(after), ("", false), 3);
        assert_eq!(addrs(&page), ["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
        let tail: IpAddr = "10.1.134.159".parse().unwrap();
        assert_eq!(
            addrs(&s.allocations(None, Some(tail), ("", false), 3)),
            ["10.1.134.160"]
        );
    }
}
