//! A tiny seedable pseudo-random generator (SplitMix64) for fault injection and chaos.
//!
//! Tests print the seed they used, so a failing run can be replayed with the same choices
//! (`LOCKATTR_HISTORY_SEED` for the history test). Statistical quality is irrelevant here;
//! what matters is that it is deterministic, dependency-free and cheap.

use std::ops::Range;
use std::time::Duration;

/// SplitMix64: every seed gives a distinct, well-mixed sequence.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator that yields the same sequence for the same seed.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A seed taken from the clock and the process id, for runs that need no replay.
    pub fn seed_from_time() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Truncation is fine: only the low bits vary between runs anyway.
        #[allow(clippy::cast_possible_truncation)]
        let nanos = nanos as u64;
        Rng::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `range` (which must not be empty).
    pub fn range(&mut self, range: Range<u64>) -> u64 {
        assert!(range.start < range.end, "empty range {range:?}");
        range.start + self.next_u64() % (range.end - range.start)
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        // 53 random bits fill an f64's mantissa exactly.
        #[allow(clippy::cast_precision_loss)]
        let x = (self.next_u64() >> 11) as f64;
        x / (1u64 << 53) as f64
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A duration uniformly in `[lo, hi]`, at microsecond resolution.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo_us, hi_us) = (micros(lo), micros(hi).max(micros(lo)));
        Duration::from_micros(self.range(lo_us..hi_us + 1))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_ranges_hold() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.range(3..9)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.range(3..9)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (3..9).contains(x)));
        assert!(
            (3..9).all(|v| xs.contains(&v)),
            "every value shows up: {xs:?}"
        );
        let mut c = Rng::new(8);
        for _ in 0..1000 {
            let u = c.unit();
            assert!((0.0..1.0).contains(&u));
            let d = c.duration(Duration::from_millis(1), Duration::from_millis(5));
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(5));
        }
    }
}
