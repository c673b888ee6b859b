//! `LockGuard`: a held lock, as the caller sees it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Span;

use crate::lease::Phase;
use crate::observe;
use crate::release::release;
use crate::upkeep::{Hold, Owned};
use crate::Error;

/// A type-erased future: the futures below reach deep into redis-rs, and every future that
/// awaits these methods (the caller's, the attribute's) would otherwise carry their types,
/// which costs compile time and, for deep callers, the compiler's recursion limit.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A held lock. Obtained by awaiting [`Locker::lock`](crate::Locker::lock).
///
/// **While it lives**, the lease is renewed every lease/3 (unless the request said
/// `.renew(false)`). The lock counts as held until `the time the command that last set its
/// lease was sent + that lease − a margin` (5 % of the lease, at most 50 ms) by the local
/// monotonic clock, which is never later than Redis's own expiry. At that deadline, if no
/// renewal was confirmed before it, or as soon as Redis answers that the lock is not this
/// guard's any more, the guard turns *lost*: [`is_held`](Self::is_held) returns `false`,
/// [`lost`](Self::lost) resolves, [`release`](Self::release) returns [`Error::Lost`], and the
/// lock's place in this process's queue goes to the next task that waits for the key, at once.
/// A renewal still in flight at the deadline does not delay this. A lost guard never touches
/// the key again (if the lock is in fact still its own in Redis, because a renewal's answer was
/// late, it is freed in the background).
///
/// **Release** it with [`release`](Self::release) to learn the outcome, or drop it: dropping
/// releases in the background at once (it needs a Tokio runtime; without one the lock expires
/// with its lease). Either way renewal stops first, so a release can never be undone by a late
/// renewal. If another task of the same process waits for the key, the lock is handed to it
/// directly instead, without being free in between: that task starts at once, with the next
/// fencing token (one above this guard's, from a range Redis reserved for the acquisition) and
/// no later a deadline than Redis holds the lock for, and a renewal under its lease confirms
/// the handover in Redis behind it. If that renewal finds the lock gone, this guard's
/// `release` returns [`Error::Lost`] and the next holder is lost at once. That happens at most
/// [`handoff_limit`](crate::LockerBuilder::handoff_limit) times in a row, so that other
/// processes get their turn.
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    owned: Option<Owned>,
    /// The `lock.held` span (see `observe`), ended when the guard is released or dropped.
    span: Span,
    since: Instant,
    ended: bool,
}

impl LockGuard {
    /// The guard of a lock just acquired; its `lock.held` span is a child of the current span.
    pub(crate) fn new(owned: Owned) -> Self {
        let span = observe::held_span(&owned.hold().key, owned.hold().known_fence());
        LockGuard {
            owned: Some(owned),
            span,
            since: Instant::now(),
            ended: false,
        }
    }

    /// The `lock.held` span, for running a critical section inside it.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    fn end_span(&mut self, outcome: &'static str) {
        if !self.ended {
            self.ended = true;
            observe::held_ended(&self.span, self.since, outcome);
        }
    }

    pub(crate) fn hold(&self) -> &Arc<Hold> {
        // `owned` is only `None` inside `release`/`drop`, which consume the guard.
        self.owned
            .as_ref()
            .expect("LockGuard used after release")
            .hold()
    }

    /// The lock's key, as the caller wrote it.
    pub fn key(&self) -> &str {
        &self.hold().key
    }

    /// The fencing token of this hold: a number strictly greater than the token of every
    /// earlier holder of the same key on this Redis and smaller than every later holder's,
    /// issued by Redis (its clock, in microseconds; see the crate docs for the one caveat, a
    /// Redis clock that is set back).
    ///
    /// A lock alone cannot stop a holder that was paused (GC, swap, a stopped VM) past its lease
    /// from writing after the next holder started. Pass this token along with every write to
    /// storage that remembers the highest token it has seen per resource and rejects smaller
    /// ones; then the stale writer is refused.
    ///
    /// **When it is issued.** A lock taken by the uncontended fast path (a plain `SET NX PX`)
    /// has no token yet: the first call issues it, in one round trip (a script checks that the
    /// lock is still this guard's, reads Redis's clock and records the token in the lock's
    /// value). A lock taken after waiting, by a direct grant or through a handover has its
    /// token at once, as does a local handover from a holder that had one, and a request made
    /// with [`fenced`](crate::LockRequest::fenced) (which reads the clock in the acquisition's
    /// round trip). Later calls return the same token without a round trip. A critical section
    /// that never uses the token never pays for it.
    ///
    /// ```no_run
    /// # async fn demo(locker: lockattr::Locker) -> Result<(), lockattr::Error> {
    /// let guard = locker.lock("account:7").await?;
    /// let token = guard.fencing_token().await?;
    /// // UPDATE accounts SET balance = $new, fence = $token WHERE id = 7 AND fence < $token
    /// # let _ = token;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Lost`] when the lock was lost before its token was issued (a lost lock gets no
    /// token, so nothing can be written with it); [`Error::Redis`] or
    /// [`Error::OperationTimeout`] when Redis did not answer (the lock is unaffected; call
    /// again).
    pub async fn fencing_token(&self) -> Result<u64, Error> {
        if let Some(fence) = self.hold().known_fence() {
            return Ok(fence);
        }
        let fence: BoxFuture<'_, Result<u64, Error>> =
            Box::pin(self.hold().fencing_token(&self.span));
        fence.await
    }

    /// `true` while the lock is held: it was not found lost and its deadline (see the type
    /// docs) has not passed.
    pub fn is_held(&self) -> bool {
        self.hold().is_held()
    }

    /// Resolves when the lock is lost (immediately if it already is), at the deadline at the
    /// latest: exactly when [`is_held`](Self::is_held) turns `false`. Never resolves while the
    /// lock is held, nor after it was released. The future does not borrow the guard.
    ///
    /// ```no_run
    /// # async fn demo(locker: lockattr::Locker) -> Result<(), lockattr::Error> {
    /// let guard = locker.lock("report").await?;
    /// tokio::select! {
    ///     _ = guard.lost() => eprintln!("lost the lock, stopping"),
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
    /// }
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.hold().clone().lost()
    }

    /// Sets the lease to `lease` from now (one round trip). With renewal on, later renewals
    /// keep this lease.
    ///
    /// # Errors
    /// [`Error::Lost`] when the lock is no longer ours, [`Error::Redis`] or
    /// [`Error::OperationTimeout`] when Redis failed (the lease is then unchanged),
    /// [`Error::InvalidConfig`] for a lease under 1 ms or over 366 days.
    pub async fn extend(&self, lease: Duration) -> Result<(), Error> {
        // Boxed here and in `release`: the futures below reach deep into redis-rs, and every
        // future that awaits these (the caller's) would otherwise carry their layout.
        let extend: BoxFuture<'_, Result<(), Error>> = Box::pin(self.hold().extend(lease));
        extend.await
    }

    /// Releases the lock and reports what happened.
    ///
    /// Token-safe: only a lock still owned by this guard is deleted. If another task of this
    /// process waits for the key, the lock goes to it directly instead (see the type docs).
    /// Cancellation-safe: if this future is dropped midway, the release finishes in the
    /// background.
    ///
    /// # Errors
    /// [`Error::Lost`] when the lock had been lost: its deadline passed, or Redis found it
    /// expired, deleted or owned by someone else (nothing was deleted then; another holder may
    /// have entered while this one believed it held the lock). [`Error::Redis`] or
    /// [`Error::OperationTimeout`] when Redis could not confirm the release (the lock then
    /// expires with its lease).
    pub async fn release(mut self) -> Result<(), Error> {
        match self.owned.take() {
            Some(owned) => {
                let release: BoxFuture<'static, Result<(), Error>> =
                    Box::pin(release(owned.into_hold()));
                let result = release.await;
                self.end_span(observe::release_outcome(&result));
                result
            }
            None => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Dropped (or a `release` future dropped midway): the release goes on in the
        // background.
        self.end_span("dropped");
        let Some(owned) = self.owned.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let hold = owned.into_hold();
                rt.spawn(async move {
                    let _ = release(hold).await;
                });
            }
            Err(_) => {
                tracing::warn!(
                    target: "lockattr",
                    key = %owned.hold().key,
                    "LockGuard dropped outside a Tokio runtime; the lock expires with its lease"
                );
            }
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.owned {
            Some(owned) => {
                let hold = owned.hold();
                f.debug_struct("LockGuard")
                    .field("key", &hold.key)
                    .field("fencing_token", &hold.known_fence())
                    .field("lost", &matches!(hold.phase(), Phase::Lost(_)))
                    .finish_non_exhaustive()
            }
            None => f.write_str("LockGuard(released)"),
        }
    }
}
