//! Direct grants between processes: a release hands the lock to a registered waiter of
//! another process, bounded for waiters that died, found again when the announcement is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr::Locker;
use lockattr_tests::RedisServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_release_that_someone_waits_for_is_published() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    server.reset_stats();
    for _ in 0..5 {
        a.lock("quiet").await.unwrap().release().await.unwrap();
    }
    let counts = server.command_counts();
    assert_eq!(
        counts.get("publish"),
        None,
        "uncontended releases publish nothing: {counts:?}"
    );

    // A waiter of another locker marks the lock, and the release announces itself.
    let g = a.lock("quiet").await.unwrap();
    let token = raw(&server, "lock:{quiet}").unwrap();
    let waiter = tokio::spawn(async move { b.lock("quiet").await.unwrap().release().await });
    assert!(
        eventually(Duration::from_secs(5), || {
            value(&server, "lock:{quiet}").is_some_and(|v| v.owner == token && v.waiter.is_some())
        })
        .await,
        "the waiter marks the holder's token and registers"
    );
    assert!(
        eventually(Duration::from_secs(5), || subscribers(
            &server,
            "lock:{quiet}:released"
        ) == 1)
        .await
    );
    // Renewal and extension accept the marked token.
    g.extend(Duration::from_secs(20)).await.unwrap();
    server.reset_stats();
    let released = Instant::now();
    g.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was woken")
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "woken by pub/sub, not by the TTL"
    );
    // The release granted the lock to the registered waiter directly: the waiter sent no
    // acquire of its own (the one SET is the grant inside the release script, which also
    // read the clock for the new fencing token). The granted value keeps the waiter mark, so
    // the granted holder's own release announces itself too: two PUBLISHes.
    let counts = lock_commands(&server);
    assert_eq!(counts.get("set"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("time"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("publish"), Some(&2), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_to_dead_or_stale_registrations_are_bounded() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let now_ms = redis_time_us(&server) / 1000;

    // A stale registration (older than half its lease) is not granted: the release frees the
    // lock.
    let g = a.lock("stale").await.unwrap();
    register_ghost(&server, "lock:{stale}", 1000, now_ms - 5_000);
    g.release().await.unwrap();
    assert_eq!(raw(&server, "lock:{stale}"), None);

    // A fresh registration of a process that died is granted, and blocks the lock only for the
    // dead waiter's lease (here 400 ms).
    let g = a.lock("dead").await.unwrap();
    register_ghost(&server, "lock:{dead}", 400, now_ms);
    let first = g.fencing_token().await.unwrap();
    g.release().await.unwrap();
    let granted = value(&server, "lock:{dead}").expect("granted to the dead waiter");
    assert_eq!(
        (granted.owner.as_str(), granted.mark.as_deref()),
        (GHOST, Some("!"))
    );
    assert!(
        granted.fence.unwrap() > first,
        "a grant carries a fresh fencing token"
    );
    let ttl = pttl(&server, "lock:{dead}");
    assert!(ttl > 0 && ttl <= 400, "the dead waiter's lease: {ttl}");
    let started = Instant::now();
    let g = a.lock("dead").wait(Duration::from_secs(5)).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "waited {waited:?} for a 400 ms grant"
    );
    assert!(g.fencing_token().await.unwrap() > granted.fence.unwrap());
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_lock_starts_short_and_is_renewed_to_the_full_lease() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await; // default lease 30 s
    let holder = a.lock("short").await.unwrap();
    let (took, hold_on) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(tokio::sync::Notify::new()),
    );
    let waiter = tokio::spawn({
        let (took, hold_on) = (took.clone(), hold_on.clone());
        async move {
            let g = b.lock("short").await.unwrap();
            took.store(true, Ordering::SeqCst);
            hold_on.notified().await;
            g.release().await
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || {
            value(&server, "lock:{short}").is_some_and(|v| v.waiter.is_some())
        })
        .await,
        "the waiter registers"
    );
    holder.release().await.unwrap();
    assert!(eventually(Duration::from_secs(5), || took.load(Ordering::SeqCst)).await);
    // The grant carried at most 2 s; the new holder renews to its 30 s at once.
    assert!(
        eventually(Duration::from_secs(2), || {
            pttl(&server, "lock:{short}") > 20_000
        })
        .await,
        "pttl {}",
        pttl(&server, "lock:{short}")
    );
    hold_on.notify_one();
    waiter.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_announcement_was_lost_is_found_by_the_next_attempt() {
    let server = RedisServer::start();
    let a = Locker::builder(server.url())
        .default_lease(Duration::from_millis(600))
        .operation_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let b = locker(&server).await;
    let holder = a.lock("lost").await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.lock("lost").wait(Duration::from_secs(10)).await.unwrap();
        (
            g.fencing_token().await.unwrap(),
            g.is_held(),
            g.release().await,
        )
    });
    // Wait for the waiter's registration, then grant the lock to it behind its back: no
    // announcement, as if the pub/sub message had been lost.
    let mut registered = None;
    for _ in 0..200 {
        if let Some(w) = value(&server, "lock:{lost}").and_then(|v| v.waiter) {
            registered = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let w = registered.expect("the waiter registers");
    std::mem::forget(holder); // its renewal will find the lock taken; that is the point
    let _: () = redis::cmd("SET")
        .arg("lock:{lost}")
        .arg(format!("{w}@{}!", redis_time_us(&server)))
        .arg("PX")
        .arg(30_000)
        .query(&mut server.conn())
        .unwrap();
    // The waiter's fallback timer (the old holder's TTL, under 600 ms) fires, and its attempt
    // finds the lock granted to its registration.
    let (fence, held, released) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter takes its grant")
        .unwrap();
    assert!(fence > 0 && held);
    released.unwrap();
    assert_eq!(raw(&server, "lock:{lost}"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_granted_after_its_lease_could_run_out_is_not_handed_out() {
    let server = RedisServer::start();
    let locker = Locker::builder(server.url())
        .default_lease(Duration::from_millis(100))
        .operation_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    server.reset_stats();
    server.pause();
    let acquire = tokio::spawn({
        let locker = locker.clone();
        async move {
            let g = locker.lock("late").renew(false).await.unwrap();
            (
                g.is_held(),
                g.fencing_token().await.unwrap(),
                g.release().await,
            )
        }
    });
    // The first attempt is answered 300 ms after it was sent, three leases later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();
    let (held, _, released) = tokio::time::timeout(Duration::from_secs(10), acquire)
        .await
        .expect("the acquire finishes")
        .unwrap();
    assert!(held, "the guard handed out is within its lease");
    released.unwrap();
    let sets = lock_commands(&server).get("set").copied().unwrap_or(0);
    assert!(
        sets >= 2,
        "the late grant was thrown away and the lock taken again ({sets} SETs)"
    );
    assert!(eventually(Duration::from_secs(2), || lock_keys(&server).is_empty()).await);
}
