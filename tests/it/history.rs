//! A randomized history checker: several `allot serve` processes on one Postgres, clients
//! calling random replicas with mixed operations, and a check of every answer against what
//! the clients were told before.
//!
//! Each client works on addresses and pools no other client names, so it knows what every
//! answer must be: an address it released is free (a request for it by name succeeds), a pool
//! it created exists (an address request on another replica finds it), a pool it released is
//! gone (creating it again succeeds). Releases go to a different replica than the allocation,
//! addresses come dynamically from shared pools too, and `GetIpamState` of every pool runs
//! while pools come and go. Afterwards: no address was held twice, the store holds exactly
//! what is held (every acknowledged release took effect), the replicas agree with it, and a
//! replica started from the store alone reads the same.
//!
//! With a replica killed (`kill -9`) mid-run, the calls it left unanswered are uncertain: the
//! addresses and pools they named are left out of the exact checks, and a dynamic allocation
//! in doubt may account for one extra address in use.
//!
//! `ALLOT_HISTORY_SECS` sets how long the clients run (default 4), `ALLOT_HISTORY_SEED` the
//! seed; `scripts/history.sh` runs both tests for minutes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot::proto::pb;
use allot::store::{DEFAULT_TENANT, PgStore, Store};
use ipnet::IpNet;
use tonic::Code;

use crate::helpers::*;

const REPLICAS: usize = 3;
const CLIENTS: usize = 24;
/// Addresses each client owns in the first shared pool, requested and released by name.
const OWNED: usize = 4;
/// Shared pools: dynamic allocation in the sub-pool (.128/25); owned addresses below it.
const SHARED: [(&str, &str); 2] = [
    ("10.60.0.0/24", "10.60.0.128/25"),
    ("10.60.1.0/24", "10.60.1.128/25"),
];

fn run_for() -> Duration {
    let secs = std::env::var("ALLOT_HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(secs)
}

fn seed() -> u64 {
    std::env::var("ALLOT_HISTORY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0fa1_1c00)
}

/// xorshift: deterministic per client, so a failure names a seed that reproduces the choices
/// (not the interleaving).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A client's own /26 pool.
fn own_subnet(client: usize) -> String {
    format!("10.70.{client}.0/26")
}

fn owned_addresses(client: usize) -> Vec<IpAddr> {
    (0..OWNED)
        .map(|k| {
            format!("10.60.0.{}", 1 + client * OWNED + k)
                .parse()
                .unwrap()
        })
        .collect()
}

fn addr_of(reply: &str) -> IpAddr {
    reply.split('/').next().unwrap().parse().unwrap()
}

/// An address held by a client: its pool, and the replica that allocated it.
struct Held {
    pool_id: String,
    address: IpAddr,
    replica: usize,
}

/// What one client knows at the end.
#[derive(Default)]
struct Outcome {
    held: Vec<Held>,
    own_pool: Option<String>,
    // Named in a call the killed replica never answered: excluded from the exact checks.
    uncertain_addrs: BTreeSet<IpAddr>,
    uncertain_nets: BTreeSet<IpNet>,
    // Dynamic allocations in a shared pool left unanswered: each may hold one address.
    uncertain_dynamic: usize,
    violations: Vec<String>,
    calls: usize,
}

/// The replicas' clients, and which are dead.
struct Cluster {
    clients: Vec<Client>,
    dead: Vec<AtomicBool>,
    killed: Option<usize>,
}

impl Cluster {
    /// A live replica, chosen by `r`, other than `not` when there is another one.
    fn pick(&self, r: u64, not: Option<usize>) -> usize {
        let live: Vec<usize> = (0..self.clients.len())
            .filter(|&i| !self.dead[i].load(Ordering::SeqCst))
            .collect();
        let others: Vec<usize> = live.iter().copied().filter(|&i| Some(i) != not).collect();
        let from = if others.is_empty() { &live } else { &others };
        #[allow(clippy::cast_possible_truncation)]
        from[(r >> 16) as usize % from.len()]
    }

    /// Tells whether a failed call may have been cut short by the kill rather than answered.
    fn in_doubt(&self, replica: usize, status: &tonic::Status) -> bool {
        self.killed == Some(replica)
            && matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
            )
    }
}

/// One client's run: random operations on random replicas until `until`.
#[allow(clippy::too_many_lines)]
async fn client(
    i: usize,
    cluster: Arc<Cluster>,
    shared: Arc<Vec<String>>,
    holders: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    until: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let mut rng = seed() ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut owned_free = owned_addresses(i);
    let own_net: IpNet = own_subnet(i).parse().unwrap();
    let violation =
        |out: &mut Outcome, what: String| out.violations.push(format!("client {i}: {what}"));
    while Instant::now() < until {
        out.calls += 1;
        let r = next(&mut rng);
        let replica = cluster.pick(r, None);
        let mut c = cluster.clients[replica].clone();
        match r % 10 {
            // A dynamic address from a shared pool.
            0..=2 if out.held.len() < 6 => {
                #[allow(clippy::cast_possible_truncation)]
                let pool_id = &shared[(r >> 8) as usize % shared.len()];
                match request_address(&mut c, pool_id, "", &[]).await {
                    Ok(reply) => {
                        let address = addr_of(&reply);
                        if let Some(other) = holders.lock().unwrap().insert(address, i) {
                            violation(
                                &mut out,
                                format!("{address} handed out while client {other} held it"),
                            );
                        }
                        out.held.push(Held {
                            pool_id: pool_id.clone(),
                            address,
                            replica,
                        });
                    }
                    Err(e) if e.code() == Code::ResourceExhausted => {}
                    Err(e) if cluster.in_doubt(replica, &e) => out.uncertain_dynamic += 1,
                    Err(e) => violation(
                        &mut out,
                        format!("dynamic request in {pool_id} on replica {replica}: {e:?}"),
                    ),
                }
            }
            // An owned address, by name: free as far as this client knows.
            3 | 4 if !owned_free.is_empty() => {
                #[allow(clippy::cast_possible_truncation)]
                let address = owned_free.swap_remove((r >> 8) as usize % owned_free.len());
                let pool_id = &shared[0];
                match request_address(&mut c, pool_id, &address.to_string(), &[]).await {
                    Ok(_) => out.held.push(Held {
                        pool_id: pool_id.clone(),
                        address,
                        replica,
                    }),
                    Err(e) if cluster.in_doubt(replica, &e) => {
                        out.uncertain_addrs.insert(address);
                    }
                    Err(e) => {
                        violation(
                            &mut out,
                            format!("request of free {address} on replica {replica}: {e:?}"),
                        );
                        owned_free.push(address);
                    }
                }
            }
            // A release, on another replica than the one that allocated.
            5 | 6 if !out.held.is_empty() => {
                #[allow(clippy::cast_possible_truncation)]
                let held = out.held.swap_remove((r >> 8) as usize % out.held.len());
                let replica = cluster.pick(r, Some(held.replica));
                let mut c = cluster.clients[replica].clone();
                // Out of the ledger before the call: once acknowledged, the address may go
                // to another client at once.
                holders.lock().unwrap().remove(&held.address);
                match release_address(&mut c, &held.pool_id, &held.address.to_string()).await {
                    Ok(()) => {
                        if owned_addresses(i).contains(&held.address) {
                            owned_free.push(held.address);
                        }
                    }
                    Err(e) if cluster.in_doubt(replica, &e) => {
                        out.uncertain_addrs.insert(held.address);
                    }
                    Err(e) => violation(
                        &mut out,
                        format!(
                            "release of {} in {} on replica {replica}: {e:?}",
                            held.address, held.pool_id
                        ),
                    ),
                }
            }
            // The client's own pool: created, then used at once on another replica.
            7 if out.uncertain_nets.is_empty() => match out.own_pool.clone() {
                None => match request_pool(&mut c, &own_subnet(i), "").await {
                    Ok(pool_id) => {
                        out.own_pool = Some(pool_id.clone());
                        let other = cluster.pick(r >> 3, Some(replica));
                        let mut c = cluster.clients[other].clone();
                        match request_address(&mut c, &pool_id, "", &[]).await {
                            Ok(reply) => out.held.push(Held {
                                pool_id,
                                address: addr_of(&reply),
                                replica: other,
                            }),
                            Err(e) if cluster.in_doubt(other, &e) => {
                                out.uncertain_nets.insert(own_net);
                            }
                            Err(e) => violation(
                                &mut out,
                                format!(
                                    "request in {pool_id}, just created, on replica {other}: {e:?}"
                                ),
                            ),
                        }
                    }
                    Err(e) if cluster.in_doubt(replica, &e) => {
                        out.uncertain_nets.insert(own_net);
                    }
                    Err(e) => violation(
                        &mut out,
                        format!("creating released {own_net} on replica {replica}: {e:?}"),
                    ),
                },
                Some(pool_id) if out.held.len() < 8 => {
                    match request_address(&mut c, &pool_id, "", &[]).await {
                        Ok(reply) => out.held.push(Held {
                            pool_id,
                            address: addr_of(&reply),
                            replica,
                        }),
                        Err(e) if cluster.in_doubt(replica, &e) => {
                            out.uncertain_nets.insert(own_net);
                        }
                        Err(e) => violation(
                            &mut out,
                            format!("request in own {pool_id} on replica {replica}: {e:?}"),
                        ),
                    }
                }
                Some(_) => {}
            },
            // The own pool released (its addresses first), each call on a random replica.
            8 if out.uncertain_nets.is_empty() && out.own_pool.is_some() => {
                let pool_id = out.own_pool.take().unwrap();
                let (mine, rest): (Vec<Held>, Vec<Held>) =
                    out.held.drain(..).partition(|h| h.pool_id == pool_id);
                out.held = rest;
                for h in mine {
                    let replica = cluster.pick(next(&mut rng), Some(h.replica));
                    let mut c = cluster.clients[replica].clone();
                    let address = h.address.to_string();
                    match release_address(&mut c, &pool_id, &address).await {
                        Err(e) if !cluster.in_doubt(replica, &e) => violation(
                            &mut out,
                            format!("release of {} in own {pool_id}: {e:?}", h.address),
                        ),
                        _ => {}
                    }
                }
                let replica = cluster.pick(next(&mut rng), None);
                let mut c = cluster.clients[replica].clone();
                let released = c
                    .release_pool(pb::ReleasePoolRequest {
                        pool_id: pool_id.clone(),
                    })
                    .await;
                match released {
                    Ok(_) => {}
                    Err(e) if cluster.in_doubt(replica, &e) => {
                        out.uncertain_nets.insert(own_net);
                    }
                    Err(e) => violation(
                        &mut out,
                        format!("release of own {pool_id} on replica {replica}: {e:?}"),
                    ),
                }
            }
            // The state of every pool, while pools come and go.
            9 => {
                let state = c
                    .get_ipam_state(pb::GetIpamStateRequest {
                        pool_ids: vec![],
                        ..Default::default()
                    })
                    .await;
                match state {
                    Ok(_) => {}
                    Err(e) if cluster.in_doubt(replica, &e) => {}
                    Err(e) => violation(
                        &mut out,
                        format!("GetIpamState on replica {replica}: {e:?}"),
                    ),
                }
            }
            _ => {}
        }
    }
    out
}

/// The addresses in use in each stored subnet, reserved ones excluded.
async fn stored(url: &str) -> BTreeMap<IpNet, BTreeSet<IpAddr>> {
    let store = PgStore::connect(url, Duration::from_secs(30))
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for record in store.load(DEFAULT_TENANT).await.unwrap() {
        let addrs = record.subnet.addrs();
        let in_use = addrs
            .net()
            .hosts()
            .filter(|a| addrs.contains(*a) == Some(true))
            .collect();
        out.insert(addrs.net(), in_use);
    }
    out
}

async fn history(kill: bool) {
    let db = PgDb::fresh(if kill { "history_kill" } else { "history" }).await;
    let dir = TempDir::new("history");
    let mut servers: Vec<Option<Server>> = (0..REPLICAS)
        .map(|_| Some(Server::start(&db.url, &dir.0)))
        .collect();
    let mut clients = Vec::new();
    for s in servers.iter().flatten() {
        clients.push(s.client().await);
    }
    let mut shared = Vec::new();
    for (pool, sub_pool) in SHARED {
        shared.push(request_pool(&mut clients[0], pool, sub_pool).await.unwrap());
    }
    // Shared pools are used at once on every replica: no waiting for notifications.
    let cluster = Arc::new(Cluster {
        clients,
        dead: (0..REPLICAS).map(|_| AtomicBool::new(false)).collect(),
        killed: kill.then_some(0),
    });
    let shared = Arc::new(shared);
    let holders = Arc::new(Mutex::new(BTreeMap::new()));
    let run_for = run_for();
    let until = Instant::now() + run_for;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i,
                Arc::clone(&cluster),
                Arc::clone(&shared),
                Arc::clone(&holders),
                until,
            ))
        })
        .collect();
    if kill {
        tokio::time::sleep(run_for / 2).await;
        servers[0].take().unwrap().kill9();
        cluster.dead[0].store(true, Ordering::SeqCst);
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let calls: usize = outcomes.iter().map(|o| o.calls).sum();
    let violations: Vec<&String> = outcomes.iter().flat_map(|o| &o.violations).collect();
    assert!(
        violations.is_empty(),
        "seed {}: {} of {calls} calls answered wrongly:\n{}",
        seed(),
        violations.len(),
        violations
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );

    // What the clients hold, against what the store holds.
    let uncertain_addrs: BTreeSet<IpAddr> = outcomes
        .iter()
        .flat_map(|o| o.uncertain_addrs.iter().copied())
        .collect();
    let uncertain_nets: BTreeSet<IpNet> = outcomes
        .iter()
        .flat_map(|o| o.uncertain_nets.iter().copied())
        .collect();
    let uncertain_dynamic: usize = outcomes.iter().map(|o| o.uncertain_dynamic).sum();
    let mut expected: BTreeMap<IpNet, BTreeSet<IpAddr>> = BTreeMap::new();
    let subnet_of = |id: &str| id.parse::<allot::engine::PoolId>().unwrap().subnet();
    for id in shared.iter() {
        expected.insert(subnet_of(id), BTreeSet::new());
    }
    for id in outcomes.iter().filter_map(|o| o.own_pool.as_deref()) {
        expected.entry(subnet_of(id)).or_default();
    }
    for h in outcomes.iter().flat_map(|o| &o.held) {
        let net = expected.keys().copied().find(|n| n.contains(&h.address));
        let net = net.unwrap_or_else(|| panic!("{} held outside every pool", h.address));
        expected.get_mut(&net).unwrap().insert(h.address);
    }
    let stored = stored(&db.url).await;
    let certain = |n: &IpNet| !uncertain_nets.contains(n);
    assert_eq!(
        stored.keys().filter(|n| certain(n)).collect::<Vec<_>>(),
        expected.keys().filter(|n| certain(n)).collect::<Vec<_>>(),
        "the subnets stored are the pools the clients hold"
    );
    let mut extra_dynamic = 0;
    for (net, held) in expected.iter().filter(|(n, _)| certain(n)) {
        let in_use = &stored[net];
        let lost: Vec<_> = held.difference(in_use).collect();
        assert!(
            lost.is_empty(),
            "{net}: held but free in the store: {lost:?}"
        );
        let extra: Vec<_> = in_use
            .difference(held)
            .filter(|a| !uncertain_addrs.contains(a))
            .collect();
        if SHARED
            .iter()
            .any(|(p, _)| p.parse::<IpNet>().unwrap() == *net)
        {
            extra_dynamic += extra.len();
        } else {
            assert!(
                extra.is_empty(),
                "{net}: in use though released or never held: {extra:?}"
            );
        }
    }
    assert!(
        extra_dynamic <= uncertain_dynamic,
        "{extra_dynamic} addresses in use in the shared pools that nobody holds \
         ({uncertain_dynamic} dynamic requests in doubt): acknowledged releases were lost"
    );

    // The replicas agree with each other and with the store, and so does a fresh one.
    let state = converged_state(&servers).await;
    for pool in &state {
        let net: IpNet = pool.subnet.parse().unwrap();
        let n_stored = stored[&net].len() as u64;
        assert_eq!(
            pool.allocated_ips_in_subnet,
            n_stored + 2,
            "{}",
            pool.pool_id
        );
    }
    let fresh = Server::start(&db.url, &dir.0);
    let mut c = fresh.client().await;
    let fresh_state = c
        .get_ipam_state(pb::GetIpamStateRequest {
            pool_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        fresh_state.into_inner().pools,
        state,
        "a replica started from the store alone"
    );
    eprintln!(
        "history: {calls} calls in {run_for:?} on {REPLICAS} replicas, {} addresses held at the end, {} uncertain",
        expected.values().map(BTreeSet::len).sum::<usize>(),
        uncertain_addrs.len() + uncertain_nets.len() + uncertain_dynamic
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_calls_on_three_replicas_are_answered_from_the_stored_state() {
    history(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_calls_with_a_replica_killed_lose_nothing_acknowledged() {
    history(true).await;
}
