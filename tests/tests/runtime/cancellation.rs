//! Cancellation: dropped guards and acquire futures leave nothing behind.

use std::future::IntoFuture;
use std::time::Duration;

use lockattr::Error;
use lockattr_tests::RedisServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_withdraws_its_registration() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let g = a.lock("w").await.unwrap();
    let r = b.lock("w").wait(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        eventually(Duration::from_secs(2), || {
            value(&server, "lock:{w}").is_some_and(|v| v.mark.as_deref() == Some("!"))
        })
        .await,
        "only the mark is left: {:?}",
        raw(&server, "lock:{w}")
    );
    g.release().await.unwrap();
    // Nothing was granted to the waiter that left: the lock is free at once.
    assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
    a.try_lock("w").await.unwrap().release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquire_futures_leave_nothing_behind() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    // 1. Dropped while the lock is free: every point of the acquire, including just after the
    //    SET went out (the race where Redis grants the lock to a future that is gone).
    for micros in [0u64, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000] {
        let _ =
            tokio::time::timeout(Duration::from_micros(micros), a.lock("c1").into_future()).await;
    }
    assert!(
        eventually(Duration::from_secs(2), || lock_keys(&server).is_empty()).await,
        "left behind: {:?}",
        server.keys()
    );
    // 2. Dropped while waiting (queued locally and contending in Redis).
    let holder = b.lock("c2").await.unwrap();
    for micros in [0u64, 100, 1000, 5000, 20_000] {
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_micros(micros),
                        a.lock("c2").into_future(),
                    )
                    .await;
                })
            })
            .collect();
        for w in waiters {
            w.await.unwrap();
        }
    }
    assert!(
        eventually(Duration::from_secs(2), || subscribers(
            &server,
            "lock:{c2}:released"
        ) == 0)
        .await,
        "the subscription is dropped when nobody waits"
    );
    // The waiters that went away withdraw their registration in the background; a release
    // before that would grant the lock to one of them (and the withdrawal would then free it).
    assert!(
        eventually(Duration::from_secs(2), || {
            value(&server, "lock:{c2}").is_some_and(|v| v.waiter.is_none())
        })
        .await,
        "registration withdrawn: {:?}",
        raw(&server, "lock:{c2}")
    );
    holder.release().await.unwrap();
    // Nothing local is left either: a try_lock goes straight to Redis and wins.
    let g = a.try_lock("c2").await.expect("no stale local queue entry");
    g.release().await.unwrap();
    assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_guard_releases_promptly() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let g = a
        .lock("dropped")
        .lease(Duration::from_secs(30))
        .await
        .unwrap();
    drop(g);
    assert!(
        eventually(Duration::from_secs(1), || lock_keys(&server).is_empty()).await,
        "released in the background, not after the 30 s lease"
    );
}
