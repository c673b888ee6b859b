//! `LockRequest`: waiting for a lock, without spinning.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::guard::{new_guard, new_token, Held, LockGuard};
use crate::key::{LockKey, RedisNames};
use crate::locker::{check_lease, millis, Locker};
use crate::observe;
use crate::pubsub::Announcement;
use crate::queue::{enter, Baton, Entry, Slot};
use crate::scripts;
use crate::Error;

/// A request for a lock, created by [`Locker::lock`]. Configure it, then `.await` it for a
/// [`LockGuard`] or [`run`](Self::run) a future under it.
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
/// println!("fencing token {}", guard.fencing_token());
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
/// announced or the holder's remaining TTL (or the remaining wait) runs out. A release that
/// grants the lock to this task's registration hands it over in the announcement itself. No
/// polling loop: the commands per acquisition do not grow with the number of waiters.
///
/// **Cancellation.** Dropping the future at any point leaves nothing behind: its queue entry is
/// removed, and its registration, or a lock that Redis granted just as the future was dropped,
/// is withdrawn in the background.
#[must_use = "a lock request does nothing until it is awaited"]
pub struct LockRequest {
    locker: Locker,
    key: Result<LockKey, Error>,
    wait: Option<Duration>,
    lease: Option<Duration>,
    renew: bool,
}

impl fmt::Debug for LockRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockRequest")
            .field("key", &self.key.as_ref().map(|k| &k.display))
            .field("wait", &self.wait)
            .field("lease", &self.lease)
            .field("renew", &self.renew)
            .finish()
    }
}

impl LockRequest {
    pub(crate) fn new(locker: Locker, key: Result<LockKey, Error>) -> Self {
        LockRequest {
            locker,
            key,
            wait: None,
            lease: None,
            renew: true,
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
    /// request fails with [`Error::InvalidConfig`]).
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

    /// Takes the lock, runs `fut` while holding it, releases it, and returns `fut`'s output.
    ///
    /// If the lock is lost while `fut` runs, `fut` is dropped at its next `.await` (so a
    /// database transaction in it rolls back) and the result is [`Error::Lost`]. Inside `fut`,
    /// [`fencing_token()`](crate::fencing_token) returns this acquisition's fencing token, and a
    /// nested `run` (or `#[distributed_lock]` call) for the same key on the same locker in the
    /// same task enters at once instead of deadlocking.
    ///
    /// ```no_run
    /// # async fn demo(locker: lockattr::Locker) -> Result<(), lockattr::Error> {
    /// let total = locker
    ///     .lock("stock:42")
    ///     .run(async {
    ///         let token = lockattr::fencing_token().unwrap();
    ///         // read, check, write with `token` ...
    ///         token
    ///     })
    ///     .await?;
    /// # let _ = total;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::InvalidKey`], [`Error::Redis`] before `fut` starts (it then
    /// never runs), [`Error::Lost`] when the lock was lost while it ran.
    pub async fn run<F: Future>(self, fut: F) -> Result<F::Output, Error> {
        crate::context::run(self, fut).await
    }

    pub(crate) fn locker(&self) -> &Locker {
        &self.locker
    }

    pub(crate) fn key(&self) -> Result<&LockKey, &Error> {
        self.key.as_ref()
    }

    pub(crate) async fn acquire(self) -> Result<LockGuard, Error> {
        let LockRequest {
            locker,
            key,
            wait,
            lease,
            renew,
        } = self;
        let key = key?;
        let config = &locker.inner.config;
        let wait = wait.unwrap_or(config.default_wait);
        let lease = lease.unwrap_or(config.default_lease);
        check_lease(lease, || format!("the lease for `{}`", key.display))?;
        let started = Instant::now();
        let attempt = Attempt {
            names: Arc::new(locker.names(&key)),
            key: Arc::from(key.display.as_str()),
            locker,
            lease,
            renew,
            started,
            deadline: started.checked_add(wait),
        };
        let entry = enter(
            &attempt.locker,
            attempt.names.lock(),
            !wait.is_zero(),
            lease,
            renew,
        );
        let slot = match entry {
            Entry::Slot(slot) => slot,
            Entry::Busy => return Err(attempt.timeout()),
            Entry::Queued(mut ticket) => {
                let Some(rx) = ticket.rx.as_mut() else {
                    return Err(attempt.timeout());
                };
                let baton = match attempt.deadline {
                    Some(d) => tokio::time::timeout_at(d, rx).await,
                    None => Ok(rx.await),
                };
                match baton {
                    Ok(Ok(Baton::Held(guard))) => {
                        observe::acquired(&attempt.key, started.elapsed(), guard.fencing_token());
                        return Ok(guard);
                    }
                    Ok(Ok(Baton::Contend(slot))) => slot,
                    // The sender is never dropped without sending; treat it as a timeout.
                    Ok(Err(_)) | Err(_) => return Err(attempt.timeout()),
                }
            }
        };
        attempt.contend(slot).await
    }
}

impl IntoFuture for LockRequest {
    type Output = Result<LockGuard, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<LockGuard, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.acquire())
    }
}

struct Attempt {
    locker: Locker,
    key: Arc<str>,
    names: Arc<RedisNames>,
    lease: Duration,
    renew: bool,
    started: Instant,
    deadline: Option<Instant>,
}

/// A token sent with an acquire whose answer has not arrived. If the attempt is dropped (or
/// Redis fails) before the answer, the lock may have been granted to it: release it in the
/// background.
struct InFlight<'a> {
    attempt: &'a Attempt,
    token: Option<String>,
}

/// A busy answer that says nothing about the holder.
const BUSY: scripts::Acquired = scripts::Acquired::Busy {
    holder_ttl: None,
    registered: false,
};

/// This contender's registration for a direct grant (see `scripts`): the token it registered
/// with, and when the attempt that registered it was sent (the grant's lease runs from later
/// than that). Dropped while still registered, it withdraws in the background.
struct Registration<'a> {
    attempt: &'a Attempt,
    token: String,
    sent_at: Instant,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let token = std::mem::take(&mut self.token);
        if !token.is_empty() {
            let attempt = self.attempt;
            attempt.locker.spawn_withdraw(attempt.names.clone(), token);
        }
    }
}

impl Registration<'_> {
    /// The registration is used up (granted and taken, or gone with the holder it was on).
    fn consume(mut self) -> String {
        std::mem::take(&mut self.token)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        // The attempt may have taken the lock, or registered its token as a waiter.
        let attempt = self.attempt;
        attempt.locker.spawn_withdraw(attempt.names.clone(), token);
    }
}

/// How much of a granted lease must be left for the grant to be used as announced.
const GRANT_MARGIN: Duration = Duration::from_millis(20);

/// The longest lease a direct grant gives a waiter that renews its lease (it renews to its own
/// lease as soon as it holds the lock). It bounds how long a waiter that died can block a lock
/// it was granted, and half of it is how long a registration stays good for a grant.
const GRANT_LEASE_CAP: Duration = Duration::from_secs(2);

impl Attempt {
    /// The lease a direct grant gives this request: its own, capped at [`GRANT_LEASE_CAP`]
    /// when it renews (a fixed lease is granted whole: it cannot be renewed after the grant).
    fn grant_lease(&self) -> Duration {
        if self.renew {
            self.lease.min(GRANT_LEASE_CAP)
        } else {
            self.lease
        }
    }

    /// The lock is ours under `token` until `lease_end` at the earliest: start holding it.
    fn hold(&self, mut slot: Slot, token: String, fence: u64, lease_end: Instant) -> LockGuard {
        slot.sub = None;
        slot.taken_from_free();
        let held = Held::start(
            slot,
            self.key.clone(),
            self.names.clone(),
            token,
            fence,
            self.lease,
            self.renew,
            lease_end,
        );
        observe::acquired(&self.key, self.started.elapsed(), fence);
        new_guard(held)
    }

    /// One [`scripts::try_plain`] round trip; when it had to create the fencing counter, a
    /// second one starts the counter from Redis's clock before the lock is used.
    async fn try_plain(
        &self,
        token: &str,
        lease_ms: u64,
        counter_ttl: u64,
    ) -> Result<scripts::Acquired, Error> {
        let pipe = scripts::try_plain(&self.names, token, lease_ms);
        let (taken, fence): (Option<redis::Value>, u64) =
            self.locker.query_pipe("acquire", &pipe).await?;
        if taken.is_none() {
            return Ok(BUSY);
        }
        if fence >= scripts::SEED_FLOOR {
            return Ok(scripts::Acquired::Taken(fence));
        }
        let reseed = scripts::reseed(&self.names, token, counter_ttl);
        // Boxed: it runs once per counter lifetime, and would otherwise grow every acquire.
        let fence: u64 = Box::pin(self.locker.eval("acquire", &reseed)).await?;
        Ok(if fence > 0 {
            scripts::Acquired::Taken(fence)
        } else {
            BUSY
        })
    }

    fn timeout(&self) -> Error {
        let waited = self.started.elapsed();
        observe::timed_out(&self.key, waited);
        Error::Timeout {
            key: self.key.to_string(),
            waited,
        }
    }

    /// Owns the slot: talk to Redis until the lock is ours or the wait is over.
    async fn contend(&self, slot: Slot) -> Result<LockGuard, Error> {
        let counter_ttl = self.locker.inner.config.fence_ttl_ms();
        let lease_ms = millis(self.lease);
        let mut reconnected = false;
        if !slot.yield_first && slot.sub.is_none() {
            // Nobody of this process waits with this task: one plain attempt first (see
            // `scripts::try_plain`). Only if the lock is busy does the task go on to wait, in a
            // future of its own, so that this common path stays small.
            let mut flight = InFlight {
                attempt: self,
                token: Some(new_token()),
            };
            let token = flight.token.as_deref().unwrap_or_default();
            let sent_at = Instant::now();
            let lease_end = sent_at + self.lease;
            match self.try_plain(token, lease_ms, counter_ttl).await {
                Ok(scripts::Acquired::Taken(fence)) if Instant::now() < lease_end => {
                    let token = flight.token.take().unwrap_or_default();
                    return Ok(self.hold(slot, token, fence, lease_end));
                }
                Ok(scripts::Acquired::Busy { .. }) => {
                    flight.token = None;
                    if self.deadline.is_some_and(|d| d <= Instant::now()) {
                        return Err(self.timeout());
                    }
                }
                // Taken too late to be safe (`flight` releases it): wait as below.
                Ok(_) => {}
                // The connection broke under this attempt (a reconnect is under way): the
                // waiting loop tries once more with a fresh token.
                Err(e) if e.is_connection_dropped() => reconnected = true,
                Err(e) => return Err(e),
            }
        }
        Box::pin(self.wait_for_lock(slot, counter_ttl, lease_ms, reconnected)).await
    }

    /// The waiting part of [`contend`](Self::contend): mark, register, subscribe, sleep, retry.
    async fn wait_for_lock(
        &self,
        mut slot: Slot,
        counter_ttl: u64,
        lease_ms: u64,
        mut reconnected: bool,
    ) -> Result<LockGuard, Error> {
        if std::mem::take(&mut slot.yield_first) && slot.sub.is_none() {
            // Waiters of other processes were just woken by our release; they are already on
            // their way, and this subscription takes a round trip before our first attempt.
            slot.sub = Some(self.locker.inner.hub.subscribe(&self.names.channel()).await);
        }
        // Attempts that may have to wait use the script, which marks the holder so that its
        // release is announced, and registers this contender for a grant; the first attempt
        // after a plain release was announced is a plain one, as the lock is most likely free.
        let mut plain = false;
        let mut registration: Option<Registration<'_>> = None;
        loop {
            let mut flight = InFlight {
                attempt: self,
                token: Some(new_token()),
            };
            let token = flight.token.as_deref().unwrap_or_default();
            let try_plain = std::mem::take(&mut plain);
            let sent_at = Instant::now();
            let reply = if try_plain {
                self.try_plain(token, lease_ms, counter_ttl).await
            } else {
                let registered = registration.as_ref().map(|r| r.token.as_str());
                let call = scripts::acquire(
                    &self.names,
                    token,
                    lease_ms,
                    counter_ttl,
                    registered,
                    millis(self.grant_lease()),
                );
                match self.locker.eval::<redis::Value>("acquire", &call).await {
                    Ok(v) => scripts::Acquired::decode(&v).map_err(Error::Redis),
                    Err(e) => Err(e),
                }
            };
            let reply = match reply {
                Ok(reply) => reply,
                // The connection broke under this attempt (a reconnect is under way): try once
                // more with a fresh token; `flight` releases this one in case it was granted.
                Err(e) if e.is_connection_dropped() && !reconnected => {
                    reconnected = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let lease_end = sent_at + self.lease;
            let holder_ttl = match reply {
                scripts::Acquired::Taken(fence) if Instant::now() < lease_end => {
                    let token = flight.token.take().unwrap_or_default();
                    // Our registration was on the value that just went away.
                    if let Some(r) = registration.take() {
                        r.consume();
                    }
                    return Ok(self.hold(slot, token, fence, lease_end));
                }
                // A release granted the lock to our registration and its announcement was
                // missed; the script renewed its lease from this attempt.
                scripts::Acquired::Granted(fence) if Instant::now() < lease_end => {
                    flight.token = None; // this attempt's own token got nothing
                    let Some(r) = registration.take() else {
                        return Err(Error::Redis(redis::RedisError::from((
                            redis::ErrorKind::UnexpectedReturnType,
                            "the acquire script reported a grant that was never registered",
                        ))));
                    };
                    return Ok(self.hold(slot, r.consume(), fence, lease_end));
                }
                // Taken, but the answer came so late that the lease may have run out already:
                // never hand out such a lock (`flight` releases it); try again at once.
                scripts::Acquired::Taken(_) | scripts::Acquired::Granted(_) => {
                    drop(flight);
                    if self.deadline.is_some_and(|d| d <= Instant::now()) {
                        return Err(self.timeout());
                    }
                    continue;
                }
                // Busy after the plain attempt: go on to the script at once (unless this was the
                // request's only attempt), which marks the holder before this task waits.
                scripts::Acquired::Busy { .. }
                    if try_plain && self.deadline.is_none_or(|d| d > Instant::now()) =>
                {
                    flight.token = None;
                    continue;
                }
                scripts::Acquired::Busy {
                    holder_ttl,
                    registered,
                } => {
                    if registered {
                        // This attempt's token is now the registered waiter (a registration
                        // of ours it replaced was stale and is gone).
                        if let Some(old) = registration.take() {
                            old.consume();
                        }
                        registration = Some(Registration {
                            attempt: self,
                            token: flight.token.take().unwrap_or_default(),
                            sent_at,
                        });
                    }
                    holder_ttl
                }
            };
            flight.token = None;
            drop(flight);
            let now = Instant::now();
            let remaining = match self.deadline {
                Some(d) if d <= now => return Err(self.timeout()),
                Some(d) => d - now,
                None => Duration::MAX,
            };
            let Some(sub) = slot.sub.as_ref() else {
                // Subscribe, then try again at once: a release published before the
                // subscription was confirmed would otherwise be missed.
                slot.sub = Some(self.locker.inner.hub.subscribe(&self.names.channel()).await);
                continue;
            };
            // Fallback timer: the holder's remaining TTL (a crashed holder's lock expires
            // without any announcement), shorter when pub/sub is not working.
            let mut fallback = match holder_ttl {
                Some(ms) if ms > 0 => Duration::from_millis(ms + 1),
                _ => Duration::from_millis(100),
            };
            if !sub.confirmed {
                fallback = fallback.min(Duration::from_millis(250));
            }
            let sleep = fallback.min(remaining);
            tokio::select! {
                () = sub.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
            match sub.take_announcement() {
                Some(Announcement::Granted { token, fence })
                    if registration.as_ref().is_some_and(|r| r.token == token) =>
                {
                    // Granted to us in the release itself. Its lease runs from after our
                    // registering attempt was sent; if that leaves too little of it, the next
                    // attempt finds the grant and renews it instead.
                    if let Some(r) = registration.take() {
                        let lease_end = r.sent_at + self.grant_lease();
                        if lease_end > Instant::now() + GRANT_MARGIN {
                            // The lease upkeep renews by half of the grant's lease, which may
                            // be shorter than ours (a short critical section ends before that).
                            return Ok(self.hold(slot, r.consume(), fence, lease_end));
                        }
                        registration = Some(r);
                    }
                }
                // Released: the lock is most likely free, so the next attempt is the cheaper
                // plain one (it goes on to the marking script if it loses the race).
                Some(Announcement::Released) => plain = true,
                // Granted to another process, or no announcement (timer, reconnect): the
                // script finds out, and marks and registers if the lock is busy.
                _ => {}
            }
        }
    }
}
