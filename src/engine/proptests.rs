//! Property tests of the engine: random sequences of operations on one [`Subnet`], the value
//! the built-in driver keeps per subnet, compared with the naive model in `model`.

use std::net::IpAddr;

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
