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
        tokens.push((who, g.fencing_token().await.unwrap()));
        g.release().await.unwrap();
    }

    // A handover to another task of the same locker.
    let g = a.lock(key).await.unwrap();
    tokens.push(("holder before a handover", g.fencing_token().await.unwrap()));
    let next = tokio::spawn({
        let a = a.clone();
        async move {
            match a.lock(key).await {
                Ok(g) => Ok((g.fencing_token().await.unwrap(), g)),
                Err(e) => Err(e),
            }
        }
    });
    until_local_waiters(&a, key, 1, Duration::from_secs(5)).await;
    g.release().await.unwrap();
    let (token, g) = next.await.unwrap().unwrap();
    tokens.push(("handed over", token));

    // A direct grant from the handed-over holder to a registered waiter of another locker.
    let waiter = tokio::spawn({
        let other = other.clone();
        async move {
            match other.lock(key).await {
                Ok(g) => Ok((g.fencing_token().await.unwrap(), g)),
                Err(e) => Err(e),
            }
        }
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
    tokens.push(("expired holder", g.fencing_token().await.unwrap()));
    let after = other.lock(key).wait(Duration::from_secs(3)).await.unwrap();
    tokens.push(("after the expiry", after.fencing_token().await.unwrap()));
    drop(g);

    // Taken after a force_unlock.
    assert!(admin.force_unlock(key).await.unwrap());
    let forced = a.lock(key).wait(Duration::from_secs(3)).await.unwrap();
    tokens.push((
        "after a force_unlock",
        forced.fencing_token().await.unwrap(),
    ));
    drop(after);
    forced.release().await.unwrap();

    assert_increasing(&tokens);
    assert_free(&admin, key).await;
}

/// Runs `rounds` critical sections of `key` in each of `lockers.len()` tasks (task `i` on
/// `lockers[i]`); the section of task `i` in round `r` asks for its token when `ask(i, r)`.
/// Returns the tokens in the order the holders were inside.
async fn tokens_of_holders(
    lockers: Vec<lockattr::Locker>,
    key: &'static str,
    rounds: usize,
    ask: fn(usize, usize) -> bool,
) -> Vec<u64> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = lockers
        .into_iter()
        .enumerate()
        .map(|(i, locker)| {
            let seen = seen.clone();
            tokio::spawn(async move {
                for round in 0..rounds {
                    locker
                        .lock(key)
                        .run(async {
                            if ask(i, round) {
                                let token = lockattr::fencing_token().await.unwrap();
                                seen.lock().unwrap().push(token);
                            }
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
    let seen = seen.lock().unwrap().clone();
    seen
}

/// Under contention from two lockers (handovers, grants and releases mixed), the tokens read
/// inside the critical sections, in the order the holders were inside, strictly increase.
pub async fn tokens_increase_in_the_order_of_holders(b: &impl Backend) {
    let pair = [b.locker().await, b.locker().await];
    let lockers = (0..12).map(|i| pair[i % 2].clone()).collect();
    let seen = tokens_of_holders(lockers, "ordered", 10, |_, _| true).await;
    assert_eq!(seen.len(), 120);
    let named: Vec<_> = seen.iter().map(|t| ("holder", *t)).collect();
    assert_increasing(&named);
}

/// An uncontended lock has no token until its holder asks: then it gets one above every
/// earlier holder's, keeps it, and the store records it; a lock lost before it was asked for
/// never gets one.
pub async fn a_token_is_issued_when_first_asked_and_never_to_a_lost_lock(b: &impl Backend) {
    let (a, other, admin) = (b.locker().await, b.locker().await, b.locker().await);
    let key = "asked";
    let g = a.lock(key).await.unwrap();
    let first = g.fencing_token().await.unwrap();
    g.release().await.unwrap();

    // Taken uncontended: nothing issued yet, nothing recorded.
    let g = a.lock(key).await.unwrap();
    let before = crate::support::info(&admin, key).await.expect("held");
    assert_eq!(before.fencing_token, None, "{before:?}");
    let token = g.fencing_token().await.unwrap();
    assert!(token > first, "{token} after {first}");
    assert_eq!(
        g.fencing_token().await.unwrap(),
        token,
        "the guard keeps its token"
    );
    let after = crate::support::info(&admin, key).await.expect("held");
    assert_eq!(after.fencing_token, Some(token), "recorded in the store");
    g.release().await.unwrap();

    // Taken over in the store before it was asked (an operator's unlock, another holder):
    // asking finds it, reports the loss, and the guard is lost; the new holder is untouched.
    let g = a.lock(key).await.unwrap();
    assert!(admin.force_unlock(key).await.unwrap());
    let taken = other.try_lock(key).await.expect("the key is free");
    let asked = g.fencing_token().await;
    crate::support::assert_lost(&asked, key);
    assert!(!g.is_held(), "found lost when asked");
    crate::support::assert_lost(&g.release().await, key);
    assert!(taken.is_held());
    let next = taken.fencing_token().await.unwrap();
    assert!(next > token, "{next} after {token}");

    // Lost by its fixed lease before it was asked: no token either.
    taken.release().await.unwrap();
    let g = a
        .lock(key)
        .lease(Duration::from_millis(200))
        .renew(false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    crate::support::assert_lost(&g.fencing_token().await, key);
    drop(g);
    let last = other
        .lock(key)
        .wait(Duration::from_secs(3))
        .await
        .expect("free after the lease");
    let last_token = last.fencing_token().await.unwrap();
    assert!(last_token > next);
    last.release().await.unwrap();

    // Requested `fenced`: issued with the acquisition, above every earlier one; its own locker
    // knows it at once, the store from its first renewal (or an extension) on.
    let g = a.lock(key).fenced(true).await.unwrap();
    let mine = crate::support::info(&a, key).await.expect("held");
    let token = mine.fencing_token.expect("known to its own locker at once");
    assert!(token > last_token, "{token} after {last_token}");
    assert_eq!(g.fencing_token().await.unwrap(), token);
    g.extend(Duration::from_secs(5)).await.unwrap();
    let theirs = crate::support::info(&admin, key).await.expect("held");
    assert_eq!(
        theirs.fencing_token,
        Some(token),
        "recorded by the extension"
    );
    g.release().await.unwrap();

    // Outside a critical section there is none to give.
    assert!(matches!(
        lockattr::fencing_token().await,
        Err(lockattr::Error::NotInCriticalSection)
    ));
    assert_free(&admin, key).await;
}

/// Handed on between tasks of one locker while only some holders ask for their token: the
/// tokens that were asked for still increase in the order of the holders (a holder that did
/// not ask hands on none; the next one that asks is issued one above every earlier).
pub async fn tokens_increase_when_only_some_holders_ask(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    // Mostly one locker, so that holders hand the lock on locally.
    let lockers = (0..8)
        .map(|i| if i == 7 { other.clone() } else { a.clone() })
        .collect();
    let seen = tokens_of_holders(lockers, "some", 12, |i, round| (i + round) % 3 == 0).await;
    assert_eq!(seen.len(), 32);
    let named: Vec<_> = seen.iter().map(|t| ("holder", *t)).collect();
    assert_increasing(&named);
    assert_free(&other, "some").await;
}
