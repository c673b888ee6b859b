//! `LockGuard`: a held lock and its release (with in-process handoff).

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::key::RedisNames;
use crate::locker::{check_lease, millis, Locker};
use crate::observe;
use crate::queue::{Slot, Waiter};
use crate::renewal::Job;
use crate::scripts;
use crate::Error;

/// A lock held in Redis. Obtained by awaiting [`Locker::lock`](crate::Locker::lock).
///
/// **While it lives**, the lease is renewed every lease/3 (unless the request said
/// `.renew(false)`). If renewal finds the lock gone or owned by another token, if Redis stays
/// unreachable until the lease runs out, or if a fixed lease runs out, the guard turns *lost*:
/// [`is_held`](Self::is_held) returns `false`, [`lost`](Self::lost) resolves and
/// [`release`](Self::release) returns [`Error::Lost`]. A lost guard never touches the key
/// again: whoever holds it now keeps it.
///
/// **Release** it with [`release`](Self::release) to learn the outcome, or drop it: dropping
/// releases in the background at once (it needs a Tokio runtime; without one the lock expires
/// with its lease). Either way renewal stops first, so a release can never be undone by a
/// late renewal. If another task of the same process waits for the key, the lock is handed to
/// it directly instead of being released, a bounded number of times in a row so that other
/// processes are not starved. The next task starts at once: while this process holds the lock
/// nobody else can advance its fencing counter, so its token is known (this one + 1), and the
/// old lease protects it until Redis has switched the lock to its fresh token and lease. If Redis
/// refuses the switch (the lock had been lost) or does not answer, the new guard turns lost.
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    pub(crate) st: Option<Held>,
}

/// The state of a held lock.
pub(crate) struct Held {
    pub(crate) slot: Slot,
    fence: u64,
    job: Arc<Job>,
}

/// A fresh 128-bit random owner token, as 32 hex digits.
pub(crate) fn new_token() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    // Written digit by digit into a buffer: `format!` costs more than the random number.
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[usize::from((bits >> (124 - 4 * i)) as u8 & 0xf)];
    }
    String::from_utf8_lossy(&digits).into_owned()
}

impl Held {
    /// Starts holding: registers the lease upkeep (renewal every lease/3, or loss at the end of
    /// a fixed lease) with the locker's scheduler. `deadline` is when the lease runs out at the
    /// earliest, by the local clock.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        slot: Slot,
        key: Arc<str>,
        names: Arc<RedisNames>,
        token: String,
        fence: u64,
        lease: Duration,
        renew: bool,
        deadline: Instant,
    ) -> Held {
        let job = Job::new(
            slot.locker.clone(),
            key,
            names,
            token,
            lease,
            renew,
            deadline,
        );
        Held { slot, fence, job }
    }

    fn locker(&self) -> &Locker {
        &self.slot.locker
    }

    fn key(&self) -> &Arc<str> {
        &self.job.key
    }

    fn names(&self) -> &Arc<RedisNames> {
        &self.job.names
    }

    fn token(&self) -> &str {
        &self.job.token
    }

    /// Stops renewal for good; idempotent.
    fn stop_upkeep(&self) {
        self.job.cancel();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop_upkeep();
    }
}

impl LockGuard {
    fn held(&self) -> &Held {
        // `st` is only `None` inside `release`/`drop`, which consume the guard.
        self.st.as_ref().expect("LockGuard used after release")
    }

    /// The lock's key, as the caller wrote it.
    pub fn key(&self) -> &str {
        self.held().key()
    }

    /// The fencing token of this acquisition: a number that is strictly greater than the one
    /// of every earlier acquisition of the same key on this Redis, also across the expiry of the
    /// key's fencing counter and a Redis restart that lost it (see
    /// [`LockerBuilder::fence_ttl`](crate::LockerBuilder::fence_ttl)).
    ///
    /// A lock alone cannot stop a holder that was paused (GC, swap, a stopped VM) past its lease
    /// from writing after the next holder started. Pass this token along with every write to
    /// storage that remembers the highest token it has seen per resource and rejects smaller
    /// ones; then the stale writer is refused.
    pub fn fencing_token(&self) -> u64 {
        self.held().fence
    }

    /// `true` while the lock is believed held: it was not found lost and its lease (as last
    /// renewed) has not run out.
    pub fn is_held(&self) -> bool {
        let h = self.held();
        !h.job.is_lost() && Instant::now() < h.job.deadline()
    }

    /// Resolves when the lock is lost (immediately if it already is). Never resolves while the
    /// lock is held. The future does not borrow the guard.
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
        let job = self.held().job.clone();
        // Holding the job keeps it alive without the guard; a guard released without the lock
        // being lost never marks it lost, so the future then never resolves.
        async move { job.wait_lost().await }
    }

    /// Sets the lease to `lease` from now (one round trip). With renewal on, later renewals
    /// keep this lease.
    ///
    /// # Errors
    /// [`Error::Lost`] when the lock is no longer ours, [`Error::Redis`] when Redis failed (the
    /// lease is then unchanged), [`Error::InvalidConfig`] for a lease under 1 ms or over 366 days.
    pub async fn extend(&self, lease: Duration) -> Result<(), Error> {
        check_lease(lease, || "the extended lease".to_owned())?;
        let h = self.held();
        if h.job.is_lost() {
            return Err(Error::Lost {
                key: h.key().to_string(),
            });
        }
        let sent_at = Instant::now();
        let renew = scripts::renew(h.names(), h.token(), millis(lease));
        let extended: i64 = h.locker().eval("extend", &renew).await?;
        if extended == 1 {
            h.job.renewed(sent_at, lease);
            Ok(())
        } else {
            h.job
                .mark_lost("extend found the lock expired or owned by another token");
            Err(Error::Lost {
                key: h.key().to_string(),
            })
        }
    }

    /// Releases the lock and reports what happened.
    ///
    /// Token-safe: only a lock still owned by this guard is deleted. If another task of this
    /// process waits for the key, the lock goes to it directly instead (see the type docs).
    /// Cancellation-safe: if this future is dropped midway, the release finishes in the
    /// background.
    ///
    /// # Errors
    /// [`Error::Lost`] when the lock had already been lost (nothing was deleted),
    /// [`Error::Redis`] when Redis could not be reached (the lock expires with its lease).
    pub async fn release(mut self) -> Result<(), Error> {
        match self.st.take() {
            Some(held) => release_held(held).await,
            None => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(held) = self.st.take() else {
            return;
        };
        held.stop_upkeep();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = release_held(held).await;
                });
            }
            Err(_) => {
                tracing::warn!(
                    key = %held.key(),
                    "lockattr: LockGuard dropped outside a Tokio runtime; the lock expires with its lease"
                );
            }
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.st {
            Some(h) => f
                .debug_struct("LockGuard")
                .field("key", h.key())
                .field("fencing_token", &h.fence)
                .field("lost", &h.job.is_lost())
                .finish_non_exhaustive(),
            None => f.write_str("LockGuard(released)"),
        }
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("key", self.key())
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// Builds a guard for a lock just taken.
pub(crate) fn new_guard(held: Held) -> LockGuard {
    LockGuard { st: Some(held) }
}

/// The release in progress. If its future is dropped midway, `Drop` finishes the job in the
/// background: it releases every token that may own the lock (the old one, and the new one of
/// a handoff whose outcome is unknown) and passes the slot on.
struct Releasing {
    held: Option<Held>,
    waiter: Option<Waiter>,
    new_token: Option<String>,
}

async fn release_held(held: Held) -> Result<(), Error> {
    let mut r = Releasing {
        held: Some(held),
        waiter: None,
        new_token: None,
    };
    r.run().await
}

impl Releasing {
    async fn run(&mut self) -> Result<(), Error> {
        'handoff: loop {
            let Some(held) = self.held.as_mut() else {
                return Ok(());
            };
            held.stop_upkeep();
            if held.job.is_lost() {
                let key = held.key().to_string();
                self.held = None; // the slot passes on; the key is someone else's now
                return Err(Error::Lost { key });
            }
            let Some(waiter) = held.slot.next_for_handoff() else {
                break;
            };
            // Hand the lock to the next local waiter without releasing it in Redis.
            let token = new_token();
            let lease = waiter.lease;
            self.waiter = Some(waiter);
            self.new_token = Some(token.clone());
            let handoff = scripts::handoff(
                held.names(),
                held.token(),
                held.fence,
                &token,
                millis(lease),
                held.locker().inner.config.fence_ttl_ms(),
            );
            let sent_at = Instant::now();
            let old_deadline = held.job.deadline();
            let res: Result<u64, Error> = 'res: {
                if old_deadline > sent_at + EARLY_HANDOFF_MARGIN {
                    // Early handover: while this process holds the lock nobody else can bump
                    // its fencing counter, so the next token is ours + 1; the old lease
                    // protects the new holder until Redis confirms. Once the command is queued
                    // on the connection, nothing the new holder sends can overtake it.
                    let locker = held.locker().clone();
                    let mut reply = pin!(locker.query::<u64>("handoff", &handoff.cmd));
                    let first = poll_fn(|cx| Poll::Ready(reply.as_mut().poll(cx))).await;
                    if let Poll::Ready(reply) = first {
                        break 'res reply;
                    }
                    let (Some(waiter), Some(token)) = (self.waiter.take(), self.new_token.take())
                    else {
                        return Ok(());
                    };
                    let expected = held.fence + 1;
                    let old_token = held.token().to_owned();
                    let (job, back) = hand_over(held, waiter, token, expected, old_deadline);
                    // From here the new holder owns the lock. If this future is dropped before
                    // the reply, nobody confirms: a renewing holder's next renewal settles it
                    // (it fails if the handover did), a fixed lease is declared lost at the old
                    // deadline. Both err on the safe side.
                    self.held = None;
                    let confirmed =
                        confirm_handoff(&job, &old_token, expected, reply.await, sent_at);
                    match back {
                        None => return confirmed,
                        // The waiter left meanwhile: the lock is ours again; go round.
                        Some(mut guard) => {
                            self.held = guard.st.take();
                            continue 'handoff;
                        }
                    }
                }
                held.locker().eval("handoff", &handoff).await
            };
            match res {
                Ok(fence) if fence > 0 => {
                    self.new_token = None;
                    let Some(waiter) = self.waiter.take() else {
                        return Ok(());
                    };
                    let (_, back) = hand_over(held, waiter, token, fence, sent_at + lease);
                    self.held = None;
                    match back {
                        None => return Ok(()),
                        // The waiter left meanwhile: the lock is ours again; go round.
                        Some(mut guard) => self.held = guard.st.take(),
                    }
                }
                Ok(_) => {
                    self.new_token = None;
                    held.job.mark_lost("found expired or taken at release");
                    let key = held.key().to_string();
                    let slot = held.slot.take();
                    self.held = None;
                    if let Some(w) = self.waiter.take() {
                        if let Err(slot) = w.give_slot(slot) {
                            drop(slot);
                        }
                    }
                    return Err(Error::Lost { key });
                }
                // The outcome is unknown; `Drop` cleans up both tokens in the background.
                Err(e) => return Err(e),
            }
        }
        let Some(held) = self.held.as_mut() else {
            return Ok(());
        };
        let released = held
            .locker()
            .release_token(held.names(), held.token())
            .await;
        let key = held.key().clone();
        if matches!(released, Ok(n) if n > 1) {
            // Other processes wait for this lock: let them go first.
            held.slot.yield_first = true;
        }
        self.held = None; // passes the slot to the next waiter, which contends in Redis
        match released {
            Ok(n) if n >= 1 => {
                observe::released(&key);
                Ok(())
            }
            Ok(_) => {
                observe::lost(&key, "found expired or taken at release");
                Err(Error::Lost {
                    key: key.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// Starts the next holder's lock (already switched, or being switched, to `token` in Redis) and
/// offers it to `waiter`. Returns its upkeep job, and the guard back if the waiter has left.
fn hand_over(
    held: &mut Held,
    waiter: Waiter,
    token: String,
    fence: u64,
    deadline: Instant,
) -> (Arc<Job>, Option<LockGuard>) {
    let next = Held::start(
        held.slot.take(),
        held.key().clone(),
        held.names().clone(),
        token,
        fence,
        waiter.lease,
        waiter.renew,
        deadline,
    );
    let job = next.job.clone();
    observe::handed_off(held.key(), fence);
    (job, waiter.give_lock(new_guard(next)).err())
}

/// How much lease the old holder must have left for an early handover: enough for the
/// handoff command to reach Redis before the old lease could run out.
const EARLY_HANDOFF_MARGIN: Duration = Duration::from_millis(20);

/// Settles an early handover once Redis answered: confirms the new holder's lease, or marks it
/// lost (its critical section is then cancelled) and cleans up whatever token may own the key.
fn confirm_handoff(
    job: &Arc<Job>,
    old_token: &str,
    expected: u64,
    reply: Result<u64, Error>,
    sent_at: Instant,
) -> Result<(), Error> {
    let lost = || Error::Lost {
        key: job.key.to_string(),
    };
    match reply {
        Ok(fence) if fence == expected => {
            let lease = job.lease();
            job.renewed(sent_at, lease);
            Ok(())
        }
        Ok(0) => {
            job.mark_lost("the lock expired or was taken before it could be handed over");
            Err(lost())
        }
        other => {
            // A fencing token other than predicted (the counter was changed outside lockattr)
            // or no answer: the new holder must not trust the lock.
            job.mark_lost("the handover could not be confirmed");
            job.locker.spawn_release(
                job.names.clone(),
                vec![job.token.clone(), old_token.to_owned()],
                || {},
            );
            match other {
                Err(e) => Err(e),
                _ => Ok(()),
            }
        }
    }
}

impl Drop for Releasing {
    fn drop(&mut self) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        held.stop_upkeep();
        let waiter = self.waiter.take();
        let mut tokens: Vec<String> = self.new_token.take().into_iter().collect();
        tokens.push(held.token().to_owned());
        let locker = held.locker().clone();
        let names = held.names().clone();
        let slot = held.slot.take();
        drop(held);
        // Pass the slot on only once the key is free, so the next contender finds it so.
        locker.spawn_release(names, tokens, move || match waiter {
            Some(w) => {
                if let Err(slot) = w.give_slot(slot) {
                    drop(slot);
                }
            }
            None => drop(slot),
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_32_random_hex_digits() {
        let a = super::new_token();
        let b = super::new_token();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
