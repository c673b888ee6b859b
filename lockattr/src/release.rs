//! Releasing a held lock: to the next local waiter by an in-process handover, or in the store.
//!
//! ```text
//! end the hold --lost--> Err(Lost)
//!     |
//!     +--> local waiter, budget left? --yes--> HANDOFF --ours--> next holder starts (its lease
//!     |                                           |              and fencing token from the reply)
//!     |                                           +--not ours--> Err(Lost), waiter contends
//!     +--no--> RELEASE --released--> Ok, the slot passes on
//!                      +--not ours--> Err(Lost)
//! ```
//!
//! **No speculation.** The next local holder starts only when the store has confirmed the
//! handover, with the lease the handover set (measured from when it was sent) and the fencing
//! token the store issued: it never believes in a lease or a token that the store did not give
//! it. A confirmation that arrives after that lease's deadline is not used (the new token is
//! released and the waiter contends like any other). One round trip, far inside the in-process
//! handoff target (≤ 1.5 × a PING).
//!
//! **Nothing lost on the way.** While a handover or release is in flight, [`Pending`] owns every
//! token that may own the lock (the old one, and the new one of a handover whose answer is
//! unknown), the local slot and the waiter. If the future is dropped or the store fails, its
//! `Drop` releases those tokens in the background (a compare-and-delete each: safe to repeat)
//! and only then passes the slot on, so the next local contender finds the key free.
//!
//! **Bounded.** At most `handoff_limit` handovers in a row; a release that woke waiters of
//! other processes makes the next local contender let them go first (`yield_first`).

use std::sync::Arc;

use tokio::time::Instant;

use crate::key::RedisNames;
use crate::lease;
use crate::observe;
use crate::protocol::{new_token, ReleaseReply};
use crate::queue::Waiter;
use crate::store::Store;
use crate::upkeep::{HeldSlot, Hold, Owned, Start};
use crate::Error;

/// Releases `hold` (see the module docs).
pub(crate) async fn release(hold: Arc<Hold>) -> Result<(), Error> {
    let slot = match hold.end() {
        Ok(slot) => slot,
        // The slot went on when the loss was declared; the key is someone else's now.
        Err(_) => return Err(hold.lost_error()),
    };
    let store = hold.store.clone();
    let mut pending = Pending {
        store: store.clone(),
        names: hold.names.clone(),
        tokens: vec![hold.token.clone()],
        slot: Some(slot),
        waiter: None,
    };
    let mut current = hold;
    while let Some(waiter) = pending.slot_mut().next_for_handoff() {
        let lease = waiter.lease;
        let token = new_token();
        pending.tokens.push(token.clone());
        pending.waiter = Some(waiter);
        let sent_at = Instant::now();
        let reply = store
            .handoff(
                &current.names,
                &current.token,
                current.fence,
                &token,
                lease,
                store.deadline(),
            )
            .await;
        match reply {
            Ok(Some(_)) if Instant::now() >= lease::deadline(sent_at, lease) => {
                // Confirmed so late that the new lease may have run out already: never hand
                // out such a lock. `pending` releases the new token in the background and then
                // gives the waiter the slot to contend with; the old holder's part is done.
                pending.tokens = vec![token];
                return Ok(());
            }
            Ok(Some(fence)) => {
                pending.tokens.clear();
                let (Some(waiter), Some(slot)) = (pending.waiter.take(), pending.slot.take())
                else {
                    unreachable!("set above");
                };
                let next = current.successor(slot, token, fence, sent_at, &waiter);
                observe::handed_off(&current.key, fence);
                match waiter.give_lock(next) {
                    Ok(()) => return Ok(()),
                    Err(back) => {
                        // The waiter left meanwhile: the lock is ours again, under the new token.
                        let back = back.into_hold();
                        match back.end() {
                            Ok(slot) => {
                                pending.tokens = vec![back.token.clone()];
                                pending.slot = Some(slot);
                                current = back;
                            }
                            // Handed over properly, then lost before anyone used it.
                            Err(_) => return Ok(()),
                        }
                    }
                }
            }
            Ok(None) => {
                pending.tokens.clear();
                observe::lost(&current.key, "found expired or taken at release");
                return Err(current.lost_error());
            }
            Err(Error::NotReplicated { .. }) => {
                // Switched on the master, but not acknowledged by enough replicas: undo it.
                // `pending` releases the new token, then gives the waiter the slot (its own
                // acquisition waits for the replicas and reports what it finds); the old
                // holder's part is done.
                pending.tokens = vec![token];
                return Ok(());
            }
            // The outcome is unknown: `pending` releases both tokens in the background, then
            // gives the waiter the slot.
            Err(e) => return Err(e),
        }
    }
    let until = store.deadline();
    let released = match store.release(&current.names, &current.token, until).await {
        // The connection broke under the release: send it again (a compare-and-delete is safe
        // to repeat), within the same deadline.
        Err(first) if first.is_connection_dropped() => {
            match store.release(&current.names, &current.token, until).await {
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
            pending.tokens.clear();
            if woke > 0 {
                // Other processes wait for this lock: let them go first.
                pending.slot_mut().yield_first = true;
            }
            observe::released(&current.key);
            Ok(())
        }
        Ok(ReleaseReply::NotOurs) => {
            pending.tokens.clear();
            observe::lost(&current.key, "found expired or taken at release");
            Err(current.lost_error())
        }
        Err(e) => Err(e),
    }
}

impl Hold {
    /// The hold of the next local holder after a confirmed handover sent at `sent_at`.
    fn successor(
        &self,
        slot: HeldSlot,
        token: String,
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
                fence,
                sent_at,
                set: waiter.lease,
                lease: waiter.lease,
                renew: waiter.renew,
            },
        )
    }
}

/// What a release in progress is responsible for (see the module docs).
struct Pending {
    store: Store,
    names: Arc<RedisNames>,
    /// Tokens that may own the lock right now.
    tokens: Vec<String>,
    slot: Option<HeldSlot>,
    /// The local waiter a handover is for.
    waiter: Option<Waiter<Owned>>,
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
        let tokens = std::mem::take(&mut self.tokens);
        if tokens.is_empty() {
            pass_on();
        } else {
            // Pass the slot on only once the key is free, so the next contender finds it so.
            self.store
                .spawn_release(self.names.clone(), tokens, pass_on);
        }
    }
}
