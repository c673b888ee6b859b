//! A clock that is comparable across the processes of one machine.
//!
//! `std::time::Instant` cannot be sent to another process, and the wall clock can jump. Linux's
//! `CLOCK_MONOTONIC` is one system-wide clock (the same counter in every process, never set
//! back), so critical sections recorded by different worker processes can be put on one time
//! line by the history checker.

/// Nanoseconds of `CLOCK_MONOTONIC`: comparable between processes on the same Linux machine.
///
/// # Panics
/// If `clock_gettime` fails, which it cannot for `CLOCK_MONOTONIC` on Linux.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // `clock_gettime` only writes the `timespec` it is given, which lives on this stack frame;
    // the workspace denies `unsafe_code`, so this test-support call opts out explicitly.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    let secs = u64::try_from(ts.tv_sec).expect("monotonic seconds are not negative");
    let nanos = u64::try_from(ts.tv_nsec).expect("nanoseconds are not negative");
    secs * 1_000_000_000 + nanos
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn advances_like_instant() {
        let (a, t) = (monotonic_ns(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (b, took) = (monotonic_ns(), t.elapsed());
        let diff = Duration::from_nanos(b - a);
        assert!(diff >= Duration::from_millis(20), "{diff:?}");
        // Both read the same clock; allow for the calls themselves being descheduled.
        assert!(
            diff <= took + Duration::from_millis(50),
            "{diff:?} vs {took:?}"
        );
    }
}
