//! The Redis Cluster section of the report: the cluster rows next to their one-server twins,
//! commands by node, and the cluster targets.

use std::fmt::Write as _;

use crate::cluster::{twin_in, ClusterReport, ContendedPair, NodeSplit, On, SeqTable};
use crate::impls::Kind;
use crate::report::{body_label, keys_title, opt, ratio, ContendedRow, Targets};
use crate::simple::Keys;
use crate::stats::us;

/// How many commands per acquisition a cluster row may spend above its one-server twin.
const EXTRA_COMMANDS: f64 = 1.0;

fn scenario(r: &ContendedRow) -> String {
    format!(
        "{} proc × {} waiters, body {}",
        r.procs,
        r.waiters,
        body_label(r.body)
    )
}

fn split_cells(split: Option<&NodeSplit>) -> [String; 4] {
    match split {
        None => [
            "–".to_owned(),
            "–".to_owned(),
            "–".to_owned(),
            "–".to_owned(),
        ],
        Some(c) => [
            format!("{:.2}", c.total),
            opt(c.on_key_master, 2),
            opt(c.elsewhere, 2),
            format!("{:.2}", c.upkeep),
        ],
    }
}

/// Renders the section; `main` are the one-server contended rows of the run.
pub fn render(s: &mut String, c: &ClusterReport, main: &[ContendedRow]) {
    let _ = writeln!(
        s,
        "### Redis Cluster: {} masters, lockattr next to one server\n",
        c.masters.len()
    );
    let _ = writeln!(
        s,
        "A cluster of {} masters without replicas (ports {:?}), started by the bench in {:.1} s. \
         Redis commands are the lock's, summed over every node; *on the key's master* and \
         *elsewhere* split a one-key scenario's by node; *client upkeep* is what the cluster \
         client sends for itself (topology, script loading) per cycle or acquisition.\n",
        c.masters.len(),
        c.masters,
        c.startup.as_secs_f64()
    );
    for table in &c.sequential {
        render_sequential(s, table);
    }
    render_distinct(s, c);
    render_contended(s, c, main);
    render_by_command(s, c);
    render_targets(s, c, main);
    if !c.notes.is_empty() {
        let _ = writeln!(s, "Cluster notes:\n");
        for n in &c.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s);
    }
}

fn render_sequential(s: &mut String, t: &SeqTable) {
    let _ = writeln!(
        s,
        "#### Uncontended lock + release, one task, {}\n",
        keys_title(t.keys)
    );
    let _ = writeln!(
        s,
        "| operation | deployment | p50 | p99 | p50 ÷ raw floor (same deployment) | p50 ÷ one round trip (same deployment) | Redis cmds | on the key's master | elsewhere | client upkeep | samples |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let round_trip = |on: On| t.round_trip.iter().find(|(o, _)| *o == on).map(|(_, r)| r);
    let raw = |on: On| t.row(on, Kind::Raw).and_then(|r| r.latency.p50);
    for (on, rt) in &t.round_trip {
        let name = match on {
            On::Server => "one round trip: PING",
            On::Cluster => "one round trip: EXISTS through the cluster connection",
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | 1.00 | 1 | | | | {} |",
            on.label(),
            us(rt.p50),
            us(rt.p99),
            opt(ratio(rt.p50, raw(*on)), 2),
            rt.n
        );
    }
    for row in &t.rows {
        let [total, master, elsewhere, upkeep] = split_cells(row.commands.as_ref());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {total} | {master} | {elsewhere} | {upkeep} | {} |",
            row.kind.label(),
            row.on.label(),
            us(row.latency.p50),
            us(row.latency.p99),
            opt(ratio(row.latency.p50, raw(row.on)), 2),
            opt(
                ratio(row.latency.p50, round_trip(row.on).and_then(|r| r.p50)),
                2
            ),
            row.latency.n
        );
    }
    let _ = writeln!(s);
}

fn render_distinct(s: &mut String, c: &ClusterReport) {
    if c.distinct_fresh.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "#### {} tasks at once, one process, each task on a new key every cycle\n",
        c.distinct_tasks
    );
    let _ = writeln!(
        s,
        "| implementation | deployment | cycles/s | ÷ raw floor (same deployment) | cycle p50 | cycle p99 | client CPU / cycle | redis CPU / cycle (all nodes) | Redis cmds / cycle | cycles | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cpu = |ns: Option<f64>| ns.map_or("–".to_owned(), |ns| format!("{:.1} µs", ns / 1e3));
    for d in &c.distinct_fresh {
        let raw = c
            .distinct_fresh
            .iter()
            .find(|r| r.on == d.on && r.row.kind == Kind::Raw)
            .map(|r| r.row.per_sec);
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            d.row.kind.label(),
            d.on.label(),
            d.row.per_sec,
            opt(raw.filter(|r| *r > 0.0).map(|r| d.row.per_sec / r), 2),
            us(d.row.cycle.p50),
            us(d.row.cycle.p99),
            cpu(d.row.client_cpu_ns),
            cpu(d.row.redis_cpu_ns),
            opt(d.commands.as_ref().map(|c| c.total), 2),
            d.row.cycles,
            d.row.errors
        );
    }
    let _ = writeln!(s);
}

/// The one-server twin of a cluster row.
fn twin<'a>(p: &'a ContendedPair, main: &'a [ContendedRow]) -> Option<&'a ContendedRow> {
    let r = &p.cluster;
    let body_ms = u64::try_from(r.body.as_millis()).unwrap_or(0);
    twin_in(main, r.procs, r.waiters, body_ms).or(p.twin.as_ref())
}

fn render_contended(s: &mut String, c: &ClusterReport, main: &[ContendedRow]) {
    if c.contended.is_empty() {
        return;
    }
    let _ = writeln!(s, "#### Contended, one key, forced handoff: lockattr\n");
    let _ = writeln!(
        s,
        "| scenario | deployment | acquisitions | acq/s | handoff p50 | cross-proc handoff p50 (n) | cmds/acq (all nodes) | on the key's master | elsewhere | client upkeep | wait p99 | violations |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for p in &c.contended {
        let twin_row = twin(p, main);
        let twin_split = twin_row.map(|t| {
            let port = t.by_node.keys().next().copied();
            NodeSplit::of(&t.by_node, t.a.acquisitions as u64, port)
        });
        let rows = [
            (On::Server, twin_row, twin_split),
            (On::Cluster, Some(&p.cluster), Some(p.split())),
        ];
        for (on, row, split) in rows {
            let Some(r) = row else {
                let _ = writeln!(
                    s,
                    "| {} | {} | not measured | | | | | | | | | |",
                    scenario(&p.cluster),
                    on.label()
                );
                continue;
            };
            let a = &r.a;
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
            let [total, master, elsewhere, upkeep] = split_cells(split.as_ref());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {cross} | {total} | {master} | {elsewhere} | {upkeep} | {} | {violations} |",
                scenario(r),
                on.label(),
                a.acquisitions,
                opt(a.rate, 0),
                us(a.handoff.p50),
                us(a.wait.p99)
            );
        }
    }
    let _ = writeln!(s);
}

fn by_name(names: &std::collections::BTreeMap<String, f64>) -> String {
    if names.is_empty() {
        return "–".to_owned();
    }
    let mut by: Vec<(&String, &f64)> = names.iter().collect();
    by.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let list: Vec<String> = by.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
    list.join(", ")
}

fn render_by_command(s: &mut String, c: &ClusterReport) {
    let _ = writeln!(
        s,
        "#### Redis commands on the cluster, by command (all nodes)\n"
    );
    let _ = writeln!(
        s,
        "| implementation | scenario | lock commands per cycle or acquisition | client upkeep | PUBLISH (all nodes) | SPUBLISH elsewhere |"
    );
    let _ = writeln!(s, "|---|---|---|---|---:|---:|");
    let mut line = |label: &str, scenario: &str, split: &NodeSplit| {
        let _ = writeln!(
            s,
            "| {label} | {scenario} | {} | {} | {} | {} |",
            by_name(&split.by_name),
            by_name(&split.upkeep_by_name),
            split.publish,
            split
                .spublish_elsewhere
                .map_or("–".to_owned(), |n| n.to_string())
        );
    };
    for t in &c.sequential {
        for row in t.rows.iter().filter(|r| r.on == On::Cluster) {
            if let Some(split) = &row.commands {
                line(row.kind.label(), keys_title(t.keys), split);
            }
        }
    }
    for d in c.distinct_fresh.iter().filter(|d| d.on == On::Cluster) {
        if let Some(split) = &d.commands {
            line(
                d.row.kind.label(),
                &format!("{} tasks, a new key every cycle", c.distinct_tasks),
                split,
            );
        }
    }
    for p in &c.contended {
        line(p.cluster.kind.label(), &scenario(&p.cluster), &p.split());
    }
    let _ = writeln!(s);
}

fn render_targets(s: &mut String, c: &ClusterReport, main: &[ContendedRow]) {
    let mut t = Targets::default();
    let l = Kind::Lockattr;
    let diff = |cluster: Option<f64>, server: Option<f64>| match (cluster, server) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    let mut elsewhere: Vec<f64> = Vec::new();
    let mut publish = 0u64;
    let mut spublish_elsewhere = 0u64;
    let mut note = |split: &NodeSplit| {
        elsewhere.extend(split.elsewhere);
        publish += split.publish;
        spublish_elsewhere += split.spublish_elsewhere.unwrap_or(0);
    };
    for table in &c.sequential {
        let total = |on: On| {
            table
                .row(on, l)
                .and_then(|r| r.commands.as_ref())
                .map(|c| c.total)
        };
        let (k, o) = (total(On::Cluster), total(On::Server));
        t.check(
            &format!(
                "Redis commands per lock+release on the cluster ≤ one server's + {EXTRA_COMMANDS} ({})",
                match table.keys {
                    Keys::Reused => "one key reused",
                    Keys::Fresh => "a new key every cycle",
                }
            ),
            format!("{} vs {}", opt(k, 2), opt(o, 2)),
            diff(k, o),
            EXTRA_COMMANDS,
            true,
        );
        for row in table.rows.iter().filter(|r| r.on == On::Cluster) {
            if let Some(split) = &row.commands {
                note(split);
            }
        }
        let (kp, op) = (
            table.row(On::Cluster, l).and_then(|r| r.latency.p50),
            table.row(On::Server, l).and_then(|r| r.latency.p50),
        );
        let (kr, kt) = (
            table
                .row(On::Cluster, Kind::Raw)
                .and_then(|r| r.latency.p50),
            table.round_trip[1].1.p50,
        );
        t.info(
            &format!(
                "lock+release p50 on the cluster, {}",
                keys_title(table.keys)
            ),
            format!(
                "{} = {}× one server's {}, {}× the cluster's raw floor {}, {}× its round trip",
                us(kp),
                opt(ratio(kp, op), 2),
                us(op),
                opt(ratio(kp, kr), 2),
                us(kr),
                opt(ratio(kp, kt), 2)
            ),
        );
    }
    let fresh = |on: On| {
        c.distinct_fresh
            .iter()
            .find(|d| d.on == on && d.row.kind == l)
    };
    if let (Some(k), Some(o)) = (fresh(On::Cluster), fresh(On::Server)) {
        let (kc, oc) = (
            k.commands.as_ref().map(|c| c.total),
            o.commands.as_ref().map(|c| c.total),
        );
        t.check(
            &format!(
                "Redis commands per cycle on the cluster ≤ one server's + {EXTRA_COMMANDS} ({} tasks, new keys)",
                c.distinct_tasks
            ),
            format!("{} vs {}", opt(kc, 2), opt(oc, 2)),
            diff(kc, oc),
            EXTRA_COMMANDS,
            true,
        );
        if let Some(split) = &k.commands {
            note(split);
        }
        t.info(
            &format!(
                "{} tasks, new keys: cycles/s on the cluster vs one server",
                c.distinct_tasks
            ),
            format!(
                "{:.0} vs {:.0} ({}×)",
                k.row.per_sec,
                o.row.per_sec,
                opt(
                    (o.row.per_sec > 0.0).then(|| k.row.per_sec / o.row.per_sec),
                    2
                )
            ),
        );
    }
    for p in &c.contended {
        let split = p.split();
        let twin = twin(p, main).and_then(ContendedRow::cmds_per_acq);
        t.check(
            &format!(
                "commands/acquisition on the cluster ≤ one server's + {EXTRA_COMMANDS} ({})",
                scenario(&p.cluster)
            ),
            format!("{:.2} vs {}", split.total, opt(twin, 2)),
            diff(Some(split.total), twin),
            EXTRA_COMMANDS,
            true,
        );
        note(&split);
    }
    t.check(
        "lock commands on nodes other than the key's master, every one-key cluster scenario (flat in the number of masters)",
        format!("max {} per acquisition", opt(elsewhere.iter().copied().reduce(f64::max), 2)),
        elsewhere.iter().copied().reduce(f64::max),
        0.0,
        true,
    );
    t.check(
        "PUBLISH (broadcast to every node) on any node, every cluster scenario",
        publish.to_string(),
        Some(publish as f64),
        0.0,
        true,
    );
    t.check(
        "SPUBLISH on nodes other than the key's master, every one-key cluster scenario",
        spublish_elsewhere.to_string(),
        Some(spublish_elsewhere as f64),
        0.0,
        true,
    );
    let bad: u64 = c
        .contended
        .iter()
        .map(|p| p.cluster.a.violations + p.cluster.errors.len() as u64)
        .sum::<u64>()
        + c.distinct_fresh
            .iter()
            .filter(|d| d.on == On::Cluster)
            .map(|d| d.row.errors)
            .sum::<u64>();
    t.check(
        "zero exclusion violations and errors, every lockattr scenario on the cluster",
        format!(
            "{bad} in {} contended scenarios, {} acquisitions",
            c.contended.len(),
            c.contended
                .iter()
                .map(|p| p.cluster.a.acquisitions)
                .sum::<usize>()
        ),
        (!c.contended.is_empty()).then_some(bad as f64),
        0.0,
        true,
    );
    t.render(s, "Targets (lockattr on the Redis Cluster)");
}
