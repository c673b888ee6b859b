//! Awaiting a lock operation is a scheduling point on Redis: a round trip, during which the
//! runtime runs other tasks. The memory store answers every operation synchronously and never
//! yields, so an uncontended `lock`/`release` loop on it never lets another task of the same
//! thread run: a test whose loop waits for a flag another task sets hangs on memory and passes
//! on Redis. The case runs on a current-thread runtime, where this is deterministic.
//!
//! Found by `exclusion::every_task_of_one_locker_gets_turns` (with `handoff_limit(0)`, on a
//! loaded machine): one task took all 320 turns before the others were scheduled. The memory
//! store now spends the task's cooperative budget on every operation, as a round trip would
//! give other tasks their turn.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::backend::{bounded, Backend, Memory, Redis};

pub async fn an_uncontended_lock_loop_lets_other_tasks_run(b: &impl Backend) {
    let a = b.locker().await;
    let ran = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let ran = ran.clone();
        async move { ran.store(true, Ordering::SeqCst) }
    });
    for _ in 0..10_000 {
        if ran.load(Ordering::SeqCst) {
            return;
        }
        a.lock("loop").await.unwrap().release().await.unwrap();
    }
    panic!("10,000 acquisitions and releases, and the other task never ran");
}

#[tokio::test(flavor = "current_thread")]
async fn redis() {
    bounded::<Redis>(an_uncontended_lock_loop_lets_other_tasks_run(
        &Redis::start(),
    ))
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn memory() {
    bounded::<Memory>(an_uncontended_lock_loop_lets_other_tasks_run(
        &Memory::start(),
    ))
    .await;
}
