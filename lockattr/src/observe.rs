//! Tracing events and (with the `metrics` feature) metrics for every lock outcome.
//!
//! Events (target `lockattr`): `acquired` (debug: key, waited, fencing token), `handed_off`
//! (trace), `timed_out` (info), `renew_failed` (warn), `lost` (warn), `released` (trace).
//!
//! Metrics (feature `metrics`, through the `metrics` facade): counters
//! `lockattr_acquired_total`, `lockattr_timeouts_total`, `lockattr_lost_total`,
//! `lockattr_renew_failures_total`, `lockattr_handoffs_total`, and the histogram
//! `lockattr_wait_seconds`.

use std::time::Duration;

pub(crate) fn acquired(key: &str, waited: Duration, fencing_token: u64) {
    tracing::debug!(target: "lockattr", key, ?waited, fencing_token, "lock acquired");
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("lockattr_acquired_total").increment(1);
        metrics::histogram!("lockattr_wait_seconds").record(waited.as_secs_f64());
    }
}

pub(crate) fn handed_off(key: &str, fencing_token: u64) {
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
