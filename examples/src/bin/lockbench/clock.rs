//! One clock for every process of a run.
//!
//! Handoff latency across processes is `t_acquired` in one process minus `t_release_start` in
//! another, so both must read the same clock. `std::time::Instant` is `CLOCK_MONOTONIC` on Linux
//! but exposes no absolute value, so the bench reads `CLOCK_MONOTONIC` directly: it is one
//! system-wide clock, shared by all processes, never stepped by NTP.

/// Nanoseconds on `CLOCK_MONOTONIC`, comparable across processes of this machine.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed `timespec` for the duration of the call and
    // `CLOCK_MONOTONIC` is always supported on Linux; the call writes only into `ts`.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    // Both fields are non-negative for CLOCK_MONOTONIC.
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A cheap xorshift generator for tokens and jitter (not for anything secret).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock, the process id and `salt`, so tasks and processes differ.
    pub fn new(salt: u64) -> Self {
        let seed = now_ns()
            ^ (u64::from(std::process::id()) << 32)
            ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0), bias irrelevant for jitter.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A 128-bit random hex token.
    pub fn token(&mut self) -> String {
        format!("{:016x}{:016x}", self.next_u64(), self.next_u64())
    }
}

/// CPU time consumed so far by all threads of this process, in nanoseconds (sum of
/// `/proc/self/task/*/schedstat`); `None` where that is not available.
pub fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        // A thread can exit between listing and reading; it then simply does not count.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}
