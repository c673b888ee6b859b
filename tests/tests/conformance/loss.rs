//! Loss: the body is cancelled when the lock is lost under it, a loss found at the release
//! fails the call, and a lost guard gives its place in the local queue up at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::support::{assert_free, assert_freed_within, assert_lost, info, Exit};

pub async fn a_loss_cancels_the_body_under_run(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    let lease = Duration::from_millis(300);
    let finished = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let r = a
        .lock("cancel")
        .lease(lease)
        .renew(false)
        .run({
            let (finished, stopped) = (finished.clone(), stopped.clone());
            async move {
                let _exit = Exit(stopped);
                tokio::time::sleep(Duration::from_secs(5)).await;
                finished.store(true, Ordering::SeqCst);
            }
        })
        .await;
    assert_lost(&r, "cancel");
    assert!(!finished.load(Ordering::SeqCst), "the body was cancelled");
    let stopped = stopped.lock().unwrap().expect("the body was dropped");
    let after = stopped - started;
    assert!(
        after < lease + Duration::from_secs(1),
        "stopped after {after:?}"
    );
    assert_freed_within(&other, "cancel", Duration::from_secs(2)).await;
}

pub async fn a_loss_found_at_release_fails_run(b: &impl Backend) {
    let (a, admin, third) = (b.locker().await, b.locker().await, b.locker().await);
    let mut taken = None;
    let r = a
        .lock("taken")
        .run(async {
            // An operator deletes the lock; another process takes it before the body ends.
            assert!(admin.force_unlock("taken").await.unwrap());
            taken = Some(third.try_lock("taken").await.expect("the key is free"));
            "the body's value"
        })
        .await;
    assert_lost(&r, "taken");
    // The release deleted nothing: the third locker still holds the lock.
    let g = taken.expect("the body ran");
    assert!(g.is_held());
    let token = g.fencing_token().await.unwrap();
    let seen = info(&third, "taken").await.expect("still held");
    assert_eq!(seen.fencing_token, Some(token));
    g.release().await.unwrap();
    assert_free(&a, "taken").await;
}

pub async fn a_lost_guard_gives_up_its_place_in_the_queue_at_once(b: &impl Backend) {
    let (a, admin) = (b.locker().await, b.locker().await);
    // A fixed lease runs out while the guard is kept: the next task of the same locker gets
    // the lock right after the deadline, not when the lost guard is dropped.
    let lease = Duration::from_millis(300);
    let before = Instant::now();
    let expired = a.lock("q").lease(lease).renew(false).await.unwrap();
    let next = a
        .lock("q")
        .wait(Duration::from_secs(5))
        .await
        .expect("the next local task gets the lock");
    // Not before the deadline (lease minus at most 5 %), and right after it.
    let at = before.elapsed();
    assert!(
        at >= lease - lease / 20,
        "taken after {at:?}, before the deadline"
    );
    assert!(
        at < lease + Duration::from_secs(1),
        "taken only after {at:?}"
    );
    assert!(!expired.is_held() && next.is_held());
    assert_lost(&expired.release().await, "q");
    assert!(next.is_held(), "the lost guard's release touched nothing");
    next.release().await.unwrap();

    // Renewal finds the lock deleted: the same, with the loss found by the store.
    let gone = a.lock("r").lease(Duration::from_millis(600)).await.unwrap();
    assert!(admin.force_unlock("r").await.unwrap());
    let started = Instant::now();
    let next = a
        .lock("r")
        .wait(Duration::from_secs(5))
        .await
        .expect("the next local task gets the lock");
    // The renewal that finds out is due a third of the lease after the acquire.
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(1200), "waited {waited:?}");
    assert!(!gone.is_held() && next.is_held());
    drop(gone);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(next.is_held(), "dropping the lost guard touched nothing");
    next.release().await.unwrap();
    assert_free(&admin, "q").await;
    assert_free(&admin, "r").await;
}
