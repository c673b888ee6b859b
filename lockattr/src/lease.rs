//! The lease clock: until when a held lock is ours, by the local clock, and nothing else.
//!
//! Every held lock has exactly one [`LeaseClock`]. Its deadline is derived from the *send
//! time* of the command that set the lease in Redis (acquire, grant, handover, renewal,
//! extension), never from when the reply arrived:
//!
//! ```text
//! deadline = sent_at + lease - margin(lease)
//! ```
//!
//! Why that deadline is safe: Redis runs the command after it was sent, so the expiry it sets
//! is at least `sent_at + lease` in real time (Redis measures the lease from when it runs the
//! command). The lock is therefore ours at least until `sent_at + lease`, unless someone deletes
//! it by hand or Redis loses it (restart, failover), which no clock can see. The margin is the
//! time a cancelled critical section gets to actually stop (its next `.await`, a busy executor,
//! the timer's 1 ms resolution) before the lease can run out in Redis, and it absorbs a small
//! difference between the two clocks' rates (both are monotonic here; Redis expires keys by its
//! own wall clock, see the crate docs).
//!
//! The deadline moves later only when Redis confirms a lease-setting command, and only to what
//! that command set: a confirmation of an older command than the one that set the current
//! deadline is ignored (commands on one connection run in the order they were sent, so the
//! newest sent is the one in force). It moves *earlier* as soon as a command that may shorten
//! the lease is sent (an `extend` to a shorter lease, a renewal for a next holder with a shorter
//! one): Redis may apply it before its answer arrives, so until a later command is confirmed
//! the deadline is the earliest that any command sent since the one in force could set. Once
//! the deadline has passed the lock is lost, whatever replies are still in flight: a
//! confirmation that arrives later does not bring it back, because the critical section was
//! already told to stop at that moment.
//!
//! This module is pure (no I/O, no timers): the owner of a held lock (`upkeep`) asks it what
//! the lock's state is and when it next needs attention, and the decisions are unit-tested
//! under plain instants.

use std::time::Duration;

use tokio::time::Instant;

/// The longest margin: a lock is never given up more than this before its lease ends.
pub(crate) const MAX_MARGIN: Duration = Duration::from_millis(50);

/// How long before the lease ends in Redis the holder considers the lock lost: 5 % of the
/// lease, at most [`MAX_MARGIN`] (30 ms of a 600 ms lease, 50 ms of a 30 s one).
pub(crate) fn margin(lease: Duration) -> Duration {
    (lease / 20).min(MAX_MARGIN)
}

/// The local deadline of a lease that a command sent at `sent_at` set to `lease` in Redis.
pub(crate) fn deadline(sent_at: Instant, lease: Duration) -> Instant {
    sent_at + (lease - margin(lease))
}

/// Shortest interval between two renewal attempts of one lock.
const MIN_RENEW_STEP: Duration = Duration::from_millis(1);

/// Longest pause before retrying a renewal that failed (Redis unreachable).
const MAX_RETRY_STEP: Duration = Duration::from_millis(250);

/// Where a held lock stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Ours until the deadline, as far as anybody knows.
    Held,
    /// Lost, for the reason given; the critical section must stop.
    Lost(Loss),
    /// Released (or being released, or handed over) by its holder; nothing may extend it.
    Ended,
}

/// Why a lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    /// The deadline passed before a renewal was confirmed.
    Expired,
    /// Redis answered that the lock belongs to another token (or to nobody).
    NotOurs,
}

impl Loss {
    /// For logs and events.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Loss::Expired => "the lease ran out before a renewal was confirmed",
            Loss::NotOurs => "Redis found the lock expired, deleted or owned by another token",
        }
    }
}

/// Identifies one lease-setting command, in the order they were sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Sent(u64);

/// The lease of one held lock (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseClock {
    phase: Phase,
    /// The lease renewals ask for (the request's lease; `extend` changes it).
    lease: Duration,
    /// The lease the command in force set (a direct grant sets a shorter one than `lease`).
    set: Duration,
    /// What the command in force set.
    confirmed: Instant,
    /// The earliest deadline a command sent after the one in force could set, if it is earlier
    /// than `confirmed` (see the module docs).
    pending: Option<(Sent, Instant)>,
    /// The command whose confirmation set `confirmed`.
    in_force: Sent,
    /// The next command's number.
    next: u64,
}

impl LeaseClock {
    /// A lease that a command sent at `sent_at` set to `set` in Redis; renewals ask for `lease`.
    pub(crate) fn new(sent_at: Instant, set: Duration, lease: Duration) -> Self {
        LeaseClock {
            phase: Phase::Held,
            lease,
            set,
            confirmed: deadline(sent_at, set),
            pending: None,
            in_force: Sent(0),
            next: 1,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The lease renewals ask for.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    pub(crate) fn deadline(&self) -> Instant {
        match self.pending {
            Some((_, earliest)) => earliest.min(self.confirmed),
            None => self.confirmed,
        }
    }

    /// `true` while held and before the deadline.
    pub(crate) fn is_held(&self, now: Instant) -> bool {
        self.phase == Phase::Held && now < self.deadline()
    }

    /// Declares the lock lost if its deadline has passed; `true` when this call did.
    pub(crate) fn expire_if_due(&mut self, now: Instant) -> bool {
        if self.phase == Phase::Held && now >= self.deadline() {
            self.phase = Phase::Lost(Loss::Expired);
            true
        } else {
            false
        }
    }

    /// A command that sets the lease to `lease` is about to be sent at `now`; if Redis applies
    /// it, the lock is held until `deadline(now, lease)` at the earliest.
    pub(crate) fn send(&mut self, now: Instant, lease: Duration) -> Sent {
        let sent = Sent(self.next);
        self.next += 1;
        let earliest = deadline(now, lease);
        if earliest < self.deadline() {
            self.pending = Some((sent, earliest));
        }
        sent
    }

    /// Redis confirmed the command `sent` (sent at `sent_at`), which set the lease to `set`.
    /// Returns `false` when the lock was lost meanwhile (the deadline passed first): a late
    /// confirmation does not bring a lost lock back.
    pub(crate) fn confirmed(
        &mut self,
        sent: Sent,
        sent_at: Instant,
        set: Duration,
        now: Instant,
    ) -> bool {
        self.expire_if_due(now);
        if self.phase != Phase::Held {
            return false;
        }
        if sent > self.in_force {
            self.in_force = sent;
            self.set = set;
            self.confirmed = deadline(sent_at, set);
            // A shortening command sent before this one ran before it, and is overwritten.
            if self.pending.is_some_and(|(p, _)| p <= sent) {
                self.pending = None;
            }
        }
        true
    }

    /// The clock of the next holder after a handover inside this process that keeps the lock
    /// under the same token in the store: it is held until the same deadline (nothing else
    /// changed in the store), or sooner when the new holder asked for a fixed `lease` that ends
    /// first. Renewals then ask for the new holder's `lease`.
    pub(crate) fn handed_over(&self, now: Instant, lease: Duration, renew: bool) -> LeaseClock {
        let end = if renew {
            self.deadline()
        } else {
            self.deadline().min(deadline(now, lease))
        };
        LeaseClock {
            phase: Phase::Held,
            lease,
            set: self.set,
            confirmed: end,
            pending: None,
            in_force: Sent(0),
            next: 1,
        }
    }

    /// Renewals ask for `lease` from now on (`LockGuard::extend`).
    pub(crate) fn set_lease(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// Redis answered that the lock is not ours; `true` when this made it lost.
    pub(crate) fn refused(&mut self) -> bool {
        if self.phase == Phase::Held {
            self.phase = Phase::Lost(Loss::NotOurs);
            true
        } else {
            false
        }
    }

    /// The holder releases or hands over the lock: it returns `Ok` while it is still held (the
    /// clock stops; nothing may renew it after this), `Err` with the loss otherwise.
    pub(crate) fn end(&mut self, now: Instant) -> Result<(), Loss> {
        self.expire_if_due(now);
        match self.phase {
            Phase::Held => {
                self.phase = Phase::Ended;
                Ok(())
            }
            Phase::Lost(loss) => Err(loss),
            // Ended twice: the first caller did the work.
            Phase::Ended => Err(Loss::NotOurs),
        }
    }

    /// When a renewal should next be sent: a third of the lease after the command in force,
    /// but never later than halfway through what is left until the deadline (a lock can start
    /// with less than its own lease: a direct grant carries a short one), and after a failed
    /// renewal much sooner. Always before the deadline when there is time left.
    pub(crate) fn renewal_due(&self, from: Instant, after_failure: bool) -> Instant {
        let step = if after_failure {
            (self.lease / 10).min(MAX_RETRY_STEP)
        } else {
            self.lease / 3
        };
        let deadline = self.deadline();
        let half_left = (deadline.saturating_duration_since(from) / 2).max(MIN_RENEW_STEP);
        deadline.min(from + step.min(half_left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn margins() {
        assert_eq!(margin(ms(600)), ms(30));
        assert_eq!(margin(ms(30_000)), MAX_MARGIN);
        assert_eq!(margin(ms(1)), Duration::from_micros(50));
        let t = Instant::now();
        assert_eq!(deadline(t, ms(600)), t + ms(570));
    }

    #[test]
    fn the_deadline_is_measured_from_the_send_time() {
        let t0 = Instant::now();
        let c = LeaseClock::new(t0, ms(1000), ms(1000));
        assert_eq!(c.deadline(), t0 + ms(950));
        assert!(c.is_held(t0 + ms(949)));
        assert!(!c.is_held(t0 + ms(950)));
    }

    #[test]
    fn loss_is_declared_at_the_deadline_whatever_is_in_flight() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(t0, ms(600), ms(600));
        let renewal = c.send(t0 + ms(200), ms(600)); // sent, no reply yet
        assert!(!c.expire_if_due(t0 + ms(569)));
        assert!(c.expire_if_due(t0 + ms(570)));
        assert_eq!(c.phase(), Phase::Lost(Loss::Expired));
        // The reply comes in later: too late.
        assert!(!c.confirmed(renewal, t0 + ms(200), ms(600), t0 + ms(600)));
        assert_eq!(c.phase(), Phase::Lost(Loss::Expired));
        assert!(!c.expire_if_due(t0 + ms(700)), "declared once");
    }

    #[test]
    fn confirmations_move_the_deadline_to_what_the_newest_command_set() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(t0, ms(1000), ms(1000));
        let renew = c.send(t0 + ms(100), ms(1000)); // a renewal
        assert_eq!(c.deadline(), t0 + ms(950), "a renewal shortens nothing");
        let extend = c.send(t0 + ms(150), ms(200)); // a shorter extension
        assert_eq!(
            c.deadline(),
            t0 + ms(150) + ms(190),
            "earlier as soon as it is sent: Redis may apply it before it answers"
        );
        // The older renewal's confirmation arrives first: the extension sent after it may
        // still shorten the lease.
        assert!(c.confirmed(renew, t0 + ms(100), ms(1000), t0 + ms(160)));
        assert_eq!(c.deadline(), t0 + ms(340));
        assert!(c.confirmed(extend, t0 + ms(150), ms(200), t0 + ms(170)));
        assert_eq!(c.deadline(), t0 + ms(340));
        // A failed shortening command keeps its bound until a later command is confirmed.
        let failed = c.send(t0 + ms(200), ms(50));
        let _ = failed;
        assert_eq!(
            c.deadline(),
            t0 + ms(200) + ms(47) + Duration::from_micros(500)
        );
        let later = c.send(t0 + ms(210), ms(1000));
        assert!(c.confirmed(later, t0 + ms(210), ms(1000), t0 + ms(220)));
        assert_eq!(c.deadline(), t0 + ms(1160));
    }

    #[test]
    fn a_confirmation_before_the_deadline_keeps_the_lock() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(t0, ms(300), ms(300));
        let r = c.send(t0 + ms(100), ms(300));
        assert!(c.confirmed(r, t0 + ms(100), ms(300), t0 + ms(284)));
        assert_eq!(c.deadline(), t0 + ms(100) + ms(285));
        assert!(c.is_held(t0 + ms(300)));
    }

    #[test]
    fn refusal_and_end() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(t0, ms(100), ms(100));
        assert!(c.refused());
        assert!(!c.refused());
        assert_eq!(c.end(t0), Err(Loss::NotOurs));
        let mut c = LeaseClock::new(t0, ms(100), ms(100));
        assert_eq!(c.end(t0 + ms(10)), Ok(()));
        assert_eq!(c.phase(), Phase::Ended);
        assert!(!c.expire_if_due(t0 + ms(500)), "an ended lease is not lost");
        let mut c = LeaseClock::new(t0, ms(100), ms(100));
        assert_eq!(c.end(t0 + ms(95)), Err(Loss::Expired));
    }

    #[test]
    fn a_handover_keeps_the_deadline_the_store_holds() {
        let t0 = Instant::now();
        let mut old = LeaseClock::new(t0, ms(30_000), ms(30_000));
        let r = old.send(t0 + ms(100), ms(30_000));
        assert!(old.confirmed(r, t0 + ms(100), ms(30_000), t0 + ms(110)));
        let renewing = old.handed_over(t0 + ms(200), ms(150), true);
        assert_eq!(
            renewing.deadline(),
            old.deadline(),
            "never later than the store's"
        );
        assert_eq!(
            renewing.lease(),
            ms(150),
            "renewals ask for the new holder's lease"
        );
        let fixed = old.handed_over(t0 + ms(200), ms(150), false);
        assert_eq!(fixed.deadline(), deadline(t0 + ms(200), ms(150)));
        assert_eq!(
            old.handed_over(t0, ms(60_000), false).deadline(),
            old.deadline()
        );
        // The new clock's own commands are numbered from scratch.
        let mut next = renewing;
        let sent = next.send(t0 + ms(300), ms(150));
        assert_eq!(
            next.deadline(),
            deadline(t0 + ms(300), ms(150)),
            "lowered when sent"
        );
        assert!(next.confirmed(sent, t0 + ms(300), ms(150), t0 + ms(310)));
        assert_eq!(next.deadline(), deadline(t0 + ms(300), ms(150)));
    }

    #[test]
    fn renewals_are_due_before_the_deadline() {
        let t0 = Instant::now();
        let c = LeaseClock::new(t0, ms(3000), ms(3000));
        assert_eq!(c.renewal_due(t0, false), t0 + ms(1000));
        assert_eq!(c.renewal_due(t0, true), t0 + ms(250));
        // A direct grant: 2 s set, 30 s asked for: renew by half of what is left.
        let g = LeaseClock::new(t0, ms(2000), ms(30_000));
        assert_eq!(g.renewal_due(t0, false), t0 + ms(975));
        // Almost nothing left: still before the deadline.
        let due = g.renewal_due(t0 + ms(1899), false);
        assert!(due < g.deadline(), "{due:?}");
        assert_eq!(g.renewal_due(t0 + ms(5000), false), g.deadline());
    }
}
