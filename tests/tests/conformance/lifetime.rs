//! How long renewals run: as long as the lock is held, whatever happens to the `Locker` that
//! took it and to the runtime it was first used on. Memory only: the scheduler is the same
//! code for every store.

use std::time::Duration;

use lockattr::Locker;

/// Renewals of a lock taken on a second runtime, after the runtime that first ran the
/// locker's scheduler shut down (a `static` locker shared by `#[tokio::test]`s).
#[test]
fn a_locker_used_from_a_second_runtime_still_renews() {
    let locker = Locker::in_memory();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let g = locker
            .lock("k")
            .lease(Duration::from_millis(300))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // the scheduler runs here
        g.release().await.unwrap();
    });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let g = locker
            .lock("k")
            .lease(Duration::from_millis(300))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            g.is_held(),
            "renewed on the second runtime, three leases later"
        );
        g.release().await.unwrap();
    });
}

/// A guard keeps its renewals going when the last clone of its `Locker` is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_outlives_its_locker_and_keeps_renewing() {
    let g = Locker::in_memory()
        .lock("k")
        .lease(Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(g.is_held(), "renewed although the locker is gone");
    g.release().await.unwrap();
}
