//! The local side of a lock: one "slot" per key per `Locker`, and a FIFO of the tasks waiting
//! for it.
//!
//! Whoever owns the slot either holds the lock in Redis or is the one task of this process
//! that talks to Redis for it (the contender). Every other task of the process waits in the
//! FIFO and costs Redis nothing. When the slot's owner finishes, the slot passes to the head of
//! the FIFO: either with the lock still held (an in-process handoff, see `guard.rs`) or as the
//! right to contend.
//!
//! The slot is a value with a `Drop` that passes it on, so it cannot be lost: a task that is
//! cancelled, times out or panics while owning it hands it to the next waiter.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::guard::LockGuard;
use crate::locker::Locker;
use crate::pubsub::Subscription;

/// Local state of one key while any task of this process holds or wants it.
#[derive(Debug, Default)]
pub(crate) struct KeyLocal {
    pub(crate) waiters: VecDeque<Waiter>,
}

/// A task waiting for the slot.
#[derive(Debug)]
pub(crate) struct Waiter {
    id: u64,
    tx: oneshot::Sender<Baton>,
    /// The lease and renewal the waiter asked for, used when the lock is handed to it.
    pub(crate) lease: Duration,
    pub(crate) renew: bool,
}

impl Waiter {
    /// Hands the lock to the waiter, or returns it when the waiter is gone.
    pub(crate) fn give_lock(self, guard: LockGuard) -> Result<(), LockGuard> {
        match self.tx.send(Baton::Held(guard)) {
            Err(Baton::Held(guard)) => Err(guard),
            // `send` returns exactly what it was given.
            Err(Baton::Contend(_)) | Ok(()) => Ok(()),
        }
    }

    /// Gives the slot to the waiter, or returns it when the waiter is gone.
    pub(crate) fn give_slot(self, slot: Slot) -> Result<(), Slot> {
        match self.tx.send(Baton::Contend(slot)) {
            Err(Baton::Contend(slot)) => Err(slot),
            Err(Baton::Held(_)) | Ok(()) => Ok(()),
        }
    }
}

/// What a waiter receives.
#[derive(Debug)]
pub(crate) enum Baton {
    /// The lock, already held in Redis under a token of the waiter's own.
    Held(LockGuard),
    /// The slot without the lock: the waiter now contends in Redis.
    Contend(Slot),
}

/// Ownership of a key's slot. Dropping it passes it on.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) locker: Locker,
    /// The lock's Redis name, shared with the map entry.
    pub(crate) name: Arc<str>,
    /// Handoffs since the lock was last taken from free in Redis (it travels with the slot).
    handoffs_in_row: u32,
    /// The release-channel subscription, kept while contending and passed along with the
    /// slot so that a contention episode subscribes once.
    pub(crate) sub: Option<Subscription>,
    /// Set by a release that woke waiters of other processes: the next local contender
    /// subscribes before its first attempt instead of racing them (cross-process fairness).
    pub(crate) yield_first: bool,
    armed: bool,
}

pub(crate) fn lock_keys(locker: &Locker) -> MutexGuard<'_, HashMap<Arc<str>, KeyLocal>> {
    // Every update of the map is a single step that leaves it consistent; a panic elsewhere
    // while it was locked does not make it unusable.
    locker
        .inner
        .keys
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

static NEXT_WAITER: AtomicU64 = AtomicU64::new(1);

/// How a request enters the local queue.
pub(crate) enum Entry {
    /// The slot was free: the caller owns it now.
    Slot(Slot),
    /// Another task owns the slot; wait on the ticket.
    Queued(Ticket),
    /// Another task owns the slot and the caller does not want to wait.
    Busy,
}

/// A place in the FIFO. Dropping it leaves the queue; a baton that was already sent to it is
/// dropped with it, which passes the slot (or releases the handed-over lock) on.
#[derive(Debug)]
pub(crate) struct Ticket {
    locker: Locker,
    name: Arc<str>,
    id: u64,
    pub(crate) rx: Option<oneshot::Receiver<Baton>>,
}

pub(crate) fn enter(
    locker: &Locker,
    name: &str,
    wait: bool,
    lease: Duration,
    renew: bool,
) -> Entry {
    let mut keys = lock_keys(locker);
    if let Some(local) = keys.get_mut(name) {
        if !wait {
            return Entry::Busy;
        }
        let (tx, rx) = oneshot::channel();
        let id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
        local.waiters.push_back(Waiter {
            id,
            tx,
            lease,
            renew,
        });
        return Entry::Queued(Ticket {
            locker: locker.clone(),
            name: Arc::from(name),
            id,
            rx: Some(rx),
        });
    }
    let name: Arc<str> = Arc::from(name);
    keys.insert(name.clone(), KeyLocal::default());
    drop(keys);
    Entry::Slot(Slot {
        locker: locker.clone(),
        name,
        handoffs_in_row: 0,
        sub: None,
        yield_first: false,
        armed: true,
    })
}

impl Drop for Ticket {
    fn drop(&mut self) {
        {
            let mut keys = lock_keys(&self.locker);
            if let Some(local) = keys.get_mut(&*self.name) {
                if let Some(pos) = local.waiters.iter().position(|w| w.id == self.id) {
                    local.waiters.remove(pos);
                }
            }
        }
        // Outside the map lock: a baton inside is dropped here and locks the map itself.
        drop(self.rx.take());
    }
}

impl Slot {
    /// Takes the next waiter for an in-process handoff, if the handoff budget allows one.
    pub(crate) fn next_for_handoff(&mut self) -> Option<Waiter> {
        if self.handoffs_in_row >= self.locker.inner.config.handoff_limit {
            return None;
        }
        let w = lock_keys(&self.locker)
            .get_mut(&*self.name)?
            .waiters
            .pop_front()?;
        self.handoffs_in_row += 1;
        Some(w)
    }

    /// Records that the lock was taken from free in Redis (a new handoff chain starts).
    pub(crate) fn taken_from_free(&mut self) {
        self.handoffs_in_row = 0;
    }

    /// Moves the slot into a new value (used when it travels inside a baton).
    pub(crate) fn take(&mut self) -> Slot {
        self.armed = false;
        Slot {
            locker: self.locker.clone(),
            name: self.name.clone(),
            handoffs_in_row: self.handoffs_in_row,
            sub: self.sub.take(),
            yield_first: self.yield_first,
            armed: true,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        let mut sub = self.sub.take();
        let mut keys = lock_keys(&self.locker);
        let MapEntry::Occupied(mut local) = keys.entry(self.name.clone()) else {
            return;
        };
        while let Some(w) = local.get_mut().waiters.pop_front() {
            let slot = Slot {
                locker: self.locker.clone(),
                name: self.name.clone(),
                handoffs_in_row: 0,
                sub: sub.take(),
                yield_first: self.yield_first,
                armed: true,
            };
            match w.give_slot(slot) {
                Ok(()) => return,
                Err(mut back) => {
                    // The waiter is gone; keep the slot for the next one without running its
                    // Drop (we hold the map lock).
                    back.armed = false;
                    sub = back.sub.take();
                }
            }
        }
        local.remove();
        drop(keys);
        drop(sub);
    }
}
