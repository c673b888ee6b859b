//! One acquire attempt and what its reply means.
//!
//! [`decide`] is the one place that turns an attempt's reply into the next step; the fast path
//! and the waiting loop (`wait`) both call it, and it is unit-tested without a store. A token
//! whose fate is not settled is owned by an [`InFlight`] or a [`Registration`], whose `Drop`
//! withdraws it from the store in the background, so no attempt, however it ends (a reply too
//! late to use, an error, the future dropped), leaves a lock or a registration behind.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::key::RedisNames;
use crate::lease;
use crate::protocol::{AttemptReply, Token};
use crate::store::Store;
use crate::Error;

/// Which kind of attempt was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A bare `SET NX PX`: takes a free lock (its fencing token issued later, when asked for),
    /// learns nothing about a busy one.
    Plain,
    /// The acquire script: takes, finds a grant, or marks and registers.
    Scripted,
}

/// Whose token holds the lock after a successful attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// The attempt's own token.
    Attempt,
    /// The token the contender registered with earlier (a grant found by the attempt).
    Registration,
}

/// The next step after an attempt.
#[derive(Debug)]
pub(crate) enum Decision {
    /// The lock is ours under `via`'s token, with this fencing token (`None`: taken by the fast
    /// path, issued when first asked for); the attempt (sent at the time the caller measured)
    /// set the lease to the request's lease.
    Hold { via: Via, fence: Option<u64> },
    /// Try again at once: the reply came too late to be used safely, or the connection broke
    /// under the attempt (once).
    Retry,
    /// Busy after the plain attempt: go on to the script, which marks the lock and registers.
    Mark,
    /// Busy: sleep until an announcement, or at the latest `fallback`.
    Sleep {
        fallback: Duration,
        /// This attempt's token is now the registered waiter.
        registered: bool,
    },
    /// The wait is over.
    TimedOut,
    /// A store failure that retrying cannot fix (or a second one in a row).
    Fail(Error),
}

/// What [`decide`] needs to know besides the reply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context {
    pub(crate) kind: Kind,
    pub(crate) sent_at: Instant,
    pub(crate) now: Instant,
    pub(crate) lease: Duration,
    /// The request's wait has run out.
    pub(crate) wait_over: bool,
    /// The contender has a registration the attempt may have found granted.
    pub(crate) registered: bool,
    /// A broken connection was already retried once.
    pub(crate) retried: bool,
}

/// Fallback timer when the holder has no known TTL (it vanished between two steps, or pub/sub is
/// not confirmed): look again soon.
const UNKNOWN_TTL_RETRY: Duration = Duration::from_millis(100);

/// Fallback timer for a key holding a value lockattr did not write: nobody announces its end.
const FOREIGN_POLL: Duration = Duration::from_millis(250);

/// What an attempt's reply means (see the module docs).
pub(crate) fn decide(reply: Result<AttemptReply, Error>, cx: Context) -> Decision {
    let reply = match reply {
        Ok(reply) => reply,
        // The connection broke under this attempt (a reconnect is under way): try once more
        // with a fresh token, within the same operation deadline.
        Err(e) if e.is_connection_dropped() && !cx.retried => return Decision::Retry,
        Err(e) => return Decision::Fail(e),
    };
    let in_time = cx.now < lease::deadline(cx.sent_at, cx.lease);
    match reply {
        AttemptReply::Taken { fence } if in_time => Decision::Hold {
            via: Via::Attempt,
            fence,
        },
        AttemptReply::Granted { fence } if in_time => {
            if cx.registered {
                Decision::Hold {
                    via: Via::Registration,
                    fence: Some(fence),
                }
            } else {
                Decision::Fail(Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "the acquire script reported a grant to a registration this contender never made",
                ))))
            }
        }
        // Taken or granted, but the answer came so late that the lease may have run out
        // already: never use such a lock (its token is withdrawn); try again.
        AttemptReply::Taken { .. } | AttemptReply::Granted { .. } => {
            if cx.wait_over {
                Decision::TimedOut
            } else {
                Decision::Retry
            }
        }
        AttemptReply::Busy { .. } if cx.wait_over => Decision::TimedOut,
        AttemptReply::Busy { .. } if cx.kind == Kind::Plain => Decision::Mark,
        AttemptReply::Busy {
            holder_ttl,
            registered,
            foreign,
        } => Decision::Sleep {
            fallback: match (holder_ttl, foreign) {
                (Some(ttl), false) => ttl + Duration::from_millis(1),
                (Some(ttl), true) => (ttl + Duration::from_millis(1)).min(FOREIGN_POLL),
                (None, false) => UNKNOWN_TTL_RETRY,
                (None, true) => FOREIGN_POLL,
            },
            registered,
        },
    }
}

/// A token sent with an attempt whose outcome is not settled. Dropped while it still owns the
/// token (the attempt's answer came too late, failed, or was never read), it withdraws the
/// token in the background: the attempt may have taken the lock, or registered.
///
/// It borrows the store and the names from the contender, which outlives it: an uncontended
/// acquisition then touches no shared reference count for it (the store's is shared by every
/// task of the `Locker`); only a withdrawal clones them.
pub(crate) struct InFlight<'a> {
    store: &'a Store,
    names: &'a Arc<RedisNames>,
    token: Option<Token>,
}

impl<'a> InFlight<'a> {
    pub(crate) fn new(store: &'a Store, names: &'a Arc<RedisNames>) -> Self {
        InFlight {
            store,
            names,
            token: Some(crate::protocol::new_token()),
        }
    }

    pub(crate) fn token(&self) -> &str {
        self.token.as_deref().unwrap_or_default()
    }

    /// The attempt's outcome is settled and its token is the caller's now (it holds the lock,
    /// or became the registration).
    pub(crate) fn keep(mut self) -> Token {
        self.token.take().unwrap_or_default()
    }

    /// The attempt's outcome is settled and its token got nothing.
    pub(crate) fn forget(mut self) {
        self.token = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.store.spawn_withdraw(self.names.clone(), token);
        }
    }
}

/// The contender's registration for a direct grant: the token it registered with, and when the
/// attempt that registered it was sent (a grant's lease runs from later than that). Dropped
/// while registered, it withdraws in the background (if it was granted the lock meanwhile, the
/// lock is released).
pub(crate) struct Registration<'a> {
    flight: InFlight<'a>,
    pub(crate) sent_at: Instant,
}

impl<'a> Registration<'a> {
    pub(crate) fn new(flight: InFlight<'a>, sent_at: Instant) -> Self {
        Registration { flight, sent_at }
    }

    pub(crate) fn token(&self) -> &str {
        self.flight.token()
    }

    /// Granted and taken: the token is the holder's now.
    pub(crate) fn keep(self) -> Token {
        self.flight.keep()
    }

    /// Gone with the value it was on (the lock was taken by this contender's new token, or the
    /// registration was replaced).
    pub(crate) fn forget(self) {
        self.flight.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(kind: Kind) -> Context {
        let now = Instant::now();
        Context {
            kind,
            sent_at: now,
            now: now + Duration::from_millis(1),
            lease: Duration::from_secs(1),
            wait_over: false,
            registered: false,
            retried: false,
        }
    }

    fn busy(ttl: Option<u64>, registered: bool, foreign: bool) -> AttemptReply {
        AttemptReply::Busy {
            holder_ttl: ttl.map(Duration::from_millis),
            registered,
            foreign,
        }
    }

    #[test]
    fn taken_in_time_is_held_and_late_is_retried() {
        let d = decide(Ok(AttemptReply::Taken { fence: Some(5) }), cx(Kind::Plain));
        assert!(matches!(
            d,
            Decision::Hold {
                via: Via::Attempt,
                fence: Some(5)
            }
        ));
        let mut late = cx(Kind::Plain);
        late.now = late.sent_at + Duration::from_millis(950); // the deadline (1 s - 50 ms)
        assert!(matches!(
            decide(Ok(AttemptReply::Taken { fence: Some(5) }), late),
            Decision::Retry
        ));
        late.wait_over = true;
        assert!(matches!(
            decide(Ok(AttemptReply::Taken { fence: Some(5) }), late),
            Decision::TimedOut
        ));
    }

    #[test]
    fn grants_need_a_registration() {
        let mut c = cx(Kind::Scripted);
        assert!(matches!(
            decide(Ok(AttemptReply::Granted { fence: 9 }), c),
            Decision::Fail(_)
        ));
        c.registered = true;
        assert!(matches!(
            decide(Ok(AttemptReply::Granted { fence: 9 }), c),
            Decision::Hold {
                via: Via::Registration,
                fence: Some(9)
            }
        ));
    }

    #[test]
    fn busy_plain_goes_on_to_mark_and_busy_scripted_sleeps() {
        assert!(matches!(
            decide(Ok(busy(None, false, false)), cx(Kind::Plain)),
            Decision::Mark
        ));
        let d = decide(Ok(busy(Some(1500), true, false)), cx(Kind::Scripted));
        assert!(
            matches!(d, Decision::Sleep { fallback, registered: true } if fallback == Duration::from_millis(1501))
        );
        let d = decide(Ok(busy(None, false, false)), cx(Kind::Scripted));
        assert!(matches!(d, Decision::Sleep { fallback, .. } if fallback == UNKNOWN_TTL_RETRY));
        let mut over = cx(Kind::Plain);
        over.wait_over = true;
        assert!(matches!(
            decide(Ok(busy(None, false, false)), over),
            Decision::TimedOut
        ));
    }

    #[test]
    fn foreign_values_are_polled() {
        let d = decide(Ok(busy(None, false, true)), cx(Kind::Scripted));
        assert!(matches!(d, Decision::Sleep { fallback, .. } if fallback == FOREIGN_POLL));
        let d = decide(Ok(busy(Some(60_000), false, true)), cx(Kind::Scripted));
        assert!(matches!(d, Decision::Sleep { fallback, .. } if fallback == FOREIGN_POLL));
    }

    #[test]
    fn a_broken_connection_is_retried_once_and_a_timeout_never() {
        let dropped = || {
            Err(Error::Redis(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))))
        };
        assert!(matches!(
            decide(dropped(), cx(Kind::Plain)),
            Decision::Retry
        ));
        let mut again = cx(Kind::Plain);
        again.retried = true;
        assert!(matches!(
            decide(dropped(), again),
            Decision::Fail(Error::Redis(_))
        ));
        let timeout = Err(Error::OperationTimeout {
            operation: "acquire",
            after: Duration::from_secs(2),
        });
        assert!(matches!(
            decide(timeout, cx(Kind::Plain)),
            Decision::Fail(Error::OperationTimeout { .. })
        ));
    }
}
