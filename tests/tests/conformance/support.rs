//! Helpers the cases share. Everything here uses the public API only.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lockattr::{Error, LockInfo, Locker};

/// Polls the async `cond` every 5 ms for at most `limit`; returns whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What `locker` sees of `key` now.
pub async fn info(locker: &Locker, key: &str) -> Option<LockInfo> {
    locker.inspect(key).await.expect("inspect")
}

/// Waits (at most `limit`) until another locker's waiter is registered for a direct grant of
/// `key`, as `locker` sees it.
pub async fn until_registered(locker: &Locker, key: &str, limit: Duration) {
    let registered = eventually(limit, || async {
        info(locker, key).await.is_some_and(|i| i.waiter_registered)
    })
    .await;
    assert!(
        registered,
        "no waiter registered for `{key}` within {limit:?}"
    );
}

/// Waits (at most `limit`) until `n` tasks of `locker` wait for `key` locally.
pub async fn until_local_waiters(locker: &Locker, key: &str, n: usize, limit: Duration) {
    let queued = eventually(limit, || async {
        info(locker, key)
            .await
            .is_some_and(|i| i.local_waiters == n)
    })
    .await;
    assert!(queued, "not {n} local waiters for `{key}` within {limit:?}");
}

/// Asserts that `key` is free, and stays usable: nobody holds it (as `other` sees it), and a
/// single attempt of `other` takes it at once.
pub async fn assert_free(other: &Locker, key: &str) {
    assert_eq!(info(other, key).await, None, "`{key}` is still held");
    let g = other
        .try_lock(key)
        .await
        .unwrap_or_else(|e| panic!("`{key}` is free but try_lock failed: {e}"));
    g.release().await.expect("release");
}

/// Waits (at most `limit`) until `key` is free as `other` sees it, then [`assert_free`].
pub async fn assert_freed_within(other: &Locker, key: &str, limit: Duration) {
    let freed = eventually(limit, || async { info(other, key).await.is_none() }).await;
    assert!(freed, "`{key}` was not freed within {limit:?}");
    assert_free(other, key).await;
}

/// Asserts that `r` is `Err(Error::Lost)` for `key`.
#[track_caller]
pub fn assert_lost<T: std::fmt::Debug>(r: &Result<T, Error>, key: &str) {
    assert!(
        matches!(r, Err(Error::Lost { key: k }) if k == key),
        "expected Lost for `{key}`, got {r:?}"
    );
}

/// Asserts that `r` is `Err(Error::Timeout)` for `key`; returns how long it says it waited.
#[track_caller]
pub fn assert_timeout<T: std::fmt::Debug>(r: &Result<T, Error>, key: &str) -> Duration {
    match r {
        Err(Error::Timeout { key: k, waited }) if k == key => *waited,
        other => panic!("expected Timeout for `{key}`, got {other:?}"),
    }
}

/// A check-then-act critical section that notices overlap: it reads a counter, yields, and
/// writes the read value plus one, the way a GET-then-SET against a database would. Any two
/// holders inside together lose an increment, and are counted as an overlap.
#[derive(Debug, Default)]
pub struct Critical {
    inside: AtomicBool,
    overlaps: AtomicU64,
    counter: AtomicU64,
}

impl Critical {
    /// One pass through the critical section; call it only while holding the lock.
    pub async fn enter(&self) {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let read = self.counter.load(Ordering::SeqCst);
        tokio::task::yield_now().await;
        self.counter.store(read + 1, Ordering::SeqCst);
        self.inside.store(false, Ordering::SeqCst);
    }

    /// Asserts that nobody overlapped and that all `passes` increments survived.
    #[track_caller]
    pub fn assert_exclusive(&self, passes: u64) {
        assert_eq!(
            self.overlaps.load(Ordering::SeqCst),
            0,
            "holders overlapped"
        );
        assert_eq!(
            self.counter.load(Ordering::SeqCst),
            passes,
            "an increment was lost: two holders were inside together"
        );
    }
}

/// Records when the future it lives in stopped: finished or dropped (cancelled).
#[derive(Debug)]
pub struct Exit(pub Arc<Mutex<Option<Instant>>>);

impl Drop for Exit {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

/// Asserts that a test that began at `real` took little real time (a paused test).
#[track_caller]
pub fn assert_quick(real: Instant) {
    let took = real.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?} of real time");
}

/// Lets the lockers' background tasks (the lease scheduler, renewals) run, in paused time.
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Polls `fut` at most `polls` times, then gives up (and drops it); `Some` if it finished.
/// Every poll that returns `Pending` lets the runtime run until the future is woken, so `polls`
/// walks the future through its await points one by one, on any backend.
pub struct PollLimit<F> {
    fut: Pin<Box<F>>,
    left: usize,
}

impl<F> std::fmt::Debug for PollLimit<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollLimit")
            .field("left", &self.left)
            .finish()
    }
}

impl<F: Future> PollLimit<F> {
    pub fn new(fut: F, polls: usize) -> Self {
        PollLimit {
            fut: Box::pin(fut),
            left: polls,
        }
    }
}

impl<F: Future> Future for PollLimit<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        match self.fut.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending if self.left == 0 => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
