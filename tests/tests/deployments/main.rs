//! The deployments users run: TLS, restricted ACL users, Redis Cluster, Sentinel. The same
//! `Locker` API on each, against real servers the tests start (`lockattr_tests`).

mod acl;
mod cluster;
mod sentinel;
mod tls;

use std::time::{Duration, Instant};

use lockattr::Locker;

/// Takes and releases `key` with `locker`, retrying while a failover is under way (no master
/// answers for a moment); returns how long it took. Fails the test after `limit`.
pub async fn take_within(locker: &Locker, key: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match locker.lock(key).wait(Duration::from_secs(5)).await {
            Ok(g) => {
                let _ = g.release().await;
                return started.elapsed();
            }
            Err(e) => {
                assert!(
                    started.elapsed() < limit,
                    "`{key}` not taken within {limit:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Takes `key` with `holder`, makes `waiter` wait for it, releases, and returns how long the
/// waiter took to get it after the release (pub/sub wake-up, or a grant).
pub async fn wake_up_after_release(holder: &Locker, waiter: &Locker, key: &str) -> Duration {
    let g = holder
        .lock(key)
        .lease(Duration::from_secs(30))
        .await
        .unwrap();
    let fence = g.fencing_token().await.unwrap();
    let waiting = tokio::spawn({
        let (waiter, key) = (waiter.clone(), key.to_owned());
        async move {
            let g = waiter
                .lock(key)
                .wait(Duration::from_secs(20))
                .await
                .unwrap();
            let at = std::time::Instant::now();
            let fence = g.fencing_token().await.unwrap();
            g.release().await.unwrap();
            (at, fence)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // the waiter registers and sleeps
    let released = std::time::Instant::now();
    g.release().await.unwrap();
    let (at, next) = waiting.await.unwrap();
    assert!(next > fence, "fencing tokens increase: {fence} then {next}");
    at.duration_since(released)
}
