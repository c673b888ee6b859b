//! In-process handover: the next local holder starts only when Redis confirmed it, with the
//! lease and token Redis set; never across a loss, never out of order with its own commands.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockattr::Error;
use lockattr_tests::proxy::{Direction, Proxy};
use lockattr_tests::RedisServer;

use crate::support::*;

/// A lock deleted behind its holder's back while a task of the same locker waits: the release
/// hands it on inside the process (under the same token, nothing is sent) and checks it with
/// Redis right after; the check finds it gone, so the holder's release reports `Lost` and the
/// next task's guard is lost within that round trip. A new acquisition then takes a real lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handing_over_a_vanished_lock_reports_the_loss_to_both_holders() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let first = a.lock("gone").await.unwrap();
    let next = tokio::spawn({
        let a = a.clone();
        async move { a.lock("gone").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await; // the second task is queued
    let _: () = redis::cmd("DEL")
        .arg("lock:{gone}")
        .query(&mut server.conn())
        .unwrap();
    let released = first.release().await;
    assert!(matches!(released, Err(Error::Lost { .. })), "{released:?}");
    let g = next.await.unwrap().expect("handed over");
    tokio::time::timeout(Duration::from_secs(2), g.lost())
        .await
        .expect("the next holder learns at once that the lock it was handed is gone");
    assert!(!g.is_held());
    assert!(matches!(g.release().await, Err(Error::Lost { .. })));
    let g = a.try_lock("gone").await.expect("the key is free");
    g.extend(Duration::from_secs(5))
        .await
        .expect("Redis agrees that it owns the key");
    g.release().await.unwrap();
    assert!(raw(&server, "lock:{gone}").is_none());
}

/// Issue 9.2: the handover set the next holder's shorter lease in Redis at once, but the new
/// guard kept the old holder's deadline until the reply arrived (348 ms of overlap with
/// another process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_to_a_shorter_lease_never_overlaps_another_process() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = lockattr::Locker::builder(proxy.url())
        .operation_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    let b = locker(&server).await;
    for renew in [false, true] {
        let key = format!("short:{renew}");
        let holder = a
            .lock(key.clone())
            .lease(Duration::from_secs(30))
            .await
            .unwrap();
        // The next local task asks for a 150 ms lease.
        let held = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
        let next = tokio::spawn({
            let (a, key, held) = (a.clone(), key.clone(), held.clone());
            async move {
                let g = a
                    .lock(key)
                    .lease(Duration::from_millis(150))
                    .renew(renew)
                    .wait(Duration::from_secs(10))
                    .await?;
                // Record every moment this guard believes it holds the lock.
                let from = Instant::now();
                let mut to = from;
                while g.is_held() && from.elapsed() < Duration::from_millis(1500) {
                    to = Instant::now();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                held.lock().unwrap().push((from, to));
                let _ = g.release().await;
                Ok::<_, Error>(())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Replies to A arrive 500 ms late from now on; Redis applies the handover at once.
        proxy.set_delay(
            Direction::Replies,
            Duration::from_millis(500),
            Duration::ZERO,
        );
        let release = tokio::spawn(holder.release());
        // Another process enters as soon as Redis lets it.
        let started = Instant::now();
        let (other_from, other_to) = loop {
            if let Ok(g) = b.try_lock(key.clone()).await {
                let from = Instant::now();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let to = Instant::now();
                g.release().await.unwrap();
                break (from, to);
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the short lease runs out"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // While replies take longer than the 150 ms lease, no lock can be used safely: the
        // queued task gets one only after the link is healthy again.
        proxy.clear();
        let _ = release.await.unwrap();
        next.await.unwrap().unwrap();
        for (from, to) in held.lock().unwrap().iter() {
            assert!(
                *to < other_from || *from > other_to,
                "renew {renew}: the local guard believed it held the lock {:?}..{:?} after the \
                 other process entered, which held it until {:?}",
                from.saturating_duration_since(other_from),
                to.saturating_duration_since(other_from),
                other_to - other_from
            );
        }
    }
}

/// Issue 9.4: a handover treated a first `Poll::Pending` as proof that its command was queued;
/// across a reconnect the new holder's release reached Redis first and the late handover then
/// set a lock nobody held, blocking the key for the whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_across_a_reconnect_never_orphans_the_lock() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = locker_at(&proxy.url()).await;
    let b = locker(&server).await;
    for round in 0..6 {
        let key = format!("reconnect:{round}");
        let holder = a
            .lock(key.clone())
            .lease(Duration::from_secs(10))
            .await
            .unwrap();
        let next = tokio::spawn({
            let (a, key) = (a.clone(), key.clone());
            async move {
                let g = a.lock(key).lease(Duration::from_secs(10)).await?;
                g.release().await
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await; // queued
                                                             // The connection breaks, and the reconnect that a failed request starts hangs in its
                                                             // handshake: the handover is sent while the connection manager waits for it.
        proxy.cut_all();
        proxy.stall(Direction::Both);
        let probe = tokio::spawn({
            let a = a.clone();
            async move { a.try_lock("probe").await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let release = tokio::spawn(holder.release());
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.resume(Direction::Both);
        let _ = release.await.unwrap();
        let _ = probe.await.unwrap();
        let _ = next.await.unwrap();
        // The key is free at once, not blocked for the 10 s lease.
        let started = Instant::now();
        loop {
            if b.try_lock(key.clone()).await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "round {round}: the key is held by nobody: {:?}",
                raw(&server, &format!("lock:{{{key}}}"))
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The local handover's proof, shown: under a slow reply path the next task starts at once,
/// with the next of the acquisition's fencing tokens, and when the link then stalls it is lost
/// no later than the lease Redis holds, before another process can enter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_handover_starts_at_once_and_never_outlives_what_redis_holds() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = lockattr::Locker::builder(proxy.url())
        .operation_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    let b = locker(&server).await;
    let sent = Instant::now();
    let holder = a.lock("local").lease(Duration::from_secs(1)).await.unwrap();
    let first = holder.fencing_token().await.unwrap();
    let next = tokio::spawn({
        let a = a.clone();
        async move {
            let g = a.lock("local").lease(Duration::from_secs(1)).await.unwrap();
            let got = Instant::now();
            let token = g.fencing_token().await.unwrap();
            let mut last_held = got;
            while g.is_held() && got.elapsed() < Duration::from_secs(5) {
                last_held = Instant::now();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let released = g.release().await;
            (got, token, last_held, released)
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // queued
    proxy.set_delay(
        Direction::Replies,
        Duration::from_millis(500),
        Duration::ZERO,
    );
    let release_started = Instant::now();
    let release = tokio::spawn(holder.release());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The link stalls altogether: nothing the next holder sends is answered.
    proxy.stall(Direction::Both);
    let entered = loop {
        if let Ok(g) = b.try_lock("local").await {
            let at = Instant::now();
            drop(g);
            break at;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the lease runs out"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let (got, token, last_held, _) = next.await.unwrap();
    proxy.clear();
    let _ = release.await.unwrap();
    assert!(
        got.duration_since(release_started) < Duration::from_millis(100),
        "started at once: {:?} after the release began",
        got.duration_since(release_started)
    );
    assert_eq!(token, first + 1, "the next of the acquisition's tokens");
    assert!(
        last_held < entered,
        "the next holder believed it held the lock {:?} after another process entered",
        last_held.duration_since(entered)
    );
    assert!(
        last_held.duration_since(sent) < Duration::from_secs(1),
        "never past the lease Redis held: {:?}",
        last_held.duration_since(sent)
    );
}
