//! Property tests: random sequences of pool operations compared, answer by answer, against a
//! naive model (a `BTreeSet` of ordinals, a cursor, and ranges merged the slow way).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::addrset::addr_bits;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// Dynamic allocation in pool `pool` (an index into the pools, modulo).
    Alloc {
        pool: usize,
        serial: bool,
    },
    /// Allocation of the address at `offset` from the network address.
    AllocAt {
        pool: usize,
        offset: Offset,
    },
    Release {
        pool: usize,
        offset: Offset,
    },
    /// Replace the state by what its encoding decodes to.
    RoundTrip,
}

/// Where an address lies: near the start of the subnet, near its end, or past it.
#[derive(Debug, Clone, Copy)]
enum Offset {
    Low(u128),
    High(u128),
    Outside(u128),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let offset = prop_oneof![
        6 => (0u128..600).prop_map(Offset::Low),
        2 => (0u128..200).prop_map(Offset::High),
        1 => (0u128..1000).prop_map(Offset::Outside),
    ];
    let op = prop_oneof![
        6 => (0usize..8, any::<bool>()).prop_map(|(pool, serial)| Op::Alloc { pool, serial }),
        3 => (0usize..8, offset.clone()).prop_map(|(pool, offset)| Op::AllocAt { pool, offset }),
        4 => (0usize..8, offset).prop_map(|(pool, offset)| Op::Release { pool, offset }),
        1 => Just(Op::RoundTrip),
    ];
    proptest::collection::vec(op, 1..300)
}

/// The naive model of one subnet.
struct Model {
    net: IpNet,
    last: u128,
    used: BTreeSet<u128>,
    reserved: BTreeSet<u128>,
    cursor: u128,
    /// Ordinal ranges of the pools, in the order they were created.
    ranges: Vec<(u128, u128)>,
}

impl Model {
    fn new(net: IpNet, sub_pools: &[Option<IpNet>]) -> Self {
        let base = addr_bits(net.network());
        let last = addr_bits(net.broadcast()) - base;
        let mut reserved = BTreeSet::new();
        match net {
            IpNet::V4(n) if n.prefix_len() < 31 => {
                reserved.insert(0);
                reserved.insert(last);
            }
            IpNet::V4(_) => {}
            IpNet::V6(_) => {
                reserved.insert(0);
            }
        }
        let ranges = sub_pools
            .iter()
            .map(|sub| match sub {
                None => (0, last),
                Some(r) => (
                    addr_bits(r.network()) - base,
                    addr_bits(r.broadcast()) - base,
                ),
            })
            .collect();
        Self {
            net,
            last,
            used: reserved.clone(),
            reserved,
            cursor: 0,
            ranges,
        }
    }

    fn addr(&self, offset: Offset) -> IpAddr {
        let base = addr_bits(self.net.network());
        let bits = match offset {
            Offset::Low(o) => base + o.min(self.last),
            Offset::High(o) => base + self.last - o.min(self.last),
            Offset::Outside(o) => base + self.last + 1 + o,
        };
        match self.net {
            IpNet::V4(_) => IpAddr::from(
                u32::try_from(bits)
                    .expect("test subnets are not at the top")
                    .to_be_bytes(),
            ),
            IpNet::V6(_) => IpAddr::from(bits.to_be_bytes()),
        }
    }

    fn ordinal(&self, a: IpAddr) -> Option<u128> {
        self.net
            .contains(&a)
            .then(|| addr_bits(a) - addr_bits(self.net.network()))
    }

    fn alloc(&mut self, range: (u128, u128), serial: bool) -> Option<u128> {
        let (first, last) = range;
        let from = if serial && self.cursor > first && self.cursor <= last {
            self.cursor
        } else {
            first
        };
        let free = |o: &u128| !self.used.contains(o);
        let found = (from..=last)
            .find(free)
            .or_else(|| (first..from).find(free))?;
        self.used.insert(found);
        self.cursor = found.wrapping_add(1);
        Some(found)
    }

    fn free_in(&self, (first, last): (u128, u128)) -> u128 {
        (last - first + 1) - self.used.range(first..=last).count() as u128
    }

    /// The union of the ranges, merged as intervals (no assumption that they nest).
    fn union_free(&self) -> u128 {
        let mut sorted = self.ranges.clone();
        sorted.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (f, l) in sorted {
            match merged.last_mut() {
                Some(m) if f <= m.1 => m.1 = m.1.max(l),
                _ => merged.push((f, l)),
            }
        }
        merged.into_iter().map(|r| self.free_in(r)).sum()
    }
}

fn run(net: &str, sub_pools: &[&str], ops: &[Op]) {
    let net: IpNet = net.parse().unwrap();
    let v6 = matches!(net, IpNet::V6(_));
    let mut space = Space::new(LOCAL_SPACE, Vec::new()).unwrap();
    let mut ids = Vec::new();
    let mut subs = Vec::new();
    for &sub in sub_pools {
        let req = PoolRequest::parse(&net.to_string(), sub, v6).unwrap();
        ids.push(space.request_pool(&req).unwrap());
        subs.push(req.sub_pool);
    }
    let mut model = Model::new(net, &subs);
    for op in ops {
        match *op {
            Op::Alloc { pool, serial } => {
                let i = pool % ids.len();
                let req = AddressRequest {
                    serial,
                    ..AddressRequest::default()
                };
                let got = space.request_address(&ids[i], &req);
                let want = model.alloc(model.ranges[i], serial);
                match want {
                    Some(o) => assert_eq!(got.map(|a| model.ordinal(a)), Ok(Some(o)), "{op:?}"),
                    None => assert!(
                        matches!(got, Err(Error::Exhausted { .. })),
                        "{op:?} {got:?}"
                    ),
                }
            }
            Op::AllocAt { pool, offset } => {
                let i = pool % ids.len();
                let a = model.addr(offset);
                let req = AddressRequest {
                    address: Some(a),
                    ..AddressRequest::default()
                };
                let got = space.request_address(&ids[i], &req);
                match model.ordinal(a) {
                    None => assert!(matches!(got, Err(Error::OutOfRange { .. })), "{op:?}"),
                    Some(o) if model.used.contains(&o) => {
                        assert!(matches!(got, Err(Error::AddressInUse { .. })), "{op:?}");
                    }
                    Some(o) => {
                        assert_eq!(got, Ok(a));
                        model.used.insert(o);
                    }
                }
            }
            Op::Release { pool, offset } => {
                let i = pool % ids.len();
                let a = model.addr(offset);
                let got = space.release_address(&ids[i], a);
                match model.ordinal(a) {
                    None => assert!(matches!(got, Err(Error::OutOfRange { .. })), "{op:?}"),
                    Some(o) if model.reserved.contains(&o) => {
                        assert!(matches!(got, Err(Error::ReservedAddress { .. })), "{op:?}");
                    }
                    Some(o) => {
                        assert_eq!(got, Ok(()));
                        model.used.remove(&o);
                    }
                }
            }
            Op::RoundTrip => {
                let subnet = space.subnet(net).unwrap();
                let addrs = AddrSet::decode(net, &subnet.addrs().encode()).unwrap();
                let back = Subnet::from_parts(addrs, subnet.pools()).unwrap();
                assert_eq!(&back, subnet);
                let mut fresh = Space::new(LOCAL_SPACE, Vec::new()).unwrap();
                fresh.restore(back).unwrap();
                space = fresh;
            }
        }
        // Every count of every pool, after every step.
        let union_free = model.union_free();
        for (i, id) in ids.iter().enumerate() {
            let u = space.utilization(id).unwrap();
            assert_eq!(u.allocated_in_subnet, model.used.len() as u128);
            assert_eq!(u.free_in_range, model.free_in(model.ranges[i]), "{id}");
            assert_eq!(u.free_in_union, union_free, "{id}");
        }
    }
    let subnet = space.subnet(net).unwrap();
    assert_eq!(subnet.addrs().cursor(), model.cursor);
    let all = subnet.addrs().range(None);
    assert_eq!(subnet.addrs().count_in(all), model.used.len() as u128);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_slash_16_matches_the_model(ops in ops()) {
        run("10.20.0.0/16", &[""], &ops);
    }

    #[test]
    fn a_slash_24_with_overlapping_ranges_matches_the_model(ops in ops()) {
        run(
            "192.168.7.0/24",
            &["192.168.7.0/25", "192.168.7.64/26", "192.168.7.128/30", "192.168.7.250/31"],
            &ops,
        );
    }

    #[test]
    fn a_slash_24_with_ranges_and_a_whole_pool_matches_the_model(ops in ops()) {
        run("192.168.8.0/24", &["", "192.168.8.16/28", "192.168.8.128/25"], &ops);
    }

    #[test]
    fn a_slash_31_matches_the_model(ops in ops()) {
        run("10.0.0.2/31", &[""], &ops);
    }

    #[test]
    fn a_slash_32_matches_the_model(ops in ops()) {
        run("10.0.0.9/32", &["", "10.0.0.9/32"], &ops);
    }

    #[test]
    fn a_v6_slash_64_matches_the_model(ops in ops()) {
        run("fd00:1:2:3::/64", &["", "fd00:1:2:3::/120"], &ops);
    }

    #[test]
    fn a_v6_slash_56_with_ranges_matches_the_model(ops in ops()) {
        run(
            "fd00:9:9:100::/56",
            &["fd00:9:9:100::/64", "fd00:9:9:100::/121", "fd00:9:9:1ff::/64", "fd00:9:9:1ff:ffff:ffff:ffff:ff00/120"],
            &ops,
        );
    }
}
