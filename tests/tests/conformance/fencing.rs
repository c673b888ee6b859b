//! Fencing tokens: every holder's token is above every earlier holder's, however the lock
//! changed hands.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::Backend;
use crate::support::{assert_free, until_local_waiters, until_registered};

/// Asserts that `tokens` (in the order the holders held the lock) strictly increase.
#[track_caller]
fn assert_increasing(tokens: &[(&str, u64)]) {
    for pair in tokens.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "{} ({}) is not above {} ({}): {tokens:?}",
            pair[1].0,
            pair[1].1,
            pair[0].0,
            pair[0].1
        );
    }
}

pub async fn tokens_increase_across_lockers_handovers_and_grants(b: &impl Backend) {
    let (a, other, admin) = (b.locker().await, b.locker().await, b.locker().await);
    let key = "fence";
    let mut tokens = Vec::new();

    // Free acquisitions, alternating between lockers.
    for (who, locker) in [("a", &a), ("other", &other), ("a again", &a)] {
        let g = locker.lock(key).await.unwrap();
        tokens.push((who, g.fencing_token()));
        g.release().await.unwrap();
    }

    // A handover to another task of the same locker.
    let g = a.lock(key).await.unwrap();
    tokens.push(("holder before a handover", g.fencing_token()));
    let next = tokio::spawn({
        let a = a.clone();
        async move { a.lock(key).await.map(|g| (g.fencing_token(), g)) }
    });
    until_local_waiters(&a, key, 1, Duration::from_secs(5)).await;
    g.release().await.unwrap();
    let (token, g) = next.await.unwrap().unwrap();
    tokens.push(("handed over", token));

    // A direct grant from the handed-over holder to a registered waiter of another locker.
    let waiter = tokio::spawn({
        let other = other.clone();
        async move { other.lock(key).await.map(|g| (g.fencing_token(), g)) }
    });
    until_registered(&a, key, Duration::from_secs(5)).await;
    g.release().await.unwrap();
    let (token, g) = waiter.await.unwrap().unwrap();
    tokens.push(("granted", token));
    g.release().await.unwrap();

    // Taken after a fixed lease ran out.
    let g = a
        .lock(key)
        .lease(Duration::from_millis(200))
        .renew(false)
        .await
        .unwrap();
    tokens.push(("expired holder", g.fencing_token()));
    let after = other.lock(key).wait(Duration::from_secs(3)).await.unwrap();
    tokens.push(("after the expiry", after.fencing_token()));
    drop(g);

    // Taken after a force_unlock.
    assert!(admin.force_unlock(key).await.unwrap());
    let forced = a.lock(key).wait(Duration::from_secs(3)).await.unwrap();
    tokens.push(("after a force_unlock", forced.fencing_token()));
    drop(after);
    forced.release().await.unwrap();

    assert_increasing(&tokens);
    assert_free(&admin, key).await;
}

/// Under contention from two lockers (handovers, grants and releases mixed), the tokens read
/// inside the critical sections, in the order the holders were inside, strictly increase.
pub async fn tokens_increase_in_the_order_of_holders(b: &impl Backend) {
    let lockers = [b.locker().await, b.locker().await];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let locker = lockers[i % 2].clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    locker
                        .lock("ordered")
                        .run(async {
                            let token = lockattr::fencing_token().unwrap();
                            seen.lock().unwrap().push(token);
                            tokio::task::yield_now().await;
                        })
                        .await
                        .expect("run");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 120);
    let named: Vec<_> = seen.iter().map(|t| ("holder", *t)).collect();
    assert_increasing(&named);
}
