//! `inspect` and `force_unlock`: what operators see and do.

use std::time::{Duration, Instant};

use lockattr::Error;
use lockattr_tests::RedisServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_holder_lease_token_and_waiters() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    assert_eq!(a.inspect("i").await.unwrap(), None, "free");
    let g = a.lock("i").lease(Duration::from_secs(10)).await.unwrap();
    // No token until the holder asks; then Redis records it and every locker sees it.
    let before = a.inspect("i").await.unwrap().expect("held");
    assert_eq!((before.fencing_token, before.held_since), (None, None));
    let token = g.fencing_token().await.unwrap();
    assert_eq!(value(&server, "lock:{i}").unwrap().fence, Some(token));
    let mine = a.inspect("i").await.unwrap().expect("held");
    assert_eq!(mine.fencing_token, Some(token));
    let lease = mine.remaining_lease.unwrap();
    assert!(
        lease > Duration::from_secs(9) && lease <= Duration::from_secs(10),
        "{lease:?}"
    );
    assert!(!mine.contended && !mine.waiter_registered && !mine.foreign);
    let since = mine.held_since.unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(since)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(5), "held since {since:?}");
    let theirs = b.inspect("i").await.unwrap().expect("held");
    assert!(theirs.remaining_lease.is_some());
    assert_eq!(theirs.fencing_token, Some(token));
    g.extend(Duration::from_secs(10)).await.unwrap(); // keeps it
    let theirs = b.inspect("i").await.unwrap().unwrap();
    assert_eq!(theirs.fencing_token, Some(token));
    // A waiter of another locker registers; local waiters are counted by their locker.
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            let g = b.lock("i").wait(Duration::from_secs(10)).await?;
            Ok::<_, lockattr::Error>(g.fencing_token().await.unwrap())
        }
    });
    let local = tokio::spawn({
        let a = a.clone();
        async move { a.lock("i").wait(Duration::from_secs(10)).await.map(drop) }
    });
    assert!(
        eventually(Duration::from_secs(5), || value(&server, "lock:{i}")
            .is_some_and(|v| v.waiter.is_some()))
        .await
    );
    let now = a.inspect("i").await.unwrap().unwrap();
    assert!(now.contended && now.waiter_registered, "{now:?}");
    assert_eq!(now.local_waiters, 1);
    g.release().await.unwrap();
    let (w, l) = tokio::join!(waiter, local);
    w.unwrap().unwrap();
    l.unwrap().unwrap();
    assert!(eventually(Duration::from_secs(2), || server.keys().is_empty()).await);
    assert_eq!(a.inspect("i").await.unwrap(), None);
    assert!(matches!(a.inspect("").await, Err(Error::InvalidKey { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_unlock_frees_the_lock_and_the_holder_sees_lost() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    assert!(!b.force_unlock("f").await.unwrap(), "nothing to unlock");
    // A renewing holder, a waiter of another locker.
    let body_stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holder = tokio::spawn({
        let (a, stopped) = (a.clone(), body_stopped.clone());
        async move {
            a.lock("f")
                .lease(Duration::from_millis(900))
                .run(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
                })
                .await
        }
    });
    assert!(
        eventually(Duration::from_secs(2), || raw(&server, "lock:{f}")
            .is_some())
        .await
    );
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            let g = b.lock("f").wait(Duration::from_secs(10)).await?;
            let at = Instant::now();
            g.release().await?;
            Ok::<_, Error>(at)
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || value(&server, "lock:{f}")
            .is_some_and(|v| v.waiter.is_some()))
        .await
    );
    let forced = Instant::now();
    assert!(b.force_unlock("f").await.unwrap());
    // The waiter is woken at once; the holder learns at its next renewal (a third of its lease)
    // and its body is cancelled.
    let woken = waiter.await.unwrap().unwrap();
    assert!(
        woken - forced < Duration::from_millis(500),
        "{:?}",
        woken - forced
    );
    let r = tokio::time::timeout(Duration::from_secs(3), holder)
        .await
        .expect("the holder stops")
        .unwrap();
    assert!(matches!(r, Err(Error::Lost { .. })), "{r:?}");
    assert!(
        !body_stopped.load(std::sync::atomic::Ordering::SeqCst),
        "cancelled, not finished"
    );
    // A guard whose lock was forced away reports the loss at release.
    let g = a.lock("f2").await.unwrap();
    assert!(b.force_unlock("f2").await.unwrap());
    assert!(matches!(g.release().await, Err(Error::Lost { .. })));
}
