//! Histories of critical sections, and the checker that judges them.
//!
//! A history test runs several worker processes ([`worker`]), each with several `Locker`s and
//! many tasks, that take locks on a few keys and, inside each critical section, increment a
//! per-key counter in Redis the unsafe way (`GET`, then a write of the value + 1). Every section
//! is recorded as a [`Section`]: its key, its fencing token, when it entered and exited on the
//! machine-wide monotonic clock ([`crate::clock`]), who ran it and how far its write got.
//!
//! The write is `MULTI; SET hist:{<key>}:counter <n+1>; RPUSH hist:{<key>}:writes <section id>;
//! EXEC`, so Redis itself keeps the list of the writes that landed, in the order they landed.
//! That makes the count exact even for a section cancelled while its write was in flight
//! (the runtime drops a body whose lock was lost): the log says whether it landed. Both keys
//! share the hash tag `{<key>}`, which is also the lock's: on a Redis Cluster the transaction
//! stays in one slot, on the master that holds the lock.
//!
//! [`check`] is a pure function of the records and the final Redis state ([`KeyState`]). Per
//! key, with sections sorted by enter time, it requires:
//!
//! - **no overlap**: a section enters only after every earlier section has exited;
//! - **unique fencing tokens**, present in every section;
//! - **tokens strictly increasing** in section order;
//! - **exact count**: the counter equals the number of writes that landed (a lost update, the
//!   visible harm of an overlap, makes it smaller); every write that completed is in the log;
//! - **writes in token order**: the log's tokens increase (a write landing after a newer
//!   holder's is what fencing tokens exist to reject).
//!
//! Each [`Violation`] names the sections involved with their times, so a report can be debugged
//! without the raw files.
//!
//! A [`Policy`] ([`check_with`]) lets some kinds be reported instead of failing the history:
//! across the failover of an asynchronously replicated Redis two holders can overlap and
//! counter writes can be lost (a documented caveat), and a test there still wants to see how
//! many, while it asserts on the rest (fencing tokens, liveness).

pub mod conn;
pub mod node_chaos;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

/// How far a section's increment got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The write was not sent (the section ended before it).
    None,
    /// The write was sent but the section was dropped before the reply: it may have landed.
    InFlight,
    /// Redis confirmed the write.
    Done,
}

/// How the lock call that ran a section ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The section ran to its end and the lock was released normally.
    Ok,
    /// The call returned `Error::Lost`: the lock was lost while the section ran (it was then
    /// cancelled) or, found at release, during it.
    Lost,
    /// Any other failure after the section had started (its text).
    Failed(String),
}

/// One critical section as a worker recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Unique per history: `p<process>.l<locker>.t<task>.<n>`.
    pub id: String,
    /// The lock key (as the caller wrote it).
    pub key: String,
    /// The fencing token seen inside the section (`None` if there was none).
    pub token: Option<u64>,
    /// When the section's body started, `CLOCK_MONOTONIC` ns.
    pub enter_ns: u64,
    /// When the body ended or was dropped, `CLOCK_MONOTONIC` ns.
    pub exit_ns: u64,
    /// Worker process number.
    pub process: u32,
    /// Locker number within the process.
    pub locker: u32,
    /// Task number within the locker.
    pub task: u32,
    /// How far the increment got.
    pub write: Write,
    /// How the lock call ended.
    pub outcome: Outcome,
}

/// A key's counter and write log in Redis at the end of a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyState {
    /// `GET hist:{<key>}:counter` (0 when absent).
    pub counter: u64,
    /// `LRANGE hist:{<key>}:writes 0 -1`: ids of the sections whose write landed, in order.
    pub writes: Vec<String>,
}

/// The Redis key of a history key's counter: `hist:{<key>}:counter`, in the slot of the lock
/// `<key>` (whose Redis key is `<namespace>:{<key>}` for keys that need no escaping).
pub fn counter_key(key: &str) -> String {
    format!("hist:{{{key}}}:counter")
}

/// The Redis key of a history key's write log, `hist:{<key>}:writes` (same slot).
pub fn writes_key(key: &str) -> String {
    format!("hist:{{{key}}}:writes")
}

/// Reads the final [`KeyState`] of `keys` over a direct connection: to the server, or a
/// cluster connection (`redis::cluster::ClusterConnection`).
///
/// # Errors
/// Any Redis error.
pub fn read_state(
    conn: &mut impl redis::ConnectionLike,
    keys: &[String],
) -> redis::RedisResult<BTreeMap<String, KeyState>> {
    let mut out = BTreeMap::new();
    for key in keys {
        let counter: Option<u64> = redis::cmd("GET").arg(counter_key(key)).query(conn)?;
        let writes: Vec<String> = redis::cmd("LRANGE")
            .arg(writes_key(key))
            .arg(0)
            .arg(-1)
            .query(conn)?;
        out.insert(
            key.clone(),
            KeyState {
                counter: counter.unwrap_or(0),
                writes,
            },
        );
    }
    Ok(out)
}

// ---- the record format -------------------------------------------------------------------

/// Header of a worker's output file.
pub const HEADER: &str = "# lockattr-history v1";

/// One record line: `S`, then tab-separated `id key token enter exit process locker task write
/// outcome`; `-` for a missing token.
pub fn format_section(s: &Section) -> String {
    let token = s.token.map_or_else(|| "-".to_owned(), |t| t.to_string());
    let write = match s.write {
        Write::None => "none",
        Write::InFlight => "inflight",
        Write::Done => "done",
    };
    let outcome = match &s.outcome {
        Outcome::Ok => "ok".to_owned(),
        Outcome::Lost => "lost".to_owned(),
        Outcome::Failed(e) => format!("failed:{}", one_line(e)),
    };
    format!(
        "S\t{}\t{}\t{token}\t{}\t{}\t{}\t{}\t{}\t{write}\t{outcome}",
        s.id, s.key, s.enter_ns, s.exit_ns, s.process, s.locker, s.task
    )
}

/// Makes free text safe for one tab-separated field.
pub fn one_line(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// Parses a line written by [`format_section`].
///
/// # Errors
/// What is wrong with the line.
pub fn parse_section(line: &str) -> Result<Section, String> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 11 || f[0] != "S" {
        return Err(format!("not a section line: {line:?}"));
    }
    let num = |i: usize| -> Result<u64, String> {
        f[i].parse()
            .map_err(|e| format!("field {i} of {line:?}: {e}"))
    };
    let small = |i: usize| -> Result<u32, String> {
        u32::try_from(num(i)?).map_err(|e| format!("field {i} of {line:?}: {e}"))
    };
    Ok(Section {
        id: f[1].to_owned(),
        key: f[2].to_owned(),
        token: if f[3] == "-" { None } else { Some(num(3)?) },
        enter_ns: num(4)?,
        exit_ns: num(5)?,
        process: small(6)?,
        locker: small(7)?,
        task: small(8)?,
        write: match f[9] {
            "none" => Write::None,
            "inflight" => Write::InFlight,
            "done" => Write::Done,
            other => return Err(format!("bad write state {other:?} in {line:?}")),
        },
        outcome: match f[10] {
            "ok" => Outcome::Ok,
            "lost" => Outcome::Lost,
            other => match other.strip_prefix("failed:") {
                Some(e) => Outcome::Failed(e.to_owned()),
                None => return Err(format!("bad outcome {other:?} in {line:?}")),
            },
        },
    })
}

/// What a worker counted besides its sections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerTally {
    /// Lock calls made.
    pub attempts: u64,
    /// Calls that did not get the lock within the wait.
    pub timeouts: u64,
    /// Calls that failed before the section started (Redis errors and the like), by message.
    pub errors: BTreeMap<String, u64>,
}

impl WorkerTally {
    /// The tally as lines: `T attempts timeouts`, then `E count message` per error.
    pub fn format(&self) -> String {
        let mut out = format!("T\t{}\t{}\n", self.attempts, self.timeouts);
        for (message, n) in &self.errors {
            out.push_str(&format!("E\t{n}\t{}\n", one_line(message)));
        }
        out
    }

    /// Adds up another tally.
    pub fn merge(&mut self, other: &WorkerTally) {
        self.attempts += other.attempts;
        self.timeouts += other.timeouts;
        for (m, n) in &other.errors {
            *self.errors.entry(m.clone()).or_default() += n;
        }
    }
}

/// A worker's output file, parsed.
#[derive(Debug, Clone, Default)]
pub struct WorkerOutput {
    /// Its sections.
    pub sections: Vec<Section>,
    /// Its tally.
    pub tally: WorkerTally,
}

/// Parses a worker's output file.
///
/// # Errors
/// A missing header or a malformed line.
pub fn parse_output(text: &str) -> Result<WorkerOutput, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("no {HEADER:?} header"));
    }
    let mut out = WorkerOutput::default();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.splitn(3, '\t').collect();
        let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{line:?}: {e}"));
        match f[0] {
            "S" => out.sections.push(parse_section(line)?),
            "T" if f.len() == 3 => {
                out.tally.attempts = num(f[1])?;
                out.tally.timeouts = num(f[2])?;
            }
            "E" if f.len() == 3 => {
                *out.tally.errors.entry(f[2].to_owned()).or_default() += num(f[1])?;
            }
            _ => return Err(format!("unknown line {line:?}")),
        }
    }
    Ok(out)
}

// ---- the checker -------------------------------------------------------------------------

/// One way a history breaks mutual exclusion or fencing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// `later` entered while `earlier` (entered before it) had not exited yet.
    Overlap {
        earlier: Section,
        later: Section,
        /// How long both were inside together.
        overlap_ns: u64,
    },
    /// Two sections of one key got the same token.
    DuplicateToken { first: Section, second: Section },
    /// `later` entered after `earlier` with a smaller token.
    TokenOrder { earlier: Section, later: Section },
    /// A section saw no fencing token.
    MissingToken { section: Section },
    /// The counter does not match the writes that landed: updates were lost (or invented).
    Count {
        key: String,
        counter: u64,
        landed: u64,
        /// Sections whose write Redis confirmed.
        confirmed: u64,
    },
    /// Redis confirmed a section's write but it is not in the write log.
    MissingWrite { section: Section },
    /// A write log entry that matches no recorded section of that key, or appears twice.
    UnexpectedWrite { key: String, id: String },
    /// `stale` landed after `newer` although its token is smaller.
    WriteOrder { newer: Section, stale: Section },
}

impl Violation {
    /// A short name of the kind, for tallies.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Overlap { .. } => "overlap",
            Violation::DuplicateToken { .. } => "duplicate token",
            Violation::TokenOrder { .. } => "token order",
            Violation::MissingToken { .. } => "missing token",
            Violation::Count { .. } => "count",
            Violation::MissingWrite { .. } => "missing write",
            Violation::UnexpectedWrite { .. } => "unexpected write",
            Violation::WriteOrder { .. } => "write order",
        }
    }
}

/// Shows a section with its times as seconds relative to `origin` (the first enter).
struct Show<'a>(&'a Section, u64);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Show(s, origin) = *self;
        let secs = |ns: u64| ns.saturating_sub(origin) as f64 / 1e9;
        let token = s.token.map_or_else(|| "none".to_owned(), |t| t.to_string());
        write!(
            f,
            "[{} key {} token {token} in {:.6}s..{:.6}s ({:.3} ms) write {:?} outcome {:?}]",
            s.id,
            s.key,
            secs(s.enter_ns),
            secs(s.exit_ns),
            s.exit_ns.saturating_sub(s.enter_ns) as f64 / 1e6,
            s.write,
            s.outcome
        )
    }
}

impl Violation {
    fn show(&self, origin: u64) -> String {
        match self {
            Violation::Overlap {
                earlier,
                later,
                overlap_ns,
            } => format!(
                "overlap of {:.3} ms on {}: {} entered {:.3} ms before {} exited",
                *overlap_ns as f64 / 1e6,
                later.key,
                Show(later, origin),
                earlier.exit_ns.saturating_sub(later.enter_ns) as f64 / 1e6,
                Show(earlier, origin)
            ),
            Violation::DuplicateToken { first, second } => format!(
                "duplicate token {} on {}: {} and {}",
                first.token.unwrap_or(0),
                first.key,
                Show(first, origin),
                Show(second, origin)
            ),
            Violation::TokenOrder { earlier, later } => format!(
                "token went backwards on {}: {} entered after {}",
                later.key,
                Show(later, origin),
                Show(earlier, origin)
            ),
            Violation::MissingToken { section } => {
                format!("no fencing token in {}", Show(section, origin))
            }
            Violation::Count {
                key,
                counter,
                landed,
                confirmed,
            } => format!(
                "counter of {key} is {counter} but {landed} writes landed ({confirmed} \
                 confirmed): {} lost updates",
                i128::from(*landed) - i128::from(*counter)
            ),
            Violation::MissingWrite { section } => format!(
                "confirmed write missing from the log: {}",
                Show(section, origin)
            ),
            Violation::UnexpectedWrite { key, id } => {
                format!("write log of {key} has an unexpected entry {id:?}")
            }
            Violation::WriteOrder { newer, stale } => format!(
                "stale write on {}: {} landed after {}",
                stale.key,
                Show(stale, origin),
                Show(newer, origin)
            ),
        }
    }
}

/// Which violations fail a history. Every violation is found either way; one of a tolerated
/// kind goes to [`Report::tolerated`] instead of [`Report::violations`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Kinds (see [`Violation::kind`]) that are reported, not failed.
    pub tolerate: BTreeSet<&'static str>,
}

impl Policy {
    /// Every violation fails the history (what [`check`] uses).
    pub fn strict() -> Policy {
        Policy::default()
    }

    /// Across failovers of an asynchronously replicated Redis (Sentinel): a lock or a counter
    /// write the promoted replica had not received is gone, so two holders can overlap
    /// (`overlap`), their increments overwrite each other or a confirmed one is lost (`count`,
    /// `missing write`), and a stale holder's write can land after a newer one's (`write
    /// order`). Those are reported. Token uniqueness and order, missing tokens and write-log
    /// entries that match no section still fail.
    pub fn across_failovers() -> Policy {
        Policy::strict()
            .tolerating("overlap")
            .tolerating("count")
            .tolerating("missing write")
            .tolerating("write order")
    }

    /// This policy, with `kind` reported instead of failed.
    pub fn tolerating(mut self, kind: &'static str) -> Policy {
        self.tolerate.insert(kind);
        self
    }

    /// Whether `kind` is reported instead of failed.
    pub fn tolerates(&self, kind: &str) -> bool {
        self.tolerate.contains(kind)
    }
}

/// Figures of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFigures {
    pub sections: u64,
    pub lost: u64,
    pub failed: u64,
    pub writes_confirmed: u64,
    pub writes_in_flight: u64,
    pub writes_landed: u64,
    pub counter: u64,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// All sections checked.
    pub sections: u64,
    /// Figures by key.
    pub per_key: BTreeMap<String, KeyFigures>,
    /// Every violation found that the policy does not tolerate, per key in section order.
    pub violations: Vec<Violation>,
    /// Violations of the kinds the policy tolerates: reported, not failed (empty for
    /// [`check`]).
    pub tolerated: Vec<Violation>,
    /// The earliest enter time (times in messages are relative to it).
    pub origin_ns: u64,
}

impl Report {
    /// Sections whose call returned `Lost`.
    pub fn lost(&self) -> u64 {
        self.per_key.values().map(|k| k.lost).sum()
    }

    /// Violations by kind.
    pub fn counts_by_kind(&self) -> BTreeMap<&'static str, usize> {
        count_kinds(&self.violations)
    }

    /// Tolerated violations by kind.
    pub fn tolerated_by_kind(&self) -> BTreeMap<&'static str, usize> {
        count_kinds(&self.tolerated)
    }

    /// Whether any violation of `kind` (see [`Violation::kind`]) was found that the policy does
    /// not tolerate.
    pub fn has(&self, kind: &str) -> bool {
        self.violations.iter().any(|v| v.kind() == kind)
    }

    /// Violations of `kind`, failed or tolerated.
    pub fn found(&self, kind: &str) -> usize {
        self.all().filter(|v| v.kind() == kind).count()
    }

    /// Every violation, failed or tolerated.
    pub fn all(&self) -> impl Iterator<Item = &Violation> {
        self.violations.iter().chain(&self.tolerated)
    }

    /// Lost counter updates, failed or tolerated: increments overwritten by another
    /// section's (the writes that landed minus the counter, summed over the keys where it is
    /// positive), and confirmed writes missing from the log (lost with the server that
    /// confirmed them).
    pub fn lost_updates(&self) -> LostUpdates {
        let mut out = LostUpdates::default();
        for v in self.all() {
            match v {
                Violation::Count {
                    counter, landed, ..
                } => {
                    out.overwritten += landed.saturating_sub(*counter);
                    out.invented += counter.saturating_sub(*landed);
                }
                Violation::MissingWrite { .. } => out.vanished += 1,
                _ => {}
            }
        }
        out
    }

    /// Overlaps (failed or tolerated): how many, and the longest.
    pub fn overlaps(&self) -> (usize, u64) {
        let mut n = 0;
        let mut longest = 0;
        for v in self.all() {
            if let Violation::Overlap { overlap_ns, .. } = v {
                n += 1;
                longest = longest.max(*overlap_ns);
            }
        }
        (n, longest)
    }
}

/// Lost counter updates in a history ([`Report::lost_updates`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LostUpdates {
    /// Increments overwritten: writes that landed minus the counter, where positive.
    pub overwritten: u64,
    /// Counter above the writes that landed, where it is (an increment of a value read
    /// from a server whose later writes were then lost).
    pub invented: u64,
    /// Confirmed writes missing from the write log.
    pub vanished: u64,
}

impl fmt::Display for LostUpdates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} overwritten, {} confirmed and vanished",
            self.overwritten, self.vanished
        )?;
        if self.invented > 0 {
            write!(f, ", counter {} above the log", self.invented)?;
        }
        Ok(())
    }
}

fn count_kinds(violations: &[Violation]) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for v in violations {
        *out.entry(v.kind()).or_default() += 1;
    }
    out
}

/// How many violations a report prints in full.
const SHOWN: usize = 25;
/// How many tolerated violations a report prints in full.
const TOLERATED_SHOWN: usize = 8;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sections, {} lost, {} violations {:?}",
            self.sections,
            self.lost(),
            self.violations.len(),
            self.counts_by_kind()
        )?;
        if !self.tolerated.is_empty() {
            write!(
                f,
                ", {} tolerated {:?}",
                self.tolerated.len(),
                self.tolerated_by_kind()
            )?;
        }
        writeln!(f)?;
        for (key, k) in &self.per_key {
            writeln!(
                f,
                "  {key}: {} sections ({} lost, {} failed), writes {} confirmed + {} in flight \
                 when cancelled, {} landed, counter {}",
                k.sections,
                k.lost,
                k.failed,
                k.writes_confirmed,
                k.writes_in_flight,
                k.writes_landed,
                k.counter
            )?;
        }
        for v in self.violations.iter().take(SHOWN) {
            writeln!(f, "  - {}", v.show(self.origin_ns))?;
        }
        if self.violations.len() > SHOWN {
            writeln!(f, "  ... and {} more", self.violations.len() - SHOWN)?;
        }
        for v in self.tolerated.iter().take(TOLERATED_SHOWN) {
            writeln!(f, "  ~ (tolerated) {}", v.show(self.origin_ns))?;
        }
        if self.tolerated.len() > TOLERATED_SHOWN {
            writeln!(
                f,
                "  ~ ... and {} more tolerated",
                self.tolerated.len() - TOLERATED_SHOWN
            )?;
        }
        Ok(())
    }
}

/// Checks a history: `sections` from every worker, `state` read from Redis at the end (keys
/// without sections may be absent). Pure; see the module docs for the rules. Every violation
/// fails ([`Policy::strict`]).
pub fn check(sections: &[Section], state: &BTreeMap<String, KeyState>) -> Report {
    check_with(sections, state, &Policy::strict())
}

/// [`check`], with the kinds that `policy` tolerates moved to [`Report::tolerated`].
pub fn check_with(
    sections: &[Section],
    state: &BTreeMap<String, KeyState>,
    policy: &Policy,
) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Section>> = BTreeMap::new();
    for s in sections {
        by_key.entry(&s.key).or_default().push(s);
    }
    for key in state.keys() {
        by_key.entry(key).or_default();
    }
    let mut report = Report {
        sections: sections.len() as u64,
        origin_ns: sections.iter().map(|s| s.enter_ns).min().unwrap_or(0),
        ..Report::default()
    };
    let empty = KeyState::default();
    for (key, mut list) in by_key {
        list.sort_by(|a, b| (a.enter_ns, a.exit_ns, &a.id).cmp(&(b.enter_ns, b.exit_ns, &b.id)));
        let final_state = state.get(key).unwrap_or(&empty);
        let figures = check_key(&list, final_state, &mut report.violations);
        report.per_key.insert(key.to_owned(), figures);
    }
    let (tolerated, violations) = std::mem::take(&mut report.violations)
        .into_iter()
        .partition(|v| policy.tolerates(v.kind()));
    report.violations = violations;
    report.tolerated = tolerated;
    report
}

fn check_key(list: &[&Section], state: &KeyState, out: &mut Vec<Violation>) -> KeyFigures {
    let mut figures = KeyFigures {
        sections: list.len() as u64,
        counter: state.counter,
        ..KeyFigures::default()
    };
    // Exclusion and token order, in enter order. `furthest` is the earlier section that
    // exits last: a later section must enter after it.
    let mut furthest: Option<&Section> = None;
    let mut previous: Option<&Section> = None;
    let mut tokens: HashMap<u64, &Section> = HashMap::new();
    for &s in list {
        match &s.outcome {
            Outcome::Ok => {}
            Outcome::Lost => figures.lost += 1,
            Outcome::Failed(_) => figures.failed += 1,
        }
        match s.write {
            Write::None => {}
            Write::InFlight => figures.writes_in_flight += 1,
            Write::Done => figures.writes_confirmed += 1,
        }
        if let Some(f) = furthest {
            if s.enter_ns < f.exit_ns {
                out.push(Violation::Overlap {
                    earlier: f.clone(),
                    later: s.clone(),
                    overlap_ns: f.exit_ns.min(s.exit_ns) - s.enter_ns,
                });
            }
        }
        if furthest.is_none_or(|f| s.exit_ns > f.exit_ns) {
            furthest = Some(s);
        }
        match s.token {
            None => out.push(Violation::MissingToken { section: s.clone() }),
            Some(t) => {
                if let Some(first) = tokens.get(&t) {
                    out.push(Violation::DuplicateToken {
                        first: (*first).clone(),
                        second: s.clone(),
                    });
                } else {
                    tokens.insert(t, s);
                }
                if let Some(p) = previous.filter(|p| p.token.is_some_and(|pt| t < pt)) {
                    out.push(Violation::TokenOrder {
                        earlier: p.clone(),
                        later: s.clone(),
                    });
                }
                previous = Some(s);
            }
        }
    }

    // The write log: which writes landed, and in which order.
    let by_id: HashMap<&str, &Section> = list.iter().map(|s| (s.id.as_str(), *s)).collect();
    let mut landed: HashSet<&str> = HashSet::new();
    let mut newest: Option<&Section> = None;
    for id in &state.writes {
        let Some(&s) = by_id.get(id.as_str()) else {
            out.push(Violation::UnexpectedWrite {
                key: state_key(list),
                id: id.clone(),
            });
            continue;
        };
        if !landed.insert(id) || s.write == Write::None {
            out.push(Violation::UnexpectedWrite {
                key: s.key.clone(),
                id: id.clone(),
            });
            continue;
        }
        if let (Some(n), Some(t)) = (newest, s.token) {
            if n.token.is_some_and(|nt| t < nt) {
                out.push(Violation::WriteOrder {
                    newer: n.clone(),
                    stale: s.clone(),
                });
            }
        }
        if newest.is_none_or(|n| s.token > n.token) {
            newest = Some(s);
        }
    }
    figures.writes_landed = landed.len() as u64;
    for &s in list.iter().filter(|s| s.write == Write::Done) {
        if !landed.contains(s.id.as_str()) {
            out.push(Violation::MissingWrite { section: s.clone() });
        }
    }
    if state.counter != figures.writes_landed {
        out.push(Violation::Count {
            key: state_key(list),
            counter: state.counter,
            landed: figures.writes_landed,
            confirmed: figures.writes_confirmed,
        });
    }
    figures
}

fn state_key(list: &[&Section]) -> String {
    list.first().map(|s| s.key.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A section of key `k` by task `task`, token, enter and exit in ms, write confirmed.
    fn sec(id: &str, token: u64, enter_ms: u64, exit_ms: u64) -> Section {
        Section {
            id: id.to_owned(),
            key: "k".to_owned(),
            token: Some(token),
            enter_ns: enter_ms * MS,
            exit_ns: exit_ms * MS,
            process: 0,
            locker: 0,
            task: 0,
            write: Write::Done,
            outcome: Outcome::Ok,
        }
    }

    /// The Redis state a correct run over `sections` (in order) leaves.
    fn landed(sections: &[Section]) -> BTreeMap<String, KeyState> {
        let writes: Vec<String> = sections
            .iter()
            .filter(|s| s.write == Write::Done)
            .map(|s| s.id.clone())
            .collect();
        BTreeMap::from([(
            "k".to_owned(),
            KeyState {
                counter: writes.len() as u64,
                writes,
            },
        )])
    }

    fn kinds(report: &Report) -> Vec<&'static str> {
        report.violations.iter().map(Violation::kind).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let h = vec![sec("a", 1, 0, 10), sec("b", 2, 10, 20), sec("c", 5, 25, 30)];
        let report = check(&h, &landed(&h));
        assert!(report.violations.is_empty(), "{report}");
        assert_eq!(report.sections, 3);
        assert_eq!(report.per_key["k"].writes_landed, 3);
        // Order of the input does not matter.
        let mut shuffled = h.clone();
        shuffled.reverse();
        assert!(check(&shuffled, &landed(&h)).violations.is_empty());
    }

    #[test]
    fn overlap_is_reported_with_both_sections_and_the_amount() {
        let h = vec![sec("a", 1, 0, 10), sec("b", 2, 7, 20)];
        let report = check(&h, &landed(&h));
        assert_eq!(kinds(&report), ["overlap"]);
        let Violation::Overlap {
            earlier,
            later,
            overlap_ns,
        } = &report.violations[0]
        else {
            unreachable!()
        };
        assert_eq!((earlier.id.as_str(), later.id.as_str()), ("a", "b"));
        assert_eq!(*overlap_ns, 3 * MS);
        let text = report.to_string();
        assert!(text.contains("overlap of 3.000 ms"), "{text}");
        assert!(text.contains("[a key k token 1"), "{text}");
    }

    #[test]
    fn overlap_with_a_long_earlier_section_is_found_past_a_short_one() {
        // `b` is inside `a`; `c` starts after `b` ended but while `a` still runs.
        let h = vec![
            sec("a", 1, 0, 100),
            sec("b", 2, 10, 20),
            sec("c", 3, 30, 40),
        ];
        let report = check(&h, &landed(&h));
        assert_eq!(kinds(&report), ["overlap", "overlap"]);
        let Violation::Overlap { earlier, later, .. } = &report.violations[1] else {
            unreachable!()
        };
        assert_eq!((earlier.id.as_str(), later.id.as_str()), ("a", "c"));
    }

    #[test]
    fn touching_sections_do_not_overlap() {
        let h = vec![sec("a", 1, 0, 10), sec("b", 2, 10, 10), sec("c", 3, 10, 12)];
        assert!(check(&h, &landed(&h)).violations.is_empty());
    }

    #[test]
    fn duplicate_and_backward_tokens() {
        let h = vec![
            sec("a", 5, 0, 10),
            sec("b", 5, 11, 20),
            sec("c", 4, 21, 30),
            sec("d", 6, 31, 40),
        ];
        let report = check(&h, &landed(&h));
        // Writes landed in section order, so the log shows the backward token too.
        assert_eq!(
            kinds(&report),
            ["duplicate token", "token order", "write order"]
        );
        let mut none = sec("e", 0, 41, 50);
        none.token = None;
        let mut h2 = h[3..].to_vec();
        h2.push(none);
        assert_eq!(kinds(&check(&h2, &landed(&h2))), ["missing token"]);
    }

    #[test]
    fn lost_updates_break_the_count() {
        let h = vec![sec("a", 1, 0, 10), sec("b", 2, 5, 20)];
        let mut state = landed(&h);
        state.get_mut("k").unwrap().counter = 1; // both read 0, both wrote 1
        let report = check(&h, &state);
        assert_eq!(kinds(&report), ["overlap", "count"]);
        assert!(report.to_string().contains("1 lost updates"), "{report}");
    }

    #[test]
    fn a_policy_reports_tolerated_kinds_without_failing() {
        // Two holders at once, one increment overwritten, one confirmed write lost, and a
        // duplicate token.
        let h = vec![sec("a", 1, 0, 10), sec("b", 2, 5, 20), sec("c", 2, 30, 40)];
        let state = BTreeMap::from([(
            "k".to_owned(),
            KeyState {
                counter: 1,
                writes: vec!["a".into(), "b".into()],
            },
        )]);
        let strict = check(&h, &state);
        assert_eq!(
            kinds(&strict),
            ["overlap", "duplicate token", "missing write", "count"]
        );
        assert!(strict.tolerated.is_empty());
        let report = check_with(&h, &state, &Policy::across_failovers());
        assert_eq!(kinds(&report), ["duplicate token"]);
        assert_eq!(
            report
                .tolerated
                .iter()
                .map(Violation::kind)
                .collect::<Vec<_>>(),
            ["overlap", "missing write", "count"]
        );
        assert_eq!(report.found("overlap"), 1);
        assert_eq!(report.overlaps(), (1, 5 * MS));
        assert_eq!(
            report.lost_updates(),
            LostUpdates {
                overwritten: 1,
                invented: 0,
                vanished: 1
            }
        );
        let text = report.to_string();
        assert!(text.contains("3 tolerated"), "{text}");
        assert!(text.contains("~ (tolerated) overlap of 5.000 ms"), "{text}");
        // Everything tolerated: nothing fails.
        let all = Policy::across_failovers()
            .tolerating("duplicate token")
            .tolerating("token order");
        assert!(check_with(&h, &state, &all).violations.is_empty());
    }

    #[test]
    fn in_flight_writes_count_exactly_when_they_landed() {
        let mut a = sec("a", 1, 0, 10);
        a.write = Write::InFlight;
        a.outcome = Outcome::Lost;
        let mut b = sec("b", 2, 20, 30);
        b.write = Write::InFlight;
        b.outcome = Outcome::Lost;
        let c = sec("c", 3, 40, 50);
        // `a` landed, `b` did not.
        let state = BTreeMap::from([(
            "k".to_owned(),
            KeyState {
                counter: 2,
                writes: vec!["a".into(), "c".into()],
            },
        )]);
        let h = vec![a, b, c];
        let report = check(&h, &state);
        assert!(report.violations.is_empty(), "{report}");
        let k = &report.per_key["k"];
        assert_eq!(
            (
                k.lost,
                k.writes_confirmed,
                k.writes_in_flight,
                k.writes_landed
            ),
            (2, 1, 2, 2)
        );
        assert_eq!(report.lost(), 2);
    }

    #[test]
    fn write_log_inconsistencies() {
        let h = vec![sec("a", 1, 0, 10), sec("b", 2, 20, 30)];
        // `a`'s confirmed write is missing, an unknown id appears.
        let state = BTreeMap::from([(
            "k".to_owned(),
            KeyState {
                counter: 2,
                writes: vec!["zz".into(), "b".into()],
            },
        )]);
        assert_eq!(
            kinds(&check(&h, &state)),
            ["unexpected write", "missing write", "count"]
        );
        // A stale write landing after a newer holder's.
        let state = BTreeMap::from([(
            "k".to_owned(),
            KeyState {
                counter: 2,
                writes: vec!["b".into(), "a".into()],
            },
        )]);
        assert_eq!(kinds(&check(&h, &state)), ["write order"]);
        // A write of a section that never sent one (it landed: the count stays consistent).
        let mut c = sec("c", 3, 40, 50);
        c.write = Write::None;
        let h = vec![h[0].clone(), c];
        let state = BTreeMap::from([(
            "k".to_owned(),
            KeyState {
                counter: 2,
                writes: vec!["a".into(), "c".into()],
            },
        )]);
        assert_eq!(kinds(&check(&h, &state)), ["unexpected write"]);
    }

    #[test]
    fn keys_are_checked_separately() {
        let a = sec("a", 1, 0, 10);
        let mut b = sec("b", 1, 5, 15);
        b.key = "other".to_owned();
        let mut state = landed(std::slice::from_ref(&a));
        state.insert(
            "other".to_owned(),
            KeyState {
                counter: 1,
                writes: vec!["b".into()],
            },
        );
        let report = check(&[a, b], &state);
        assert!(report.violations.is_empty(), "{report}");
        assert_eq!(report.per_key.len(), 2);
        // A key with writes but no sections is reported, not ignored.
        state.insert(
            "ghost".to_owned(),
            KeyState {
                counter: 1,
                writes: vec!["x".into()],
            },
        );
        let report = check(&[], &state);
        assert!(
            report.has("unexpected write") && report.has("count"),
            "{report}"
        );
    }

    #[test]
    fn records_round_trip_through_the_text_format() {
        let mut s = sec("p1.l0.t2.7", 42, 3, 4);
        s.process = 1;
        s.task = 2;
        s.outcome = Outcome::Failed("boom\twith\ntabs".to_owned());
        s.write = Write::InFlight;
        let mut t = sec("p0.l1.t0.1", 0, 5, 6);
        t.token = None;
        t.outcome = Outcome::Lost;
        t.write = Write::None;
        let mut tally = WorkerTally {
            attempts: 9,
            timeouts: 2,
            ..WorkerTally::default()
        };
        tally.errors.insert("connection refused".to_owned(), 3);
        let text = format!(
            "{HEADER}\n{}\n{}\n{}",
            format_section(&s),
            format_section(&t),
            tally.format()
        );
        let out = parse_output(&text).unwrap();
        s.outcome = Outcome::Failed("boom with tabs".to_owned());
        assert_eq!(out.sections, vec![s, t]);
        assert_eq!(out.tally, tally);
        assert!(parse_output("S\tx").is_err());
        assert!(parse_section("S\ta\tk\t1\t2\t3\t0\t0\t0\tmaybe\tok").is_err());
    }
}
