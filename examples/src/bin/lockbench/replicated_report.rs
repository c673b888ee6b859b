//! The replicated section of the report: lockattr with `wait_for_replicas` next to the plain
//! lock on a master with one replica, commands by name, and the replicated targets.

use std::fmt::Write as _;

use crate::replicated::{
    Counted, ReplicatedReport, SeqTable, Variant, DIAGNOSTIC_EVERY, REPLICAS, WAIT_TIMEOUT,
};
use crate::report::{keys_title, opt, ratio, Targets};
use crate::simple::Keys;
use crate::stats::us;

/// How many PING p50s a cycle with `wait_for_replicas` may cost above the plain lock's: one
/// extra round trip (the replica's acknowledgement) with some room for its scheduling.
const EXTRA_PINGS: f64 = 1.5;

/// Renders the section.
pub fn render(s: &mut String, r: &ReplicatedReport) {
    let _ = writeln!(
        s,
        "### Replicated: a master with {REPLICAS} replica, wait_for_replicas next to the plain lock\n"
    );
    let _ = writeln!(
        s,
        "A master (port {}) and {REPLICAS} replica (port {}, `--replicaof`), no persistence, \
         started by the bench; the replica acknowledged a probe write {:.1} s after the master \
         started. Every row runs on the master. With `wait_for_replicas({REPLICAS}, {} ms)` \
         lockattr pipelines `WAIT {REPLICAS} {}` after every acquisition's write (the release \
         does not wait); the diagnostic floor does the same to the raw floor's `SET NX PX` (in \
         every {DIAGNOSTIC_EVERY}th round only). Redis commands and `WAIT`s are counted on the \
         master.\n",
        r.master,
        r.replica,
        r.startup.as_secs_f64(),
        WAIT_TIMEOUT.as_millis(),
        WAIT_TIMEOUT.as_millis()
    );
    for table in &r.sequential {
        render_sequential(s, table);
    }
    render_distinct(s, r);
    render_by_command(s, r);
    render_targets(s, r);
    let errors: Vec<String> = r
        .sequential
        .iter()
        .flat_map(|t| {
            t.rows.iter().filter_map(move |row| {
                let e = row.first_error.as_ref()?;
                Some(format!(
                    "{} ({}): {} errors, the first: {e}",
                    row.variant.label(),
                    keys_title(t.keys),
                    row.errors
                ))
            })
        })
        .chain(r.notes.iter().cloned())
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "Replicated notes:\n");
        for e in errors {
            let _ = writeln!(s, "- {e}");
        }
        let _ = writeln!(s);
    }
}

fn render_sequential(s: &mut String, t: &SeqTable) {
    let _ = writeln!(
        s,
        "#### Uncontended lock + release on the replicated master, one task, {}\n",
        keys_title(t.keys)
    );
    let _ = writeln!(
        s,
        "| operation | p50 | p99 | p50 ÷ raw floor | p50 ÷ PING | round trips | Redis cmds | WAIT / cycle | samples | errors |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let raw = t.p50(Variant::Raw);
    let _ = writeln!(
        s,
        "| PING (redis-rs MultiplexedConnection) | {} | {} | {} | 1.00 | 1 | 1 | 0 | {} | 0 |",
        us(t.ping.p50),
        us(t.ping.p99),
        opt(ratio(t.ping.p50, raw), 2),
        t.ping.n
    );
    for row in &t.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.variant.label(),
            us(row.latency.p50),
            us(row.latency.p99),
            opt(ratio(row.latency.p50, raw), 2),
            opt(ratio(row.latency.p50, t.ping.p50), 2),
            opt(row.round_trips, 2),
            opt(row.counted.as_ref().map(|c| c.commands), 2),
            opt(row.counted.as_ref().map(|c| c.waits), 2),
            row.latency.n,
            row.errors
        );
    }
    let _ = writeln!(s);
}

fn render_distinct(s: &mut String, r: &ReplicatedReport) {
    if r.distinct.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "#### {} tasks at once on the replicated master, one process, each task on its own key, reused every cycle\n",
        r.distinct_tasks
    );
    let _ = writeln!(
        s,
        "| implementation | cycles/s | ÷ plain | cycle p50 | cycle p99 | client CPU / cycle | redis CPU / cycle: master | replica | Redis cmds / cycle | WAIT / cycle | cycles | errors |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let cpu = |ns: Option<f64>| ns.map_or("–".to_owned(), |ns| format!("{:.1} µs", ns / 1e3));
    let plain = r
        .distinct
        .iter()
        .find(|d| d.variant == Variant::Plain)
        .map(|d| d.row.per_sec);
    for d in &r.distinct {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            d.variant.label(),
            d.row.per_sec,
            opt(plain.filter(|p| *p > 0.0).map(|p| d.row.per_sec / p), 2),
            us(d.row.cycle.p50),
            us(d.row.cycle.p99),
            cpu(d.row.client_cpu_ns),
            cpu(d.row.redis_cpu_ns),
            cpu(d.replica_cpu_ns),
            opt(d.counted.as_ref().map(|c| c.commands), 2),
            opt(d.counted.as_ref().map(|c| c.waits), 2),
            d.row.cycles,
            d.row.errors
        );
    }
    let _ = writeln!(s);
}

fn by_name(c: &Counted) -> String {
    if c.by_name.is_empty() {
        return "–".to_owned();
    }
    let mut by: Vec<(&String, &f64)> = c.by_name.iter().collect();
    by.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let list: Vec<String> = by.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
    list.join(", ")
}

fn render_by_command(s: &mut String, r: &ReplicatedReport) {
    let _ = writeln!(
        s,
        "#### Redis commands on the replicated master, by command\n"
    );
    let _ = writeln!(s, "| implementation | scenario | commands per cycle |");
    let _ = writeln!(s, "|---|---|---|");
    for t in &r.sequential {
        for row in &t.rows {
            if let Some(c) = &row.counted {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    row.variant.label(),
                    keys_title(t.keys),
                    by_name(c)
                );
            }
        }
    }
    for d in &r.distinct {
        if let Some(c) = &d.counted {
            let _ = writeln!(
                s,
                "| {} | {} tasks, each on its own key | {} |",
                d.variant.label(),
                r.distinct_tasks,
                by_name(c)
            );
        }
    }
    let _ = writeln!(s);
}

/// A latency difference in ns as signed µs (`–` when absent).
fn signed_us(ns: Option<f64>) -> String {
    ns.map_or("–".to_owned(), |ns| format!("{:+.0} µs", ns / 1e3))
}

fn keys_short(keys: Keys) -> &'static str {
    match keys {
        Keys::Reused => "one key reused",
        Keys::Fresh => "a new key every cycle",
    }
}

fn render_targets(s: &mut String, r: &ReplicatedReport) {
    let mut t = Targets::default();
    let (p, w) = (Variant::Plain, Variant::Waited);
    let diff = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a as f64 - b as f64),
        _ => None,
    };
    let waited_errors: u64 = r
        .sequential
        .iter()
        .filter_map(|t| t.row(w))
        .map(|row| row.errors)
        .chain(
            r.distinct
                .iter()
                .filter(|d| d.variant == w)
                .map(|d| d.row.errors),
        )
        .sum();
    let waited_cycles: usize = r
        .sequential
        .iter()
        .filter_map(|t| t.row(w))
        .map(|row| row.latency.n)
        .sum::<usize>()
        + r.distinct
            .iter()
            .filter(|d| d.variant == w)
            .map(|d| usize::try_from(d.row.cycles).unwrap_or(usize::MAX))
            .sum::<usize>();
    t.check(
        "wait_for_replicas: 0 errors, every replicated lockattr row (one task and 64 tasks)",
        format!("{waited_errors} errors in {waited_cycles} cycles"),
        (waited_cycles > 0 || waited_errors > 0).then_some(waited_errors as f64),
        0.0,
        true,
    );
    for table in &r.sequential {
        let keys = keys_short(table.keys);
        let (pp, wp, ping) = (table.p50(p), table.p50(w), table.ping.p50);
        t.check(
            &format!(
                "with wait_for_replicas the cycle costs ≤ 1 extra round trip: p50 ≤ plain p50 + {EXTRA_PINGS} × PING p50 ({keys})"
            ),
            format!("{} vs plain {}, PING {}", us(wp), us(pp), us(ping)),
            match (diff(wp, pp), ping) {
                (Some(d), Some(ping)) if ping > 0 => Some(d / ping as f64),
                _ => None,
            },
            EXTRA_PINGS,
            true,
        );
        t.info(
            &format!("wait_for_replicas ÷ plain, p50 ({keys})"),
            format!("{} ÷ {} = {}×", us(wp), us(pp), opt(ratio(wp, pp), 2)),
        );
        let trips = |v: Variant| table.row(v).and_then(|row| row.round_trips);
        let (pt, wt) = (trips(p), trips(w));
        t.check(
            &format!(
                "WAIT is pipelined: round trips per lock+release with wait_for_replicas − plain's ≤ 0 ({keys})"
            ),
            format!("{} vs {}", opt(wt, 2), opt(pt, 2)),
            pt.zip(wt).map(|(pt, wt)| wt - pt),
            0.0,
            true,
        );
        let waits = table
            .row(w)
            .and_then(|row| row.counted.as_ref())
            .map(|c| c.waits);
        t.info(
            &format!("WAIT per lock+release with wait_for_replicas ({keys})"),
            opt(waits, 2),
        );
        let (rp, rwp) = (table.p50(Variant::Raw), table.p50(Variant::RawWait));
        let per_ping = |d: Option<f64>| match (d, ping) {
            (Some(d), Some(ping)) if ping > 0 => Some(d / ping as f64),
            _ => None,
        };
        t.info(
            &format!("p50 added by WAIT: lockattr vs the raw floor, in PING p50s ({keys})"),
            format!(
                "lockattr {} ({}), raw floor {} ({})",
                signed_us(diff(wp, pp)),
                opt(per_ping(diff(wp, pp)), 2),
                signed_us(diff(rwp, rp)),
                opt(per_ping(diff(rwp, rp)), 2)
            ),
        );
    }
    let find = |v: Variant| r.distinct.iter().find(|d| d.variant == v);
    if let (Some(pd), Some(wd)) = (find(p), find(w)) {
        t.info(
            &format!(
                "{} tasks, each on its own key: cycles/s with wait_for_replicas vs plain",
                r.distinct_tasks
            ),
            format!(
                "{:.0} vs {:.0} ({}×)",
                wd.row.per_sec,
                pd.row.per_sec,
                opt(
                    (pd.row.per_sec > 0.0).then(|| wd.row.per_sec / pd.row.per_sec),
                    2
                )
            ),
        );
    }
    t.render(s, "Targets (wait_for_replicas)");
}
