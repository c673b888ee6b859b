//! Cancellation: acquire futures dropped at any point, and dropped guards and bodies, leave the
//! key free for everyone.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use lockattr::Locker;

use crate::backend::Backend;
use crate::support::{
    assert_free, assert_freed_within, eventually, info, until_local_waiters, PollLimit,
};

/// Drops `locker`'s acquire futures for `key` at many points, `width` at a time: after 0, 1,
/// 2, ... polls (or 20 ms, for a future nobody wakes that often), and after a range of
/// timeouts. A guard obtained within the limit is dropped too.
async fn drop_acquires(locker: &Locker, key: &str, width: usize) {
    for polls in 0..12 {
        let futures = (0..width).map(|_| {
            let limited = PollLimit::new(locker.lock(key).into_future(), polls);
            tokio::time::timeout(Duration::from_millis(20), limited)
        });
        futures_util::future::join_all(futures).await;
    }
    for micros in [0u64, 10, 50, 100, 200, 500, 1000, 5000, 20_000] {
        let futures = (0..width).map(|_| {
            tokio::time::timeout(
                Duration::from_micros(micros),
                locker.lock(key).into_future(),
            )
        });
        futures_util::future::join_all(futures).await;
    }
}

pub async fn dropped_acquire_futures_leave_a_free_key_free(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    drop_acquires(&a, "free", 1).await;
    drop_acquires(&a, "free", 3).await;
    // A guard that was obtained and dropped is released in the background.
    assert_freed_within(&other, "free", Duration::from_secs(2)).await;
    assert_free(&a, "free").await;
}

pub async fn dropped_waiters_leave_nothing_behind(b: &impl Backend) {
    let (a, holder_locker, other) = (b.locker().await, b.locker().await, b.locker().await);
    let holder = holder_locker.lock("busy").await.unwrap();
    // Queued locally, contending in the store, registered for a grant: dropped at each.
    drop_acquires(&a, "busy", 3).await;
    // The withdrawn registrations are gone in the background; a release before that could
    // grant the lock to a waiter that left, which then frees it again.
    let withdrawn = eventually(Duration::from_secs(2), || async {
        info(&a, "busy")
            .await
            .is_some_and(|i| !i.waiter_registered && i.local_waiters == 0)
    })
    .await;
    assert!(withdrawn, "a registration was left behind");
    assert!(holder.is_held());
    holder.release().await.unwrap();
    assert_freed_within(&other, "busy", Duration::from_secs(2)).await;
    // Nothing local is left either: the dropped waiters' locker takes it at once.
    assert_free(&a, "busy").await;
}

pub async fn a_waiter_dropped_after_its_grant_frees_the_lock(b: &impl Backend) {
    let (a, w, other) = (b.locker().await, b.locker().await, b.locker().await);
    let holder = a.lock("granted").await.unwrap();
    let mut waiter = w
        .lock("granted")
        .wait(Duration::from_secs(10))
        .into_future();
    // Poll the waiter until it registered for a direct grant.
    let started = Instant::now();
    loop {
        let r = tokio::time::timeout(Duration::from_millis(10), &mut waiter).await;
        assert!(r.is_err(), "the waiter got a held lock: {r:?}");
        let registered = info(&a, "granted")
            .await
            .is_some_and(|i| i.waiter_registered);
        if registered {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never registered"
        );
    }
    // The release grants the lock to the waiter, which is dropped without looking.
    holder.release().await.unwrap();
    drop(waiter);
    assert_freed_within(&other, "granted", Duration::from_secs(3)).await;
    // The dropped waiter's locker takes the key at once: no stale queue entry.
    assert_free(&w, "granted").await;
}

pub async fn dropped_guards_and_bodies_release_at_once(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    // A dropped guard is released in the background, long before its 30 s lease.
    let g = a
        .lock("dropped")
        .lease(Duration::from_secs(30))
        .await
        .unwrap();
    drop(g);
    assert_freed_within(&other, "dropped", Duration::from_secs(2)).await;

    // A dropped guard with a local waiter: the waiter gets the lock.
    let g = a.lock("dropped").await.unwrap();
    let next = tokio::spawn({
        let a = a.clone();
        async move {
            a.lock("dropped")
                .wait(Duration::from_secs(5))
                .await
                .map(drop)
        }
    });
    until_local_waiters(&a, "dropped", 1, Duration::from_secs(5)).await;
    drop(g);
    next.await
        .unwrap()
        .expect("the local waiter gets the dropped lock");
    assert_freed_within(&other, "dropped", Duration::from_secs(2)).await;

    // A release dropped before it finished (never polled, or in flight) completes anyway.
    for polls in [0, 1] {
        let g = a.lock("dropped").await.unwrap();
        let _ = PollLimit::new(g.release(), polls).await;
        assert_freed_within(&other, "dropped", Duration::from_secs(2)).await;
    }

    // A body cancelled by its caller (a `select!`, a timeout, a closed connection).
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        a.lock("dropped")
            .run(tokio::time::sleep(Duration::from_secs(10))),
    )
    .await;
    assert!(r.is_err(), "the body is still running: {r:?}");
    assert_freed_within(&other, "dropped", Duration::from_secs(2)).await;
}
