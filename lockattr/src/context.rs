//! What the current task holds under `run` (and `#[distributed_lock]`): for the fencing token
//! inside the critical section, and for re-entry.

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static HELD: Arc<HeldByTask>;
}

/// One lock held by the current task under `run`, linked to the locks held around it.
#[derive(Debug)]
pub(crate) struct HeldByTask {
    locker: usize,
    lock: String,
    fence: u64,
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
/// [`LockRequest::run`](crate::LockRequest::run) or `#[distributed_lock]`, or `None` outside
/// of one.
///
/// ```no_run
/// #[lockattr::distributed_lock(key = "account:<id>")]
/// async fn debit(id: u64, cents: u64) -> Result<(), lockattr::Error> {
///     let token = lockattr::fencing_token().expect("inside a lock");
///     // UPDATE accounts SET balance = balance - $cents, fence = $token
///     //  WHERE id = $id AND fence < $token
///     # let _ = (token, cents);
///     Ok(())
/// }
/// ```
pub fn fencing_token() -> Option<u64> {
    HELD.try_with(|h| h.fence).ok()
}

/// Whether the current task already holds `lock` of the locker `locker` under `run`.
pub(crate) fn holds(locker: usize, lock: &str) -> bool {
    HELD.try_with(|h| h.find(locker, lock)).unwrap_or(false)
}

/// Runs `fut` as the critical section of `lock` (fencing token `fence`).
pub(crate) async fn scope<F: Future>(locker: usize, lock: String, fence: u64, fut: F) -> F::Output {
    let held = Arc::new(HeldByTask {
        locker,
        lock,
        fence,
        outer: HELD.try_with(Arc::clone).ok(),
    });
    HELD.scope(held, fut).await
}
