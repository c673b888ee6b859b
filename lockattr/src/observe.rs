//! Tracing spans and events, and (with the `metrics` feature) metrics, for every lock outcome.
//!
//! Spans (target `lockattr`, level info), so that a trace shows how long a request waited for
//! a lock and how long it held it:
//!
//! * `lock.acquire`: from the request until the lock is held or the wait ends. Fields `key`,
//!   `wait` (the budget), and, when it ends, `waited`, `outcome` (`acquired`, `timed out`,
//!   `failed`) and, when acquired with a fencing token at once (through a script, a grant or a
//!   handover), `fencing_token`.
//! * `lock.held`: the critical section, from the acquisition until the guard is released or
//!   dropped. Fields `key`, `fencing_token` (at once when known; for a lock taken by the fast
//!   path, when the holder first asks for it), and, when it ends, `held` and `outcome`
//!   (`released`, `lost`, `failed`: Redis did not confirm the release, or `dropped`: released
//!   in the background). Under [`LockRequest::run`](crate::LockRequest::run) and the attribute
//!   the body runs inside it, so the body's own spans are its children.
//!
//! A re-entrant call (a nested `run` for a key the task holds) opens no spans.
//!
//! Events (target `lockattr`): `acquired` (debug: key, waited, fencing token when known),
//! `fenced` (debug: a fast-path lock's token issued), `handed_off` (trace), `timed_out` (info),
//! `renew_failed` (warn), `lost` (warn), `released` (trace).
//!
//! Metrics (feature `metrics`, through the `metrics` facade): counters
//! `lockattr_acquired_total`, `lockattr_timeouts_total`, `lockattr_lost_total`,
//! `lockattr_renew_failures_total`, `lockattr_handoffs_total`, and the histogram
//! `lockattr_wait_seconds`.

use std::time::Duration;

use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Span;

use crate::Error;

/// A new `lock.acquire` span (see the module docs), a child of the current span.
pub(crate) fn acquire_span(key: &str, wait: Duration) -> Span {
    tracing::info_span!(
        target: "lockattr",
        "lock.acquire",
        key,
        ?wait,
        waited = Empty,
        outcome = Empty,
        fencing_token = Empty,
    )
}

/// Records how the acquisition of `span`, started at `started`, ended.
pub(crate) fn acquire_ended(span: &Span, started: Instant, result: Result<Option<u64>, &Error>) {
    if span.is_disabled() {
        // Nobody listens: recording would still build every value (and read the clock).
        return;
    }
    span.record("waited", tracing::field::debug(started.elapsed()));
    match result {
        Ok(fence) => {
            span.record("outcome", "acquired");
            if let Some(fence) = fence {
                span.record("fencing_token", fence);
            }
        }
        Err(Error::Timeout { .. }) => {
            span.record("outcome", "timed out");
        }
        Err(_) => {
            span.record("outcome", "failed");
        }
    }
}

/// A new `lock.held` span (see the module docs), a child of the current span.
pub(crate) fn held_span(key: &str, fencing_token: Option<u64>) -> Span {
    let span = tracing::info_span!(
        target: "lockattr",
        "lock.held",
        key,
        fencing_token = Empty,
        held = Empty,
        outcome = Empty,
    );
    if let Some(fence) = fencing_token {
        span.record("fencing_token", fence);
    }
    span
}

/// Records the fencing token of the `lock.held` span `span`, issued after it began.
pub(crate) fn held_fenced(span: &Span, fencing_token: u64) {
    span.record("fencing_token", fencing_token);
}

/// Records how the critical section of `span`, which began at `since`, ended.
pub(crate) fn held_ended(span: &Span, since: Instant, outcome: &'static str) {
    if span.is_disabled() {
        return;
    }
    span.record("held", tracing::field::debug(since.elapsed()));
    span.record("outcome", outcome);
}

/// The `lock.held` outcome of a release that returned `result`.
pub(crate) fn release_outcome(result: &Result<(), Error>) -> &'static str {
    match result {
        Ok(()) => "released",
        Err(Error::Lost { .. }) => "lost",
        Err(_) => "failed",
    }
}

pub(crate) fn acquired(key: &str, waited: Duration, fencing_token: Option<u64>) {
    tracing::debug!(target: "lockattr", key, ?waited, fencing_token, "lock acquired");
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("lockattr_acquired_total").increment(1);
        metrics::histogram!("lockattr_wait_seconds").record(waited.as_secs_f64());
    }
}

pub(crate) fn fenced(key: &str, fencing_token: u64) {
    tracing::debug!(target: "lockattr", key, fencing_token, "fencing token issued");
}

pub(crate) fn handed_off(key: &str, fencing_token: Option<u64>) {
    tracing::trace!(target: "lockattr", key, fencing_token, "lock handed to a local waiter");
    #[cfg(feature = "metrics")]
    metrics::counter!("lockattr_handoffs_total").increment(1);
}

pub(crate) fn timed_out(key: &str, waited: Duration) {
    tracing::info!(target: "lockattr", key, ?waited, "lock wait timed out");
    #[cfg(feature = "metrics")]
    metrics::counter!("lockattr_timeouts_total").increment(1);
}

pub(crate) fn renew_failed(key: &str, error: &crate::Error) {
    tracing::warn!(target: "lockattr", key, %error, "lease renewal failed; retrying until the lease runs out");
    #[cfg(feature = "metrics")]
    metrics::counter!("lockattr_renew_failures_total").increment(1);
}

pub(crate) fn lost(key: &str, why: &str) {
    tracing::warn!(target: "lockattr", key, why, "lock lost");
    #[cfg(feature = "metrics")]
    metrics::counter!("lockattr_lost_total").increment(1);
}

pub(crate) fn released(key: &str) {
    tracing::trace!(target: "lockattr", key, "lock released");
}
