//! The contended, forced-handoff scenario: W tasks (in one or two processes) take turns on one
//! key.
//!
//! Each task loops { wait for the lock; record `t_acquired`; body; record `t_release_start`;
//! release }. Two rules force every acquisition to be a real handoff to a task that was already
//! waiting:
//! - after releasing, a task does not queue again until some other task of its process has
//!   acquired the lock (a spin lock would otherwise mostly re-acquire its own release);
//! - a holder does not release before the previous holder of its process has queued again (its
//!   acquire future has been polled once), so with short bodies the released lock goes to one of
//!   the waiters rather than to a task that arrives just after the release.
//!
//! Handoffs that are not real anyway (same task again, or a next holder that started waiting only
//! after the release) are counted and left out of the handoff statistics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::now_ns;
use crate::impls::LockImpl;
use crate::stats::Summary;

/// How long a task may wait for the lock past the run's deadline before it counts as an error
/// (the tasks already queued at the deadline still get their turn).
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One acquisition, timestamps in [`now_ns`] nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub proc_id: u32,
    pub task: u32,
    pub t_wait: u64,
    pub t_acq: u64,
    pub t_rel: u64,
}

impl Record {
    pub fn line(&self) -> String {
        format!(
            "REC {} {} {} {} {}",
            self.proc_id, self.task, self.t_wait, self.t_acq, self.t_rel
        )
    }

    pub fn parse(line: &str) -> Option<Record> {
        let mut it = line.strip_prefix("REC ")?.split(' ');
        let mut next = || it.next()?.parse::<u64>().ok();
        Some(Record {
            proc_id: u32::try_from(next()?).ok()?,
            task: u32::try_from(next()?).ok()?,
            t_wait: next()?,
            t_acq: next()?,
            t_rel: next()?,
        })
    }
}

/// What one process runs.
#[derive(Debug, Clone)]
pub struct TaskParams {
    pub key: String,
    pub tasks: u32,
    /// Stop starting new acquisitions after this many (in this process).
    pub max_acquisitions: u64,
    /// Stop starting new acquisitions at this [`now_ns`] instant.
    pub deadline_ns: u64,
    pub body: Duration,
    pub body_mode: BodyMode,
    pub proc_id: u32,
}

/// What one process observed.
#[derive(Debug, Default)]
pub struct ProcOutcome {
    pub records: Vec<Record>,
    /// Acquisitions that found another task of this process inside the critical section.
    pub inside_violations: u64,
    pub errors: Vec<String>,
}

struct Shared {
    /// Acquisitions so far in this process (also the forced-handoff gate).
    seq: AtomicU64,
    /// Acquisitions begun (bounded by `max_acquisitions`).
    started: AtomicU64,
    /// Highest acquisition number whose holder has queued again (or stopped) since releasing.
    requeued: AtomicU64,
    requeued_changed: Notify,
    inside: AtomicBool,
    inside_violations: AtomicU64,
    acquired: Notify,
    errors: Mutex<Vec<String>>,
}

/// Runs `params.tasks` tasks against `imp` until the deadline or the acquisition budget.
pub async fn run_tasks(imp: Arc<dyn LockImpl>, params: TaskParams) -> ProcOutcome {
    let shared = Arc::new(Shared {
        seq: AtomicU64::new(0),
        started: AtomicU64::new(0),
        requeued: AtomicU64::new(0),
        requeued_changed: Notify::new(),
        inside: AtomicBool::new(false),
        inside_violations: AtomicU64::new(0),
        acquired: Notify::new(),
        errors: Mutex::new(Vec::new()),
    });
    let params = Arc::new(params);
    let mut handles = Vec::new();
    for task in 0..params.tasks {
        let (imp, shared, params) = (imp.clone(), shared.clone(), params.clone());
        handles.push(tokio::spawn(async move {
            task_loop(&*imp, &shared, &params, task).await
        }));
    }
    // Everything is bounded by the deadline plus the drain grace; this is the backstop.
    let budget_ns = params.deadline_ns.saturating_sub(now_ns())
        + u64::try_from(DRAIN_GRACE.as_nanos()).unwrap_or(u64::MAX)
        + 5_000_000_000;
    let hard_deadline = tokio::time::Instant::now() + Duration::from_nanos(budget_ns);
    let mut out = ProcOutcome::default();
    for mut h in handles {
        match tokio::time::timeout_at(hard_deadline, &mut h).await {
            Ok(Ok(records)) => out.records.extend(records),
            Ok(Err(e)) => out.errors.push(format!("task failed: {e}")),
            Err(_) => {
                h.abort();
                out.errors.push("task did not finish in time".to_owned());
            }
        }
    }
    out.inside_violations = shared.inside_violations.load(Ordering::SeqCst);
    out.errors.extend(
        shared
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..),
    );
    out
}

async fn task_loop(
    imp: &dyn LockImpl,
    shared: &Shared,
    params: &TaskParams,
    task: u32,
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut last_seq: Option<u64> = None;
    let wait = Duration::from_nanos(params.deadline_ns.saturating_sub(now_ns())) + DRAIN_GRACE;
    loop {
        if let Some(mine) = last_seq {
            if params.tasks > 1 {
                wait_until(&shared.acquired, params.deadline_ns, || {
                    shared.seq.load(Ordering::SeqCst) > mine
                })
                .await;
            }
        }
        if now_ns() >= params.deadline_ns
            || shared.started.fetch_add(1, Ordering::SeqCst) >= params.max_acquisitions
        {
            if let Some(mine) = last_seq {
                mark_requeued(shared, mine);
            }
            break;
        }
        let t_wait = now_ns();
        let mut acquire = imp.acquire(&params.key, wait);
        let mut first_poll = true;
        let held = std::future::poll_fn(|cx| {
            let r = acquire.as_mut().poll(cx);
            if std::mem::take(&mut first_poll) {
                if let Some(mine) = last_seq {
                    mark_requeued(shared, mine);
                }
            }
            r
        })
        .await;
        let held = match held {
            Ok(h) => h,
            Err(e) => {
                push_error(shared, format!("task {task}: acquire: {e:#}"));
                break;
            }
        };
        let t_acq = now_ns();
        if shared.inside.swap(true, Ordering::SeqCst) {
            shared.inside_violations.fetch_add(1, Ordering::SeqCst);
        }
        let mine = shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        shared.acquired.notify_waiters();
        body(t_acq, params.body, params.body_mode).await;
        if params.tasks > 1 && mine > 1 {
            // Bounded: the previous holder queues within microseconds, or has stopped.
            let until = now_ns() + 20_000_000;
            wait_until(&shared.requeued_changed, until, || {
                shared.requeued.load(Ordering::SeqCst) >= mine - 1
            })
            .await;
        }
        shared.inside.store(false, Ordering::SeqCst);
        let t_rel = now_ns();
        if let Err(e) = held.release().await {
            push_error(shared, format!("task {task}: release: {e:#}"));
        }
        records.push(Record {
            proc_id: params.proc_id,
            task,
            t_wait,
            t_acq,
            t_rel,
        });
        last_seq = Some(mine);
    }
    records
}

fn mark_requeued(shared: &Shared, seq: u64) {
    shared.requeued.fetch_max(seq, Ordering::SeqCst);
    shared.requeued_changed.notify_waiters();
}

fn push_error(shared: &Shared, e: String) {
    let mut errors = shared.errors.lock().unwrap_or_else(|p| p.into_inner());
    if errors.len() < 20 {
        errors.push(e);
    }
}

/// Waits until `done()` holds or the `deadline_ns` instant, re-checking on every `notify`.
async fn wait_until(notify: &Notify, deadline_ns: u64, done: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = now_ns();
        if done() || now >= deadline_ns {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_nanos(deadline_ns - now), notified).await;
    }
}

/// What the critical section does for its `body` time (tokio's timer has 1 ms granularity, too
/// coarse for a 1 ms body, so neither mode uses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BodyMode {
    /// Busy until `t_acq + body`, yielding to the scheduler between clock reads so the worker
    /// thread stays available: a CPU-bound critical section, exact to a few µs.
    #[value(
        help = "busy until the end, yielding between clock reads: exact, but competes for \
        the CPU with Redis and the lock's own work"
    )]
    Spin,
    /// `std::thread::sleep` on the blocking pool: an I/O-like critical section that leaves the
    /// CPU free, typically 50-100 µs longer than asked (timer slack, thread wake-up).
    #[value(
        help = "std::thread::sleep on the blocking pool: CPU-free, ~60-100 µs longer than \
        asked"
    )]
    Sleep,
    /// `Sleep` until [`EXACT_SPIN`] before the end, then `Spin` to the end: CPU-free for most
    /// of the body like `Sleep`, and as exact as `Spin`.
    #[value(
        help = "sleep on the blocking pool for all but the last 200 µs, which are spun: \
        CPU-free for most of the body and exact to a few µs"
    )]
    Exact,
}

/// How much of an `exact` body is spun rather than slept: more than a blocking-pool sleep
/// overshoots on this kind of machine.
const EXACT_SPIN: Duration = Duration::from_micros(200);

impl BodyMode {
    pub fn id(self) -> &'static str {
        match self {
            BodyMode::Spin => "spin",
            BodyMode::Sleep => "sleep",
            BodyMode::Exact => "exact",
        }
    }
}

async fn body(t_acq: u64, body: Duration, mode: BodyMode) {
    if body.is_zero() {
        return;
    }
    let end = t_acq + u64::try_from(body.as_nanos()).unwrap_or(u64::MAX);
    match mode {
        BodyMode::Spin => {
            while now_ns() < end {
                tokio::task::yield_now().await;
            }
        }
        BodyMode::Sleep => {
            let left = Duration::from_nanos(end.saturating_sub(now_ns()));
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
        }
        BodyMode::Exact => {
            let spin_ns = u64::try_from(EXACT_SPIN.as_nanos()).unwrap_or(u64::MAX);
            let sleep = Duration::from_nanos(end.saturating_sub(now_ns() + spin_ns));
            if !sleep.is_zero() {
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(sleep)).await;
            }
            while now_ns() < end {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The numbers a row of the contended table shows.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub acquisitions: usize,
    /// Acquisitions per second between the first and the last acquisition before the deadline.
    pub rate: Option<f64>,
    /// Handoffs to a different, already waiting task (before the deadline).
    pub handoff: Summary,
    /// Every handoff counted in `handoff`, ascending (for the plot).
    pub handoff_samples: Vec<u64>,
    pub handoff_mean_ns: Option<u64>,
    /// The subset of `handoff` between processes.
    pub cross_handoff: Summary,
    pub same_proc_handoff: Summary,
    /// Consecutive acquisitions by the same task (excluded from `handoff`).
    pub self_handoffs: usize,
    /// Next holder was not waiting yet at release (excluded from `handoff`).
    pub idle_handoffs: usize,
    pub wait: Summary,
    /// Mean time inside the critical section.
    pub body_mean_ns: Option<u64>,
    /// Overlapping [t_acq, t_rel] intervals plus in-process "inside" collisions.
    pub violations: u64,
}

impl Analysis {
    /// Share of the time the lock was inside a critical section: acquisitions/s × mean measured
    /// body. This is "acquisitions/s ÷ (1/body)" with the body the tasks actually spent (a sleep
    /// overshoots its nominal time by tens of µs; that is not the lock's doing).
    pub fn busy_share(&self) -> Option<f64> {
        Some(self.rate? * self.body_mean_ns? as f64 / 1e9)
    }
}

/// Merges the records of all processes and computes the row.
pub fn analyze(mut records: Vec<Record>, inside_violations: u64, deadline_ns: u64) -> Analysis {
    records.sort_by_key(|r| r.t_acq);
    let mut a = Analysis {
        acquisitions: records.len(),
        violations: inside_violations,
        ..Analysis::default()
    };
    let mut max_end = 0u64;
    for r in &records {
        if r.t_acq < max_end {
            a.violations += 1;
        }
        max_end = max_end.max(r.t_rel);
    }
    let (mut all, mut cross, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for w in records.windows(2) {
        let (prev, next) = (&w[0], &w[1]);
        if next.t_acq > deadline_ns {
            break;
        }
        if (prev.proc_id, prev.task) == (next.proc_id, next.task) {
            a.self_handoffs += 1;
        } else if next.t_wait > prev.t_rel {
            a.idle_handoffs += 1;
        } else {
            let h = next.t_acq.saturating_sub(prev.t_rel);
            all.push(h);
            if prev.proc_id == next.proc_id {
                same.push(h);
            } else {
                cross.push(h);
            }
        }
    }
    if !all.is_empty() {
        a.handoff_mean_ns = Some(all.iter().sum::<u64>() / all.len() as u64);
    }
    all.sort_unstable();
    a.handoff = Summary::of(all.clone());
    a.handoff_samples = all;
    a.cross_handoff = Summary::of(cross);
    a.same_proc_handoff = Summary::of(same);
    a.wait = Summary::of(records.iter().map(|r| r.t_acq - r.t_wait).collect());
    if !records.is_empty() {
        let total: u64 = records.iter().map(|r| r.t_rel - r.t_acq).sum();
        a.body_mean_ns = Some(total / records.len() as u64);
    }
    let in_window: Vec<u64> = records
        .iter()
        .map(|r| r.t_acq)
        .filter(|&t| t <= deadline_ns)
        .collect();
    if let (Some(first), Some(last)) = (in_window.first(), in_window.last()) {
        if last > first {
            a.rate = Some((in_window.len() - 1) as f64 * 1e9 / (last - first) as f64);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(proc_id: u32, task: u32, t_wait: u64, t_acq: u64, t_rel: u64) -> Record {
        Record {
            proc_id,
            task,
            t_wait,
            t_acq,
            t_rel,
        }
    }

    #[test]
    fn handoffs_are_classified_and_overlaps_counted() {
        let records = vec![
            rec(0, 0, 0, 10, 20),
            rec(1, 1, 5, 25, 30),  // cross-process handoff of 5
            rec(1, 2, 6, 32, 40),  // same-process handoff of 2
            rec(1, 2, 41, 50, 60), // self handoff
            rec(0, 3, 70, 80, 90), // was not waiting at release: idle
            rec(0, 4, 71, 85, 95), // overlaps the previous interval
        ];
        let a = analyze(records, 0, u64::MAX);
        assert_eq!(a.acquisitions, 6);
        assert_eq!(a.self_handoffs, 1);
        assert_eq!(a.idle_handoffs, 1);
        assert_eq!(a.violations, 1);
        assert_eq!(a.cross_handoff.p50, Some(5));
        assert_eq!(a.same_proc_handoff.n, 2);
        assert_eq!(a.handoff.n, 3);
    }

    #[test]
    fn record_lines_round_trip() {
        let r = rec(1, 7, 3, 4, 5);
        let back = Record::parse(&r.line()).expect("parses");
        assert_eq!(
            (back.proc_id, back.task, back.t_wait, back.t_acq, back.t_rel),
            (1, 7, 3, 4, 5)
        );
    }
}
