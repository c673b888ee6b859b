//! What the current task holds under `run` (and `#[distributed_lock]`): for the fencing token
//! inside the critical section, and for re-entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing::Span;

use crate::upkeep::Hold;
use crate::Error;

tokio::task_local! {
    static HELD: Arc<HeldByTask>;
}

/// One lock held by the current task under `run`, linked to the locks held around it.
#[derive(Debug)]
pub(crate) struct HeldByTask {
    locker: usize,
    lock: String,
    hold: Arc<Hold>,
    /// The `lock.held` span, to record a token issued inside the critical section.
    span: Span,
    outer: Option<Arc<HeldByTask>>,
}

impl HeldByTask {
    fn find(&self, locker: usize, lock: &str) -> bool {
        let mut cur = Some(self);
        while let Some(h) = cur {
            if h.locker == locker && h.lock == lock {
                return true;
            }
            cur = h.outer.as_deref();
        }
        false
    }
}

/// The fencing token of the innermost lock the current task holds under
/// [`LockRequest::run`](crate::LockRequest::run) or `#[distributed_lock]`: the same as
/// [`LockGuard::fencing_token`](crate::LockGuard::fencing_token) for that lock (issued by Redis
/// the first time it is asked for, one round trip, when the lock was taken by the uncontended
/// fast path; at once otherwise).
///
/// ```no_run
/// #[lockattr::distributed_lock(key = "account:<id>")]
/// async fn debit(id: u64, cents: u64) -> Result<(), lockattr::Error> {
///     let token = lockattr::fencing_token().await?;
///     // UPDATE accounts SET balance = balance - $cents, fence = $token
///     //  WHERE id = $id AND fence < $token
///     # let _ = (token, cents);
///     Ok(())
/// }
/// ```
///
/// # Errors
/// [`Error::NotInCriticalSection`] outside of one (a task spawned from a critical section is
/// outside it too); otherwise those of [`LockGuard::fencing_token`](crate::LockGuard::fencing_token).
pub async fn fencing_token() -> Result<u64, Error> {
    let held = HELD
        .try_with(Arc::clone)
        .map_err(|_| Error::NotInCriticalSection)?;
    if let Some(fence) = held.hold.known_fence() {
        return Ok(fence);
    }
    // Boxed, like the guard's methods: the store's future reaches deep into redis-rs, and the
    // critical section's future would otherwise carry its layout.
    let fence: Pin<Box<dyn Future<Output = Result<u64, Error>> + Send + '_>> =
        Box::pin(held.hold.fencing_token(&held.span));
    fence.await
}

/// Whether the current task already holds `lock` of the locker `locker` under `run`.
pub(crate) fn holds(locker: usize, lock: &str) -> bool {
    HELD.try_with(|h| h.find(locker, lock)).unwrap_or(false)
}

/// Runs `fut` as the critical section of `lock`, held by `hold` (its `lock.held` span `span`).
pub(crate) async fn scope<F: Future>(
    locker: usize,
    lock: String,
    hold: Arc<Hold>,
    span: Span,
    fut: F,
) -> F::Output {
    let held = Arc::new(HeldByTask {
        locker,
        lock,
        hold,
        span,
        outer: HELD.try_with(Arc::clone).ok(),
    });
    HELD.scope(held, fut).await
}
