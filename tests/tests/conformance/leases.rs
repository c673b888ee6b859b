//! Leases: a fixed lease runs out at its deadline, renewal keeps a long body protected,
//! `extend` moves the deadline, and a vanished holder's lease ends by itself.

use std::time::{Duration, Instant};

use lockattr::Error;

use crate::backend::Backend;
use crate::support::{assert_free, assert_freed_within, assert_lost, assert_timeout, info};

pub async fn a_fixed_lease_is_lost_at_its_deadline(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    let lease = Duration::from_millis(600);
    let before = Instant::now();
    let g = a.lock("fixed").lease(lease).renew(false).await.unwrap();
    assert!(g.is_held());
    assert_timeout(&other.try_lock("fixed").await, "fixed");
    tokio::time::timeout(Duration::from_secs(3), g.lost())
        .await
        .expect("a fixed lease runs out and the guard says so");
    let at = before.elapsed();
    // The deadline is the lease minus a margin of 5 % (at most 50 ms) from when the acquire
    // was sent, so never before `lease - lease / 20` after `before`.
    assert!(
        at >= lease - lease / 20,
        "lost after {at:?}, before the deadline"
    );
    assert!(
        at < lease + Duration::from_secs(1),
        "lost only after {at:?}"
    );
    assert!(!g.is_held());
    // Another locker takes it (the lost holder withdrew, or the lease ran out).
    let next = other
        .lock("fixed")
        .wait(Duration::from_secs(3))
        .await
        .expect("another locker gets the lock");
    assert_lost(&g.extend(Duration::from_secs(10)).await, "fixed");
    assert_lost(&g.release().await, "fixed");
    // The lost guard touched nothing: the new holder still holds the lock.
    assert!(next.is_held());
    let token = next.fencing_token().await.unwrap();
    let seen = info(&other, "fixed").await.expect("held by the new holder");
    assert_eq!(seen.fencing_token, Some(token));
    next.release().await.unwrap();
    assert_free(&a, "fixed").await;
}

pub async fn renewal_keeps_a_body_longer_than_its_lease_protected(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    let lease = Duration::from_millis(300);
    let started = Instant::now();
    let out = a
        .lock("long")
        .lease(lease)
        .run(async {
            // Four leases long; every 100 ms another locker tries and must fail.
            let mut refused = 0;
            while started.elapsed() < 4 * lease {
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_timeout(&other.try_lock("long").await, "long");
                refused += 1;
            }
            refused
        })
        .await
        .expect("renewed throughout");
    assert!(out >= 10, "only {out} attempts in {:?}", started.elapsed());
    assert_free(&other, "long").await;
}

pub async fn extend_moves_the_deadline(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    let g = a
        .lock("ext")
        .lease(Duration::from_millis(300))
        .renew(false)
        .await
        .unwrap();
    g.extend(Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(g.is_held(), "extended past the original lease");
    assert_timeout(&other.try_lock("ext").await, "ext");
    let remaining = info(&a, "ext").await.unwrap().remaining_lease.unwrap();
    assert!(
        remaining > Duration::from_secs(3) && remaining <= Duration::from_secs(5),
        "{remaining:?}"
    );
    // A shorter lease moves the deadline closer: the fixed lease now runs out soon.
    g.extend(Duration::from_millis(300)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), g.lost())
        .await
        .expect("the shortened lease runs out");
    assert!(matches!(g.release().await, Err(Error::Lost { .. })));
    assert_freed_within(&other, "ext", Duration::from_secs(2)).await;
}

/// A holder that vanished without a word (a crashed process: nothing renews, releases or
/// withdraws) blocks the others for its lease, and no longer: they take the lock when it
/// expires in the store, with no announcement. (In-process the crash is a forgotten guard with
/// a fixed lease: a forgotten guard that renews keeps its lock as long as the process lives,
/// as a guard that is kept does; killed processes are in `tests/runtime`.)
pub async fn a_vanished_holder_blocks_others_for_its_lease_only(b: &impl Backend) {
    let other = b.locker().await;
    let lease = Duration::from_millis(800);
    let before = Instant::now();
    {
        let crashed = b.locker().await;
        std::mem::forget(
            crashed
                .lock("crash")
                .lease(lease)
                .renew(false)
                .await
                .unwrap(),
        );
    }
    let g = other
        .lock("crash")
        .wait(Duration::from_secs(5))
        .await
        .expect("the lock expires with its lease");
    let at = before.elapsed();
    assert!(
        at >= lease - lease / 20,
        "taken after {at:?}, inside the lease"
    );
    assert!(
        at < lease + Duration::from_secs(1),
        "taken only after {at:?}"
    );
    g.release().await.unwrap();
    assert_free(&other, "crash").await;
}
