//! Mutual exclusion, and turns for everyone: tasks of one locker, and lockers on one store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockattr::Locker;

use crate::backend::{Backend, Settings};
use crate::support::{assert_free, until_local_waiters, Critical};

/// `tasks` tasks, task `i` on `lockers[i % lockers.len()]`, each passing `passes` times through
/// one critical section of `key`.
async fn contend(lockers: &[Locker], key: &str, tasks: usize, passes: u64) -> Arc<Critical> {
    let critical = Arc::new(Critical::default());
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let locker = lockers[i % lockers.len()].clone();
            let (critical, key) = (critical.clone(), key.to_owned());
            tokio::spawn(async move {
                for _ in 0..passes {
                    let guard = locker.lock(key.as_str()).await.expect("lock");
                    critical.enter().await;
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("a contending task panicked");
    }
    critical
}

pub async fn tasks_of_one_locker_exclude_each_other(b: &impl Backend) {
    let a = b.locker().await;
    let critical = contend(std::slice::from_ref(&a), "shared", 20, 5).await;
    critical.assert_exclusive(100);
    assert_free(&b.locker().await, "shared").await;
}

pub async fn lockers_exclude_each_other(b: &impl Backend) {
    let lockers = [b.locker().await, b.locker().await, b.locker().await];
    let critical = contend(&lockers, "shared", 30, 5).await;
    critical.assert_exclusive(150);
    assert_free(&b.locker().await, "shared").await;
}

/// A namespace is part of every lock's name: lockers of two namespaces do not exclude each
/// other, lockers of one do.
pub async fn namespaces_keep_lockers_apart(b: &impl Backend) {
    let ns = |namespace| Settings {
        namespace,
        ..Settings::default()
    };
    let (app, same, other) = (
        b.locker_with(ns("app:lock")).await,
        b.locker_with(ns("app:lock")).await,
        b.locker_with(ns("other")).await,
    );
    assert_eq!(app.namespace(), "app:lock");
    assert_eq!(app.redis_key("party:42").unwrap(), "app:lock:{party:42}");
    let g = app.lock("party:42").await.unwrap();
    assert!(same.try_lock("party:42").await.is_err(), "same namespace");
    let h = other
        .try_lock("party:42")
        .await
        .expect("another namespace is another lock");
    assert!(g.is_held() && h.is_held());
    g.release().await.unwrap();
    h.release().await.unwrap();
    assert_free(&same, "party:42").await;
}

/// `tasks` tasks, task `i` on `lockers[i % lockers.len()]`, take turns on `key`, each holding
/// it for a millisecond, until `total` passes were made between them; returns how many passes
/// each task made.
///
/// A `gate` locker holds the lock until every task waits for it, so that the turns begin with
/// everyone queued, whatever the order in which the runtime starts the tasks.
async fn take_turns(
    gate: &Locker,
    lockers: &[Locker],
    key: &str,
    tasks: usize,
    total: u64,
) -> Vec<u64> {
    let gate = gate.lock(key).await.expect("the gate");
    let critical = Arc::new(Critical::default());
    let made = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let locker = lockers[i % lockers.len()].clone();
            let (critical, made) = (critical.clone(), made.clone());
            let key = key.to_owned();
            tokio::spawn(async move {
                let mut mine = 0;
                while made.load(Ordering::SeqCst) < total {
                    let guard = locker
                        .lock(key.as_str())
                        .wait(Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|e| panic!("task {i} starved: {e}"));
                    critical.enter().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    made.fetch_add(1, Ordering::SeqCst);
                    mine += 1;
                    guard.release().await.expect("release");
                }
                mine
            })
        })
        .collect();
    // Each locker's first task contends in the store, the others wait in its local queue:
    // all of them count as its waiters.
    for (n, locker) in lockers.iter().enumerate() {
        let mine = (n..tasks).step_by(lockers.len()).count();
        until_local_waiters(locker, key, mine, Duration::from_secs(5)).await;
    }
    gate.release().await.expect("release the gate");
    let mut per_task = Vec::new();
    for h in handles {
        per_task.push(h.await.expect("a task panicked"));
    }
    critical.assert_exclusive(per_task.iter().sum());
    per_task
}

/// The local queue is FIFO and a release passes the lock (or, with handoffs off, the right to
/// take it next) to its head: every task gets a fair share of turns.
pub async fn every_task_of_one_locker_gets_turns(b: &impl Backend) {
    for handoff_limit in [16, 0] {
        let settings = Settings {
            handoff_limit,
            ..Settings::default()
        };
        let a = b.locker_with(settings).await;
        let per_task = take_turns(&b.locker().await, &[a], "turns", 8, 160).await;
        // 20 each in a strict FIFO.
        for (i, n) in per_task.iter().enumerate() {
            assert!(
                *n >= 15,
                "handoff limit {handoff_limit}: task {i} got {n} turns: {per_task:?}"
            );
        }
    }
}

/// Handoffs inside a locker are bounded, and a release that woke the other locker lets it go
/// first: both lockers, and every task, get turns.
pub async fn every_task_of_two_lockers_gets_turns(b: &impl Backend) {
    let settings = Settings {
        handoff_limit: 4,
        ..Default::default()
    };
    let lockers = [b.locker_with(settings).await, b.locker_with(settings).await];
    let per_task = take_turns(&b.locker().await, &lockers, "fair", 8, 200).await;
    let first: u64 = per_task.iter().step_by(2).sum();
    let second: u64 = per_task.iter().skip(1).step_by(2).sum();
    // Without the bound one locker keeps the lock while it has local waiters (a split like
    // 200/4). With it, the lockers alternate every 5 acquisitions while both contend; a
    // locker whose next contender has not been scheduled yet (a loaded machine) is not in the
    // store and cannot be given a turn, which the margin allows for.
    let share = first.min(second) as f64 / (first + second) as f64;
    assert!(
        share > 0.3,
        "unfair split between the lockers: {first}/{second}"
    );
    for (i, n) in per_task.iter().enumerate() {
        assert!(*n >= 10, "task {i} got {n} turns: {per_task:?}");
    }
}
