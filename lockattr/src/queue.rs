//! The local side of a lock: one *slot* per key per `Locker`, and a FIFO of the tasks of this
//! process waiting for it.
//!
//! Whoever owns the slot either holds the lock in the store or is the one task of this process
//! that talks to the store for it (the contender). Every other task of the process waits in the
//! FIFO and costs the store nothing. When the slot's owner is done, the slot passes to the head
//! of the FIFO: either with the lock still held (an in-process handoff, see `release`) or as
//! the right to contend.
//!
//! The slot is a value whose `Drop` passes it on, so it cannot be lost: a task that is
//! cancelled, times out or panics while owning it hands it to the next waiter, and so does a
//! lock that is lost (see `upkeep`).
//!
//! The queue does not know what a held lock is: it carries the caller's `T` (a held lock whose
//! own `Drop` releases it, so a lock handed to a waiter that has just left is not leaked).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::protocol::Token;
use crate::store::Subscription;
use crate::sync::lock;

/// Every key this process holds or wants, through one `Locker`.
pub(crate) struct Queues<T> {
    /// Keyed by the lock's name in the store. An entry exists only while a task holds or wants
    /// the key.
    /// Keys come from users' arguments: hashed with a per-process random seed (foldhash is
    /// several times cheaper than SipHash on short keys and keeps that defence).
    map: Mutex<HashMap<Arc<str>, KeyLocal<T>, foldhash::fast::RandomState>>,
    /// How many times in a row a lock may be handed to a local waiter (see
    /// [`Slot::next_for_handoff`]).
    handoff_limit: u32,
    next_waiter: AtomicU64,
    /// How many waiters the map holds, over every key; changed only under the map's lock.
    /// Read without it by [`Slot::next_for_handoff`], so that a release nobody of this process
    /// waits for does not take the lock: a waiter that queues just after that read finds the
    /// slot passed to it by the slot's `Drop` instead (it then contends in the store).
    queued: AtomicUsize,
}

impl<T> fmt::Debug for Queues<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queues")
            .field("keys", &lock(&self.map).len())
            .finish_non_exhaustive()
    }
}

struct KeyLocal<T> {
    waiters: VecDeque<Waiter<T>>,
    /// The token and fencing token (if known when it started) of this process's holder, while
    /// one holds the lock (for inspection: a local handover's token is recorded in the store
    /// only by the renewal that confirms it).
    holder: Option<(Token, Option<u64>)>,
}

/// A task waiting for the slot.
pub(crate) struct Waiter<T> {
    id: u64,
    tx: oneshot::Sender<Baton<T>>,
    /// The lease and renewal the waiter asked for, used when the lock is handed to it.
    pub(crate) lease: Duration,
    pub(crate) renew: bool,
}

impl<T> fmt::Debug for Waiter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a waiter receives.
pub(crate) enum Baton<T> {
    /// The lock, already held in the store under a token of the waiter's own.
    Held(T),
    /// The slot without the lock: the waiter now contends in the store.
    Contend(Slot<T>),
}

impl<T> Waiter<T> {
    /// Hands the lock to the waiter, or returns it when the waiter is gone.
    pub(crate) fn give_lock(self, held: T) -> Result<(), T> {
        match self.tx.send(Baton::Held(held)) {
            Err(Baton::Held(held)) => Err(held),
            // `send` returns exactly what it was given.
            Err(Baton::Contend(_)) | Ok(()) => Ok(()),
        }
    }

    /// Gives the slot to the waiter, or drops it (which passes it on) when the waiter is gone.
    pub(crate) fn give_slot(self, slot: Slot<T>) {
        // A slot that comes back is dropped here, outside any lock: its `Drop` passes it on.
        let _ = self.tx.send(Baton::Contend(slot));
    }
}

/// Ownership of a key's slot. Dropping it passes it on.
pub(crate) struct Slot<T> {
    queues: Arc<Queues<T>>,
    /// The lock's name in the store, shared with the map entry.
    name: Arc<str>,
    /// Handoffs since the lock was last taken from free in the store (it travels with the slot).
    handoffs_in_row: u32,
    /// The release-channel subscription, kept while contending and passed along with the slot
    /// so that one contention episode subscribes once.
    pub(crate) sub: Option<Subscription>,
    /// Set by a release that woke waiters of other processes: the next local contender
    /// subscribes before its first attempt instead of racing them (cross-process fairness).
    pub(crate) yield_first: bool,
    armed: bool,
}

impl<T> fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.name)
            .field("handoffs_in_row", &self.handoffs_in_row)
            .finish_non_exhaustive()
    }
}

/// How a request enters the local queue.
pub(crate) enum Entry<T> {
    /// The slot was free: the caller owns it now.
    Slot(Slot<T>),
    /// Another task owns the slot; wait on the ticket.
    Queued(Ticket<T>),
    /// Another task owns the slot and the caller does not want to wait.
    Busy,
}

/// A place in the FIFO. Dropping it leaves the queue; a baton that was already sent to it is
/// dropped with it, which passes the slot (or releases the handed-over lock) on.
pub(crate) struct Ticket<T> {
    queues: Arc<Queues<T>>,
    name: Arc<str>,
    id: u64,
    pub(crate) rx: Option<oneshot::Receiver<Baton<T>>>,
}

impl<T> Queues<T> {
    pub(crate) fn new(handoff_limit: u32) -> Arc<Self> {
        Arc::new(Queues {
            map: Mutex::new(HashMap::default()),
            handoff_limit,
            next_waiter: AtomicU64::new(1),
            queued: AtomicUsize::new(0),
        })
    }

    /// Enters the queue of the lock `name`: owns the slot at once if nobody else of this process
    /// holds or wants it, else queues (or refuses, when `wait` is false).
    pub(crate) fn enter(
        self: &Arc<Self>,
        name: &str,
        wait: bool,
        lease: Duration,
        renew: bool,
    ) -> Entry<T> {
        let mut map = lock(&self.map);
        if let Some(local) = map.get_mut(name) {
            if !wait {
                return Entry::Busy;
            }
            let (tx, rx) = oneshot::channel();
            let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
            local.waiters.push_back(Waiter {
                id,
                tx,
                lease,
                renew,
            });
            self.queued.fetch_add(1, Ordering::Relaxed);
            return Entry::Queued(Ticket {
                queues: self.clone(),
                name: Arc::from(name),
                id,
                rx: Some(rx),
            });
        }
        let name: Arc<str> = Arc::from(name);
        map.insert(
            name.clone(),
            KeyLocal {
                waiters: VecDeque::new(),
                holder: None,
            },
        );
        drop(map);
        Entry::Slot(Slot {
            queues: self.clone(),
            name,
            handoffs_in_row: 0,
            sub: None,
            yield_first: false,
            armed: true,
        })
    }

    /// How many tasks of this process wait for `name` (for inspection): those queued, and the
    /// slot's owner while it contends in the store (it holds nothing yet).
    pub(crate) fn waiting(&self, name: &str) -> Option<usize> {
        lock(&self.map)
            .get(name)
            .map(|l| l.waiters.len() + usize::from(l.holder.is_none()))
    }

    /// The token and fencing token of this process's holder of `name`, if one holds it.
    pub(crate) fn holder(&self, name: &str) -> Option<(Token, Option<u64>)> {
        lock(&self.map).get(name).and_then(|l| l.holder.clone())
    }
}

impl<T> Drop for Ticket<T> {
    fn drop(&mut self) {
        {
            let mut map = lock(&self.queues.map);
            if let Some(local) = map.get_mut(&*self.name) {
                if let Some(pos) = local.waiters.iter().position(|w| w.id == self.id) {
                    local.waiters.remove(pos);
                    self.queues.queued.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        // Outside the map lock: a baton inside is dropped here and locks the map itself.
        drop(self.rx.take());
    }
}

impl<T> Slot<T> {
    /// Takes the next waiter for an in-process handoff, if the handoff budget allows one.
    pub(crate) fn next_for_handoff(&mut self) -> Option<Waiter<T>> {
        if self.handoffs_in_row >= self.queues.handoff_limit
            || self.queues.queued.load(Ordering::Relaxed) == 0
        {
            return None;
        }
        let w = lock(&self.queues.map)
            .get_mut(&*self.name)?
            .waiters
            .pop_front()?;
        self.queues.queued.fetch_sub(1, Ordering::Relaxed);
        self.handoffs_in_row += 1;
        Some(w)
    }

    /// Records who holds the lock now (see [`Queues::holder`]).
    pub(crate) fn set_holder(&self, token: &Token, fence: Option<u64>) {
        if let Some(local) = lock(&self.queues.map).get_mut(&*self.name) {
            local.holder = Some((token.clone(), fence));
        }
    }

    /// Records that the lock was taken from free in the store (a new handoff chain starts).
    pub(crate) fn taken_from_free(&mut self) {
        self.handoffs_in_row = 0;
        self.sub = None;
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        let mut sub = self.sub.take();
        let mut map = lock(&self.queues.map);
        let MapEntry::Occupied(mut local) = map.entry(self.name.clone()) else {
            return;
        };
        local.get_mut().holder = None;
        while let Some(w) = local.get_mut().waiters.pop_front() {
            self.queues.queued.fetch_sub(1, Ordering::Relaxed);
            let slot = Slot {
                queues: self.queues.clone(),
                name: self.name.clone(),
                handoffs_in_row: 0,
                sub: sub.take(),
                yield_first: self.yield_first,
                armed: true,
            };
            match w.tx.send(Baton::Contend(slot)) {
                Ok(()) => return,
                Err(Baton::Contend(mut back)) => {
                    // The waiter is gone; keep the slot for the next one without running its
                    // `Drop` (we hold the map lock).
                    back.armed = false;
                    sub = back.sub.take();
                }
                Err(Baton::Held(_)) => unreachable!("`send` returns what it was given"),
            }
        }
        local.remove();
        drop(map);
        drop(sub);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues() -> Arc<Queues<u32>> {
        Queues::new(2)
    }

    #[test]
    fn the_first_owns_the_slot_the_others_queue() {
        let q = queues();
        let Entry::Slot(slot) = q.enter("k", true, Duration::from_secs(1), true) else {
            panic!("first");
        };
        assert!(matches!(
            q.enter("k", false, Duration::from_secs(1), true),
            Entry::Busy
        ));
        let Entry::Queued(mut ticket) = q.enter("k", true, Duration::from_secs(1), true) else {
            panic!("second");
        };
        assert_eq!(
            q.waiting("k"),
            Some(2),
            "the contending owner and the queued task"
        );
        slot.set_holder(&Token::from("t"), Some(1));
        assert_eq!(q.waiting("k"), Some(1), "the owner holds the lock now");
        drop(slot);
        let baton = ticket.rx.as_mut().unwrap().try_recv().unwrap();
        assert!(matches!(baton, Baton::Contend(_)));
        drop(baton);
        assert_eq!(q.waiting("k"), None, "the last owner removes the entry");
        assert_eq!(q.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_departed_waiter_is_skipped() {
        let q = queues();
        let Entry::Slot(slot) = q.enter("k", true, Duration::from_secs(1), true) else {
            panic!()
        };
        let Entry::Queued(gone) = q.enter("k", true, Duration::from_secs(1), true) else {
            panic!()
        };
        let Entry::Queued(mut next) = q.enter("k", true, Duration::from_secs(1), true) else {
            panic!()
        };
        drop(gone);
        drop(slot);
        assert!(matches!(
            next.rx.as_mut().unwrap().try_recv(),
            Ok(Baton::Contend(_))
        ));
    }

    #[test]
    fn handoffs_are_bounded_and_a_lock_comes_back_from_a_departed_waiter() {
        let q = queues();
        let Entry::Slot(mut slot) = q.enter("k", true, Duration::from_secs(1), true) else {
            panic!()
        };
        let mut tickets: Vec<_> = (0..3)
            .map(
                |_| match q.enter("k", true, Duration::from_secs(1), false) {
                    Entry::Queued(t) => t,
                    _ => panic!(),
                },
            )
            .collect();
        let w = slot.next_for_handoff().unwrap();
        assert!(!w.renew);
        assert_eq!(w.give_lock(7), Ok(()));
        let mut rx = tickets.remove(0).rx.take().unwrap();
        assert!(matches!(rx.try_recv(), Ok(Baton::Held(7))));
        let w = slot.next_for_handoff().unwrap();
        drop(tickets.remove(0));
        assert_eq!(
            w.give_lock(8),
            Err(8),
            "the waiter left: the lock comes back"
        );
        assert!(slot.next_for_handoff().is_none(), "budget of 2 used up");
        slot.taken_from_free();
        assert_eq!(q.queued.load(Ordering::Relaxed), 1, "one ticket left");
        let w = slot.next_for_handoff().unwrap();
        assert_eq!(q.queued.load(Ordering::Relaxed), 0);
        assert!(
            slot.next_for_handoff().is_none(),
            "nobody waits: no handoff, the map untouched"
        );
        drop((w, tickets, slot));
        assert_eq!(q.queued.load(Ordering::Relaxed), 0);
        assert_eq!(q.waiting("k"), None);
    }
}
