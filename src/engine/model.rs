//! The naive model the property tests compare allot with, answer by answer: a `BTreeSet` of
//! ordinals, a cursor, and ranges merged the slow way. One model, two subjects: the engine's
//! [`Subnet`] (in `proptests`) and the built-in driver over the memory store (in
//! `ipam::builtin`), so the property tests reach the code production runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::addrset::addr_bits;
use super::{
    AddressRequest, DefaultPool, Error, PoolId, PoolPlan, PoolRequest, Subnet, Utilization, id,
    overlapping, plan_pool,
};

#[derive(Debug, Clone)]
pub(crate) enum Op {
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
    /// Remove the pool if it exists, else add it (the subnet goes with its last pool, and a
    /// pool added to no subnet creates it anew).
    Toggle {
        pool: usize,
    },
    /// Replace the state by what its persisted form gives back.
    RoundTrip,
}

/// Where an address lies: near the start of the subnet, near its end, or past it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Offset {
    Low(u128),
    High(u128),
    Outside(u128),
}

pub(crate) fn ops(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    let offset = prop_oneof![
        6 => (0u128..600).prop_map(Offset::Low),
        2 => (0u128..200).prop_map(Offset::High),
        1 => (0u128..1000).prop_map(Offset::Outside),
    ];
    let op = prop_oneof![
        12 => (0usize..8, any::<bool>()).prop_map(|(pool, serial)| Op::Alloc { pool, serial }),
        6 => (0usize..8, offset.clone()).prop_map(|(pool, offset)| Op::AllocAt { pool, offset }),
        8 => (0usize..8, offset).prop_map(|(pool, offset)| Op::Release { pool, offset }),
        1 => (0usize..8).prop_map(|pool| Op::Toggle { pool }),
        2 => Just(Op::RoundTrip),
    ];
    proptest::collection::vec(op, 1..max_len)
}

/// What the property tests drive: one subnet and its pools, behind the engine or a driver.
pub(crate) trait Subject {
    /// Adds a pool: creates its subnet, or joins the existing one.
    fn add_pool(&mut self, id: &PoolId) -> Result<(), Error>;
    /// Removes a pool (the subnet goes with the last one).
    fn remove_pool(&mut self, id: &PoolId) -> Result<(), Error>;
    fn request(&mut self, id: &PoolId, req: &AddressRequest) -> Result<IpAddr, Error>;
    fn release(&mut self, id: &PoolId, address: IpAddr) -> Result<(), Error>;
    fn utilization(&mut self, id: &PoolId) -> Utilization;
    /// Replaces the state by what its persisted form gives back.
    fn round_trip(&mut self);
    /// The subnet as it stands, unless it is deleted.
    fn subnet(&mut self) -> Option<Subnet>;
}

/// The naive model of one subnet.
struct Model {
    net: IpNet,
    last: u128,
    used: BTreeSet<u128>,
    reserved: BTreeSet<u128>,
    cursor: u128,
    /// Ordinal ranges of the pools, by index; whether each exists.
    ranges: Vec<(u128, u128)>,
    present: Vec<bool>,
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
            present: vec![false; sub_pools.len()],
        }
    }

    fn deleted(&self) -> bool {
        !self.present.contains(&true)
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

    /// The union of the existing pools' ranges, merged as intervals (no assumption that they
    /// nest).
    fn union_free(&self) -> u128 {
        let mut sorted: Vec<(u128, u128)> = (0..self.ranges.len())
            .filter(|&i| self.present[i])
            .map(|i| self.ranges[i])
            .collect();
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

    /// Toggles pool `i`; returns whether the subject must succeed (else it must refuse the
    /// pool without sub-pool of an existing subnet, or a repeated one).
    fn toggle(&mut self, i: usize, whole: bool) -> bool {
        if self.present[i] {
            self.present[i] = false;
            if self.deleted() {
                self.used = self.reserved.clone();
                self.cursor = 0;
            }
            true
        } else if whole && !self.deleted() {
            false
        } else {
            self.present[i] = true;
            true
        }
    }
}

/// Runs `ops` on `subject` and on the model of subnet `net` with these pools (`""`: the pool
/// without sub-pool), created in order, and asserts that every answer and every count agree.
pub(crate) fn run(subject: &mut dyn Subject, net: &str, sub_pools: &[&str], ops: &[Op]) {
    let net: IpNet = net.parse().unwrap();
    let v6 = matches!(net, IpNet::V6(_));
    let mut ids = Vec::new();
    let mut subs = Vec::new();
    for &sub in sub_pools {
        let req = PoolRequest::parse(&net.to_string(), sub, v6).unwrap();
        ids.push(PoolId::new("local", net, req.sub_pool).unwrap());
        subs.push(req.sub_pool);
    }
    let mut model = Model::new(net, &subs);
    for (id, present) in ids.iter().zip(&mut model.present) {
        subject.add_pool(id).unwrap();
        *present = true;
    }
    for op in ops {
        match *op {
            Op::Alloc { pool, serial } => {
                let i = pool % ids.len();
                let req = AddressRequest {
                    serial,
                    ..AddressRequest::default()
                };
                let got = subject.request(&ids[i], &req);
                if !model.present[i] {
                    assert!(
                        matches!(got, Err(Error::PoolNotFound { .. })),
                        "{op:?} {got:?}"
                    );
                    continue;
                }
                match model.alloc(model.ranges[i], serial) {
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
                let got = subject.request(&ids[i], &req);
                match model.ordinal(a) {
                    _ if !model.present[i] => assert!(
                        matches!(got, Err(Error::PoolNotFound { .. })),
                        "{op:?} {got:?}"
                    ),
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
                let got = subject.release(&ids[i], a);
                match model.ordinal(a) {
                    _ if !model.present[i] => assert!(
                        matches!(got, Err(Error::PoolNotFound { .. })),
                        "{op:?} {got:?}"
                    ),
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
            Op::Toggle { pool } => {
                let i = pool % ids.len();
                let got = if model.present[i] {
                    subject.remove_pool(&ids[i])
                } else {
                    subject.add_pool(&ids[i])
                };
                if model.toggle(i, subs[i].is_none()) {
                    assert_eq!(got, Ok(()), "{op:?}");
                } else {
                    assert!(matches!(got, Err(Error::Overlap { .. })), "{op:?} {got:?}");
                }
            }
            Op::RoundTrip => subject.round_trip(),
        }
        // Every count of every pool, after every step.
        let union_free = model.union_free();
        for (i, id) in ids.iter().enumerate().filter(|&(i, _)| model.present[i]) {
            let u = subject.utilization(id);
            assert_eq!(u.allocated_in_subnet, model.used.len() as u128);
            assert_eq!(u.free_in_range, model.free_in(model.ranges[i]), "{id}");
            assert_eq!(u.free_in_union, union_free, "{id}");
        }
    }
    let subnet = subject.subnet();
    assert_eq!(subnet.is_none(), model.deleted());
    if let Some(subnet) = subnet {
        assert_eq!(subnet.addrs().cursor(), model.cursor);
        let all = subnet.addrs().range(None);
        assert_eq!(subnet.addrs().count_in(all), model.used.len() as u128);
    }
}

/// An address space as a driver composes one from the engine: its subnets by prefix, pool
/// requests planned by [`plan_pool`] and carried out by the [`Subnet`] rules.
pub(crate) struct Space {
    name: String,
    defaults: Vec<DefaultPool>,
    pub(crate) subnets: BTreeMap<IpNet, Subnet>,
}

impl Space {
    pub(crate) fn new(name: &str, defaults: Vec<DefaultPool>) -> Result<Self, Error> {
        id::check_space_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            defaults,
            subnets: BTreeMap::new(),
        })
    }

    pub(crate) fn request_pool(&mut self, req: &PoolRequest) -> Result<PoolId, Error> {
        match plan_pool(&self.name, &self.defaults, &self.subnets, req)? {
            PoolPlan::NewSubnet(id) => {
                self.subnets.insert(id.subnet(), Subnet::create(&id)?);
                Ok(id)
            }
            PoolPlan::JoinSubnet(id) => {
                self.subnet_mut(&id)?.add_pool(&id)?;
                Ok(id)
            }
            PoolPlan::Overlaps {
                requested,
                existing,
            } => Err(self.subnets[&existing].overlap(&requested)),
        }
    }

    pub(crate) fn release_pool(&mut self, id: &PoolId) -> Result<(), Error> {
        let subnet = self.subnet_mut(id)?;
        subnet.remove_pool(id)?;
        if subnet.is_deleted() {
            self.subnets.remove(&id.subnet());
        }
        Ok(())
    }

    /// The subnet of pool `id`'s space and prefix; the subnet checks the pool itself.
    pub(crate) fn subnet_mut(&mut self, id: &PoolId) -> Result<&mut Subnet, Error> {
        self.subnets
            .get_mut(&id.subnet())
            .filter(|_| id.space() == self.name)
            .ok_or_else(|| Error::PoolNotFound {
                pool_id: id.to_string(),
            })
    }

    pub(crate) fn subnet(&self, net: IpNet) -> Option<&Subnet> {
        self.subnets.get(&net)
    }

    pub(crate) fn restore(&mut self, subnet: Subnet) -> Result<(), Error> {
        if overlapping(&self.subnets, subnet.net()).is_some() {
            return Err(Error::Corrupt {
                reason: "overlaps a subnet of the space",
            });
        }
        self.subnets.insert(subnet.net(), subnet);
        Ok(())
    }

    pub(crate) fn request_address(
        &mut self,
        id: &PoolId,
        req: &AddressRequest,
    ) -> Result<IpAddr, Error> {
        self.subnet_mut(id)?.allocate(id, req)
    }

    pub(crate) fn release_address(&mut self, id: &PoolId, address: IpAddr) -> Result<(), Error> {
        self.subnet_mut(id)?.release(id, address).map(|_| ())
    }

    pub(crate) fn utilization(&self, id: &PoolId) -> Result<Utilization, Error> {
        let subnet = self
            .subnet(id.subnet())
            .filter(|s| id.space() == self.name && s.pools().any(|p| p == id.sub_pool()));
        subnet
            .map(|s| s.utilization(id.sub_pool()))
            .ok_or_else(|| Error::PoolNotFound {
                pool_id: id.to_string(),
            })
    }
}
