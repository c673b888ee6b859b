//! Waiting without spinning: commands flat in the number of waiters, wake-ups by pub/sub,
//! single attempts, re-entry.

use std::time::{Duration, Instant};

use lockattr::Error;
use lockattr_tests::RedisServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_does_not_spin() {
    let server = RedisServer::start();
    let holder_locker = locker(&server).await;
    let waiters_locker = locker(&server).await;
    let holder = holder_locker.lock("hot").await.unwrap();
    server.reset_stats();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let l = waiters_locker.clone();
        tasks.push(tokio::spawn(async move {
            let g = l.lock("hot").await.unwrap();
            g.release().await.unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during_wait: u64 = lock_commands(&server).values().sum();
    // One contender: the plain first attempt (SET, TIME), the scripted attempt that marks the
    // holder and registers (EVALSHA, TIME, SET, GET, SET, PTTL), SUBSCRIBE, a retry after the
    // subscription (EVALSHA, TIME, SET, GET, PTTL). Nothing for the other 49 tasks.
    assert!(
        during_wait <= 14,
        "50 tasks waiting 500 ms cost {during_wait} commands: {:?}",
        server.command_counts()
    );
    server.reset_stats();
    holder.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("all waiters get the lock")
            .unwrap();
    }
    let after: u64 = lock_commands(&server).values().sum();
    let per_acquisition = after as f64 / 50.0;
    assert!(
        per_acquisition <= 6.0,
        "{per_acquisition:.1} commands per acquisition: {:?}",
        server.command_counts()
    );
    assert!(lock_keys(&server).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_of_another_process_at_once() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let g = a.lock("wake").lease(Duration::from_secs(30)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.lock("wake").await.unwrap();
        let at = Instant::now();
        g.release().await.unwrap();
        at
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    g.release().await.unwrap();
    let acquired = waiter.await.unwrap();
    // Pub/sub, not the 30 s TTL fallback.
    assert!(acquired.duration_since(released) < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_zero_is_one_attempt_and_timeouts_say_so() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let g = a.lock("busy").await.unwrap();
    server.reset_stats();
    match b.try_lock("busy").await {
        Err(Error::Timeout { key, waited }) => {
            assert_eq!(key, "busy");
            assert!(waited < Duration::from_millis(500));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    // A single attempt: one `SET NX PX` (pipelined with `TIME`), no script.
    let counts = server.command_counts();
    assert_eq!(counts.get("set"), Some(&1), "a single attempt: {counts:?}");
    assert_eq!(counts.get("evalsha"), None, "a single attempt: {counts:?}");
    // Same process: refused locally without a round trip.
    assert!(matches!(
        a.try_lock("busy").await,
        Err(Error::Timeout { .. })
    ));
    let started = Instant::now();
    let r = b.lock("busy").wait(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(2));
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reentrant_run_and_fencing_token_in_context() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    assert_eq!(lockattr::fencing_token().await.ok(), None);
    let (outer, inner) = a
        .lock("re")
        .run(async {
            let outer = lockattr::fencing_token().await.unwrap();
            let inner = a
                .lock("re")
                .wait(Duration::ZERO)
                .run(async { lockattr::fencing_token().await.unwrap() })
                .await
                .expect("re-entry does not deadlock or time out");
            (outer, inner)
        })
        .await
        .unwrap();
    assert_eq!(outer, inner);
    assert!(lock_keys(&server).is_empty());
}
