//! What operators see and do: `inspect` and `force_unlock`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lockattr::Error;

use crate::backend::Backend;
use crate::support::{
    assert_free, assert_freed_within, assert_lost, info, until_local_waiters, until_registered,
};

pub async fn inspect_reports_the_holder_and_its_waiters(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    assert_eq!(info(&a, "i").await, None, "free");
    let lease = Duration::from_secs(10);
    let g = a.lock("i").lease(lease).await.unwrap();
    let mine = info(&a, "i").await.expect("held");
    let remaining = mine.remaining_lease.expect("a lease");
    assert!(
        remaining > lease - Duration::from_secs(2) && remaining <= lease,
        "{remaining:?}"
    );
    // An uncontended acquisition has no fencing token until its holder asks for one: no
    // locker reports one yet.
    assert_eq!(
        (mine.fencing_token, mine.held_since),
        (None, None),
        "{mine:?}"
    );
    assert!(
        !mine.contended && !mine.waiter_registered && !mine.foreign,
        "{mine:?}"
    );
    assert_eq!(mine.local_waiters, 0);
    let theirs = info(&other, "i")
        .await
        .expect("held, seen from another locker");
    assert!(
        theirs.remaining_lease.is_some() && !theirs.foreign,
        "{theirs:?}"
    );
    assert_eq!((theirs.fencing_token, theirs.held_since), (None, None));
    // Asked for, it is issued and recorded in the store: every locker sees it.
    let token = g.fencing_token().await.unwrap();
    assert_eq!(
        g.fencing_token().await.unwrap(),
        token,
        "the holder keeps its token"
    );
    let mine = info(&a, "i").await.expect("held");
    assert_eq!(mine.fencing_token, Some(token));
    // It was issued just now, by the store's clock.
    let since = mine.held_since.expect("known with the fencing token");
    let now = SystemTime::now();
    let skew = now.duration_since(since).unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(5),
        "held since {since:?}, now {now:?}"
    );
    let theirs = info(&other, "i").await.unwrap();
    assert_eq!(theirs.fencing_token, Some(token));
    assert_eq!(theirs.held_since, mine.held_since);
    // An extension keeps it.
    g.extend(lease).await.unwrap();
    assert_eq!(info(&other, "i").await.unwrap().fencing_token, Some(token));

    // A waiter of another locker: the lock is contended and the waiter registered.
    let waiter = tokio::spawn({
        let other = other.clone();
        async move {
            match other.lock("i").await {
                Ok(g) => Ok(g.fencing_token().await.unwrap()),
                Err(e) => Err(e),
            }
        }
    });
    until_registered(&a, "i", Duration::from_secs(5)).await;
    let now = info(&a, "i").await.unwrap();
    assert!(now.contended && now.waiter_registered, "{now:?}");
    // A waiter of the holder's own locker waits in its local queue and is counted there; the
    // other locker counts its one waiting task, its contender in the store.
    let local = tokio::spawn({
        let a = a.clone();
        async move {
            match a.lock("i").await {
                Ok(g) => Ok(g.fencing_token().await.unwrap()),
                Err(e) => Err(e),
            }
        }
    });
    until_local_waiters(&a, "i", 1, Duration::from_secs(5)).await;
    assert_eq!(info(&other, "i").await.unwrap().local_waiters, 1);

    let first = g.fencing_token().await.unwrap();
    g.release().await.unwrap();
    let (w, l) = tokio::join!(waiter, local);
    let (w, l) = (w.unwrap().unwrap(), l.unwrap().unwrap());
    assert!(w > first && l > first, "{first} then {w} and {l}");
    // Both dropped their guards, which release in the background.
    assert_freed_within(&other, "i", Duration::from_secs(2)).await;
    assert_free(&a, "i").await;
}

pub async fn force_unlock_frees_the_lock_and_the_holder_sees_lost(b: &impl Backend) {
    let (a, waiter_locker, admin) = (b.locker().await, b.locker().await, b.locker().await);
    assert!(!admin.force_unlock("f").await.unwrap(), "nothing to unlock");
    // A renewing holder under `run`, whose body would run for 10 s.
    let lease = Duration::from_secs(3);
    let finished = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn({
        let (a, finished) = (a.clone(), finished.clone());
        async move {
            a.lock("f")
                .lease(lease)
                .run(async move {
                    let _ = entered_tx.send(());
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    finished.store(true, Ordering::SeqCst);
                })
                .await
        }
    });
    entered.await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = waiter_locker
            .lock("f")
            .wait(Duration::from_secs(10))
            .await?;
        let at = Instant::now();
        g.release().await?;
        Ok::<_, Error>(at)
    });
    until_registered(&admin, "f", Duration::from_secs(5)).await;
    let forced = Instant::now();
    assert!(admin.force_unlock("f").await.unwrap());
    // The waiter is woken at once, not when the 3 s lease would have run out.
    let woken = waiter.await.unwrap().expect("the waiter gets the lock");
    let after = woken.saturating_duration_since(forced);
    assert!(
        after < Duration::from_secs(1),
        "woken {after:?} after the unlock"
    );
    // The holder learns at its next renewal (a third of its lease) and its body is cancelled.
    let r = tokio::time::timeout(lease + Duration::from_secs(2), holder)
        .await
        .expect("the holder's body stops")
        .unwrap();
    assert_lost(&r, "f");
    assert!(!finished.load(Ordering::SeqCst), "cancelled, not finished");

    // A guard whose lock was forced away reports the loss at its release.
    let g = a.lock("f2").await.unwrap();
    assert!(admin.force_unlock("f2").await.unwrap());
    assert_lost(&g.release().await, "f2");
    assert_free(&admin, "f").await;
    assert_free(&admin, "f2").await;
}
