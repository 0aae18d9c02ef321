//! Postgres stopped under load, then started again: requests during the outage fail with
//! UNAVAILABLE within their deadline, and succeed again afterwards without restarting allot.
//! The test runs a PostgreSQL cluster of its own, so stopping it disturbs no other test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot::proto::pb;
use tonic::Code;

use crate::helpers::*;

/// What the clients saw, by phase.
#[derive(Default, Debug)]
struct Seen {
    ok_before: usize,
    unavailable_during: usize,
    other_errors: Vec<String>,
    slowest_failure: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_fail_fast_while_postgres_is_down_and_recover_after() {
    let pg = PrivatePg::start_new();
    let dir = TempDir::new("outage");
    let server = Server::start_with(&pg.url, &dir.0, &["--database-timeout", "1s"]);
    let mut c = server.client().await;
    let id = request_pool(&mut c, "10.90.0.0/16", "")
        .await
        .expect("pool");
    let deadline = Duration::from_secs(3);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (mut c, id) = (c.clone(), id.clone());
        let (seen, down, stop) = (Arc::clone(&seen), Arc::clone(&down), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let was_down = down.load(Ordering::SeqCst);
                let mut req = tonic::Request::new(pb::RequestAddressRequest {
                    pool_id: id.clone(),
                    ..Default::default()
                });
                req.set_timeout(deadline);
                let started = Instant::now();
                let result = c.request_address(req).await;
                let took = started.elapsed();
                {
                    let mut s = seen.lock().unwrap();
                    match result {
                        Ok(_) if !was_down => s.ok_before += 1,
                        // Started before the stop, or after the restart: either outcome is fine.
                        Ok(_) => {}
                        Err(e) if e.code() == Code::Unavailable => {
                            s.unavailable_during += 1;
                            s.slowest_failure = s.slowest_failure.max(took);
                        }
                        Err(e) => s.other_errors.push(format!("{e:?}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    down.store(true, Ordering::SeqCst);
    pg.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start();
    // Without restarting allot, requests succeed again once Postgres is back.
    let back = Instant::now();
    let mut recovered = false;
    while back.elapsed() < Duration::from_secs(20) {
        if request_address(&mut c, &id, "", &[]).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("client");
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!("outage: {seen:?}");
    assert!(seen.ok_before > 0, "{seen:?}");
    assert!(seen.unavailable_during > 0, "the outage was seen: {seen:?}");
    assert!(seen.other_errors.is_empty(), "only UNAVAILABLE: {seen:?}");
    // One database timeout bounds a failed call, whatever it queued behind (another batch,
    // a reload of another replica's change): 1 s, plus scheduling slack.
    assert!(
        seen.slowest_failure < Duration::from_millis(1500),
        "failures came within one --database-timeout: {seen:?}"
    );
    assert!(recovered, "allot recovered by itself: {seen:?}");
    // And it keeps working: a burst of requests all succeed.
    for _ in 0..20 {
        request_address(&mut c, &id, "", &[])
            .await
            .expect("after recovery");
    }
}
