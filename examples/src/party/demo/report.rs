//! What one run of the join burst produced, and how the demo prints it.

use std::fmt::Write as _;
use std::time::Duration;

/// How one join request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 201: joined.
    Accepted,
    /// 409: the party was full.
    Full,
    /// 503: the lock could not be had (timeout, lost, Redis down).
    LockUnavailable,
    /// Any other status (a bug, or an overloaded database).
    OtherStatus(u16, String),
    /// No answer: connection error or the driver's per-request timeout.
    NoAnswer(String),
}

/// The result of one burst of joins against one party.
#[derive(Debug, Clone)]
pub struct ModeReport {
    /// The party the joins went to (its lock is `party:<id>`).
    pub party_id: i64,
    /// Whether the joins ran under the distributed lock.
    pub locked: bool,
    /// The party's capacity.
    pub capacity: i64,
    /// How many participants the party has afterwards, read back from the database.
    pub members: i64,
    /// Requests sent.
    pub requests: usize,
    /// 201 answers.
    pub accepted: usize,
    /// 409 answers.
    pub full: usize,
    /// 503 answers.
    pub lock_unavailable: usize,
    /// Other statuses.
    pub other_status: usize,
    /// Requests without an answer.
    pub no_answer: usize,
    /// The first unexpected answer or failure, for diagnosis.
    pub first_problem: Option<String>,
    /// Median request latency (answered requests).
    pub p50: Duration,
    /// 99th percentile request latency (answered requests).
    pub p99: Duration,
    /// From the first request sent to the last answer.
    pub wall: Duration,
}

impl ModeReport {
    /// Tallies `outcomes` (each with its latency).
    pub fn new(
        party_id: i64,
        locked: bool,
        capacity: i64,
        members: i64,
        outcomes: &[(Outcome, Duration)],
        wall: Duration,
    ) -> ModeReport {
        let mut report = ModeReport {
            party_id,
            locked,
            capacity,
            members,
            requests: outcomes.len(),
            accepted: 0,
            full: 0,
            lock_unavailable: 0,
            other_status: 0,
            no_answer: 0,
            first_problem: None,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            wall,
        };
        let mut latencies = Vec::with_capacity(outcomes.len());
        for (outcome, latency) in outcomes {
            match outcome {
                Outcome::Accepted => report.accepted += 1,
                Outcome::Full => report.full += 1,
                Outcome::LockUnavailable => report.lock_unavailable += 1,
                Outcome::OtherStatus(status, body) => {
                    report.other_status += 1;
                    report
                        .first_problem
                        .get_or_insert_with(|| format!("status {status}: {body}"));
                }
                Outcome::NoAnswer(why) => {
                    report.no_answer += 1;
                    report.first_problem.get_or_insert_with(|| why.clone());
                }
            }
            if !matches!(outcome, Outcome::NoAnswer(_)) {
                latencies.push(*latency);
            }
        }
        latencies.sort_unstable();
        report.p50 = percentile(&latencies, 50);
        report.p99 = percentile(&latencies, 99);
        report
    }

    /// Requests answered with anything but 201.
    pub fn rejected(&self) -> usize {
        self.full + self.lock_unavailable + self.other_status
    }

    /// Whether the party ended with more members than its capacity.
    pub fn overbooked(&self) -> bool {
        self.members > self.capacity
    }

    /// `"with lock"` or `"without lock"`.
    pub fn label(&self) -> &'static str {
        if self.locked {
            "with lock"
        } else {
            "without lock"
        }
    }

    /// The report line:
    /// `with lock: 8/8 joined (full, not overbooked) | 8 accepted, 192 rejected (192 full) | latency p50 .., p99 .. | wall ..`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{}: {}/{} joined ({}) | {} accepted, {} rejected",
            self.label(),
            self.members,
            self.capacity,
            self.verdict(),
            self.accepted,
            self.rejected()
        );
        let mut kinds = Vec::new();
        if self.full > 0 {
            kinds.push(format!("{} full", self.full));
        }
        if self.lock_unavailable > 0 {
            kinds.push(format!("{} lock unavailable", self.lock_unavailable));
        }
        if self.other_status > 0 {
            kinds.push(format!("{} other errors", self.other_status));
        }
        if !kinds.is_empty() {
            let _ = write!(line, " ({})", kinds.join(", "));
        }
        if self.no_answer > 0 {
            let _ = write!(line, ", {} unanswered", self.no_answer);
        }
        let _ = write!(
            line,
            " | latency p50 {}, p99 {} | wall {}",
            format_duration(self.p50),
            format_duration(self.p99),
            format_duration(self.wall)
        );
        line
    }

    fn verdict(&self) -> String {
        match self.members.cmp(&self.capacity) {
            std::cmp::Ordering::Greater => {
                format!("OVERBOOKED by {}", self.members - self.capacity)
            }
            std::cmp::Ordering::Equal => "full, not overbooked".to_owned(),
            std::cmp::Ordering::Less => format!("{} places left", self.capacity - self.members),
        }
    }
}

/// The `p`-th percentile (nearest rank) of sorted `values`; zero when empty.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank: the smallest value with at least p% of the values at or below it.
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// `"850 µs"`, `"12.3 ms"`, `"1.42 s"`.
pub fn format_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&values, 50), ms(50));
        assert_eq!(percentile(&values, 99), ms(99));
        assert_eq!(percentile(&values[..1], 99), ms(1));
        assert_eq!(percentile(&[ms(1), ms(9)], 50), ms(1));
        assert_eq!(percentile(&[ms(1), ms(9)], 99), ms(9));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn durations_are_readable() {
        assert_eq!(format_duration(Duration::from_micros(850)), "850 µs");
        assert_eq!(format_duration(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(format_duration(ms(1_420)), "1.42 s");
    }

    #[test]
    fn the_line_starts_with_members_over_capacity() {
        let mut outcomes = vec![(Outcome::Accepted, ms(5)); 11];
        outcomes.extend(vec![(Outcome::Full, ms(3)); 189]);
        let unlocked = ModeReport::new(1, false, 8, 11, &outcomes, ms(400));
        assert!(unlocked.overbooked());
        assert_eq!(unlocked.rejected(), 189);
        let line = unlocked.line();
        assert!(
            line.starts_with("without lock: 11/8 joined (OVERBOOKED by 3) | 11 accepted, 189 rejected (189 full)"),
            "{line}"
        );

        outcomes = vec![(Outcome::Accepted, ms(5)); 8];
        outcomes.push((Outcome::LockUnavailable, ms(100)));
        outcomes.push((Outcome::NoAnswer("connection reset".into()), ms(1)));
        let locked = ModeReport::new(2, true, 8, 8, &outcomes, ms(400));
        assert!(!locked.overbooked());
        assert_eq!(locked.p99, ms(100), "unanswered requests have no latency");
        let line = locked.line();
        assert!(
            line.starts_with("with lock: 8/8 joined (full, not overbooked) | 8 accepted, 1 rejected (1 lock unavailable), 1 unanswered"),
            "{line}"
        );
        assert_eq!(locked.first_problem.as_deref(), Some("connection reset"));
    }
}
