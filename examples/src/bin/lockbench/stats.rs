//! Percentiles over nanosecond samples.

/// Nearest-rank percentile of an ascending slice (`q` in 0..=100); `None` when empty.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50 and p99 of unsorted samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
}

impl Summary {
    pub fn of(mut samples: Vec<u64>) -> Summary {
        samples.sort_unstable();
        Summary {
            n: samples.len(),
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
        }
    }
}

/// Nanoseconds as microseconds for a table cell (`–` when absent).
pub fn us(ns: Option<u64>) -> String {
    match ns {
        None => "–".to_owned(),
        Some(ns) if ns >= 10_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        Some(ns) => format!("{:.0} µs", ns as f64 / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
