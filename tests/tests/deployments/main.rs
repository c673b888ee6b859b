//! The deployments users run: TLS, restricted ACL users, Redis Cluster. The same `Locker` API on
//! each, against real servers the tests start (`lockattr_tests`).

mod acl;
mod cluster;
mod sentinel;
mod tls;

use std::time::Duration;

use lockattr::Locker;

/// Takes `key` with `holder`, makes `waiter` wait for it, releases, and returns how long the
/// waiter took to get it after the release (pub/sub wake-up, or a grant).
pub async fn wake_up_after_release(holder: &Locker, waiter: &Locker, key: &str) -> Duration {
    let g = holder
        .lock(key)
        .lease(Duration::from_secs(30))
        .await
        .unwrap();
    let fence = g.fencing_token();
    let waiting = tokio::spawn({
        let (waiter, key) = (waiter.clone(), key.to_owned());
        async move {
            let g = waiter
                .lock(key)
                .wait(Duration::from_secs(20))
                .await
                .unwrap();
            let at = std::time::Instant::now();
            let fence = g.fencing_token();
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
