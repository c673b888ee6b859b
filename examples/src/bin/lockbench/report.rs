//! The markdown report: tables, targets, environment.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::contended::Analysis;
use crate::footprint::{Footprint, Peak, SETTLE};
use crate::impls::Kind;
use crate::simple::{Distinct, Keys, Sequential};
use crate::stats::us;

/// Fewest cross-process handoffs from which the bench reports a cross-process p50 as a target.
const MIN_CROSS_SAMPLES: usize = 20;

/// Commands the harness itself sends (statistics reset/read and its connections' handshake).
pub fn is_harness_command(name: &str) -> bool {
    name == "info" || name.starts_with("config|") || name == "client|setinfo" || name == "hello"
}

/// One run of the contended scenario.
#[derive(Debug)]
pub struct ContendedRow {
    pub kind: Kind,
    pub procs: u32,
    pub waiters: u32,
    pub body: Duration,
    /// The lock's name (the Redis key is the implementation's: `bench:{key}` for lockattr).
    pub key: String,
    pub a: Analysis,
    /// Redis commands (Lua-internal calls included) by name, harness commands removed, summed
    /// over all nodes.
    pub commands: BTreeMap<String, u64>,
    /// Every command by node (port), harness commands included.
    pub by_node: crate::deploy::CountsByNode,
    pub errors: Vec<String>,
}

impl ContendedRow {
    pub fn cmds_per_acq(&self) -> Option<f64> {
        (self.a.acquisitions > 0)
            .then(|| self.commands.values().sum::<u64>() as f64 / self.a.acquisitions as f64)
    }

    pub fn scenario(&self) -> String {
        format!(
            "{} proc × {} waiters, body {}",
            self.procs,
            self.waiters,
            body_label(self.body)
        )
    }
}

pub fn body_label(body: Duration) -> String {
    if body.is_zero() {
        "0".to_owned()
    } else {
        format!("{} ms", body.as_secs_f64() * 1e3)
    }
}

/// Everything measured in one run.
#[derive(Debug)]
pub struct Report {
    pub header: Vec<(String, String)>,
    /// One task, one key reused (with PING).
    pub reused: Option<Sequential>,
    /// One task, a new key every cycle.
    pub fresh: Option<Sequential>,
    /// Many tasks, each on its own key, reused.
    pub distinct: Vec<Distinct>,
    /// Many tasks, a new key every cycle.
    pub distinct_fresh: Vec<Distinct>,
    pub distinct_tasks: usize,
    pub footprints: Vec<Footprint>,
    pub peak: Option<Peak>,
    pub contended: Vec<ContendedRow>,
    /// The Redis Cluster rows.
    pub cluster: Option<crate::cluster::ClusterReport>,
    /// The rows on a master with a replica, with and without `wait_for_replicas`.
    pub replicated: Option<crate::replicated::ReplicatedReport>,
    pub notes: Vec<String>,
}

pub fn ratio(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
        _ => None,
    }
}

pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
}

impl Report {
    fn ping_p50(&self) -> Option<u64> {
        self.reused.as_ref().and_then(|u| u.ping.p50)
    }

    fn uncontended_p50(&self, kind: Kind) -> Option<u64> {
        self.reused.as_ref()?.p50(kind)
    }

    fn fresh_p50(&self, kind: Kind) -> Option<u64> {
        self.fresh.as_ref()?.p50(kind)
    }

    fn fresh_row(&self, kind: Kind) -> Option<&crate::simple::SequentialRow> {
        self.fresh.as_ref()?.row(kind)
    }

    fn distinct_fresh(&self, kind: Kind) -> Option<&Distinct> {
        self.distinct_fresh.iter().find(|d| d.kind == kind)
    }

    fn footprint(&self, kind: Kind) -> Option<&Footprint> {
        self.footprints.iter().find(|f| f.kind == kind)
    }

    fn row(&self, kind: Kind, procs: u32, waiters: u32, body_ms: u64) -> Option<&ContendedRow> {
        self.contended.iter().find(|r| {
            r.kind == kind
                && r.procs == procs
                && r.waiters == waiters
                && r.body == Duration::from_millis(body_ms)
        })
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## lockbench results\n");
        for (k, v) in &self.header {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let _ = writeln!(s);
        if let Some(reused) = &self.reused {
            render_sequential(&mut s, reused);
        }
        if let Some(fresh) = &self.fresh {
            render_sequential(&mut s, fresh);
        }
        render_distinct(&mut s, &self.distinct, self.distinct_tasks, Keys::Reused);
        render_distinct(
            &mut s,
            &self.distinct_fresh,
            self.distinct_tasks,
            Keys::Fresh,
        );
        self.render_footprint(&mut s);
        self.render_contended(&mut s);
        self.render_targets(&mut s);
        for seq in [&self.reused, &self.fresh].into_iter().flatten() {
            render_sequential_commands(&mut s, seq);
        }
        self.render_commands(&mut s);
        if let Some(cluster) = &self.cluster {
            crate::cluster_report::render(&mut s, cluster, &self.contended);
        }
        if let Some(replicated) = &self.replicated {
            crate::replicated_report::render(&mut s, replicated);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "### Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
            let _ = writeln!(s);
        }
        s
    }

    fn render_footprint(&self, s: &mut String) {
        if self.footprints.is_empty() {
            return;
        }
        let n = self.footprints[0].keys_locked;
        let _ = writeln!(
            s,
            "### Footprint: {n} distinct keys locked and released once (64 tasks, a private redis-server each)\n"
        );
        if let Some(p) = self.peak {
            let _ = writeln!(
                s,
                "Yardstick: {} raw-floor locks held at once take {} above the empty server.\n",
                p.keys,
                bytes(p.bytes)
            );
        }
        let _ = writeln!(
            s,
            "| implementation | baseline keys / used_memory | right after: keys / bytes above baseline | {} s after: keys / bytes above baseline | left after {} s: % of keys locked / % of the yardstick's bytes | fill time | errors |",
            SETTLE.as_secs(),
            SETTLE.as_secs()
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for f in &self.footprints {
            let (ak, ab) = f.after.above(f.baseline);
            let settled = f.settled.map(|x| x.above(f.baseline));
            let _ = writeln!(
                s,
                "| {} | {} / {} | {ak} / {} | {} | {} | {:.1} s | {} |",
                f.kind.label(),
                f.baseline.keys,
                bytes(i64::try_from(f.baseline.used_memory).unwrap_or(i64::MAX)),
                bytes(ab),
                settled.map_or("–".to_owned(), |(k, b)| format!("{k} / {}", bytes(b))),
                settled.map_or("–".to_owned(), |(k, b)| format!(
                    "{} / {}",
                    percent(k as f64 / f.keys_locked.max(1) as f64),
                    self.peak
                        .filter(|p| p.bytes > 0)
                        .map_or("–".to_owned(), |p| percent(b as f64 / p.bytes as f64))
                )),
                f.fill.as_secs_f64(),
                f.errors
            );
        }
        let late: Vec<String> = self
            .footprints
            .iter()
            .filter(|f| f.settled_after > SETTLE + Duration::from_secs(1))
            .map(|f| format!("{} at {:.1} s", f.kind.id(), f.settled_after.as_secs_f64()))
            .collect();
        if !late.is_empty() {
            let _ = writeln!(s, "\nSecond readings taken late: {}.", late.join(", "));
        }
        let _ = writeln!(s);
    }

    fn render_contended(&self, s: &mut String) {
        if self.contended.is_empty() {
            return;
        }
        let _ = writeln!(s, "### Contended, one key, forced handoff\n");
        let _ = writeln!(
            s,
            "| implementation | scenario | acquisitions | acq/s | busy share | handoff p50 | handoff mean | handoff p99 | cross-proc handoff p50 (n) | cmds/acq | wait p99 | self / idle handoffs | violations |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.contended {
            let a = &r.a;
            let efficiency = if r.body.is_zero() {
                "–".to_owned()
            } else {
                opt(a.busy_share(), 3)
            };
            let cross = if r.procs > 1 {
                format!("{} ({})", us(a.cross_handoff.p50), a.cross_handoff.n)
            } else {
                "–".to_owned()
            };
            let violations = if r.errors.is_empty() {
                a.violations.to_string()
            } else {
                format!("{} ({} errors)", a.violations, r.errors.len())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                r.kind.label(),
                r.scenario(),
                a.acquisitions,
                opt(a.rate, 0),
                efficiency,
                us(a.handoff.p50),
                us(a.handoff_mean_ns),
                us(a.handoff.p99),
                cross,
                opt(r.cmds_per_acq(), 1),
                us(a.wait.p99),
                a.self_handoffs,
                a.idle_handoffs,
                violations
            );
        }
        let _ = writeln!(s);
    }

    fn render_targets(&self, s: &mut String) {
        let mut t = Targets::default();
        let l = Kind::Lockattr;
        let ping = self.ping_p50();
        let raw = self.uncontended_p50(Kind::Raw);
        let peers = [Kind::Spin, Kind::Rslock, Kind::Rslock2ms];

        let lu = self.uncontended_p50(l);
        t.check(
            "uncontended lock+release p50, reused key ≤ 1.10 × raw floor p50",
            format!("{} vs floor {}", us(lu), us(raw)),
            ratio(lu, raw),
            1.10,
            true,
        );
        let (lf, rf) = (self.fresh_p50(l), self.fresh_p50(Kind::Raw));
        t.check(
            "first use of a key: lock+release p50 ≤ 1.10 × raw floor p50 (new keys)",
            format!("{} vs floor {}", us(lf), us(rf)),
            ratio(lf, rf),
            1.10,
            true,
        );
        let trips = self.fresh_row(l).and_then(|r| r.round_trips);
        t.check(
            "first use of a key: round trips per lock+release ≤ 2",
            opt(trips, 2),
            trips,
            2.0,
            true,
        );
        let cmds = self.fresh_row(l).and_then(|r| r.commands);
        t.check(
            "first use of a key: Redis commands per lock+release ≤ 5",
            opt(cmds, 2),
            cmds,
            5.0,
            true,
        );
        let per_sec = |d: Option<&Distinct>| d.map(|d| d.per_sec);
        let (ld, pd) = (
            per_sec(self.distinct_fresh(l)),
            per_sec(self.distinct_fresh(Kind::Rslock)),
        );
        t.check(
            &format!(
                "{} tasks, a new key every cycle: cycles/s ≥ 0.95 × rslock's",
                self.distinct_tasks
            ),
            format!("{} vs {}", opt(ld, 0), opt(pd, 0)),
            match (ld, pd) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            },
            0.95,
            false,
        );
        // What a holder that fences its writes pays: `TIME` in the fast path's round trip.
        let lff = self.fresh_p50(Kind::LockattrFenced);
        let fenced_trips = self
            .fresh_row(Kind::LockattrFenced)
            .and_then(|r| r.round_trips);
        let fenced_cmds = self
            .fresh_row(Kind::LockattrFenced)
            .and_then(|r| r.commands);
        t.info(
            "first use of a key, fenced(true) and the token used: p50 ÷ raw floor p50, round trips, commands",
            format!(
                "{} vs floor {} ({}×), {} round trips, {} commands",
                us(lff),
                us(rf),
                opt(ratio(lff, rf), 2),
                opt(fenced_trips, 2),
                opt(fenced_cmds, 2)
            ),
        );
        let fd = per_sec(self.distinct_fresh(Kind::LockattrFenced));
        t.info(
            &format!(
                "{} tasks, a new key every cycle, fenced(true) and the token used: cycles/s vs rslock's",
                self.distinct_tasks
            ),
            format!(
                "{} vs {} ({}×)",
                opt(fd, 0),
                opt(pd, 0),
                opt(
                    match (fd, pd) {
                        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                        _ => None,
                    },
                    2
                )
            ),
        );
        let find = |kind: Kind| self.distinct.iter().find(|d| d.kind == kind);
        let (ld, pd) = (per_sec(find(l)), per_sec(find(Kind::Rslock)));
        t.info(
            &format!(
                "{} tasks, each on its own key reused: cycles/s vs rslock's",
                self.distinct_tasks
            ),
            format!(
                "{} vs {} ({}×)",
                opt(ld, 0),
                opt(pd, 0),
                opt(
                    match (ld, pd) {
                        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                        _ => None,
                    },
                    2
                )
            ),
        );
        let f = self.footprint(l);
        let settled = f.and_then(|f| Some((f, f.settled?.above(f.baseline))));
        let when = |f: &Footprint| {
            if f.settled_after > SETTLE + Duration::from_secs(1) {
                format!(" (read at {:.1} s)", f.settled_after.as_secs_f64())
            } else {
                String::new()
            }
        };
        t.check(
            &format!(
                "footprint {} s after {} first uses: keys above baseline ≤ 1 % of the keys locked",
                SETTLE.as_secs(),
                f.map_or(0, |f| f.keys_locked)
            ),
            settled.map_or("–".to_owned(), |(f, (k, _))| {
                format!("{k} keys{}", when(f))
            }),
            settled.map(|(f, (k, _))| 100.0 * k as f64 / f.keys_locked.max(1) as f64),
            1.0,
            true,
        );
        let peak = self.peak.filter(|p| p.bytes > 0);
        t.check(
            "footprint: used_memory above baseline ≤ 1 % of the peak of as many held locks",
            settled.map_or("–".to_owned(), |(_, (_, b))| {
                format!(
                    "{} vs peak {}",
                    bytes(b),
                    peak.map_or("–".to_owned(), |p| bytes(p.bytes))
                )
            }),
            settled
                .zip(peak)
                .map(|((_, (_, b)), p)| 100.0 * b as f64 / p.bytes as f64),
            1.0,
            true,
        );
        for w in [10, 100] {
            let h = self.row(l, 1, w, 0).and_then(|r| r.a.handoff.p50);
            t.check(
                &format!("handoff p50, 1 process, {w} waiters ≤ 1.5 × PING p50"),
                format!("{} vs PING {}", us(h), us(ping)),
                ratio(h, ping),
                1.5,
                true,
            );
        }
        for w in [10, 100] {
            let name =
                format!("cross-process handoff p50, 2 processes, {w} waiters ≤ 3 × PING p50");
            let cross = self.row(l, 2, w, 0).map(|r| r.a.cross_handoff);
            match cross {
                // A p50 of a handful of handoffs proves nothing; so few handoffs between the
                // processes in a whole run is itself a fairness problem.
                Some(c) if c.n < MIN_CROSS_SAMPLES => t.fail(
                    &name,
                    format!(
                        "only {} cross-process handoffs (p50 {}, need ≥ {MIN_CROSS_SAMPLES})",
                        c.n,
                        us(c.p50)
                    ),
                    3.0,
                ),
                _ => {
                    let h = cross.and_then(|c| c.p50);
                    t.check(
                        &name,
                        format!("{} vs PING {}", us(h), us(ping)),
                        ratio(h, ping),
                        3.0,
                        true,
                    );
                }
            }
        }
        for (procs, limit) in [(1, 6.0), (2, 8.0)] {
            for body in [0, 1] {
                let c = self
                    .row(l, procs, 100, body)
                    .and_then(ContendedRow::cmds_per_acq);
                t.check(
                    &format!(
                        "commands/acquisition, {procs} proc, 100 waiters, body {body} ms ≤ {limit}"
                    ),
                    opt(c, 2),
                    c,
                    limit,
                    true,
                );
                let c10 = self
                    .row(l, procs, 10, body)
                    .and_then(ContendedRow::cmds_per_acq);
                let growth = match (c, c10) {
                    (Some(c), Some(c10)) if c10 > 0.0 => Some(c / c10),
                    _ => None,
                };
                t.check(
                    &format!("commands/acquisition independent of waiters ({procs} proc, body {body} ms): 100 ÷ 10 waiters ≤ 1.25"),
                    format!("{} vs {}", opt(c, 2), opt(c10, 2)),
                    growth,
                    1.25,
                    true,
                );
            }
        }
        let r = self.row(l, 1, 100, 1);
        t.check(
            "acquisitions/s with 1 ms bodies, 1 proc, 100 waiters ≥ 0.95 × 1/body (busy share)",
            format!(
                "{}/s (mean body {}, mean handoff {})",
                opt(r.and_then(|r| r.a.rate), 0),
                us(r.and_then(|r| r.a.body_mean_ns)),
                us(r.and_then(|r| r.a.handoff_mean_ns))
            ),
            r.and_then(|r| r.a.busy_share()),
            0.95,
            false,
        );
        t.check(
            "acquisitions/s with 1 ms bodies, 1 proc, 100 waiters ≥ 0.95 × 1000/s (the nominal body)",
            format!("{}/s", opt(r.and_then(|r| r.a.rate), 0)),
            r.and_then(|r| r.a.rate).map(|rate| rate / 1000.0),
            0.95,
            false,
        );
        let r2 = self.row(l, 2, 100, 1);
        t.info(
            "acquisitions/s with 1 ms bodies, 2 procs, 100 waiters (busy share)",
            format!(
                "{}/s ({})",
                opt(r2.and_then(|r| r.a.rate), 0),
                opt(r2.and_then(|r| r.a.busy_share()), 3)
            ),
        );
        let lrows: Vec<&ContendedRow> = self.contended.iter().filter(|r| r.kind == l).collect();
        let bad: u64 = lrows
            .iter()
            .map(|r| r.a.violations + r.errors.len() as u64)
            .sum();
        let total: usize = lrows.iter().map(|r| r.a.acquisitions).sum();
        t.check(
            "zero exclusion violations and errors, every lockattr scenario",
            format!("{bad} in {} scenarios, {total} acquisitions", lrows.len()),
            (!lrows.is_empty()).then_some(bad as f64),
            0.0,
            true,
        );
        let peer_bad: u64 = self
            .contended
            .iter()
            .filter(|r| r.kind != l)
            .map(|r| r.a.violations)
            .sum();
        t.info(
            "exclusion violations, peers (all scenarios)",
            peer_bad.to_string(),
        );
        for procs in [1, 2] {
            for w in [10, 100] {
                t.info(
                    &format!(
                        "fairness: lockattr p99 wait, {procs} proc, {w} waiters, body 0 / 1 ms"
                    ),
                    format!(
                        "{} / {}",
                        us(self.row(l, procs, w, 0).and_then(|r| r.a.wait.p99)),
                        us(self.row(l, procs, w, 1).and_then(|r| r.a.wait.p99))
                    ),
                );
            }
        }
        // Ahead of every peer row, in this run.
        for p in peers {
            let (lh, ph) = (
                self.row(l, 1, 100, 0).and_then(|r| r.a.handoff.p50),
                self.row(p, 1, 100, 0).and_then(|r| r.a.handoff.p50),
            );
            t.check(
                &format!("handoff p50 at 100 waiters below {}", p.label()),
                format!("{} vs {}", us(lh), us(ph)),
                ratio(lh, ph),
                1.0,
                true,
            );
            let (lc, pc) = (
                self.row(l, 1, 100, 0).and_then(ContendedRow::cmds_per_acq),
                self.row(p, 1, 100, 0).and_then(ContendedRow::cmds_per_acq),
            );
            t.check(
                &format!("commands/acquisition at 100 waiters below {}", p.label()),
                format!("{} vs {}", opt(lc, 2), opt(pc, 2)),
                match (lc, pc) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
                1.0,
                true,
            );
            let (la, pa) = (
                self.row(l, 1, 100, 1).and_then(|r| r.a.rate),
                self.row(p, 1, 100, 1).and_then(|r| r.a.rate),
            );
            t.check(
                &format!(
                    "acquisitions/s (1 ms bodies, 100 waiters) above {}",
                    p.label()
                ),
                format!("{} vs {}", opt(la, 0), opt(pa, 0)),
                match (la, pa) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
                1.0,
                false,
            );
        }
        for p in [Kind::Spin, Kind::Rslock] {
            let (lu, pu) = (self.uncontended_p50(l), self.uncontended_p50(p));
            t.info(
                &format!("uncontended p50 vs {}", p.label()),
                format!("{} vs {} ({}×)", us(lu), us(pu), opt(ratio(lu, pu), 2)),
            );
            let (lf, pf) = (self.fresh_p50(l), self.fresh_p50(p));
            t.info(
                &format!("first use of a key p50 vs {}", p.label()),
                format!("{} vs {} ({}×)", us(lf), us(pf), opt(ratio(lf, pf), 2)),
            );
        }
        t.render(s, "Targets (lockattr)");
    }

    fn render_commands(&self, s: &mut String) {
        let rows: Vec<&ContendedRow> = self
            .contended
            .iter()
            .filter(|r| !r.commands.is_empty() && r.a.acquisitions > 0)
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(s, "### Redis commands per acquisition, by command\n");
        let _ = writeln!(
            s,
            "| implementation | scenario | commands per acquisition |"
        );
        let _ = writeln!(s, "|---|---|---|");
        for r in rows {
            let n = r.a.acquisitions as f64;
            let mut by: Vec<(&String, &u64)> = r.commands.iter().collect();
            by.sort_by(|a, b| b.1.cmp(a.1));
            let list: Vec<String> = by
                .iter()
                .map(|(name, c)| format!("{name} {:.2}", **c as f64 / n))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                r.kind.label(),
                r.scenario(),
                list.join(", ")
            );
        }
        let _ = writeln!(s);
        let errs: Vec<String> = self
            .contended
            .iter()
            .flat_map(|r| {
                r.errors
                    .iter()
                    .take(3)
                    .map(move |e| format!("{} {}: {e}", r.kind.id(), r.scenario()))
            })
            .collect();
        if !errs.is_empty() {
            let _ = writeln!(s, "### Errors (first 3 per scenario)\n");
            for e in errs {
                let _ = writeln!(s, "- {e}");
            }
            let _ = writeln!(s);
        }
    }
}

pub fn keys_title(keys: Keys) -> &'static str {
    match keys {
        Keys::Reused => "one key, reused every cycle",
        Keys::Fresh => "a new key every cycle (first use of each key)",
    }
}

fn render_sequential(s: &mut String, seq: &Sequential) {
    let raw = seq.p50(Kind::Raw);
    let _ = writeln!(
        s,
        "### Uncontended lock + release, one task, {}\n",
        keys_title(seq.keys)
    );
    let _ = writeln!(
        s,
        "| operation | p50 | p99 | p50 ÷ raw floor | p50 ÷ PING | round trips | Redis cmds | samples |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    // PING is measured in every sequential scenario, interleaved with its rows.
    let _ = writeln!(
        s,
        "| PING (redis-rs MultiplexedConnection) | {} | {} | {} | 1.00 | 1 | 1 | {} |",
        us(seq.ping.p50),
        us(seq.ping.p99),
        opt(ratio(seq.ping.p50, raw), 2),
        seq.ping.n
    );
    for row in &seq.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.kind.label(),
            us(row.latency.p50),
            us(row.latency.p99),
            opt(ratio(row.latency.p50, raw), 2),
            opt(ratio(row.latency.p50, seq.ping.p50), 2),
            opt(row.round_trips, 2),
            opt(row.commands, 2),
            row.latency.n
        );
    }
    let _ = writeln!(s);
}

fn render_sequential_commands(s: &mut String, seq: &Sequential) {
    if seq.rows.iter().all(|r| r.commands_by_name.is_empty()) {
        return;
    }
    let _ = writeln!(
        s,
        "### Redis commands per lock + release, by command: {}\n",
        keys_title(seq.keys)
    );
    let _ = writeln!(s, "| implementation | commands per cycle |");
    let _ = writeln!(s, "|---|---|");
    for row in &seq.rows {
        let mut by: Vec<(&String, &f64)> = row.commands_by_name.iter().collect();
        by.sort_by(|a, b| b.1.total_cmp(a.1));
        let list: Vec<String> = by.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
        let _ = writeln!(s, "| {} | {} |", row.kind.label(), list.join(", "));
    }
    let _ = writeln!(s);
}

fn render_distinct(s: &mut String, rows: &[Distinct], tasks: usize, keys: Keys) {
    if rows.is_empty() {
        return;
    }
    let raw = rows.iter().find(|d| d.kind == Kind::Raw);
    let _ = writeln!(
        s,
        "### {tasks} tasks at once, one process, {}\n",
        match keys {
            Keys::Reused => "each task on its own key, reused every cycle",
            Keys::Fresh => "each task on a new key every cycle",
        }
    );
    let _ = writeln!(
        s,
        "| implementation | cycles/s | ÷ raw floor | cycle p50 | cycle p99 | client CPU / cycle | ÷ raw floor | redis CPU / cycle | cycles | errors |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cpu = |ns: Option<f64>| ns.map_or("–".to_owned(), |ns| format!("{:.1} µs", ns / 1e3));
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    for d in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            d.kind.label(),
            d.per_sec,
            opt(div(Some(d.per_sec), raw.map(|r| r.per_sec)), 2),
            us(d.cycle.p50),
            us(d.cycle.p99),
            cpu(d.client_cpu_ns),
            opt(div(d.client_cpu_ns, raw.and_then(|r| r.client_cpu_ns)), 2),
            cpu(d.redis_cpu_ns),
            d.cycles,
            d.errors
        );
    }
    let _ = writeln!(s);
}

/// A share as a percentage, with the same minus sign as [`bytes`].
fn percent(share: f64) -> String {
    let p = format!("{:.1} %", 100.0 * share.abs());
    if share < -0.0005 {
        format!("−{p}")
    } else {
        p
    }
}

/// Bytes for a table cell: `12.3 MB`, `45.6 KB`, `789 B` (decimal units, signed).
pub fn bytes(b: i64) -> String {
    let a = b.unsigned_abs() as f64;
    let sign = if b < 0 { "−" } else { "" };
    if a >= 1e6 {
        format!("{sign}{:.1} MB", a / 1e6)
    } else if a >= 1e4 {
        format!("{sign}{:.1} KB", a / 1e3)
    } else {
        format!("{sign}{a:.0} B")
    }
}

/// A PASS/MISS table.
#[derive(Default)]
pub struct Targets {
    lines: Vec<String>,
    pass: usize,
    miss: usize,
    missing: usize,
}

impl Targets {
    /// The table under a `### title` heading, with its tally.
    pub fn render(&self, s: &mut String, title: &str) {
        let _ = writeln!(s, "### {title}\n");
        let _ = writeln!(s, "| target | measured | ratio / value | limit | result |");
        let _ = writeln!(s, "|---|---|---:|---:|---|");
        for line in &self.lines {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(
            s,
            "\n{} PASS, {} MISS, {} not measured\n",
            self.pass, self.miss, self.missing
        );
    }

    /// `upper`: the value must be ≤ `limit` (else ≥ `limit`).
    pub fn check(
        &mut self,
        name: &str,
        measured: String,
        value: Option<f64>,
        limit: f64,
        upper: bool,
    ) {
        let (cell, result) = match value {
            None => ("–".to_owned(), "not measured"),
            Some(v) => {
                let ok = if upper { v <= limit } else { v >= limit };
                (format!("{v:.2}"), if ok { "PASS" } else { "MISS" })
            }
        };
        match result {
            "PASS" => self.pass += 1,
            "MISS" => self.miss += 1,
            _ => self.missing += 1,
        }
        let op = if upper { "≤" } else { "≥" };
        self.lines.push(format!(
            "| {name} | {measured} | {cell} | {op} {limit} | {result} |"
        ));
    }

    /// A target that could not be met for a reason other than a number out of range.
    fn fail(&mut self, name: &str, measured: String, limit: f64) {
        self.miss += 1;
        self.lines
            .push(format!("| {name} | {measured} | – | ≤ {limit} | MISS |"));
    }

    pub fn info(&mut self, name: &str, measured: String) {
        self.lines
            .push(format!("| {name} | {measured} | | | info |"));
    }
}
