//! `LockRequest`: how long to wait, how long a lease, and running a future under the lock.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument as _;

use crate::config::check_lease;
use crate::context;
use crate::core::Core;
use crate::guard::LockGuard;
use crate::key::{LockKey, RedisNames};
use crate::observe;
use crate::queue::{Baton, Entry};
use crate::upkeep::Owned;
use crate::wait::Request;
use crate::Error;

/// A request for a lock, created by [`Locker::lock`](crate::Locker::lock). Configure it, then
/// `.await` it for a [`LockGuard`] or [`run`](Self::run) a future under it.
///
/// ```no_run
/// # async fn demo(locker: lockattr::Locker) -> Result<(), lockattr::Error> {
/// use std::time::Duration;
///
/// let guard = locker
///     .lock("invoice:7")
///     .wait(Duration::from_secs(5))   // give up after 5 s: Err(Error::Timeout)
///     .lease(Duration::from_secs(10)) // Redis TTL, renewed every 10/3 s while held
///     .await?;
/// println!("fencing token {}", guard.fencing_token().await?);
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
///
/// **Waiting.** Tasks of one process that want the same key queue locally; only the first
/// talks to Redis. Its first attempt is a plain `SET NX PX`; if the lock is busy, a script marks
/// it (so that its release is announced) and registers this task for a direct grant. It then
/// subscribes to the lock's release channel, tries again right after the subscription is
/// confirmed (so a release just before it is not missed), and sleeps until a release is
/// announced or the holder's remaining lease (or the remaining wait) runs out. A release that
/// grants the lock to this task's registration hands it over in the announcement itself. No
/// polling loop: the commands per acquisition do not grow with the number of waiters. A key
/// that holds a value lockattr did not write (an operator's `SET`) counts as busy and is never
/// written to; it is looked at again every 250 ms.
///
/// **Failures.** If Redis fails, the request fails with [`Error::Redis`] or
/// [`Error::OperationTimeout`] within one operation timeout of Redis's last answer (a broken
/// connection is retried once within that time), never with a misleading `Timeout`.
///
/// **Cancellation.** Dropping the future at any point leaves nothing behind: its queue entry is
/// removed, and its registration, or a lock that Redis granted just as the future was dropped,
/// is withdrawn in the background.
#[must_use = "a lock request does nothing until it is awaited"]
pub struct LockRequest {
    core: Arc<Core>,
    key: Result<LockKey, Error>,
    wait: Option<Duration>,
    lease: Option<Duration>,
    renew: bool,
    fenced: bool,
}

impl fmt::Debug for LockRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockRequest")
            .field("key", &self.key.as_ref().map(|k| &k.display))
            .field("wait", &self.wait)
            .field("lease", &self.lease)
            .field("renew", &self.renew)
            .field("fenced", &self.fenced)
            .finish()
    }
}

impl LockRequest {
    pub(crate) fn new(core: Arc<Core>, key: Result<LockKey, Error>) -> Self {
        LockRequest {
            core,
            key,
            wait: None,
            lease: None,
            renew: true,
            fenced: false,
        }
    }

    /// Longest time to wait for the lock (default: the locker's `default_wait`). Zero means a
    /// single attempt.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// The lock's time-to-live in Redis (default: the locker's `default_lease`): how long a
    /// crashed holder blocks others. From 1 ms to 366 days (outside that range awaiting the
    /// request fails with [`Error::InvalidConfig`]). A lease shorter than a round trip to Redis
    /// can never be used: every answer arrives after the lease could have run out, so the
    /// attempt is withdrawn and tried again until the wait ends in [`Error::Timeout`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Whether to renew the lease while the guard lives (default `true`). With `false` the
    /// lock is lost when the lease runs out, even if the guard still exists.
    pub fn renew(mut self, renew: bool) -> Self {
        self.renew = renew;
        self
    }

    /// Whether to issue the fencing token with the acquisition (default `false`); for a
    /// holder that will use it (the attribute's `fenced = true`). With `true`, an
    /// uncontended acquisition then reads Redis's clock in the same round trip as its `SET NX
    /// PX` (one more command, no more round trips), and
    /// [`LockGuard::fencing_token`](crate::LockGuard::fencing_token) answers at once. Without
    /// it (the default) such a lock has no token until its holder first asks, which then costs
    /// a round trip, and a holder that never asks pays nothing. A lock taken after waiting, by
    /// a grant or a handover has its token at once either way. The tokens are the same
    /// strictly increasing ones.
    ///
    /// ```no_run
    /// # async fn demo(locker: lockattr::Locker) -> Result<(), lockattr::Error> {
    /// let guard = locker.lock("account:7").fenced(true).await?;
    /// let token = guard.fencing_token().await?; // no round trip
    /// # let _ = token;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn fenced(mut self, fenced: bool) -> Self {
        self.fenced = fenced;
        self
    }

    /// Takes the lock, runs `fut` while holding it, releases it, and returns `fut`'s output.
    ///
    /// If the lock is lost while `fut` runs, `fut` is dropped at its next `.await` (so a
    /// database transaction in it rolls back) and the result is [`Error::Lost`]. If `fut`
    /// finished but the release then finds that the lock had been lost (its key expired,
    /// deleted or taken over while `fut` ran), the result is [`Error::Lost`] too, and `fut`'s
    /// output is dropped: the caller must not believe that `fut` ran under the lock throughout.
    /// A release that fails only because Redis is unreachable does not change the result (the
    /// lock was held, by its lease clock, until `fut` ended; it expires with its lease).
    ///
    /// Inside `fut`, [`fencing_token()`](crate::fencing_token) returns this acquisition's
    /// fencing token, and a nested `run` (or `#[distributed_lock]` call) for the same key on the
    /// same locker in the same task enters at once instead of deadlocking.
    ///
    /// ```no_run
    /// # async fn demo(locker: lockattr::Locker) -> Result<(), lockattr::Error> {
    /// let total = locker
    ///     .lock("stock:42")
    ///     .run(async {
    ///         let token = lockattr::fencing_token().await?;
    ///         // read, check, write with `token` ...
    ///         Ok::<_, lockattr::Error>(token)
    ///     })
    ///     .await??;
    /// # let _ = total;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::InvalidKey`], [`Error::InvalidConfig`], [`Error::Redis`],
    /// [`Error::OperationTimeout`] before `fut` starts (it then never runs); [`Error::Lost`]
    /// when the lock was lost while `fut` ran, or found lost when it was released.
    pub async fn run<F: Future>(self, fut: F) -> Result<F::Output, Error> {
        let locker = Arc::as_ptr(&self.core) as usize;
        let lock = match &self.key {
            Ok(key) => RedisNames::new(&self.core.config.namespace, key)
                .lock()
                .to_owned(),
            Err(_) => String::new(),
        };
        if context::holds(locker, &lock) {
            // Re-entry: this task already holds the lock; the outer `run` guards it.
            return Ok(fut.await);
        }
        let guard = self.await?;
        let lost = guard.lost();
        let out = context::scope(
            locker,
            lock,
            guard.hold().clone(),
            guard.span().clone(),
            async {
                tokio::select! {
                    biased;
                    () = lost => None,
                    out = fut => Some(out),
                }
            },
        )
        .instrument(guard.span().clone())
        .await;
        let key = guard.key().to_owned();
        match out {
            Some(out) => match guard.release().await {
                Ok(()) => Ok(out),
                Err(e @ Error::Lost { .. }) => Err(e),
                Err(e) => {
                    tracing::warn!(target: "lockattr", key, error = %e, "release after the critical section failed; the lock expires with its lease");
                    Ok(out)
                }
            },
            None => {
                let _ = guard.release().await;
                Err(Error::Lost { key })
            }
        }
    }

    pub(crate) async fn acquire(self) -> Result<LockGuard, Error> {
        let LockRequest {
            core,
            key,
            wait,
            lease,
            renew,
            fenced,
        } = self;
        let key = key?;
        let wait = wait.unwrap_or(core.config.default_wait);
        let lease = lease.unwrap_or(core.config.default_lease);
        check_lease(lease, || format!("the lease for `{}`", key.display))?;
        let started = Instant::now();
        let mut span = AcquireSpan {
            span: observe::acquire_span(&key.display, wait),
            started,
            ended: false,
        };
        let contend = Self::contend(core, &key, wait, lease, renew, fenced, started);
        let result = if span.span.is_disabled() {
            contend.await
        } else {
            contend.instrument(span.span.clone()).await
        };
        span.end(result.as_ref().map(|owned| owned.hold().known_fence()));
        // After the `lock.acquire` span: `lock.held` is its sibling, not its child.
        result.map(LockGuard::new)
    }

    /// Queues locally for `key`, then contends in the store (see [`Request`]).
    async fn contend(
        core: Arc<Core>,
        key: &LockKey,
        wait: Duration,
        lease: Duration,
        renew: bool,
        fenced: bool,
        started: Instant,
    ) -> Result<Owned, Error> {
        let req = Request {
            names: Arc::new(RedisNames::new(&core.config.namespace, key)),
            key: Arc::from(key.display.as_str()),
            core,
            lease,
            renew,
            fenced,
            started,
            deadline: started.checked_add(wait),
        };
        let entry = req
            .core
            .queues
            .enter(req.names.lock(), !wait.is_zero(), lease, renew);
        let slot = match entry {
            Entry::Slot(slot) => slot,
            Entry::Busy => return Err(req.timeout()),
            Entry::Queued(mut ticket) => {
                let Some(rx) = ticket.rx.as_mut() else {
                    return Err(req.timeout());
                };
                let baton = match req.deadline {
                    Some(d) => tokio::time::timeout_at(d, rx).await,
                    None => Ok(rx.await),
                };
                match baton {
                    Ok(Ok(Baton::Held(owned))) => {
                        observe::acquired(&req.key, started.elapsed(), owned.hold().known_fence());
                        return Ok(owned);
                    }
                    Ok(Ok(Baton::Contend(slot))) => slot,
                    // The sender is never dropped without sending; treat it as a timeout.
                    Ok(Err(_)) | Err(_) => return Err(req.timeout()),
                }
            }
        };
        req.contend(slot).await
    }
}

/// The `lock.acquire` span of an acquisition in progress; dropped before it ended (the acquire
/// future was dropped), it records the outcome `cancelled`.
struct AcquireSpan {
    span: tracing::Span,
    started: Instant,
    ended: bool,
}

impl AcquireSpan {
    fn end(&mut self, result: Result<Option<u64>, &Error>) {
        self.ended = true;
        observe::acquire_ended(&self.span, self.started, result);
    }
}

impl Drop for AcquireSpan {
    fn drop(&mut self) {
        if !self.ended && !self.span.is_disabled() {
            self.span
                .record("waited", tracing::field::debug(self.started.elapsed()));
            self.span.record("outcome", "cancelled");
        }
    }
}

impl IntoFuture for LockRequest {
    type Output = Result<LockGuard, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<LockGuard, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.acquire())
    }
}
