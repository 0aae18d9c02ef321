//! Property tests of the engine: random sequences of operations on one [`Subnet`], the value
//! the built-in driver keeps per subnet, compared with the naive model in `model`; and random
//! pool requests and releases planned by [`plan_pool`] and carried out by the subnets' rules,
//! compared with pools kept the naive way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::model::{Subject, ops, run};
use super::*;

/// One subnet, created by its first pool and deleted with its last, as a driver holds it.
#[derive(Default)]
struct Engine(Option<Subnet>);

impl Engine {
    fn subnet_of(&mut self, id: &PoolId) -> Result<&mut Subnet, Error> {
        self.0.as_mut().ok_or_else(|| Error::PoolNotFound {
            pool_id: id.to_string(),
        })
    }
}

impl Subject for Engine {
    fn add_pool(&mut self, id: &PoolId) -> Result<(), Error> {
        match &mut self.0 {
            Some(subnet) => subnet.add_pool(id),
            None => {
                self.0 = Some(Subnet::create(id)?);
                Ok(())
            }
        }
    }

    fn remove_pool(&mut self, id: &PoolId) -> Result<(), Error> {
        let subnet = self.subnet_of(id)?;
        subnet.remove_pool(id)?;
        if subnet.is_deleted() {
            self.0 = None;
        }
        Ok(())
    }

    fn request(&mut self, id: &PoolId, req: &AddressRequest) -> Result<IpAddr, Error> {
        self.subnet_of(id)?.allocate(id, req)
    }

    fn release(&mut self, id: &PoolId, address: IpAddr) -> Result<(), Error> {
        self.subnet_of(id)?.release(id, address).map(|_| ())
    }

    fn utilization(&mut self, id: &PoolId) -> Utilization {
        self.0.as_ref().unwrap().utilization(id.sub_pool())
    }

    fn round_trip(&mut self) {
        if let Some(subnet) = &self.0 {
            let net = subnet.net();
            let addrs = AddrSet::decode(net, &subnet.addrs().encode()).unwrap();
            let back = Subnet::from_parts(addrs, subnet.pools()).unwrap();
            assert_eq!(&back, subnet);
            self.0 = Some(back);
        }
    }

    fn subnet(&mut self) -> Option<Subnet> {
        self.0.clone()
    }
}

fn check(net: &str, sub_pools: &[&str], ops: &[model::Op]) {
    run(&mut Engine::default(), net, sub_pools, ops);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_slash_16_matches_the_model(ops in ops(300)) {
        check("10.20.0.0/16", &[""], &ops);
    }

    #[test]
    fn a_slash_24_with_overlapping_ranges_matches_the_model(ops in ops(300)) {
        check(
            "192.168.7.0/24",
            &["192.168.7.0/25", "192.168.7.64/26", "192.168.7.128/30", "192.168.7.250/31"],
            &ops,
        );
    }

    #[test]
    fn a_slash_24_with_ranges_and_a_whole_pool_matches_the_model(ops in ops(300)) {
        check("192.168.8.0/24", &["", "192.168.8.16/28", "192.168.8.128/25"], &ops);
    }

    #[test]
    fn a_slash_31_matches_the_model(ops in ops(300)) {
        check("10.0.0.2/31", &[""], &ops);
    }

    #[test]
    fn a_slash_32_matches_the_model(ops in ops(300)) {
        check("10.0.0.9/32", &["", "10.0.0.9/32"], &ops);
    }

    #[test]
    fn a_v6_slash_64_matches_the_model(ops in ops(300)) {
        check("fd00:1:2:3::/64", &["", "fd00:1:2:3::/120"], &ops);
    }

    #[test]
    fn a_v6_slash_56_with_ranges_matches_the_model(ops in ops(300)) {
        check(
            "fd00:9:9:100::/56",
            &["fd00:9:9:100::/64", "fd00:9:9:100::/121", "fd00:9:9:1ff::/64", "fd00:9:9:1ff:ffff:ffff:ffff:ff00/120"],
            &ops,
        );
    }
}

/// A pool request or release on a small address space.
#[derive(Debug, Clone)]
enum PoolOp {
    /// Exactly one of [`CANDIDATES`], with one of its halves as sub-pool, or none.
    Exact { net: usize, half: Option<bool> },
    /// The next free subnet of the default pool (10.0.0.0/22 split into /24s), of its size
    /// or of `/len`.
    Dynamic { len: Option<u8> },
    /// Releases one of the pools held (an index, modulo).
    Release { pool: usize },
}

/// Subnets that nest, overlap and sit apart, inside the default pool and beyond it.
const CANDIDATES: [&str; 8] = [
    "10.0.0.0/24",
    "10.0.1.0/24",
    "10.0.0.0/23",
    "10.0.2.0/25",
    "10.0.2.128/25",
    "10.0.0.0/22",
    "10.0.3.0/24",
    "10.0.4.0/24",
];

fn pool_ops() -> impl Strategy<Value = Vec<PoolOp>> {
    let op = prop_oneof![
        4 => (0..CANDIDATES.len(), proptest::option::of(any::<bool>()))
            .prop_map(|(net, half)| PoolOp::Exact { net, half }),
        3 => proptest::option::of(prop_oneof![Just(21u8), Just(23), Just(24), Just(25), Just(26)])
            .prop_map(|len| PoolOp::Dynamic { len }),
        3 => (0usize..16).prop_map(|pool| PoolOp::Release { pool }),
    ];
    proptest::collection::vec(op, 1..60)
}

/// The naive model of a space's pools: every subnet with its pools, overlap checked pair by
/// pair, and the first fit found by trying every prefix of the default pool in order.
#[derive(Default)]
struct Pools(BTreeMap<IpNet, BTreeSet<Option<IpNet>>>);

impl Pools {
    fn id(net: IpNet, sub: Option<IpNet>) -> PoolId {
        PoolId::new(LOCAL_SPACE, net, sub).unwrap()
    }

    /// The pool a refusal names: the very pool repeated, else the subnet's first pool.
    fn clash(&self, requested: &PoolId, existing: IpNet) -> Error {
        let pools = &self.0[&existing];
        let named = if pools.contains(&requested.sub_pool()) && existing == requested.subnet() {
            requested.sub_pool()
        } else {
            *pools.iter().next().unwrap()
        };
        Error::Overlap {
            requested: requested.to_string(),
            existing: Self::id(existing, named).to_string(),
        }
    }

    fn request(&mut self, net: IpNet, sub: Option<IpNet>) -> Result<PoolId, Error> {
        let id = Self::id(net, sub);
        let overlaps = |a: IpNet, b: IpNet| a.contains(&b.network()) || b.contains(&a.network());
        if let Some(pools) = self.0.get(&net) {
            if sub.is_none() || pools.contains(&sub) {
                return Err(self.clash(&id, net));
            }
        } else if let Some(&other) = self.0.keys().find(|&&k| overlaps(k, net)) {
            return Err(self.clash(&id, other));
        }
        self.0.entry(net).or_default().insert(sub);
        Ok(id)
    }

    fn dynamic(&mut self, len: Option<u8>) -> Result<PoolId, Error> {
        let len = len.unwrap_or(24);
        let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0));
        let overlaps = |a: IpNet, b: IpNet| a.contains(&b.network()) || b.contains(&a.network());
        if (22..=32).contains(&len) {
            for i in 0..(1u32 << (len - 22)) {
                let addr = std::net::Ipv4Addr::from(base + (i << (32 - len)));
                let net = IpNet::new(IpAddr::V4(addr), len).unwrap();
                if !self.0.keys().any(|&k| overlaps(k, net)) {
                    self.0.entry(net).or_default().insert(None);
                    return Ok(Self::id(net, None));
                }
            }
        }
        Err(Error::NoMoreSubnets {
            space: LOCAL_SPACE.to_owned(),
            wanted: String::new(),
        })
    }

    fn all(&self) -> Vec<PoolId> {
        self.0
            .iter()
            .flat_map(|(&net, pools)| pools.iter().map(move |&sub| Self::id(net, sub)))
            .collect()
    }

    fn release(&mut self, id: &PoolId) {
        let pools = self.0.get_mut(&id.subnet()).unwrap();
        pools.remove(&id.sub_pool());
        if pools.is_empty() {
            self.0.remove(&id.subnet());
        }
    }
}

/// The halves of a prefix, as sub-pools.
fn half(net: IpNet, upper: bool) -> IpNet {
    let halves: Vec<IpNet> = net.subnets(net.prefix_len() + 1).unwrap().collect();
    halves[usize::from(upper)]
}

fn check_planning(ops: &[PoolOp]) {
    let base = DefaultPool::new("10.0.0.0/22".parse().unwrap(), 24).unwrap();
    let mut space = model::Space::new(LOCAL_SPACE, vec![base]).unwrap();
    let mut want = Pools::default();
    for op in ops {
        match *op {
            PoolOp::Exact { net, half: upper } => {
                let net: IpNet = CANDIDATES[net].parse().unwrap();
                let sub = upper.map(|upper| half(net, upper));
                let got = space.request_pool(&PoolRequest::exact(net, sub));
                assert_eq!(got, want.request(net, sub), "{op:?}");
            }
            PoolOp::Dynamic { len } => {
                let pool = len.map(|len| format!("0.0.0.0/{len}")).unwrap_or_default();
                let got = space.request_pool(&PoolRequest::parse(&pool, "", false).unwrap());
                match want.dynamic(len) {
                    Ok(id) => assert_eq!(got, Ok(id), "{op:?}"),
                    Err(_) => assert!(
                        matches!(got, Err(Error::NoMoreSubnets { .. })),
                        "{op:?} {got:?}"
                    ),
                }
            }
            PoolOp::Release { pool } => {
                let held = want.all();
                if held.is_empty() {
                    continue;
                }
                let id = &held[pool % held.len()];
                assert_eq!(space.release_pool(id), Ok(()), "{op:?}");
                want.release(id);
                assert!(
                    matches!(space.release_pool(id), Err(Error::PoolNotFound { .. })),
                    "released twice"
                );
            }
        }
        let got: Vec<PoolId> = space
            .subnets
            .values()
            .flat_map(|s| s.pools().map(|sub| Pools::id(s.net(), sub)))
            .collect();
        assert_eq!(got, want.all(), "after {op:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Planning (`plan_pool`) and the subnet's own rules, composed as the driver composes them,
    /// against pools kept the naive way: exact and dynamic requests, overlaps, releases.
    #[test]
    fn pool_requests_match_the_model(ops in pool_ops()) {
        check_planning(&ops);
    }
}
