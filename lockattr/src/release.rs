//! Releasing a held lock: to the next local waiter by a handover, or in the store.
//!
//! ```text
//! end the hold --lost--> Err(Lost)
//!     |
//!     +--> local waiter, budget left? --yes--> tokens of this acquisition left? --yes--> the
//!     |                                              |        next holder starts at once, under
//!     |                                              |        the same token in the store
//!     |                                              +--no--> HANDOFF script --ours--> next
//!     |                                                           holder starts (its lease and
//!     |                                                           token from the reply)
//!     +--no--> RELEASE --released--> Ok, the slot passes on
//!                      +--not ours--> Err(Lost)
//! ```
//!
//! **The local handover.** Between tasks of one process the lock stays in the store under the
//! token it was taken with, and the next task starts at once. That is not a guess about the
//! store; it is the same lock:
//!
//! * *Its deadline never exceeds what the store holds for it.* Nothing changes in the store, so
//!   the store holds the lock under that token until the same expiry as before. The next holder
//!   takes over the lease clock's deadline unchanged ([`LeaseClock::handed_over`]): the one
//!   the last confirmed lease-setting command set; a renewal the previous holder still had in
//!   flight can only lengthen the lease in the store (it asks for the same lease, later). A next
//!   holder with a shorter fixed lease ends sooner, and its loss frees the key.
//! * *Its fencing token was issued by the store.* Every token the store issues is Redis's clock
//!   in microseconds times [`FENCE_SLOTS`] (100); the 99 numbers above it are the holder's,
//!   for the local handovers that follow it: the `n`-th next holder's token is the issued one
//!   plus `n`. No other holder can ever be issued one of them: every later token comes from
//!   Redis's clock read after this lock ended, which happened at least a client round trip
//!   (far more than the clock's 1 µs step) after the clock gave this one, so it is a higher
//!   multiple of 100 (and a script that finds the clock not past a token uses the next
//!   multiple, see `protocol`). A holder whose lock has no token yet (taken by the fast path,
//!   nobody asked) hands on none: the next holder's is issued when it asks, like any fast-path
//!   lock's, and counts on from there. A chain that has used all 99 goes through the store
//!   ([`HANDOFF_BODY`](crate::scripts)), which issues a fresh token.
//! * *The store confirms it after the fact.* A check ([`check_handover`]) sent after every
//!   command of the previous holder renews the lock under the token, for the next holder's
//!   lease and with its fencing token (the store records it). Until it answers the next
//!   holder's own commands wait (its body runs). If the lock was not the token's any more (it
//!   expired or was taken during the previous critical section), the previous holder's release
//!   returns [`Error::Lost`] and the next holder is lost at once, its body cancelled.
//!
//! At most `handoff_limit` handovers in a row; a release that woke waiters of other processes
//! makes the next local contender let them go first (`yield_first`).
//!
//! **The handover through the store.** The next holder starts only when the store confirmed
//! it, with the lease the handover set (measured from when it was sent) and the token the store
//! issued; a confirmation that arrives after that lease's deadline is not used (the new token is
//! released and the waiter contends like any other).
//!
//! **Nothing lost on the way.** While a handover or release is in flight, [`Pending`] owns every
//! token that may own the lock (the old one, and the new one of a handover whose answer is
//! unknown), the local slot and the waiter. If the future is dropped or the store fails, its
//! `Drop` releases those tokens in the background (a compare-and-delete each: safe to repeat)
//! and only then passes the slot on, so the next local contender finds the key free.

use std::sync::Arc;

use tokio::time::Instant;

use crate::key::RedisNames;
use crate::lease::{self, LeaseClock};
use crate::observe;
use crate::protocol::{new_token, LockValue, ReleaseReply, Token, FENCE_SLOTS};
use crate::queue::Waiter;
use crate::store::Store;
use crate::upkeep::{Gate, HeldSlot, Hold, Owned, Start};
use crate::Error;

/// A type-erased future (the handover path, see [`release`]).
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Releases `hold` (see the module docs).
pub(crate) async fn release(hold: Arc<Hold>) -> Result<(), Error> {
    let (slot, clock) = match hold.end() {
        Ok(ended) => ended,
        // The slot went on when the loss was declared; the key is someone else's now.
        Err(_) => return Err(hold.lost_error()),
    };
    let mut pending = Pending {
        store: hold.store.clone(),
        names: hold.names.clone(),
        tokens: Tokens::one(hold.token.clone()),
        slot: Some(slot),
        waiter: None,
    };
    match pending.slot_mut().next_for_handoff() {
        // Nobody of this process waits (the common case): the release goes to the store, in a
        // future kept small; the handover path runs in a boxed future of its own.
        None => release_in_store(pending, hold).await,
        Some(waiter) => {
            let hand: BoxFuture<'static, Result<(), Error>> =
                Box::pin(hand_over(pending, hold, clock, waiter));
            hand.await
        }
    }
}

/// Hands the lock to `first`, a local waiter, and on to the next ones while they take it; a
/// lock no waiter takes is released in the store.
async fn hand_over(
    mut pending: Pending,
    hold: Arc<Hold>,
    clock: LeaseClock,
    first: Waiter<Owned>,
) -> Result<(), Error> {
    let mut current = hold;
    let mut clock = clock;
    let mut check = None;
    let mut first = Some(first);
    while let Some(waiter) = first
        .take()
        .or_else(|| pending.slot_mut().next_for_handoff())
    {
        let (next, waiter) = if current.chain + 1 < FENCE_SLOTS {
            let slot = pending.slot.take().expect("the slot is pending");
            pending.tokens = Tokens::default();
            let gate = Arc::new(Gate::default());
            let next = current.local_successor(slot, &clock, &waiter, gate.clone());
            // The check runs on its own, so that this future can be dropped: the next holder's
            // commands wait for its gate.
            check = Some(tokio::spawn(check_handover(
                current.clone(),
                next.hold().clone(),
                gate,
            )));
            (next, waiter)
        } else {
            pending.waiter = Some(waiter);
            match handoff_in_store(&mut pending, &current).await {
                Handoff::Next(next) => (next, pending.waiter.take().expect("set above")),
                Handoff::Over(result) => return result,
            }
        };
        observe::handed_off(&current.key, next.hold().known_fence());
        match waiter.give_lock(next) {
            Ok(()) => {
                return match check.take() {
                    // What the store said about the lock this holder handed on.
                    Some(check) => check.await.unwrap_or(Ok(())),
                    None => Ok(()),
                };
            }
            Err(back) => {
                // The waiter left meanwhile: the lock is ours again, under the new hold.
                let back = back.into_hold();
                match back.end() {
                    Ok((slot, back_clock)) => {
                        pending.tokens = Tokens::one(back.token.clone());
                        pending.slot = Some(slot);
                        current = back;
                        clock = back_clock;
                    }
                    // Handed over properly, then lost before anyone used it.
                    Err(_) => return Ok(()),
                }
            }
        }
    }
    release_in_store(pending, current).await
}

/// Releases `current`'s lock in the store (a compare-and-delete that grants or announces it to
/// other processes' waiters); `pending` owns what is left if this future is dropped.
async fn release_in_store(mut pending: Pending, current: Arc<Hold>) -> Result<(), Error> {
    // A handed-over lock taken back (its waiter left) is released only after its check.
    current.ready().await;
    // The hold's own store (the same as `pending`'s), borrowed: no shared count to bump.
    let store = &current.store;
    let until = store.deadline();
    // The store's call in a box of its own (see `Request::contend` in `wait`): this future and
    // the store's each stay under the allocator's small-size cache, where together they would
    // not.
    let send = || -> BoxFuture<'_, Result<ReleaseReply, Error>> {
        Box::pin(store.release(&current.names, &current.token, until))
    };
    let released = match send().await {
        // The connection broke under the release: send it again (a compare-and-delete is safe
        // to repeat), within the same deadline.
        Err(first) if first.is_connection_dropped() => {
            match send().await {
                // The first one may have released it: nothing says which, so the outcome stays
                // unknown rather than a loss that may not have happened.
                Ok(ReleaseReply::NotOurs) => Err(first),
                other => other,
            }
        }
        other => other,
    };
    match released {
        Ok(ReleaseReply::Released { woke }) => {
            pending.tokens = Tokens::default();
            if woke > 0 {
                // Other processes wait for this lock: let them go first.
                pending.slot_mut().yield_first = true;
            }
            observe::released(&current.key);
            Ok(())
        }
        Ok(ReleaseReply::NotOurs) => {
            pending.tokens = Tokens::default();
            observe::lost(&current.key, "found expired or taken at release");
            Err(current.lost_error())
        }
        Err(e) => Err(e),
    }
}

/// How a handover through the store ended.
enum Handoff {
    /// The next holder's lock, confirmed by the store (the waiter is still in `pending`).
    Next(Owned),
    /// No handover: the release is over with this result (`pending` finishes the rest).
    Over(Result<(), Error>),
}

/// Hands `current`'s lock to `pending.waiter` through the store's `HANDOFF` script, which
/// switches it to a fresh token, lease and fencing token in one step.
async fn handoff_in_store(pending: &mut Pending, current: &Arc<Hold>) -> Handoff {
    current.ready().await;
    let store = pending.store.clone();
    let lease = pending
        .waiter
        .as_ref()
        .expect("the waiter is pending")
        .lease;
    let token = new_token();
    pending.tokens.add(token.clone());
    let sent_at = Instant::now();
    let reply = store
        .handoff(
            &current.names,
            &current.token,
            current.known_fence(),
            &token,
            lease,
            store.deadline(),
        )
        .await;
    match reply {
        Ok(Some(_)) if Instant::now() >= lease::deadline(sent_at, lease) => {
            // Confirmed so late that the new lease may have run out already: never hand out
            // such a lock. `pending` releases the new token in the background and then gives
            // the waiter the slot to contend with; the old holder's part is done.
            pending.tokens = Tokens::one(token);
            Handoff::Over(Ok(()))
        }
        Ok(Some(fence)) => {
            pending.tokens = Tokens::default();
            let slot = pending.slot.take().expect("the slot is pending");
            let waiter = pending.waiter.as_ref().expect("the waiter is pending");
            Handoff::Next(current.successor(slot, token, fence, sent_at, waiter))
        }
        Ok(None) => {
            pending.tokens = Tokens::default();
            observe::lost(&current.key, "found expired or taken at release");
            Handoff::Over(Err(current.lost_error()))
        }
        Err(Error::NotReplicated { .. }) => {
            // Switched on the master, but not acknowledged by enough replicas: undo it.
            // `pending` releases the new token, then gives the waiter the slot (its own
            // acquisition waits for the replicas and reports what it finds); the old holder's
            // part is done.
            pending.tokens = Tokens::one(token);
            Handoff::Over(Ok(()))
        }
        // The outcome is unknown: `pending` releases both tokens in the background, then gives
        // the waiter the slot.
        Err(e) => Handoff::Over(Err(e)),
    }
}

impl Hold {
    /// The next local holder after a handover that keeps the lock under this hold's token
    /// (see the module docs): the same deadline, the next of this acquisition's fencing tokens.
    fn local_successor(
        &self,
        slot: HeldSlot,
        clock: &LeaseClock,
        waiter: &Waiter<Owned>,
        gate: Arc<Gate>,
    ) -> Owned {
        Hold::start(
            self.store.clone(),
            self.scheduler().clone(),
            slot,
            Start {
                key: self.key.clone(),
                names: self.names.clone(),
                token: self.token.clone(),
                // Not issued yet (a fast-path lock whose token nobody asked for): the next
                // holder's is issued when it asks, above every earlier one (see `protocol`).
                fence: self.known_fence().map(|f| f + 1),
                chain: self.chain + 1,
                clock: clock.handed_over(Instant::now(), waiter.lease, waiter.renew),
                renew: waiter.renew,
                gate: Some(gate),
            },
        )
    }

    /// The next holder after a handover through the store confirmed at `fence`, sent at
    /// `sent_at`.
    fn successor(
        &self,
        slot: HeldSlot,
        token: Token,
        fence: u64,
        sent_at: Instant,
        waiter: &Waiter<Owned>,
    ) -> Owned {
        Hold::start(
            self.store.clone(),
            self.scheduler().clone(),
            slot,
            Start {
                key: self.key.clone(),
                names: self.names.clone(),
                token,
                fence: Some(fence),
                chain: 0,
                clock: LeaseClock::new(sent_at, waiter.lease, waiter.lease),
                renew: waiter.renew,
                gate: None,
            },
        )
    }
}

/// Checks a local handover from `previous` to `next` (same token): a renewal under the token,
/// for `next`'s lease and with `next`'s fencing token (which Redis records), after every command
/// of `previous`. Its answer is the handover's: if the lock was not the token's any more (taken
/// over or deleted during `previous`'s critical section), `previous`'s release reports `Lost`
/// and `next` is lost. Then `next`'s own commands may go.
async fn check_handover(
    previous: Arc<Hold>,
    next: Arc<Hold>,
    gate: Arc<Gate>,
) -> Result<(), Error> {
    previous.ready().await;
    let lease = next.lease();
    let store = &next.store;
    let result = match next.begin(lease) {
        // `next` is done already (released, or lost at its deadline), and its commands wait
        // for this check: only look whether the token still owns the lock.
        None => match store.inspect(&next.names, store.deadline()).await {
            Ok(Some((value, _)))
                if LockValue::parse(&value).is_some_and(|v| v.owner == &*next.token) =>
            {
                Ok(())
            }
            Ok(_) => {
                observe::lost(&previous.key, "found expired or taken at release");
                Err(previous.lost_error())
            }
            Err(e) => Err(e),
        },
        Some((sent, sent_at)) => {
            let renewed = store
                .renew(
                    &next.names,
                    &next.token,
                    next.known_fence(),
                    lease,
                    store.deadline(),
                )
                .await;
            match renewed {
                Ok(ours) => {
                    next.answered(sent, sent_at, lease, ours);
                    if ours {
                        Ok(())
                    } else {
                        observe::lost(&previous.key, "found expired or taken at release");
                        Err(previous.lost_error())
                    }
                }
                // Not confirmed: `next` keeps the deadline it took over (its own renewals go on);
                // the previous holder held the lock by its clock until it let go.
                Err(e) => Err(e),
            }
        }
    };
    gate.open();
    result
}

/// What a release in progress is responsible for (see the module docs).
struct Pending {
    store: Store,
    names: Arc<RedisNames>,
    /// Tokens that may own the lock right now.
    tokens: Tokens,
    slot: Option<HeldSlot>,
    /// The local waiter a handover is for.
    waiter: Option<Waiter<Owned>>,
}

/// The tokens that may own the lock during a release: the holder's, and the new one of a
/// handover through the store whose answer is not in yet (kept inline: a release allocates
/// nothing for them).
#[derive(Default)]
struct Tokens([Option<Token>; 2]);

impl Tokens {
    fn one(token: Token) -> Tokens {
        Tokens([Some(token), None])
    }

    fn add(&mut self, token: Token) {
        let free = self.0.iter_mut().find(|t| t.is_none());
        *free.expect("at most two tokens own a lock during a release") = Some(token);
    }

    fn into_vec(self) -> Vec<Token> {
        self.0.into_iter().flatten().collect()
    }
}

impl Pending {
    fn slot_mut(&mut self) -> &mut HeldSlot {
        // Taken only right before `Pending` is done with it.
        self.slot.as_mut().expect("the slot is pending")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let slot = self.slot.take();
        let waiter = self.waiter.take();
        let pass_on = move || match (waiter, slot) {
            (Some(w), Some(slot)) => w.give_slot(slot),
            (_, slot) => drop(slot),
        };
        let tokens = std::mem::take(&mut self.tokens).into_vec();
        if tokens.is_empty() {
            pass_on();
        } else {
            // Pass the slot on only once the key is free, so the next contender finds it so.
            self.store
                .spawn_release(self.names.clone(), tokens, pass_on);
        }
    }
}
