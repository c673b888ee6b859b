//! Contending for a lock in the store: the uncontended fast path, and the waiting loop.
//!
//! The task that owns the key's local slot (see `queue`) is the only one of its process that
//! talks to the store for that key. Its first attempt is the plain one (a bare `SET NX PX`)
//! when nobody of this process waits with it; everything after that is the loop of [`Step`]s:
//!
//! ```text
//! Attempt(Plain) --busy--> Attempt(Scripted) --busy--> Subscribe --> Attempt(Scripted)
//!        ^                        ^                                      |
//!        |                        +----- granted elsewhere / timer ------+--busy--> Sleep
//!        +------------------ "released" announcement -------------------------------+
//! ```
//!
//! * The scripted attempt marks the busy lock (so its release is announced) and registers this
//!   contender for a direct grant, in the same step that found it busy.
//! * After subscribing it tries again at once: a release published before the subscription was
//!   confirmed would otherwise be missed.
//! * It sleeps until an announcement, or at the latest the holder's remaining lease (a crashed
//!   holder's lock expires without any announcement) or the end of the wait.
//! * A grant to its registration makes it the holder without another round trip.
//!
//! Every reply goes through [`decide`]. Commands per acquisition do
//! not depend on how many tasks wait: they wait in the local queue.
//!
//! **Bounds.** Each store call has the operation timeout as its budget; a reply renews it, and
//! the retry after a broken connection shares the budget of the call it retries, so an acquire
//! fails with a store error within one operation timeout of its last reply.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::acquire::{decide, Context, Decision, InFlight, Kind, Registration, Via};
use crate::core::Core;
use crate::key::RedisNames;
use crate::lease::{self, LeaseClock};
use crate::observe;
use crate::protocol::{grant_lease, Announcement, Token};
use crate::store::AttemptKind;
use crate::upkeep::{HeldSlot, Hold, Owned, Start};
use crate::Error;

/// The fixed facts of one acquisition.
pub(crate) struct Request {
    pub(crate) core: Arc<Core>,
    pub(crate) key: Arc<str>,
    pub(crate) names: Arc<RedisNames>,
    pub(crate) lease: Duration,
    pub(crate) renew: bool,
    /// Issue the fencing token with a plain attempt (`LockRequest::fenced`).
    pub(crate) fenced: bool,
    pub(crate) started: Instant,
    /// When the wait ends (`None`: never).
    pub(crate) deadline: Option<Instant>,
}

/// One step of the waiting loop (see the module docs).
#[derive(Clone, Copy, Debug)]
enum Step {
    Attempt(Kind),
    Subscribe,
    Sleep(Duration),
}

/// How long a waiter sleeps at most while its subscription is not confirmed (pub/sub down).
const UNCONFIRMED_POLL: Duration = Duration::from_millis(250);

impl Request {
    fn wait_over(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// `Error::Timeout` for this request, and its event.
    pub(crate) fn timeout(&self) -> Error {
        let waited = self.started.elapsed();
        observe::timed_out(&self.key, waited);
        Error::Timeout {
            key: self.key.to_string(),
            waited,
        }
    }

    /// The lock is ours under `token`: a command sent at `sent_at` set its lease to `set`.
    fn hold(
        &self,
        mut slot: HeldSlot,
        token: Token,
        fence: Option<u64>,
        sent_at: Instant,
        set: Duration,
    ) -> Owned {
        slot.taken_from_free();
        let owned = Hold::start(
            self.core.store.clone(),
            self.core.scheduler.clone(),
            slot,
            Start {
                key: self.key.clone(),
                names: self.names.clone(),
                token,
                fence,
                chain: 0,
                clock: LeaseClock::new(sent_at, set, self.lease),
                renew: self.renew,
                gate: None,
            },
        );
        observe::acquired(&self.key, self.started.elapsed(), fence);
        owned
    }

    /// Owns the slot: talk to the store until the lock is ours or the wait is over.
    pub(crate) async fn contend(&self, slot: HeldSlot) -> Result<Owned, Error> {
        let store = &self.core.store;
        let until = store.deadline();
        if slot.yield_first || slot.sub.is_some() {
            return Box::pin(self.wait(slot, Step::Attempt(Kind::Scripted), false, None)).await;
        }
        // Nobody of this process waits with this task: one plain attempt first. Only if the lock
        // is busy does the task go on to wait, in a future of its own, so that this common path
        // stays small. The store's call is boxed too: the acquire future (boxed once per call)
        // and the store's future then each stay under the allocator's small-size cache (glibc's
        // tcache ends at 1,032 bytes), where one future holding both would not; two cached
        // allocations cost less than one that is not.
        let flight = InFlight::new(store, &self.names);
        let sent_at = Instant::now();
        let attempt: Pin<Box<dyn Future<Output = _> + Send + '_>> = Box::pin(store.attempt(
            &self.names,
            flight.token(),
            self.lease,
            AttemptKind::Plain {
                fenced: self.fenced,
            },
            until,
        ));
        let reply = attempt.await;
        let now = Instant::now();
        let dropped = matches!(&reply, Err(e) if e.is_connection_dropped());
        let cx = Context {
            kind: Kind::Plain,
            sent_at,
            now,
            lease: self.lease,
            wait_over: self.wait_over(now),
            registered: false,
            retried: false,
        };
        let (next, retried, until) = match decide(reply, cx) {
            Decision::Hold { fence, .. } => {
                return Ok(self.hold(slot, flight.keep(), fence, sent_at, self.lease));
            }
            Decision::Mark => {
                flight.forget();
                (Step::Attempt(Kind::Scripted), false, None)
            }
            Decision::Retry => {
                // This token is withdrawn, in case the attempt took the lock.
                drop(flight);
                // A retry after a broken connection shares the budget of the call it retries.
                (
                    Step::Attempt(Kind::Plain),
                    dropped,
                    dropped.then_some(until),
                )
            }
            Decision::TimedOut => {
                flight.forget(); // busy: the plain attempt registered nothing
                return Err(self.timeout());
            }
            Decision::Sleep { .. } => unreachable!("a plain attempt goes on to the script"),
            Decision::Fail(e) => return Err(e.for_key(&self.key)),
        };
        Box::pin(self.wait(slot, next, retried, until)).await
    }

    /// The waiting loop (see the module docs).
    ///
    /// `budget` is the deadline of a call that broke the connection and is retried; every other
    /// attempt gets a fresh one.
    async fn wait(
        &self,
        mut slot: HeldSlot,
        mut step: Step,
        mut retried: bool,
        mut budget: Option<Instant>,
    ) -> Result<Owned, Error> {
        let store = &self.core.store;
        if std::mem::take(&mut slot.yield_first) && slot.sub.is_none() {
            // Waiters of other processes were just woken by our release; they are already on
            // their way, and this subscription takes a round trip before our first attempt.
            slot.sub = Some(store.subscribe(self.names.channel()).await?);
        }
        // With `wait_for_replicas`, nobody grants: the waiter's own acquisition waits for the
        // replicas (a zero grant lease is never granted, see `protocol`).
        let grant = if self.core.config.replicas.is_some() {
            Duration::ZERO
        } else {
            grant_lease(self.lease, self.renew)
        };
        let mut registration: Option<Registration<'_>> = None;
        loop {
            match step {
                Step::Attempt(kind) => {
                    let flight = InFlight::new(store, &self.names);
                    let attempt = match kind {
                        Kind::Plain => AttemptKind::Plain {
                            fenced: self.fenced,
                        },
                        Kind::Scripted => AttemptKind::Scripted {
                            registered: registration.as_ref().map(Registration::token),
                            grant_lease: grant,
                        },
                    };
                    let until = budget.take().unwrap_or_else(|| store.deadline());
                    let sent_at = Instant::now();
                    let reply = store
                        .attempt(&self.names, flight.token(), self.lease, attempt, until)
                        .await;
                    if reply.is_ok() {
                        retried = false; // one retry per broken connection, not per acquire
                    }
                    let now = Instant::now();
                    let cx = Context {
                        kind,
                        sent_at,
                        now,
                        lease: self.lease,
                        wait_over: self.wait_over(now),
                        registered: registration.is_some(),
                        retried,
                    };
                    let dropped = matches!(&reply, Err(e) if e.is_connection_dropped());
                    match decide(reply, cx) {
                        Decision::Hold { via, fence } => {
                            let token = match (via, registration.take()) {
                                (Via::Attempt, old) => {
                                    // Our registration was on the value that just went away.
                                    if let Some(old) = old {
                                        old.forget();
                                    }
                                    flight.keep()
                                }
                                (Via::Registration, Some(r)) => {
                                    flight.forget();
                                    r.keep()
                                }
                                (Via::Registration, None) => {
                                    unreachable!("decided only with a registration")
                                }
                            };
                            return Ok(self.hold(slot, token, fence, sent_at, self.lease));
                        }
                        Decision::Retry => {
                            // `flight` withdraws this token, in case the attempt took the lock.
                            // A retry after a broken connection shares this call's budget.
                            retried |= dropped;
                            budget = dropped.then_some(until);
                        }
                        Decision::Mark => {
                            flight.forget();
                            step = Step::Attempt(Kind::Scripted);
                        }
                        Decision::Sleep {
                            fallback,
                            registered,
                        } => {
                            if registered {
                                // A registration of ours that this one replaced was stale and
                                // is gone.
                                if let Some(old) = registration.take() {
                                    old.forget();
                                }
                                registration = Some(Registration::new(flight, sent_at));
                            } else {
                                flight.forget();
                            }
                            step = if slot.sub.is_some() {
                                Step::Sleep(fallback)
                            } else {
                                Step::Subscribe
                            };
                        }
                        Decision::TimedOut => {
                            // A late reply's token is withdrawn by `flight`, a registration by
                            // `registration`; a busy plain attempt got nothing.
                            if kind == Kind::Plain {
                                flight.forget();
                            }
                            return Err(self.timeout());
                        }
                        Decision::Fail(e) => return Err(e.for_key(&self.key)),
                    }
                }
                Step::Subscribe => {
                    slot.sub = Some(store.subscribe(self.names.channel()).await?);
                    step = Step::Attempt(Kind::Scripted);
                }
                Step::Sleep(fallback) => {
                    let now = Instant::now();
                    let remaining = match self.deadline {
                        Some(d) if d <= now => return Err(self.timeout()),
                        Some(d) => d - now,
                        None => Duration::MAX,
                    };
                    let Some(sub) = slot.sub.as_ref() else {
                        step = Step::Subscribe;
                        continue;
                    };
                    let fallback = if sub.confirmed {
                        fallback
                    } else {
                        fallback.min(UNCONFIRMED_POLL)
                    };
                    tokio::select! {
                        () = sub.notified() => {}
                        () = tokio::time::sleep(fallback.min(remaining)) => {}
                    }
                    step = match sub.take_announcement() {
                        Some(Announcement::Granted { token, fence })
                            if registration.as_ref().is_some_and(|r| r.token() == token) =>
                        {
                            // Granted to us in the release itself. Its lease runs from after our
                            // registering attempt was sent; if that leaves too little of it, the
                            // next attempt finds the grant and renews it instead.
                            if let Some(r) = registration.take() {
                                if Instant::now() < lease::deadline(r.sent_at, grant) {
                                    let sent_at = r.sent_at;
                                    return Ok(self.hold(
                                        slot,
                                        r.keep(),
                                        Some(fence),
                                        sent_at,
                                        grant,
                                    ));
                                }
                                registration = Some(r);
                            }
                            Step::Attempt(Kind::Scripted)
                        }
                        // Released: the lock is most likely free, so the next attempt is the
                        // cheaper plain one (it goes on to the script if it loses the race).
                        Some(Announcement::Released) => Step::Attempt(Kind::Plain),
                        // Granted to another process, or no announcement (timer, reconnect):
                        // the script finds out, and marks and registers if the lock is busy.
                        _ => Step::Attempt(Kind::Scripted),
                    };
                }
            }
        }
    }
}
