//! Memory only: leases and waits follow tokio's clock, so paused time runs a test of long
//! leases and waits in no real time. Each test measures the real time it took with
//! `std::time::Instant`.
//!
//! Paused time moves in two ways, and they mean different things to a held lock:
//!
//! * **Auto-advance** (`sleep` in a paused runtime with nothing else to do) jumps from timer to
//!   timer, and renewal timers are timers: a renewing lock is renewed on the way.
//! * **`tokio::time::advance(d)`** jumps by `d` at once. To the lease clock, a jump longer than
//!   what is left of the lease is a process pause: the lock is lost, as it would be on Redis.
//!   Advance in steps shorter than a third of the lease to let renewals run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as RealInstant};

use futures_util::FutureExt;
use lockattr::{Error, Locker, MemoryStore};
use tokio::time::Instant;

use crate::support::{assert_quick, settle};

#[tokio::test(start_paused = true)]
async fn a_30_s_wait_and_a_10_s_lease_take_no_real_time() {
    let real = RealInstant::now();
    let store = MemoryStore::new();
    let (a, b) = (store.locker(), store.locker());
    let started = Instant::now();
    let g = a
        .lock("slow")
        .lease(Duration::from_secs(10))
        .renew(false)
        .await
        .unwrap();
    // The waiter gets the lock when the fixed lease runs out, 10 s of tokio's time later.
    let next = b.lock("slow").wait(Duration::from_secs(30)).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(9950) && waited <= Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(!g.is_held() && next.is_held());
    // A 30 s wait for a renewing holder runs out whole.
    let r = a.lock("slow").wait(Duration::from_secs(30)).await;
    match r {
        Err(Error::Timeout { waited, .. }) => assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{waited:?}"
        ),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(next.is_held(), "renewed through the 30 s");
    next.release().await.unwrap();
    assert_quick(real);
}

#[tokio::test(start_paused = true)]
async fn a_renewing_lock_survives_advance_far_past_its_lease() {
    let real = RealInstant::now();
    let store = MemoryStore::new();
    let (a, b) = (store.locker(), store.locker());
    let lease = Duration::from_secs(1);
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let body = tokio::spawn(async move {
        a.lock("renewed")
            .lease(lease)
            .run(async move {
                let _ = stop.await;
                "finished"
            })
            .await
    });
    settle().await;
    // 60 leases, in steps of a tenth of one.
    for step in 0..600 {
        tokio::time::advance(lease / 10).await;
        settle().await;
        if step % 50 == 0 {
            assert!(
                b.try_lock("renewed").await.is_err(),
                "free after {step} steps"
            );
        }
    }
    assert!(!body.is_finished(), "the body still runs");
    let seen = b.inspect("renewed").await.unwrap().expect("still held");
    assert!(
        seen.remaining_lease.is_some_and(|r| r > lease / 2),
        "{seen:?}"
    );
    stop_tx.send(()).unwrap();
    assert_eq!(body.await.unwrap().unwrap(), "finished");
    assert!(b.inspect("renewed").await.unwrap().is_none());
    assert_quick(real);
}

#[tokio::test(start_paused = true)]
async fn one_jump_past_the_lease_is_a_pause_and_loses_the_lock() {
    let real = RealInstant::now();
    let a = Locker::in_memory();
    let g = a
        .lock("paused")
        .lease(Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert!(!g.is_held(), "no renewal could run during the jump");
    assert!(matches!(g.release().await, Err(Error::Lost { .. })));
    assert_quick(real);
}

#[tokio::test(start_paused = true)]
async fn a_fixed_lease_is_lost_exactly_at_its_deadline() {
    let real = RealInstant::now();
    let store = MemoryStore::new();
    let (a, b) = (store.locker(), store.locker());
    let lease = Duration::from_secs(10);
    // The local deadline: the lease minus a margin of 5 %, at most 50 ms.
    let deadline = lease - Duration::from_millis(50);
    let g = a.lock("exact").lease(lease).renew(false).await.unwrap();
    tokio::time::advance(deadline - Duration::from_millis(1)).await;
    settle().await;
    assert!(g.is_held(), "held 1 ms before the deadline");
    assert!(g.lost().now_or_never().is_none());
    assert!(b.try_lock("exact").await.is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(!g.is_held(), "lost at the deadline");
    assert!(g.lost().now_or_never().is_some(), "lost() resolves at once");
    settle().await;
    let next = b.try_lock("exact").await.expect("the lost holder withdrew");
    assert!(matches!(g.release().await, Err(Error::Lost { .. })));
    assert!(next.is_held());
    next.release().await.unwrap();
    assert_quick(real);
}

#[tokio::test(start_paused = true)]
async fn holders_of_two_lockers_take_turns_in_paused_time() {
    let real = RealInstant::now();
    let store = MemoryStore::new();
    let lockers = [store.locker(), store.locker()];
    let inside = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (locker, inside) = (lockers[i % 2].clone(), inside.clone());
            tokio::spawn(async move {
                for _ in 0..2 {
                    // A 3 s body under a 1 s lease: renewed, and handed over or granted.
                    locker
                        .lock("turns")
                        .lease(Duration::from_secs(1))
                        .wait(Duration::from_secs(60))
                        .run(async {
                            assert!(!inside.swap(true, Ordering::SeqCst));
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            inside.store(false, Ordering::SeqCst);
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 16 bodies of 3 s, one after the other.
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(48), "{took:?}");
    assert!(took < Duration::from_secs(50), "{took:?}");
    assert_quick(real);
}

// The example from `Locker::in_memory`'s docs, as written there.

#[lockattr::distributed_lock(key = "seat:<seat>", wait = "30s", lease = "10s")]
async fn book(seat: u32) -> Result<u32, lockattr::Error> {
    tokio::time::sleep(Duration::from_secs(20)).await; // longer than the lease: renewed
    Ok(seat)
}

#[tokio::test(start_paused = true)]
async fn bookings_of_one_seat_take_turns() {
    let real = RealInstant::now();
    lockattr::set_default(lockattr::Locker::in_memory());
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(book(7), book(7));
    assert_eq!((a.unwrap(), b.unwrap()), (7, 7));
    assert!(
        started.elapsed() >= Duration::from_secs(40),
        "one after the other"
    );
    assert_quick(real);
}
