//! Lease upkeep for every lock a `Locker` holds: one scheduler task per `Locker` instead of a
//! task per guard.
//!
//! A held lock registers a *job* with the time it next needs attention: lease/3 from now to be
//! renewed, or the end of a fixed lease to be declared lost. Registering and cancelling cost a
//! mutex and a map update, so short critical sections (the common case) never spawn or wake
//! anything; a renewal task is spawned only when a lock is actually held long enough to need
//! one. Cancellation is immediate: a released job is removed from the queue, and a renewal
//! already running checks the release flag before it re-registers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::key::RedisNames;
use crate::locker::{millis, Locker};
use crate::observe;
use crate::scripts;
use crate::Error;

/// What the guard, its job and the scheduler share about one held lock.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) locker: Locker,
    pub(crate) key: Arc<str>,
    pub(crate) names: Arc<RedisNames>,
    pub(crate) token: String,
    pub(crate) renew: bool,
    /// Set once, when the lock is found lost; `lost_changed` wakes whoever waits for that.
    lost: AtomicBool,
    lost_changed: Notify,
    timing: Mutex<Timing>,
    /// Set when the guard is released or dropped: nothing may renew the lock after that.
    released: AtomicBool,
}

#[derive(Clone, Copy, Debug)]
struct Timing {
    /// When the lease runs out at the earliest, in local time: measured from the moment the
    /// command that set it was *sent*, so it is never later than Redis's own expiry.
    deadline: Instant,
    lease: Duration,
    /// The job's place in the scheduler's queue, if it is queued.
    queued: Option<(Instant, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single assignment or map operation; a panic
    // elsewhere cannot leave them half-done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Job {
    pub(crate) fn new(
        locker: Locker,
        key: Arc<str>,
        names: Arc<RedisNames>,
        token: String,
        lease: Duration,
        renew: bool,
        deadline: Instant,
    ) -> Arc<Job> {
        let job = Arc::new(Job {
            locker,
            key,
            names,
            token,
            renew,
            lost: AtomicBool::new(false),
            lost_changed: Notify::new(),
            timing: Mutex::new(Timing {
                deadline,
                lease,
                queued: None,
            }),
            released: AtomicBool::new(false),
        });
        job.schedule(job.next_due(Instant::now(), false));
        job
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the lock lost; returns `true` the first time.
    pub(crate) fn mark_lost(&self, why: &str) -> bool {
        let first = !self.lost.swap(true, Ordering::AcqRel);
        if first {
            self.lost_changed.notify_waiters();
            observe::lost(&self.key, why);
        }
        first
    }

    /// Resolves once the lock is lost (at once if it already is).
    pub(crate) async fn wait_lost(&self) {
        loop {
            let changed = self.lost_changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the flag is read, so a loss in between is not missed.
            changed.as_mut().enable();
            if self.is_lost() {
                return;
            }
            changed.await;
        }
    }

    pub(crate) fn lease(&self) -> Duration {
        lock(&self.timing).lease
    }

    pub(crate) fn deadline(&self) -> Instant {
        lock(&self.timing).deadline
    }

    /// Records a successful renewal or extension sent at `sent_at`.
    pub(crate) fn renewed(self: &Arc<Self>, sent_at: Instant, lease: Duration) {
        {
            let mut t = lock(&self.timing);
            t.deadline = sent_at + lease;
            t.lease = lease;
        }
        if !self.renew {
            // A fixed lease that was extended: look again at the new deadline.
            self.schedule(sent_at + lease);
        }
    }

    /// When the job next needs attention: the next renewal, or the end of a fixed lease.
    ///
    /// A renewal is due after lease/3, but never later than halfway through what is left of
    /// the current lease: a lock can start with less than its own lease left (a direct grant
    /// carries at most 2 s; an early handover runs on the old holder's lease until Redis
    /// confirms), and a renewal due only at the deadline would find the lease already over.
    fn next_due(&self, from: Instant, retry_soon: bool) -> Instant {
        let t = *lock(&self.timing);
        if !self.renew {
            return t.deadline;
        }
        let step = if retry_soon {
            (t.lease / 10).min(Duration::from_millis(250))
        } else {
            t.lease / 3
        };
        let half_left = (t.deadline.saturating_duration_since(from) / 2).max(MIN_STEP);
        t.deadline.min(from + step.min(half_left))
    }

    fn schedule(self: &Arc<Self>, due: Instant) {
        if self.released.load(Ordering::Acquire) {
            return;
        }
        let timers = &self.locker.inner.timers;
        let id = timers.next_id.fetch_add(1, Ordering::Relaxed);
        let mut queue = lock(&timers.queue);
        // Under the queue lock, so `cancel` either sees the new place or runs before it and
        // set `released`, which is checked again here.
        if self.released.load(Ordering::Acquire) {
            return;
        }
        let mut t = lock(&self.timing);
        if let Some(old) = t.queued.take() {
            queue.remove(&old);
        }
        t.queued = Some((due, id));
        drop(t);
        queue.insert((due, id), self.clone());
        drop(queue);
        // Wake the scheduler only if it sleeps past this job; with the usual leases (renewal
        // due lease/3 from now) it is already armed earlier, and acquiring costs no wake-up.
        if due < timers.armed_until() {
            timers.wake.notify_one();
        }
    }

    /// Stops all upkeep: called when the guard is released, dropped or handed over.
    pub(crate) fn cancel(&self) {
        self.released.store(true, Ordering::Release);
        let timers = &self.locker.inner.timers;
        let mut queue = lock(&timers.queue);
        if let Some(place) = lock(&self.timing).queued.take() {
            queue.remove(&place);
        }
    }

    /// The job's turn came: declare a run-out lease lost, or renew.
    fn fire(self: Arc<Self>, now: Instant) {
        lock(&self.timing).queued = None;
        if self.released.load(Ordering::Acquire) {
            return;
        }
        let deadline = self.deadline();
        if now >= deadline {
            self.mark_lost("the lease ran out before it could be renewed");
            return;
        }
        if !self.renew {
            self.schedule(deadline); // extended meanwhile
            return;
        }
        tokio::spawn(self.renew_once());
    }

    async fn renew_once(self: Arc<Self>) {
        let lease = lock(&self.timing).lease;
        let renew = scripts::renew(&self.names, &self.token, millis(lease));
        let sent_at = Instant::now();
        let res: Result<i64, Error> = self.locker.eval("renew", &renew).await;
        if self.released.load(Ordering::Acquire) {
            return;
        }
        match res {
            Ok(1) => {
                self.renewed(sent_at, lease);
                self.schedule(self.next_due(sent_at, false));
            }
            Ok(_) => {
                self.mark_lost("renewal found the lock expired or owned by another token");
            }
            Err(e) => {
                observe::renew_failed(&self.key, &e);
                let now = Instant::now();
                if now >= self.deadline() {
                    self.mark_lost("Redis could not be reached before the lease ran out");
                } else {
                    self.schedule(self.next_due(now, true));
                }
            }
        }
    }
}

/// The per-`Locker` queue of jobs, ordered by due time.
#[derive(Debug)]
pub(crate) struct Timers {
    queue: Mutex<BTreeMap<(Instant, u64), Arc<Job>>>,
    next_id: AtomicU64,
    wake: Notify,
    /// Reference point for `armed`.
    epoch: Instant,
    /// Nanoseconds after `epoch` at which the scheduler wakes next at the latest.
    armed: AtomicU64,
}

/// Shortest interval between two attempts at renewing one lock.
const MIN_STEP: Duration = Duration::from_millis(1);

/// Longest sleep of an idle scheduler. Bounds how far `armed` can lag behind the queue, so a
/// job registered while the scheduler sleeps is never woken later than this after it is due.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Aborts the scheduler task when the `Locker` (its last clone) is dropped.
#[derive(Debug)]
pub(crate) struct SchedulerTask(pub(crate) JoinHandle<()>);

impl Drop for SchedulerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers {
            queue: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            wake: Notify::new(),
            epoch: Instant::now(),
            armed: AtomicU64::new(0),
        }
    }

    fn armed_until(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.armed.load(Ordering::Acquire))
    }

    /// Runs the queue: sleeps until the earliest job is due (at most `IDLE_TICK`, or less when
    /// an earlier job is added), then fires every due job.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            let first = lock(&self.queue).keys().next().map(|(due, _)| *due);
            let idle = Instant::now() + IDLE_TICK;
            let until = first.map_or(idle, |due| due.min(idle));
            let nanos =
                u64::try_from(until.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
            self.armed.store(nanos, Ordering::Release);
            // A job added between reading the queue and storing `armed` saw an older, earlier
            // `armed` and may not have notified; look again before sleeping.
            let first_now = lock(&self.queue).keys().next().map(|(due, _)| *due);
            if first_now.is_none_or(|due| due >= until) {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = self.wake.notified() => {}
                }
            }
            let now = Instant::now();
            let due: Vec<Arc<Job>> = {
                let mut queue = lock(&self.queue);
                let later = queue.split_off(&(now, u64::MAX));
                std::mem::replace(&mut *queue, later)
                    .into_values()
                    .collect()
            };
            for job in due {
                job.fire(now);
            }
        }
    }
}
