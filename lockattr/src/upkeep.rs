//! A held lock's shared state and its upkeep: renewal, and loss at the deadline.
//!
//! A [`Hold`] is what the guard, the lease scheduler and `lost()` futures share about one held
//! lock. Its [`LeaseClock`] (see `lease`) is the one owner of the lock's deadline; everything
//! here asks it. The lock is lost, at the latest, at that deadline:
//!
//! * the scheduler (one task per `Locker`) wakes at the deadline whatever replies are in
//!   flight, declares the loss, and gives up the lock's place in the local queue at once, so
//!   other tasks of this process can contend for it like any other process;
//! * [`Hold::is_held`] compares the deadline with the clock, and `lost()` futures sleep until
//!   it: the guard, `lost()` and `run`'s cancellation agree at that moment.
//!
//! **Renewal.** A lock that renews registers for its next renewal (a third of its lease, see
//! [`LeaseClock::renewal_due`]); registering and cancelling cost a mutex and a map update, so
//! short critical sections never spawn or wake anything. A renewal in flight does not delay the
//! loss: while it is in flight the lock is registered for its deadline. A late confirmation
//! does not bring a lost lock back (see `lease`).
//!
//! **Loss.** When the clock declares the lock lost, the token is withdrawn from the store in the
//! background (a compare-and-delete: if the lock was still ours, because a renewal went through
//! and its answer came late, it is freed instead of blocking everyone for a lease), and the
//! local slot passes on. The guard stays lost: it never touches the key again.
//!
//! **Ending.** Release and handover first [`end`](Hold::end) the hold: the clock stops and the
//! scheduler forgets the lock before anything is sent, so a release can never be undone by a
//! late renewal (a renewal already sent runs before the release in Redis, on the same
//! connection, and its answer is ignored).
//!
//! **Lock order.** A hold's state mutex is taken before the scheduler's queue mutex, never the
//! other way round; the scheduler releases its queue before it looks at a hold.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::check_lease;
use crate::key::RedisNames;
use crate::lease::{LeaseClock, Loss, Phase, Sent};
use crate::observe;
use crate::protocol::Token;
use crate::queue::Slot;
use crate::store::Store;
use crate::sync::lock;
use crate::Error;

/// The local queue's slot of a held lock; what it carries to a waiter is an [`Owned`] lock.
pub(crate) type HeldSlot = Slot<Owned>;

/// One held lock (see the module docs).
pub(crate) struct Hold {
    pub(crate) store: Store,
    /// The scheduler this hold is registered with; holding it keeps renewals running while
    /// the lock is held, even after the last `Locker` clone is gone.
    scheduler: Arc<Scheduler>,
    /// The key as the caller wrote it.
    pub(crate) key: Arc<str>,
    pub(crate) names: Arc<RedisNames>,
    pub(crate) token: Token,
    /// The fencing token, `0` until it is issued (see [`Hold::fencing_token`]).
    fence: AtomicU64,
    /// See [`Start::chain`].
    pub(crate) chain: u64,
    pub(crate) renew: bool,
    gate: Option<Arc<Gate>>,
    state: Mutex<State>,
    /// Woken when the lock is lost.
    changed: Notify,
}

struct State {
    clock: LeaseClock,
    /// The lock's place in the local queue, until the lock is released, handed over or lost.
    slot: Option<HeldSlot>,
    /// The next renewal is due (renewing locks only).
    next_renewal: Instant,
    renewing: bool,
    /// The hold's place in the scheduler's queue, if it is queued.
    queued: Option<(Instant, u64)>,
}

/// What a new hold starts with.
pub(crate) struct Start {
    pub(crate) key: Arc<str>,
    pub(crate) names: Arc<RedisNames>,
    pub(crate) token: Token,
    /// The fencing token, if the lock has one yet (a lock taken by the fast path has none until
    /// it is asked for, see `protocol`).
    pub(crate) fence: Option<u64>,
    /// Local handovers since the store issued the lock under `token` (see `release`).
    pub(crate) chain: u64,
    /// Until when the lock is held, and the lease renewals ask for.
    pub(crate) clock: LeaseClock,
    /// Whether to renew.
    pub(crate) renew: bool,
    /// For a local handover: opens when the check of the handover is done (see `release`).
    pub(crate) gate: Option<Arc<Gate>>,
}

/// Holds back a handed-over lock's own commands to the store until the command that checks the
/// handover was answered, so that they reach the store after it (its answer, not how redis-rs
/// polls, orders them).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    opened: Notify,
}

impl Gate {
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.opened.notify_waiters();
    }

    async fn passed(&self) {
        loop {
            let opened = self.opened.notified();
            let mut opened = std::pin::pin!(opened);
            opened.as_mut().enable();
            if self.open.load(Ordering::Acquire) {
                return;
            }
            opened.await;
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("key", &self.key)
            .field("fence", &self.known_fence())
            .field("phase", &self.state().clock.phase())
            .finish_non_exhaustive()
    }
}

impl Hold {
    /// Starts holding a lock the store confirmed, and registers its upkeep.
    pub(crate) fn start(
        store: Store,
        scheduler: Arc<Scheduler>,
        slot: HeldSlot,
        start: Start,
    ) -> Owned {
        slot.set_holder(&start.token, start.fence);
        let clock = start.clock;
        let next_renewal = clock.renewal_due(Instant::now(), false);
        let hold = Arc::new(Hold {
            store,
            scheduler,
            key: start.key,
            names: start.names,
            token: start.token,
            fence: AtomicU64::new(start.fence.unwrap_or(0)),
            chain: start.chain,
            renew: start.renew,
            gate: start.gate,
            state: Mutex::new(State {
                clock,
                slot: Some(slot),
                next_renewal,
                renewing: false,
                queued: None,
            }),
            changed: Notify::new(),
        });
        {
            let mut st = hold.state();
            let due = hold.due(&st);
            hold.schedule(&mut st, due);
        }
        Owned(Some(hold))
    }

    /// The fencing token, if it was issued already.
    pub(crate) fn known_fence(&self) -> Option<u64> {
        match self.fence.load(Ordering::Acquire) {
            0 => None,
            f => Some(f),
        }
    }

    /// The fencing token: known at once for a lock taken by a script, a grant or a handover;
    /// issued by the store the first time it is asked for a lock taken by the fast path (one
    /// round trip, which also checks that the lock is still this hold's). Every later call
    /// returns the same token. A token issued here is recorded on `span` (the `lock.held` span).
    ///
    /// # Errors
    /// [`Error::Lost`] when the lock is not held any more and has no token yet (a lock lost
    /// before its token was issued never gets one); the store's errors otherwise.
    pub(crate) async fn fencing_token(
        self: &Arc<Self>,
        span: &tracing::Span,
    ) -> Result<u64, Error> {
        if let Some(f) = self.known_fence() {
            return Ok(f);
        }
        self.ready().await;
        if self.phase() != Phase::Held {
            return Err(self.lost_error());
        }
        match self
            .store
            .fence(&self.names, &self.token, self.store.deadline())
            .await?
        {
            Some(issued) => {
                // A concurrent request of this hold may have been answered first: keep one.
                let fence = match self.fence.compare_exchange(
                    0,
                    issued,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        observe::fenced(&self.key, issued);
                        observe::held_fenced(span, issued);
                        issued
                    }
                    Err(first) => first,
                };
                Ok(fence)
            }
            None => {
                let mut st = self.state();
                if st.clock.phase() == Phase::Held {
                    st.clock.refused();
                    self.lost_now(&mut st, Loss::NotOurs);
                }
                Err(self.lost_error())
            }
        }
    }

    /// The scheduler this hold is registered with (a handed-over successor uses it too).
    pub(crate) fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The lease renewals ask for.
    pub(crate) fn lease(&self) -> Duration {
        self.state().clock.lease()
    }

    /// Waits until this hold may send commands to the store (see [`Gate`]).
    pub(crate) async fn ready(&self) {
        if let Some(gate) = &self.gate {
            gate.passed().await;
        }
    }

    /// A command that sets the lease to `lease` is about to be sent (see `LeaseClock::send`);
    /// `None` when the lock is not held any more.
    pub(crate) fn begin(&self, lease: Duration) -> Option<(Sent, Instant)> {
        let mut st = self.state();
        let now = Instant::now();
        self.expire_if_due(&mut st, now);
        (st.clock.phase() == Phase::Held).then(|| (st.clock.send(now, lease), now))
    }

    /// The store answered the lease-setting command `sent` (sent at `sent_at`, for `lease`):
    /// `true` if it still held the lock. Moves the deadline, or declares the loss.
    pub(crate) fn answered(
        self: &Arc<Self>,
        sent: Sent,
        sent_at: Instant,
        lease: Duration,
        ours: bool,
    ) {
        let mut st = self.state();
        if st.clock.phase() != Phase::Held {
            return;
        }
        if !ours {
            st.clock.refused();
            self.lost_now(&mut st, Loss::NotOurs);
        } else if st.clock.confirmed(sent, sent_at, lease, Instant::now()) {
            st.next_renewal = st.clock.renewal_due(sent_at, false);
            let due = self.due(&st);
            self.schedule(&mut st, due);
        } else {
            self.lost_now(&mut st, Loss::Expired);
        }
    }

    /// `true` while the lock is held and its deadline has not passed.
    pub(crate) fn is_held(&self) -> bool {
        self.state().clock.is_held(Instant::now())
    }

    /// The phase, after declaring a loss that is due.
    pub(crate) fn phase(&self) -> Phase {
        let mut st = self.state();
        self.expire_if_due(&mut st, Instant::now());
        st.clock.phase()
    }

    /// When the hold needs the scheduler next: its renewal, and at the latest its deadline.
    fn due(&self, st: &State) -> Instant {
        let deadline = st.clock.deadline();
        if self.renew && !st.renewing {
            st.next_renewal.min(deadline)
        } else {
            deadline
        }
    }

    fn schedule(self: &Arc<Self>, st: &mut State, due: Instant) {
        if st.clock.phase() != Phase::Held {
            return;
        }
        let timers = &self.scheduler.timers;
        timers.ensure_running();
        let id = timers.next_id.fetch_add(1, Ordering::Relaxed);
        let mut queue = lock(&timers.queue);
        if let Some(old) = st.queued.take() {
            queue.remove(&old);
        }
        st.queued = Some((due, id));
        queue.insert((due, id), self.clone());
        drop(queue);
        // Wake the scheduler only if it sleeps past this hold; with the usual leases (renewal
        // due a third of a lease from now) it is armed earlier already.
        if due < timers.armed_until() {
            timers.wake.notify_one();
        }
    }

    fn unschedule(&self, st: &mut State) {
        if let Some(place) = st.queued.take() {
            lock(&self.scheduler.timers.queue).remove(&place);
        }
    }

    /// Declares the loss if the deadline has passed (with its consequences); `true` if it did.
    fn expire_if_due(&self, st: &mut MutexGuard<'_, State>, now: Instant) -> bool {
        if st.clock.expire_if_due(now) {
            self.lost_now(st, Loss::Expired);
            true
        } else {
            false
        }
    }

    /// The clock has just turned lost: tell everyone, give up the local slot, and withdraw the
    /// token in the background in case the lock is still ours in the store.
    fn lost_now(&self, st: &mut MutexGuard<'_, State>, loss: Loss) {
        self.unschedule(st);
        let slot = st.slot.take();
        observe::lost(&self.key, loss.describe());
        self.changed.notify_waiters();
        if loss == Loss::Expired {
            self.store
                .spawn_withdraw(self.names.clone(), self.token.clone());
        }
        // Passing the slot on locks the local queue; it never takes a hold's state lock, so
        // this is safe under ours.
        drop(slot);
    }

    /// The scheduler's turn came: declare a loss that is due, or renew.
    fn fire(self: Arc<Self>, now: Instant) {
        let mut st = self.state();
        st.queued = None;
        if st.clock.phase() != Phase::Held || self.expire_if_due(&mut st, now) {
            return;
        }
        if self.renew && !st.renewing && now >= st.next_renewal {
            st.renewing = true;
            let deadline = st.clock.deadline();
            // While the renewal is in flight, the hold waits for its deadline.
            self.schedule(&mut st, deadline);
            drop(st);
            tokio::spawn(self.renew_once());
        } else {
            let due = self.due(&st);
            self.schedule(&mut st, due);
        }
    }

    async fn renew_once(self: Arc<Self>) {
        self.ready().await;
        let (sent, lease, sent_at) = {
            let mut st = self.state();
            let lease = st.clock.lease();
            let now = Instant::now();
            (st.clock.send(now, lease), lease, now)
        };
        let res = self
            .store
            .renew(
                &self.names,
                &self.token,
                self.known_fence(),
                lease,
                self.store.deadline(),
            )
            .await;
        let now = Instant::now();
        let mut st = self.state();
        st.renewing = false;
        if st.clock.phase() != Phase::Held {
            return; // released, handed over or lost meanwhile: the answer does not matter
        }
        match res {
            Ok(true) => {
                if st.clock.confirmed(sent, sent_at, lease, now) {
                    st.next_renewal = st.clock.renewal_due(sent_at, false);
                    let due = self.due(&st);
                    self.schedule(&mut st, due);
                } else {
                    self.lost_now(&mut st, Loss::Expired);
                }
            }
            Ok(false) => {
                st.clock.refused();
                self.lost_now(&mut st, Loss::NotOurs);
            }
            Err(e) => {
                observe::renew_failed(&self.key, &e);
                if !self.expire_if_due(&mut st, now) {
                    st.next_renewal = st.clock.renewal_due(now, true);
                    let due = self.due(&st);
                    self.schedule(&mut st, due);
                }
            }
        }
    }

    /// Sets the lease to `lease` from now (one round trip); later renewals keep it.
    pub(crate) async fn extend(self: &Arc<Self>, lease: Duration) -> Result<(), Error> {
        check_lease(lease, || "the extended lease".to_owned())?;
        self.ready().await;
        let sent = {
            let mut st = self.state();
            self.expire_if_due(&mut st, Instant::now());
            if st.clock.phase() != Phase::Held {
                return Err(self.lost_error());
            }
            let now = Instant::now();
            (st.clock.send(now, lease), now)
        };
        let (sent, sent_at) = sent;
        let res = self
            .store
            .renew(
                &self.names,
                &self.token,
                self.known_fence(),
                lease,
                self.store.deadline(),
            )
            .await;
        let now = Instant::now();
        let mut st = self.state();
        if st.clock.phase() != Phase::Held {
            return Err(self.lost_error());
        }
        match res {
            Ok(true) => {
                if !st.clock.confirmed(sent, sent_at, lease, now) {
                    self.lost_now(&mut st, Loss::Expired);
                    return Err(self.lost_error());
                }
                st.clock.set_lease(lease);
                st.next_renewal = st.clock.renewal_due(sent_at, false);
                let due = self.due(&st);
                self.schedule(&mut st, due);
                Ok(())
            }
            Ok(false) => {
                st.clock.refused();
                self.lost_now(&mut st, Loss::NotOurs);
                Err(self.lost_error())
            }
            Err(e) => Err(e.for_key(&self.key)),
        }
    }

    /// `Error::Lost` for this lock.
    pub(crate) fn lost_error(&self) -> Error {
        Error::Lost {
            key: self.key.to_string(),
        }
    }

    /// Ends the hold for a release or handover: stops the clock and the upkeep and returns the
    /// local slot and the clock as it stood, or the loss when the lock is not held any more (the
    /// slot then went on when the loss was declared).
    pub(crate) fn end(&self) -> Result<(HeldSlot, LeaseClock), Loss> {
        let mut st = self.state();
        let was_held = st.clock.phase() == Phase::Held;
        let clock = st.clock;
        match st.clock.end(Instant::now()) {
            Ok(()) => {
                self.unschedule(&mut st);
                // The slot is only ever taken by `end` or a loss, and both end the clock.
                Ok((st.slot.take().expect("a held lock has its slot"), clock))
            }
            Err(loss) => {
                if was_held {
                    self.lost_now(&mut st, loss);
                }
                Err(loss)
            }
        }
    }

    /// Resolves when the lock is lost (at once if it is); never while it is held, and never
    /// after it was released without being lost.
    pub(crate) async fn lost(self: Arc<Self>) {
        {
            loop {
                let changed = self.changed.notified();
                let mut changed = std::pin::pin!(changed);
                // Registered before the state is read, so a loss in between is not missed.
                changed.as_mut().enable();
                let deadline = {
                    let mut st = self.state();
                    self.expire_if_due(&mut st, Instant::now());
                    match st.clock.phase() {
                        Phase::Held => Some(st.clock.deadline()),
                        Phase::Lost(_) => return,
                        Phase::Ended => None,
                    }
                };
                let Some(deadline) = deadline else {
                    // Released without being lost: it never will be.
                    return std::future::pending().await;
                };
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}

/// The one owner of a held lock: the guard's, or a baton's on its way to a local waiter.
/// Dropped without being taken apart, it releases the lock in the background (without a
/// handover) and passes the local slot on once that is done.
pub(crate) struct Owned(Option<Arc<Hold>>);

impl Owned {
    pub(crate) fn hold(&self) -> &Arc<Hold> {
        // `None` only after `into_hold`, which consumes the value.
        self.0.as_ref().expect("an owned lock has its hold")
    }

    /// Takes the hold out; the caller is now responsible for releasing it.
    pub(crate) fn into_hold(mut self) -> Arc<Hold> {
        self.0.take().expect("an owned lock has its hold")
    }
}

impl fmt::Debug for Owned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Owned").field(&self.0).finish()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let Some(hold) = self.0.take() else {
            return;
        };
        if let Ok((slot, _)) = hold.end() {
            hold.store
                .spawn_release(hold.names.clone(), vec![hold.token.clone()], move || {
                    drop(slot)
                });
        }
    }
}

/// The per-`Locker` queue of holds, ordered by when they next need attention.
#[derive(Debug)]
pub(crate) struct Timers {
    queue: Mutex<BTreeMap<(Instant, u64), Arc<Hold>>>,
    next_id: AtomicU64,
    wake: Notify,
    /// Reference point for `armed`.
    epoch: Instant,
    /// Nanoseconds after `epoch` at which the scheduler wakes next at the latest.
    armed: AtomicU64,
    /// Whether the scheduler task runs. It starts when a hold registers and none runs (the first
    /// hold, or the first after the runtime that ran the task shut down), on that hold's
    /// runtime.
    running: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Longest sleep of an idle scheduler. Bounds how far `armed` can lag behind the queue, so a
/// hold registered while the scheduler sleeps is never looked at later than this after it is
/// due.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The lease scheduler of one `Locker`, shared by its clones and by every lock it holds; the
/// last one gone stops the task.
#[derive(Debug)]
pub(crate) struct Scheduler {
    timers: Arc<Timers>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.timers.task).take() {
            task.abort();
        }
    }
}

impl Scheduler {
    /// A scheduler whose task starts with the first hold.
    pub(crate) fn new() -> Arc<Scheduler> {
        Arc::new(Scheduler {
            timers: Arc::new(Timers {
                queue: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(0),
                wake: Notify::new(),
                epoch: Instant::now(),
                armed: AtomicU64::new(0),
                running: AtomicBool::new(false),
                task: Mutex::new(None),
            }),
        })
    }
}

/// Marks the scheduler task stopped however it ends (an abort, its runtime shutting down).
struct Running(Arc<Timers>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

impl Timers {
    /// Starts the scheduler task if none runs (holds register from async code, so a runtime is
    /// there): a `Locker` used from a second runtime after the first one shut down renews its
    /// locks on the second.
    fn ensure_running(self: &Arc<Self>) {
        if self.running.load(Ordering::Acquire) {
            return;
        }
        let mut task = lock(&self.task);
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Running(self.clone());
        let timers = self.clone();
        *task = Some(tokio::spawn(async move {
            let _running = running;
            timers.run().await;
        }));
    }

    fn armed_until(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.armed.load(Ordering::Acquire))
    }

    fn first_due(&self) -> Option<Instant> {
        lock(&self.queue).keys().next().map(|(due, _)| *due)
    }

    /// Sleeps until the earliest hold is due (at most `IDLE_TICK`, or less when an earlier one
    /// is added), then gives every due hold its turn.
    async fn run(self: Arc<Self>) {
        loop {
            let idle = Instant::now() + IDLE_TICK;
            let until = self.first_due().map_or(idle, |due| due.min(idle));
            let nanos =
                u64::try_from(until.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
            self.armed.store(nanos, Ordering::Release);
            // A hold added between reading the queue and storing `armed` saw an older, earlier
            // `armed` and may not have woken us; look again before sleeping.
            if self.first_due().is_none_or(|due| due >= until) {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = self.wake.notified() => {}
                }
            }
            let now = Instant::now();
            let due: Vec<Arc<Hold>> = {
                let mut queue = lock(&self.queue);
                let later = queue.split_off(&(now, u64::MAX));
                std::mem::replace(&mut *queue, later)
                    .into_values()
                    .collect()
            };
            for hold in due {
                hold.fire(now);
            }
        }
    }
}
