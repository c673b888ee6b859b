//! Waiting: woken by the release, bounded by `wait`, a single attempt for `try_lock`, and
//! re-entry under `run`.

use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::support::{assert_free, assert_timeout, info};

pub async fn a_waiter_gets_the_lock_when_it_is_released(b: &impl Backend) {
    let (a, w) = (b.locker().await, b.locker().await);
    let holder = a.lock("wake").lease(Duration::from_secs(30)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = w.lock("wake").wait(Duration::from_secs(15)).await?;
        let at = Instant::now();
        g.release().await?;
        Ok::<_, lockattr::Error>(at)
    });
    crate::support::until_registered(&a, "wake", Duration::from_secs(5)).await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let acquired = waiter.await.unwrap().expect("the waiter gets the lock");
    // Woken by the release, not by the 30 s lease running out.
    let after = acquired.saturating_duration_since(released);
    assert!(
        after < Duration::from_secs(2),
        "acquired {after:?} after the release"
    );
    assert_free(&a, "wake").await;
}

pub async fn a_wait_that_runs_out_is_a_timeout(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    let holder = a.lock("busy").await.unwrap();
    for (who, locker) in [("another locker", &other), ("the holder's locker", &a)] {
        let started = Instant::now();
        let r = locker.lock("busy").wait(Duration::from_millis(300)).await;
        let elapsed = started.elapsed();
        let waited = assert_timeout(&r, "busy");
        assert!(
            waited >= Duration::from_millis(300) && waited <= elapsed,
            "{who}: says it waited {waited:?}, took {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(3), "{who}: took {elapsed:?}");
    }
    assert!(
        holder.is_held(),
        "a timed-out waiter does not disturb the holder"
    );
    holder.release().await.unwrap();
    assert_free(&other, "busy").await;
}

pub async fn try_lock_is_a_single_attempt(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    let g = a
        .try_lock("once")
        .await
        .expect("a free lock is taken at once");
    for (who, locker) in [("another locker", &other), ("the holder's locker", &a)] {
        let started = Instant::now();
        let r = locker.try_lock("once").await;
        assert_timeout(&r, "once");
        let r = locker.lock("once").wait(Duration::ZERO).await;
        assert_timeout(&r, "once");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "{who}: took {took:?}");
    }
    // A single attempt neither marks the lock nor registers for a grant.
    let seen = info(&a, "once").await.expect("held");
    assert!(!seen.contended && !seen.waiter_registered, "{seen:?}");
    assert_eq!(seen.local_waiters, 0);
    g.release().await.unwrap();
    assert_free(&other, "once").await;
}

pub async fn run_reenters_and_knows_its_fencing_token(b: &impl Backend) {
    let a = b.locker().await;
    assert_eq!(
        lockattr::fencing_token().await.ok(),
        None,
        "outside any lock"
    );
    let (outer, inner, other, after) = a
        .lock("re")
        .run(async {
            let outer = lockattr::fencing_token().await.expect("inside run");
            let inner = a
                .lock("re")
                .wait(Duration::ZERO)
                .run(async { lockattr::fencing_token().await.ok() })
                .await
                .expect("re-entry enters at once");
            // Another key nests with its own token; the outer one is back after it.
            let other = a
                .lock("re:other")
                .run(async { lockattr::fencing_token().await.ok() })
                .await
                .unwrap();
            let after = lockattr::fencing_token().await.ok();
            // A guard is not reentrant: it waits for the task's own lock.
            let r = a.lock("re").wait(Duration::from_millis(100)).await;
            assert_timeout(&r, "re");
            (outer, inner, other, after)
        })
        .await
        .unwrap();
    assert_eq!(
        inner,
        Some(outer),
        "re-entry runs under the outer acquisition"
    );
    assert_eq!(after, Some(outer));
    assert!(other.is_some_and(|t| t != outer), "{other:?} vs {outer}");
    assert_eq!(lockattr::fencing_token().await.ok(), None);
    let other_locker = b.locker().await;
    assert_free(&other_locker, "re").await;
    assert_free(&other_locker, "re:other").await;
}
