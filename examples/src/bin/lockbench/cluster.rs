//! The Redis Cluster rows: lockattr on a cluster of 3 masters that the bench starts itself,
//! next to lockattr on one server, measured the same way in the same run.
//!
//! - **Sequential** (one task; one key reused, or a new key every cycle): the raw floor and
//!   lockattr, each on the bench's server and on the cluster, in interleaved batches, with one
//!   round trip of each deployment (`PING` on the server, a keyed `EXISTS` through the cluster
//!   connection: a cluster `PING` goes to every master) measured alongside.
//! - **64 tasks, a new key every cycle**: the same four rows in interleaved rounds.
//! - **Contended** (one key, forced handoff): lockattr on the cluster in a few of the
//!   one-server scenarios' shapes; their one-server twins are the main table's rows, or are
//!   measured here when that table did not run.
//!
//! Redis commands are read from `INFO commandstats` of every node and split by node: on a
//! cluster, the lock's commands must all run on the master of its key's slot, so that adding
//! masters adds no command per acquisition. The cluster has no replicas (nothing here fails
//! over; replicas would only repeat the masters' writes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use lockattr_tests::cluster::{ClusterOptions, RedisCluster};
use lockattr_tests::RedisServer;

use crate::clock::now_ns;
use crate::deploy::{sum_nodes, CountsByNode, Deploy};
use crate::impls::{build, AnyConn, Kind, LockImpl};
use crate::lockattr_impl::NAMESPACE;
use crate::progress::Progress;
use crate::report::{is_harness_command, ContendedRow};
use crate::simple::{self, KeySource, Keys};
use crate::stats::Summary;
use crate::{contended_in_process, contended_two_procs, round_order, Plan, DISTINCT_ROUNDS};

/// Masters of the bench's cluster.
pub const MASTERS: usize = 3;

/// The contended scenarios run on the cluster: (processes, waiters, body in ms).
pub const CONTENDED: [(u32, u32, u64); 6] = [
    (1, 10, 0),
    (1, 100, 0),
    (1, 100, 1),
    (2, 10, 0),
    (2, 100, 0),
    (2, 100, 1),
];

/// Where a row ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Server,
    Cluster,
}

impl On {
    pub fn label(self) -> &'static str {
        match self {
            On::Server => "one server",
            On::Cluster => "cluster",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            On::Server => "s",
            On::Cluster => "k",
        }
    }
}

/// The rows of the uncontended tables, in table order.
const ROWS: [(On, Kind); 4] = [
    (On::Server, Kind::Raw),
    (On::Server, Kind::Lockattr),
    (On::Cluster, Kind::Raw),
    (On::Cluster, Kind::Lockattr),
];

/// Commands per cycle or acquisition, split by node.
#[derive(Debug, Clone, Default)]
pub struct NodeSplit {
    /// The lock's commands (Lua-internal calls included) on all nodes.
    pub total: f64,
    /// The same by command name.
    pub by_name: BTreeMap<String, f64>,
    /// The lock's commands on the master of its key (one-key scenarios only).
    pub on_key_master: Option<f64>,
    /// The lock's commands on every other node (one-key scenarios only).
    pub elsewhere: Option<f64>,
    /// Commands the cluster client sends for itself (topology, script loading), all nodes.
    pub upkeep: f64,
    /// The same by command name.
    pub upkeep_by_name: BTreeMap<String, f64>,
    /// `PUBLISH` calls on all nodes (broadcast on a cluster).
    pub publish: u64,
    /// `SPUBLISH` calls on nodes other than the key's master (one-key scenarios only).
    pub spublish_elsewhere: Option<u64>,
}

/// Commands a cluster client sends for itself rather than for a lock: topology reads, script
/// loading, replica reads, health checks.
pub fn is_client_upkeep(name: &str) -> bool {
    name.starts_with("cluster|")
        || name.starts_with("script|")
        || name.starts_with("command|")
        || name == "readonly"
        || name == "ping"
}

impl NodeSplit {
    /// `by_node` over `n` cycles or acquisitions; `key_master` is the master of the lock's key
    /// when the scenario uses one key.
    pub fn of(by_node: &CountsByNode, n: u64, key_master: Option<u16>) -> NodeSplit {
        let per = |c: u64| c as f64 / n.max(1) as f64;
        let lock = |counts: &BTreeMap<String, u64>| -> u64 {
            counts
                .iter()
                .filter(|(name, _)| !is_harness_command(name) && !is_client_upkeep(name))
                .map(|(_, c)| c)
                .sum()
        };
        let total: BTreeMap<String, u64> = sum_nodes(by_node);
        let by_name = total
            .iter()
            .filter(|(name, c)| !is_harness_command(name) && !is_client_upkeep(name) && **c > 0)
            .map(|(name, c)| (name.clone(), per(*c)))
            .collect();
        let upkeep_by_name: BTreeMap<String, f64> = total
            .iter()
            .filter(|(name, c)| is_client_upkeep(name) && !is_harness_command(name) && **c > 0)
            .map(|(name, c)| (name.clone(), per(*c)))
            .collect();
        let others = || by_node.iter().filter(move |(p, _)| Some(**p) != key_master);
        NodeSplit {
            total: per(lock(&total)),
            by_name,
            on_key_master: key_master.map(|m| per(by_node.get(&m).map_or(0, &lock))),
            elsewhere: key_master.map(|_| per(others().map(|(_, c)| lock(c)).sum())),
            // A fold from +0.0: an empty f64 `sum()` is -0.0, which prints as "-0.00".
            upkeep: upkeep_by_name.values().fold(0.0, |a, b| a + b),
            upkeep_by_name,
            publish: total.get("publish").copied().unwrap_or(0),
            spublish_elsewhere: key_master.map(|_| {
                others()
                    .map(|(_, c)| c.get("spublish").copied().unwrap_or(0))
                    .sum()
            }),
        }
    }
}

/// One row of a sequential table.
#[derive(Debug)]
pub struct SeqRow {
    pub on: On,
    pub kind: Kind,
    pub latency: Summary,
    /// Commands per lock + release over the counted cycles.
    pub commands: Option<NodeSplit>,
}

/// One sequential table.
#[derive(Debug)]
pub struct SeqTable {
    pub keys: Keys,
    /// One round trip on each deployment: `PING` on the server, `EXISTS` via the cluster.
    pub round_trip: [(On, Summary); 2],
    pub rows: Vec<SeqRow>,
}

impl SeqTable {
    pub fn row(&self, on: On, kind: Kind) -> Option<&SeqRow> {
        self.rows.iter().find(|r| r.on == on && r.kind == kind)
    }
}

/// One row of the 64-task table.
#[derive(Debug)]
pub struct DistinctRow {
    pub on: On,
    pub row: simple::Distinct,
    /// Commands per cycle over all rounds.
    pub commands: Option<NodeSplit>,
}

/// A contended scenario on the cluster.
#[derive(Debug)]
pub struct ContendedPair {
    pub cluster: ContendedRow,
    /// The port of the master of the lock's key.
    pub key_master: u16,
    /// The one-server twin, when the main contended table does not have it.
    pub twin: Option<ContendedRow>,
}

impl ContendedPair {
    pub fn split(&self) -> NodeSplit {
        NodeSplit::of(
            &self.cluster.by_node,
            self.cluster.a.acquisitions as u64,
            Some(self.key_master),
        )
    }
}

/// Everything the cluster section measured.
#[derive(Debug)]
pub struct ClusterReport {
    pub masters: Vec<u16>,
    pub startup: Duration,
    pub sequential: Vec<SeqTable>,
    pub distinct_fresh: Vec<DistinctRow>,
    pub distinct_tasks: usize,
    pub contended: Vec<ContendedPair>,
    pub notes: Vec<String>,
}

/// Progress steps [`run`] takes (`twins`: contended twins it must measure itself).
pub fn steps(twins: usize) -> u64 {
    1 + 2 * 2 + DISTINCT_ROUNDS + CONTENDED.len() as u64 + twins as u64
}

/// The lockattr row of `main` with this shape.
pub fn twin_in(
    main: &[ContendedRow],
    procs: u32,
    waiters: u32,
    body_ms: u64,
) -> Option<&ContendedRow> {
    main.iter().find(|r| {
        r.kind == Kind::Lockattr
            && r.procs == procs
            && r.waiters == waiters
            && r.body == Duration::from_millis(body_ms)
    })
}

/// The bench's server and its cluster.
#[derive(Clone, Copy)]
struct Both<'a> {
    server: &'a RedisServer,
    cluster: &'a RedisCluster,
}

impl<'a> Both<'a> {
    fn on(self, on: On) -> Deploy<'a> {
        match on {
            On::Server => Deploy::Server(self.server),
            On::Cluster => Deploy::Cluster(self.cluster),
        }
    }
}

/// The Redis key of lock `key` for `kind` (lockattr namespaces and hash-tags it).
fn redis_key(kind: Kind, key: &str) -> String {
    match kind {
        Kind::Lockattr => format!("{NAMESPACE}:{{{key}}}"),
        _ => key.to_owned(),
    }
}

/// Starts the cluster and measures every cluster row; `main` holds the one-server contended
/// rows already measured.
pub fn run(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    plan: &Plan,
    main: &[ContendedRow],
    progress: &mut Progress,
) -> Result<ClusterReport> {
    progress.step(&format!("Redis Cluster: starting {MASTERS} masters"));
    let cluster = RedisCluster::start_with(ClusterOptions {
        masters: MASTERS,
        replicas_per_master: 0,
        ..ClusterOptions::default()
    });
    let mut report = ClusterReport {
        masters: cluster.masters(),
        startup: cluster.startup_time(),
        sequential: Vec::new(),
        distinct_fresh: Vec::new(),
        distinct_tasks: plan.distinct_tasks,
        contended: Vec::new(),
        notes: Vec::new(),
    };
    let both = Both {
        server,
        cluster: &cluster,
    };
    let deploy = |on: On| both.on(on);

    for keys in [Keys::Reused, Keys::Fresh] {
        let what = match keys {
            Keys::Reused => "one key reused",
            Keys::Fresh => "a new key every cycle",
        };
        progress.step(&format!("Redis Cluster: lock+release, {what}"));
        let mut table = rt.block_on(sequential(both, keys, plan))?;
        progress.step(&format!("Redis Cluster: Redis commands per cycle, {what}"));
        for row in &mut table.rows {
            match count(
                rt,
                deploy(row.on),
                &cluster,
                row.kind,
                keys,
                plan.counted_cycles,
            ) {
                Ok(split) => row.commands = Some(split),
                Err(e) => report.notes.push(format!(
                    "counting the commands of {} on {} failed: {e:#}",
                    row.kind.label(),
                    row.on.label()
                )),
            }
        }
        report.sequential.push(table);
    }

    report.distinct_fresh = distinct_fresh(rt, both, plan, progress)?;

    for &(procs, waiters, body_ms) in &CONTENDED {
        let body = Duration::from_millis(body_ms);
        let run_on = |on: On, progress: &mut Progress| {
            progress.step(&format!(
                "Redis Cluster: contended lockattr on {} {procs} proc {waiters} waiters body {} µs",
                on.label(),
                body.as_micros()
            ));
            if procs == 1 {
                contended_in_process(rt, deploy(on), Kind::Lockattr, waiters, body, plan)
            } else {
                contended_two_procs(deploy(on), Kind::Lockattr, waiters, body, plan)
            }
        };
        let twin = if twin_in(main, procs, waiters, body_ms).is_some() {
            None
        } else {
            match run_on(On::Server, progress) {
                Ok(row) => Some(row),
                Err(e) => {
                    report.notes.push(format!(
                        "lockattr, one server, {procs} proc {waiters} waiters body {body_ms} ms failed: {e:#}"
                    ));
                    None
                }
            }
        };
        match run_on(On::Cluster, progress) {
            Ok(row) => {
                let key_master = cluster.master_for_key(&redis_key(Kind::Lockattr, &row.key));
                report.contended.push(ContendedPair {
                    cluster: row,
                    key_master,
                    twin,
                });
            }
            Err(e) => report.notes.push(format!(
                "lockattr on the cluster, {procs} proc {waiters} waiters body {body_ms} ms failed: {e:#}"
            )),
        }
    }
    Ok(report)
}

/// Interleaved batches of every row of [`ROWS`] and of one round trip on each deployment.
async fn sequential(both: Both<'_>, keys: Keys, plan: &Plan) -> Result<SeqTable> {
    let deploy = |on: On| both.on(on);
    let mut server_conn = AnyConn::connect(&deploy(On::Server).url()).await?;
    let mut cluster_conn = AnyConn::connect(&deploy(On::Cluster).url()).await?;
    let mut imps: Vec<(On, Kind, Arc<dyn LockImpl>, KeySource)> = Vec::new();
    for (on, kind) in ROWS {
        let imp = build(kind, &deploy(on).url())
            .await
            .with_context(|| format!("{} on {}", kind.label(), on.label()))?;
        imps.push((
            on,
            kind,
            imp,
            KeySource::new(&format!("q{}", on.tag()), keys, kind, 0),
        ));
    }
    let wait = Duration::from_secs(5);
    for (_, _, imp, source) in &imps {
        for _ in 0..20 {
            imp.acquire(&source.next(), wait).await?.release().await?;
        }
    }
    let n = plan.rounds * plan.batch;
    let (mut ping, mut exists) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut samples: Vec<Vec<u64>> = imps.iter().map(|_| Vec::with_capacity(n)).collect();
    for _ in 0..plan.rounds {
        for _ in 0..plan.batch {
            let t0 = now_ns();
            let _: String = redis::cmd("PING").query_async(&mut server_conn).await?;
            ping.push(now_ns() - t0);
            let t0 = now_ns();
            let _: bool = redis::cmd("EXISTS")
                .arg("round-trip")
                .query_async(&mut cluster_conn)
                .await?;
            exists.push(now_ns() - t0);
        }
        for ((on, kind, imp, source), out) in imps.iter().zip(&mut samples) {
            for _ in 0..plan.batch {
                let key = source.next();
                let t0 = now_ns();
                let held = imp
                    .acquire(&key, wait)
                    .await
                    .with_context(|| format!("{} on {}: acquire", kind.id(), on.label()))?;
                held.release()
                    .await
                    .with_context(|| format!("{} on {}: release", kind.id(), on.label()))?;
                out.push(now_ns() - t0);
            }
        }
    }
    Ok(SeqTable {
        keys,
        round_trip: [
            (On::Server, Summary::of(ping)),
            (On::Cluster, Summary::of(exists)),
        ],
        rows: imps
            .iter()
            .zip(samples)
            .map(|((on, kind, _, _), s)| SeqRow {
                on: *on,
                kind: *kind,
                latency: Summary::of(s),
                commands: None,
            })
            .collect(),
    })
}

/// Commands per lock + release of `kind` on `deploy`, over `n` cycles after 5 warm-up ones.
fn count(
    rt: &tokio::runtime::Runtime,
    deploy: Deploy<'_>,
    cluster: &RedisCluster,
    kind: Kind,
    keys: Keys,
    n: usize,
) -> Result<NodeSplit> {
    let source = KeySource::new(&format!("n{}", deploy_tag(deploy)), keys, kind, 0);
    let by_node = rt.block_on(async {
        let imp = build(kind, &deploy.url()).await?;
        simple::cycles(&*imp, &source, 5).await?;
        deploy.reset_stats();
        simple::cycles(&*imp, &source, n).await?;
        let by_node = deploy.counts_by_node();
        drop(imp);
        anyhow::Ok(by_node)
    })?;
    let key_master = match (keys, deploy) {
        (Keys::Fresh, _) => None,
        (Keys::Reused, Deploy::Server(s)) => Some(s.port()),
        (Keys::Reused, Deploy::Cluster(_)) => {
            Some(cluster.master_for_key(&redis_key(kind, &source.next())))
        }
    };
    Ok(NodeSplit::of(&by_node, n as u64, key_master))
}

fn deploy_tag(deploy: Deploy<'_>) -> &'static str {
    match deploy {
        Deploy::Server(_) => On::Server.tag(),
        Deploy::Cluster(_) => On::Cluster.tag(),
    }
}

/// 64 tasks on new keys, every row of [`ROWS`] once per round.
fn distinct_fresh(
    rt: &tokio::runtime::Runtime,
    both: Both<'_>,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<Vec<DistinctRow>> {
    let deploy = |on: On| both.on(on);
    let imps = rt.block_on(async {
        let mut imps: Vec<(On, Kind, Arc<dyn LockImpl>)> = Vec::new();
        for (on, kind) in ROWS {
            imps.push((on, kind, build(kind, &deploy(on).url()).await?));
        }
        anyhow::Ok(imps)
    })?;
    let per_round = plan.distinct_duration / u32::try_from(DISTINCT_ROUNDS).unwrap_or(1);
    let mut rounds: Vec<Vec<simple::DistinctRound>> = imps.iter().map(|_| Vec::new()).collect();
    let mut counts: Vec<CountsByNode> = imps.iter().map(|_| CountsByNode::new()).collect();
    for round in 0..DISTINCT_ROUNDS {
        progress.step(&format!(
            "Redis Cluster: {} tasks, a new key every cycle: round {}/{DISTINCT_ROUNDS}",
            plan.distinct_tasks,
            round + 1
        ));
        for i in round_order(imps.len(), round) {
            let ((on, kind, imp), out, total) = (&imps[i], &mut rounds[i], &mut counts[i]);
            let d = deploy(*on);
            d.reset_stats();
            let cpu_before = d.redis_cpu_ns();
            let mut r = rt.block_on(simple::distinct_keys(
                *kind,
                imp.clone(),
                &format!("x{}{round}", on.tag()),
                Keys::Fresh,
                plan.distinct_tasks,
                per_round,
            ));
            r.redis_cpu_ns = match (cpu_before, d.redis_cpu_ns()) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            };
            for (port, c) in d.counts_by_node() {
                let node = total.entry(port).or_default();
                for (name, calls) in c {
                    *node.entry(name).or_default() += calls;
                }
            }
            out.push(r);
        }
    }
    rt.block_on(async move { drop(imps) });
    Ok(ROWS
        .iter()
        .zip(rounds)
        .zip(counts)
        .map(|(((on, kind), r), by_node)| {
            let row = simple::Distinct::of_rounds(*kind, r);
            let commands = (row.cycles > 0).then(|| NodeSplit::of(&by_node, row.cycles, None));
            DistinctRow {
                on: *on,
                row,
                commands,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    #[test]
    fn commands_are_split_by_node_and_kind() {
        let by_node: CountsByNode = BTreeMap::from([
            (
                7000,
                counts(&[
                    ("set", 10),
                    ("evalsha", 10),
                    ("spublish", 2),
                    ("info", 3),
                    ("cluster|slots", 1),
                ]),
            ),
            (7001, counts(&[("get", 5), ("spublish", 1), ("hello", 1)])),
            (7002, counts(&[("publish", 4), ("ping", 9)])),
        ]);
        let split = NodeSplit::of(&by_node, 10, Some(7000));
        // set + evalsha + spublish on 7000, get + spublish on 7001, publish on 7002.
        assert_eq!(split.total, 3.2);
        assert_eq!(split.on_key_master, Some(2.2));
        assert_eq!(split.elsewhere, Some(1.0));
        assert_eq!(
            split.upkeep, 1.0,
            "cluster|slots and ping; info and hello are the harness's"
        );
        assert_eq!(split.publish, 4);
        assert_eq!(split.spublish_elsewhere, Some(1));
        assert_eq!(split.by_name["set"], 1.0);
        assert!(!split.by_name.contains_key("info"));

        let spread = NodeSplit::of(&by_node, 10, None);
        assert_eq!((spread.on_key_master, spread.elsewhere), (None, None));
        assert_eq!(spread.spublish_elsewhere, None);
        let quiet = NodeSplit::of(&BTreeMap::new(), 10, Some(7000));
        assert_eq!(format!("{:.2}", quiet.upkeep), "0.00");
    }

    #[test]
    fn lock_keys_are_the_implementations_own() {
        assert_eq!(redis_key(Kind::Lockattr, "c-x"), "bench:{c-x}");
        assert_eq!(redis_key(Kind::Raw, "c-x"), "c-x");
    }
}
