//! Several `allot serve` processes on one Postgres: under concurrent load on the same few
//! pools, no address is ever acknowledged to two holders, what Postgres holds is exactly what
//! was acknowledged and not released, every replica reports the same state, and a replica
//! killed with SIGKILL loses none of the allocations it acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot::proto::pb;
use allot::store::{DEFAULT_TENANT, PgStore, Store};
use tonic::Code;

use crate::helpers::*;

const CLIENTS: usize = 64;
const POOLS: [(&str, &str); 3] = [
    ("10.80.0.0/24", ""),
    ("10.80.1.0/24", ""),
    ("10.80.2.0/24", "10.80.2.64/26"),
];

/// Who holds which address, as acknowledged to the clients.
#[derive(Default)]
struct Ledger {
    holders: BTreeMap<IpAddr, usize>,
    // Addresses acknowledged to a client while another held them.
    doubles: Vec<(IpAddr, usize, usize)>,
    // Requests or releases whose outcome is unknown (the replica died mid-call).
    in_doubt: usize,
    // Allocations each replica acknowledged.
    acked_by: BTreeMap<usize, Vec<IpAddr>>,
}

fn addr_of(reply: &str) -> IpAddr {
    reply
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an address with its prefix length")
}

/// A small deterministic generator per client (xorshift), so a failure reproduces.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Waits until every replica knows every pool (replicas learn of each other's pools through
/// Postgres notifications).
async fn wait_for_pools(servers: &[&Server], ids: &[String]) {
    let want: Vec<&str> = ids.iter().map(String::as_str).collect();
    for s in servers {
        wait_until_listed(&mut s.client().await, &want).await;
    }
}

/// Runs the clients for `run_for`, client `i` on replica `i % n`. When `kill` is given, that
/// replica is killed with SIGKILL after `kill.1`, and its clients move to the next one.
async fn load(
    servers: &mut [Option<Server>],
    ids: &[String],
    run_for: Duration,
    kill: Option<(usize, Duration)>,
) -> Ledger {
    let mut clients = Vec::new();
    for s in servers.iter().flatten() {
        clients.push(s.client().await);
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let dead = Arc::new(AtomicBool::new(false));
    let killed = move |replica: usize| kill.is_some_and(|(k, _)| k == replica);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let clients = clients.clone();
        let ids = ids.to_vec();
        let ledger = Arc::clone(&ledger);
        let dead = Arc::clone(&dead);
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x2545_f491_4f6c_dd1d ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9);
            let mut replica = i % clients.len();
            let mut held: Vec<(String, IpAddr)> = Vec::new();
            while start.elapsed() < run_for {
                if killed(replica) && dead.load(Ordering::SeqCst) {
                    replica = (replica + 1) % clients.len();
                }
                let mut c = clients[replica].clone();
                let r = next(&mut seed);
                if held.len() < 3 || (held.len() < 6 && r.is_multiple_of(2)) {
                    #[allow(clippy::cast_possible_truncation)]
                    let id = &ids[(r >> 8) as usize % ids.len()];
                    match request_address(&mut c, id, "", &[]).await {
                        Ok(reply) => {
                            let a = addr_of(&reply);
                            let mut l = ledger.lock().unwrap();
                            if let Some(&other) = l.holders.get(&a) {
                                l.doubles.push((a, other, i));
                            }
                            l.holders.insert(a, i);
                            l.acked_by.entry(replica).or_default().push(a);
                            drop(l);
                            held.push((id.clone(), a));
                        }
                        Err(e) if e.code() == Code::ResourceExhausted => {}
                        // The replica died under this request: it may have committed it.
                        Err(_) if killed(replica) => ledger.lock().unwrap().in_doubt += 1,
                        Err(e) => panic!("client {i} on replica {replica}: {e:?}"),
                    }
                } else {
                    #[allow(clippy::cast_possible_truncation)]
                    let (id, a) = held.swap_remove((r >> 8) as usize % held.len());
                    // Out of the ledger before the release is sent: once it is acknowledged,
                    // another client may be given the address at once.
                    ledger.lock().unwrap().holders.remove(&a);
                    match release_address(&mut c, &id, &a.to_string()).await {
                        Ok(()) => {}
                        Err(_) if killed(replica) => ledger.lock().unwrap().in_doubt += 1,
                        Err(e) => panic!("client {i} on replica {replica}: {e:?}"),
                    }
                }
            }
        }));
    }
    if let Some((k, after)) = kill {
        tokio::time::sleep(after).await;
        servers[k].take().expect("running").kill9();
        dead.store(true, Ordering::SeqCst);
    }
    for t in tasks {
        t.await.expect("client");
    }
    Arc::try_unwrap(ledger)
        .ok()
        .expect("clients done")
        .into_inner()
        .unwrap()
}

/// The allocated addresses Postgres holds, reserved ones excluded.
async fn persisted(url: &str) -> BTreeSet<IpAddr> {
    let store = PgStore::connect(url, Duration::from_secs(30))
        .await
        .expect("postgres");
    let mut out = BTreeSet::new();
    for record in store.load(DEFAULT_TENANT).await.expect("load") {
        let addrs = record.subnet.addrs();
        let net = addrs.net();
        for a in net.hosts() {
            if addrs.contains(a) == Some(true) {
                out.insert(a);
            }
        }
    }
    out
}

/// Starts `n` replicas on `url`, creates the pools on the first, and waits until all know
/// them.
async fn replicas(n: usize, url: &str, dir: &TempDir) -> (Vec<Option<Server>>, Vec<String>) {
    let servers: Vec<Option<Server>> = (0..n).map(|_| Some(Server::start(url, &dir.0))).collect();
    let mut c = servers[0].as_ref().expect("running").client().await;
    let mut ids = Vec::new();
    for (pool, sub_pool) in POOLS {
        ids.push(request_pool(&mut c, pool, sub_pool).await.expect("pool"));
    }
    let running: Vec<&Server> = servers.iter().flatten().collect();
    wait_for_pools(&running, &ids).await;
    (servers, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_never_hand_out_one_address_twice() {
    let db = PgDb::fresh("replicas").await;
    let dir = TempDir::new("replicas");
    let (mut servers, ids) = replicas(3, &db.url, &dir).await;
    let ledger = load(&mut servers, &ids, Duration::from_secs(3), None).await;
    assert!(
        ledger.doubles.is_empty(),
        "handed out twice: {:?}",
        ledger.doubles
    );
    assert!(
        ledger.acked_by.len() == 3,
        "every replica allocated: {:?}",
        ledger.acked_by.keys()
    );
    let held: BTreeSet<IpAddr> = ledger.holders.keys().copied().collect();
    assert_eq!(
        persisted(&db.url).await,
        held,
        "postgres holds exactly what is held"
    );
    let state = converged_state(&servers).await;
    // Each subnet: the held addresses plus network and broadcast.
    for pool in &state {
        let net: ipnet::IpNet = pool.subnet.parse().expect("subnet");
        let n_held = held.iter().filter(|a| net.contains(*a)).count() as u64;
        assert_eq!(pool.allocated_ips_in_subnet, n_held + 2, "{}", pool.pool_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_acknowledged_allocation() {
    let db = PgDb::fresh("kill").await;
    let dir = TempDir::new("kill");
    let (mut servers, ids) = replicas(3, &db.url, &dir).await;
    let kill = Some((0, Duration::from_millis(1500)));
    let ledger = load(&mut servers, &ids, Duration::from_secs(3), kill).await;
    assert!(
        ledger.doubles.is_empty(),
        "handed out twice: {:?}",
        ledger.doubles
    );
    let by_killed = ledger.acked_by.get(&0).map_or(0, Vec::len);
    assert!(
        by_killed > 0,
        "the killed replica had acknowledged allocations"
    );
    let stored = persisted(&db.url).await;
    let held: BTreeSet<IpAddr> = ledger.holders.keys().copied().collect();
    let lost: Vec<_> = held.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in postgres: {lost:?}"
    );
    // Extra addresses can only come from calls the dead replica never answered.
    let extra = stored.difference(&held).count();
    assert!(
        extra <= ledger.in_doubt,
        "{extra} addresses allocated that nobody holds, {} calls in doubt",
        ledger.in_doubt
    );
    // The survivors agree with each other and with Postgres.
    let state = converged_state(&servers).await;
    for pool in &state {
        let net: ipnet::IpNet = pool.subnet.parse().expect("subnet");
        let n_stored = stored.iter().filter(|a| net.contains(*a)).count() as u64;
        assert_eq!(
            pool.allocated_ips_in_subnet,
            n_stored + 2,
            "{}",
            pool.pool_id
        );
    }
}

/// The pools listed by a server, once they equal `want` (servers learn of each other's pools
/// through notifications, a moment after the commit).
pub(crate) async fn wait_until_listed(c: &mut Client, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed: Vec<String> = c
            .list_pools(pb::ListPoolsRequest {
                address_space: String::new(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .pools
            .into_iter()
            .map(|p| p.pool_id)
            .collect();
        if listed == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "listed {listed:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pools created, changed and released on one replica show up, change and disappear on the
/// other; a subnet released and created again is seen afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_see_each_others_pools_come_and_go() {
    let db = PgDb::fresh("pools").await;
    let pg = || async {
        Arc::new(
            PgStore::connect(&db.url, Duration::from_secs(30))
                .await
                .expect("postgres"),
        )
    };
    let a = spawn_app(pg().await).await;
    let b = spawn_app(pg().await).await;
    let (mut ca, mut cb) = (a.client.clone(), b.client.clone());
    let id = request_pool(&mut ca, "10.81.0.0/24", "").await.unwrap();
    wait_until_listed(&mut cb, &[&id]).await;
    assert_eq!(
        request_address(&mut cb, &id, "", &[]).await.unwrap(),
        "10.81.0.1/24"
    );
    // a's copy is one version behind: its release reloads and still succeeds.
    ca.release_pool(pb::ReleasePoolRequest {
        pool_id: id.clone(),
    })
    .await
    .unwrap();
    wait_until_listed(&mut cb, &[]).await;
    assert_eq!(
        request_address(&mut cb, &id, "", &[])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let again = request_pool(&mut cb, "10.81.0.0/24", "").await.unwrap();
    assert_eq!(again, id);
    wait_until_listed(&mut ca, &[&id]).await;
    assert_eq!(
        state(&mut ca, &id).await.allocated_ips_in_subnet,
        2,
        "a fresh subnet: network and broadcast only"
    );
    // An overlapping subnet requested on the other replica is refused.
    assert_eq!(
        request_pool(&mut ca, "10.81.0.0/16", "")
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    // Dynamic subnets from the default pools, asked of both at once: never the same one.
    let (x, y) = tokio::join!(request_pool(&mut ca, "", ""), request_pool(&mut cb, "", ""));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_ne!(x, y);
    assert!(
        x.starts_with("local/172.") && y.starts_with("local/172."),
        "{x} {y}"
    );
    a.stop().await;
    b.stop().await;
}
