//! Running a future under a lock: loss cancels it, the fencing token is readable inside it, and
//! nested calls for a key the task already holds re-enter.

use std::future::Future;
use std::sync::Arc;

use crate::request::LockRequest;
use crate::Error;

tokio::task_local! {
    static HELD: Arc<HeldByTask>;
}

/// One lock held by the current task under `run`, linked to the locks held around it.
#[derive(Debug)]
struct HeldByTask {
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
/// [`LockRequest::run`] or `#[distributed_lock]`, or `None` outside of one.
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

pub(crate) async fn run<F: Future>(req: LockRequest, fut: F) -> Result<F::Output, Error> {
    let locker_id = req.locker().id();
    let lock = match req.key() {
        Ok(key) => req.locker().names(key).lock().to_owned(),
        Err(_) => String::new(),
    };
    let outer = HELD.try_with(Arc::clone).ok();
    if outer.as_ref().is_some_and(|o| o.find(locker_id, &lock)) {
        // Re-entry: this task already holds the lock; the outer `run` guards it.
        return Ok(fut.await);
    }
    let guard = req.await?;
    let key = guard.key().to_owned();
    let held = Arc::new(HeldByTask {
        locker: locker_id,
        lock,
        fence: guard.fencing_token(),
        outer,
    });
    let lost = guard.lost();
    let out = HELD
        .scope(held, async {
            tokio::select! {
                biased;
                () = lost => None,
                out = fut => Some(out),
            }
        })
        .await;
    match out {
        Some(out) => {
            if let Err(e) = guard.release().await {
                // The body finished while the lock was believed held; its result stands.
                tracing::warn!(target: "lockattr", key, error = %e, "release after the critical section failed");
            }
            Ok(out)
        }
        None => {
            let _ = guard.release().await;
            Err(Error::Lost { key })
        }
    }
}
