//! `lockbench`: lockattr against the Redis round-trip floor and its peers, measured in one run.
//!
//! ```text
//! cargo run --release -p lockattr-examples --bin lockbench [-- --quick] [-- --help]
//! ```
//!
//! The bench starts its own `redis-server` on a free loopback port, then measures:
//! 1. PING and the raw two-round-trip floor (`SET NX PX` + compare-and-delete `EVALSHA`),
//!    lockattr, rslock and a spin lock uncontended, one task, on one key reused and on a new key
//!    every cycle (interleaved batches, p50/p99; round trips per cycle counted by a forwarder,
//!    Redis commands per cycle from `INFO commandstats`);
//! 2. 64 tasks on distinct keys, each reusing its own key or taking a new one every cycle
//!    (cycles/s, client and redis-server CPU per cycle);
//! 3. the footprint: 10⁵ distinct keys locked and released on a private server, `DBSIZE` and
//!    `used_memory` before, right after and 10 s after;
//! 4. one key under contention with forced handoffs, 10 and 100 waiters, in one process and across
//!    two (the bench re-executes itself with a hidden `worker` subcommand), with 0 ms bodies
//!    (handoff latency) and 1 ms bodies (throughput): handoff p50/mean/p99, acquisitions/s, Redis
//!    commands per acquisition, p99 wait, exclusion violations;
//! 5. lockattr on a Redis Cluster of 3 masters the bench starts, next to one server: the
//!    uncontended, new-key and a few contended scenarios, with Redis commands per acquisition
//!    summed over every node and split by node (see `cluster`);
//! 6. lockattr with `wait_for_replicas(1, 500 ms)` next to the plain lock and the raw floor, on a
//!    master with one replica the bench starts: one task on a reused and on a new key (p50/p99,
//!    round trips, Redis commands and `WAIT`s per cycle), and 64 tasks on their own keys (see
//!    `replicated`);
//!
//! and prints markdown tables and a PASS/MISS list against the targets (`--plot` also draws the
//! latency distributions). Every loop is bounded by a count and a deadline; the full run takes
//! about 3 min on 2 cores, `--quick` about 50 s. BENCHMARKS.md explains every number.

mod clock;
mod cluster;
mod cluster_report;
mod contended;
mod deploy;
mod flights;
mod footprint;
mod impls;
mod lockattr_impl;
mod plot;
mod procs;
mod progress;
mod replicated;
mod replicated_report;
mod report;
mod simple;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lockattr_tests::RedisServer;

use crate::contended::{analyze, run_tasks, BodyMode, TaskParams};
use crate::deploy::{sum_nodes, Deploy};
use crate::flights::FlightCounter;
use crate::impls::{build, Kind, LockImpl};
use crate::procs::{run_workers, WorkerArgs};
use crate::progress::Progress;
use crate::report::{is_harness_command, ContendedRow, Report};
use crate::simple::{KeySource, Keys, Sequential};

/// The tokio runtime every process of the bench uses (multi-threaded, one worker per core).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `lockbench`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "lockbench",
    about = "lockattr against the Redis round-trip floor and its peers, measured in one run \
        (a private redis-server is started and stopped by the bench)",
    after_help = "The markdown report goes to stdout, progress to stderr. Needs redis-server on \
        PATH or LOCKATTR_REDIS_SERVER.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// One process of the two-process contended scenario (started by the bench itself)
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, clap::Args)]
struct Options {
    /// Fewer iterations (about 50 s instead of about 3 min)
    #[arg(long)]
    quick: bool,
    /// How 1 ms critical sections pass
    #[arg(long, value_enum, value_name = "MODE", default_value_t = BodyMode::Exact)]
    body_mode: BodyMode,
    /// Also write the markdown report to FILE
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Draw the latency distributions of every implementation, one panel per scenario, as SVG
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Implementations to measure, comma-separated (the raw floor always runs: every ratio is
    /// to it)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST", default_values_t = Kind::ALL)]
    impls: Vec<Kind>,
    /// Scenarios to run, comma-separated (PING and the uncontended reused-key rows always run)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST", default_values_t = Scenario::ALL)]
    scenarios: Vec<Scenario>,
}

/// Optional scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// One task, a new key every cycle: round trips, commands and latency of a first use
    NewKeys,
    /// 64 tasks, each on its own key, reused
    Distinct,
    /// 64 tasks, a new key every cycle
    #[value(name = "new-keys-64")]
    NewKeys64,
    /// Lock and release many distinct keys; what is left in Redis right after and 10 s later
    Footprint,
    /// One key, W waiters in one process, forced handoffs
    OneProc,
    /// One key, W waiters over two processes, forced handoffs
    TwoProc,
    /// lockattr on a Redis Cluster of 3 masters (started by the bench) next to one server:
    /// uncontended, new keys, contended; Redis commands by node
    Cluster,
    /// lockattr with `wait_for_replicas(1, 500 ms)` next to the plain lock on a master with one
    /// replica (started by the bench): latency, round trips, WAITs per cycle; 64 tasks
    Replicated,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::NewKeys,
        Scenario::Distinct,
        Scenario::NewKeys64,
        Scenario::Footprint,
        Scenario::OneProc,
        Scenario::TwoProc,
        Scenario::Cluster,
        Scenario::Replicated,
    ];
}

/// Iteration counts and time bounds.
#[derive(Debug)]
pub struct Plan {
    pub rounds: usize,
    pub batch: usize,
    pub counted_cycles: usize,
    pub distinct_tasks: usize,
    pub distinct_duration: Duration,
    pub footprint_keys: u64,
    pub contended_duration: Duration,
    pub max_acquisitions: u64,
    pub body_mode: BodyMode,
}

impl Plan {
    fn new(quick: bool, body_mode: BodyMode) -> Plan {
        if quick {
            Plan {
                rounds: 50,
                batch: 20,
                counted_cycles: 200,
                distinct_tasks: 64,
                distinct_duration: Duration::from_millis(900),
                footprint_keys: 20_000,
                contended_duration: Duration::from_millis(600),
                max_acquisitions: 3_000,
                body_mode,
            }
        } else {
            Plan {
                rounds: 250,
                batch: 20,
                counted_cycles: 200,
                distinct_tasks: 64,
                distinct_duration: Duration::from_millis(3600),
                footprint_keys: 100_000,
                contended_duration: Duration::from_millis(2500),
                max_acquisitions: 20_000,
                body_mode,
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Internal::Worker(args)) => procs::worker_main(args),
        None => run(cli.options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Implementations of the sequential and distinct-key scenarios, in table order.
const UNCONTENDED: [Kind; 6] = [
    Kind::Raw,
    Kind::FencedFloor,
    Kind::Lockattr,
    Kind::LockattrFenced,
    Kind::Rslock,
    Kind::Spin,
];

/// Implementations of the contended scenarios.
const CONTENDED: [Kind; 4] = [Kind::Lockattr, Kind::Spin, Kind::Rslock, Kind::Rslock2ms];

fn run(opts: Options) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::new(opts.quick, opts.body_mode);
    let server = RedisServer::start();
    let url = server.url();
    let rt = runtime()?;
    let mut notes = Vec::new();
    let wants = |s: Scenario| opts.scenarios.contains(&s);

    // Which implementations can run in this build (the raw floor always: every ratio is to it).
    let mut requested = opts.impls.clone();
    if !requested.contains(&Kind::Raw) {
        requested.insert(0, Kind::Raw);
    }
    let mut kinds = Vec::new();
    for &kind in &requested {
        match rt.block_on(build(kind, &url)) {
            Ok(_) => kinds.push(kind),
            Err(e) => {
                eprintln!("[lockbench] {} unavailable: {e:#}", kind.id());
                notes.push(format!("{} not measured: {e:#}", kind.label()));
            }
        }
    }
    let has = |k: Kind| kinds.contains(&k);
    let uncontended: Vec<Kind> = UNCONTENDED.into_iter().filter(|k| has(*k)).collect();
    let contended_kinds: Vec<Kind> = CONTENDED.into_iter().filter(|k| has(*k)).collect();
    let procs: Vec<u32> = [(1, Scenario::OneProc), (2, Scenario::TwoProc)]
        .into_iter()
        .filter(|(_, s)| wants(*s))
        .map(|(p, _)| p)
        .collect();
    let n = uncontended.len() as u64;
    let steps = 2
        + if wants(Scenario::NewKeys) { 2 } else { 0 }
        + if wants(Scenario::Distinct) {
            DISTINCT_ROUNDS
        } else {
            0
        }
        + if wants(Scenario::NewKeys64) {
            DISTINCT_ROUNDS
        } else {
            0
        }
        + if wants(Scenario::Footprint) { n + 2 } else { 0 }
        + contended_kinds.len() as u64 * procs.len() as u64 * 4
        + if wants(Scenario::Cluster) && has(Kind::Lockattr) {
            // The contended twins the main table will lack are measured in the cluster section.
            let main_twins = cluster::CONTENDED
                .iter()
                .filter(|&&(p, _, _)| {
                    procs.contains(&p) && contended_kinds.contains(&Kind::Lockattr)
                })
                .count();
            cluster::steps(cluster::CONTENDED.len() - main_twins)
        } else {
            0
        }
        + if wants(Scenario::Replicated) && has(Kind::Lockattr) {
            replicated::steps()
        } else {
            0
        };
    let mut progress = Progress::new(steps);

    progress.step("PING, raw floor and uncontended lock+release on a reused key");
    let reused = sequential_scenario(&rt, &server, &uncontended, Keys::Reused, &plan)?;
    progress.step("round trips and Redis commands per cycle, reused key");
    let reused = count_scenario(&rt, &server, reused, &plan, &mut notes)?;

    let fresh = if wants(Scenario::NewKeys) {
        progress.step("uncontended lock+release, a new key every cycle");
        let fresh = sequential_scenario(&rt, &server, &uncontended, Keys::Fresh, &plan)?;
        progress.step("round trips and Redis commands per cycle, new keys");
        Some(count_scenario(&rt, &server, fresh, &plan, &mut notes)?)
    } else {
        None
    };

    let mut distinct = Vec::new();
    let mut distinct_fresh = Vec::new();
    for (scenario, keys, out) in [
        (Scenario::Distinct, Keys::Reused, &mut distinct),
        (Scenario::NewKeys64, Keys::Fresh, &mut distinct_fresh),
    ] {
        if wants(scenario) {
            *out = distinct_scenario(&rt, &server, &uncontended, keys, &plan, &mut progress)?;
        }
    }

    // The footprint's second readings come 10 s after each fill; the contended scenarios run
    // meanwhile (on another server: the footprint servers only wait).
    let mut peak = None;
    let mut pending = Vec::new();
    if wants(Scenario::Footprint) {
        progress.step(&format!(
            "footprint yardstick: {} raw-floor locks held at once",
            plan.footprint_keys
        ));
        match footprint::peak_of_held_locks(plan.footprint_keys) {
            Ok(p) => peak = Some(p),
            Err(e) => notes.push(format!("footprint yardstick failed: {e:#}")),
        }
        for &kind in &uncontended {
            progress.step(&format!(
                "footprint: {} distinct keys locked and released, {}",
                plan.footprint_keys,
                kind.id()
            ));
            match footprint::start(&rt, kind, plan.footprint_keys) {
                Ok(p) => pending.push(p),
                Err(e) => {
                    let note = format!("footprint of {} failed: {e:#}", kind.label());
                    progress.note(&note);
                    notes.push(note);
                }
            }
        }
    }

    let mut contended = Vec::new();
    for &kind in &contended_kinds {
        for &procs in &procs {
            for waiters in [10u32, 100] {
                for body in [Duration::ZERO, Duration::from_millis(1)] {
                    progress.step(&format!(
                        "contended: {} {procs} proc {waiters} waiters body {} µs",
                        kind.id(),
                        body.as_micros()
                    ));
                    let row = if procs == 1 {
                        contended_in_process(
                            &rt,
                            Deploy::Server(&server),
                            kind,
                            waiters,
                            body,
                            &plan,
                        )
                    } else {
                        contended_two_procs(Deploy::Server(&server), kind, waiters, body, &plan)
                    };
                    match row {
                        Ok(row) => contended.push(row),
                        Err(e) => {
                            let note = format!(
                                "{} {procs} proc {waiters} waiters body {} µs failed: {e:#}",
                                kind.label(),
                                body.as_micros()
                            );
                            progress.note(&note);
                            notes.push(note);
                        }
                    }
                }
            }
        }
    }

    let cluster = if wants(Scenario::Cluster) && has(Kind::Lockattr) && has(Kind::Raw) {
        match cluster::run(&rt, &server, &plan, &contended, &mut progress) {
            Ok(report) => Some(report),
            Err(e) => {
                let note = format!("the Redis Cluster rows failed: {e:#}");
                progress.note(&note);
                notes.push(note);
                None
            }
        }
    } else {
        if wants(Scenario::Cluster) {
            notes.push("the Redis Cluster rows need the raw floor and lockattr".to_owned());
        }
        None
    };

    let replicated = if wants(Scenario::Replicated) && has(Kind::Lockattr) {
        match replicated::run(&rt, &plan, &mut progress) {
            Ok(report) => Some(report),
            Err(e) => {
                let note = format!("the replicated rows failed: {e:#}");
                progress.note(&note);
                notes.push(note);
                None
            }
        }
    } else {
        if wants(Scenario::Replicated) {
            notes.push("the replicated rows need lockattr".to_owned());
        }
        None
    };

    let mut footprints = Vec::new();
    if wants(Scenario::Footprint) {
        progress.step("footprint: the readings 10 s after the last release");
        footprints = pending.into_iter().map(|p| p.finish(&rt)).collect();
    }
    progress.finish();

    let header = vec![
        ("date (UTC)".to_owned(), utc_now()),
        ("commit".to_owned(), git_commit()),
        ("redis-server".to_owned(), redis_version(&server)),
        (
            "machine".to_owned(),
            format!(
                "{} CPUs, load average {}",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                std::fs::read_to_string("/proc/loadavg")
                    .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default()
            ),
        ),
        (
            "mode".to_owned(),
            format!(
                "{} ({} s per contended scenario, max {} acquisitions, {} bodies; {} × {} sequential samples; {} keys in the footprint); total {:.0} s",
                if opts.quick { "--quick" } else { "full" },
                plan.contended_duration.as_secs_f64(),
                plan.max_acquisitions,
                plan.body_mode.id(),
                plan.rounds,
                plan.batch,
                plan.footprint_keys,
                started.elapsed().as_secs_f64()
            ),
        ),
    ];
    let report = Report {
        header,
        reused: Some(reused),
        fresh,
        distinct,
        distinct_fresh,
        distinct_tasks: plan.distinct_tasks,
        footprints,
        peak,
        contended,
        cluster,
        replicated,
        notes,
    };
    let text = report.render();
    println!("{text}");
    if let Some(path) = &opts.out {
        std::fs::write(path, &text).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &opts.plot {
        plot::draw(&report, path).with_context(|| format!("draw {}", path.display()))?;
        eprintln!("[lockbench] plot written to {}", path.display());
    }
    Ok(())
}

/// Rounds of the 64-task scenarios: every implementation runs once per round, in turn (each
/// round starting one implementation further on), so that a change of machine load hits every
/// row alike (the scenario is CPU-bound on 2 cores).
pub const DISTINCT_ROUNDS: u64 = 6;

/// The order in which `len` implementations run in round `round` of [`DISTINCT_ROUNDS`]: each
/// round starts one implementation further on, so that none always runs first or last.
pub fn round_order(len: usize, round: u64) -> impl Iterator<Item = usize> {
    let start = usize::try_from(round).unwrap_or(0) % len.max(1);
    (start..len).chain(0..start)
}

/// `plan.distinct_tasks` tasks on distinct keys, every implementation for
/// `plan.distinct_duration` in all, split over [`DISTINCT_ROUNDS`] interleaved rounds.
fn distinct_scenario(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    kinds: &[Kind],
    keys: Keys,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<Vec<simple::Distinct>> {
    let url = server.url();
    let impls = rt.block_on(async {
        let mut impls: Vec<(Kind, Arc<dyn LockImpl>)> = Vec::new();
        for &k in kinds {
            impls.push((k, build(k, &url).await?));
        }
        anyhow::Ok(impls)
    })?;
    let per_round = plan.distinct_duration / u32::try_from(DISTINCT_ROUNDS).unwrap_or(1);
    let mut rounds: Vec<Vec<simple::DistinctRound>> = impls.iter().map(|_| Vec::new()).collect();
    for round in 0..DISTINCT_ROUNDS {
        progress.step(&format!(
            "{} tasks, {}: round {}/{DISTINCT_ROUNDS} of every implementation",
            plan.distinct_tasks,
            match keys {
                Keys::Reused => "each on its own key",
                Keys::Fresh => "a new key every cycle",
            },
            round + 1
        ));
        for i in round_order(impls.len(), round) {
            let ((kind, imp), out) = (&impls[i], &mut rounds[i]);
            let redis_before = Deploy::Server(server).redis_cpu_ns();
            let mut r = rt.block_on(simple::distinct_keys(
                *kind,
                imp.clone(),
                &format!("d{round}"),
                keys,
                plan.distinct_tasks,
                per_round,
            ));
            r.redis_cpu_ns = match (redis_before, Deploy::Server(server).redis_cpu_ns()) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            };
            out.push(r);
        }
    }
    rt.block_on(async move { drop(impls) });
    Ok(kinds
        .iter()
        .zip(rounds)
        .map(|(kind, r)| simple::Distinct::of_rounds(*kind, r))
        .collect())
}

/// PING and every implementation, one task, lock + release on `keys`.
fn sequential_scenario(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    kinds: &[Kind],
    keys: Keys,
    plan: &Plan,
) -> Result<Sequential> {
    let url = server.url();
    rt.block_on(async {
        let mut impls: Vec<(Kind, Arc<dyn LockImpl>)> = Vec::new();
        for &k in kinds {
            impls.push((k, build(k, &url).await?));
        }
        let result = simple::sequential(&url, &impls, keys, plan.rounds, plan.batch).await;
        drop(impls);
        result
    })
}

/// Fills in round trips and Redis commands per cycle: each implementation is connected through
/// a [`FlightCounter`] and runs `plan.counted_cycles` cycles on keys of the same pattern, after
/// a few warm-up cycles (connections, script loading, first-use paths) that are not counted.
fn count_scenario(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    mut sequential: Sequential,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> Result<Sequential> {
    let n = plan.counted_cycles;
    for row in &mut sequential.rows {
        let kind = row.kind;
        let counted = rt.block_on(async {
            let counter = FlightCounter::start(server.addr()).await?;
            let imp = build(kind, &counter.url()).await?;
            let keys = KeySource::new("c", sequential.keys, kind, 0);
            simple::cycles(&*imp, &keys, 5).await?;
            counter.reset();
            server.reset_stats();
            simple::cycles(&*imp, &keys, n).await?;
            let flights = counter.flights();
            let commands = lock_commands(server.command_counts());
            drop(imp);
            anyhow::Ok((flights, commands))
        });
        match counted {
            Ok((flights, commands)) => {
                let per = |c: u64| c as f64 / n as f64;
                row.round_trips = Some(per(flights));
                row.commands = Some(per(commands.values().sum()));
                row.commands_by_name = commands.into_iter().map(|(k, v)| (k, per(v))).collect();
            }
            Err(e) => notes.push(format!(
                "counting round trips of {} failed: {e:#}",
                kind.label()
            )),
        }
    }
    Ok(sequential)
}

pub fn run_key(kind: Kind, procs: u32, waiters: u32, body: Duration) -> String {
    format!("c-{}-{procs}p-{waiters}w-{}us", kind.id(), body.as_micros())
}

/// Commands of the lock itself: without the harness's and the clients' own.
pub fn lock_commands(counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts
        .into_iter()
        .filter(|(name, calls)| !is_harness_command(name) && *calls > 0)
        .collect()
}

/// W tasks of this process on one key of `deploy` (see `contended`).
pub fn contended_in_process(
    rt: &tokio::runtime::Runtime,
    deploy: Deploy<'_>,
    kind: Kind,
    waiters: u32,
    body: Duration,
    plan: &Plan,
) -> Result<ContendedRow> {
    let url = deploy.url();
    let key = run_key(kind, 1, waiters, body);
    let imp = rt.block_on(async {
        let imp = build(kind, &url).await?;
        let warm = format!("{key}-warm");
        imp.acquire(&warm, Duration::from_secs(5))
            .await?
            .release()
            .await?;
        anyhow::Ok(imp)
    })?;
    deploy.reset_stats();
    let deadline_ns =
        clock::now_ns() + u64::try_from(plan.contended_duration.as_nanos()).unwrap_or(u64::MAX);
    let outcome = rt.block_on(run_tasks(
        imp.clone(),
        TaskParams {
            key: key.clone(),
            tasks: waiters,
            max_acquisitions: plan.max_acquisitions,
            deadline_ns,
            body,
            body_mode: plan.body_mode,
            proc_id: 0,
        },
    ));
    let by_node = deploy.counts_by_node();
    rt.block_on(async move { drop(imp) });
    Ok(ContendedRow {
        kind,
        procs: 1,
        waiters,
        body,
        key,
        a: analyze(outcome.records, outcome.inside_violations, deadline_ns),
        commands: lock_commands(sum_nodes(&by_node)),
        by_node,
        errors: outcome.errors,
    })
}

/// W/2 tasks in each of two worker processes on one key of `deploy`.
pub fn contended_two_procs(
    deploy: Deploy<'_>,
    kind: Kind,
    waiters: u32,
    body: Duration,
    plan: &Plan,
) -> Result<ContendedRow> {
    let key = run_key(kind, 2, waiters, body);
    let args: Vec<WorkerArgs> = (0..2u32)
        .map(|proc_id| WorkerArgs {
            url: deploy.url(),
            kind,
            key: key.clone(),
            tasks: waiters / 2,
            max_acquisitions: plan.max_acquisitions / 2,
            body,
            body_mode: plan.body_mode,
            proc_id,
        })
        .collect();
    let (outcome, by_node, deadline_ns) = run_workers(
        &args,
        plan.contended_duration,
        || deploy.reset_stats(),
        || deploy.counts_by_node(),
    )?;
    Ok(ContendedRow {
        kind,
        procs: 2,
        waiters,
        body,
        key,
        a: analyze(outcome.records, outcome.inside_violations, deadline_ns),
        commands: lock_commands(sum_nodes(&by_node)),
        by_node,
        errors: outcome.errors,
    })
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown (no commit yet)".to_owned())
}

fn redis_version(server: &RedisServer) -> String {
    let info: redis::RedisResult<String> =
        redis::cmd("INFO").arg("server").query(&mut server.conn());
    info.ok()
        .and_then(|i| {
            i.lines().find_map(|l| {
                l.strip_prefix("redis_version:")
                    .map(|v| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `YYYY-MM-DD HH:MM` in UTC, without a date crate (days-to-civil, Howard Hinnant's algorithm).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_worker_parses_what_the_parent_wrote() {
        let sent = WorkerArgs {
            url: "redis://127.0.0.1:7000".to_owned(),
            kind: Kind::Rslock2ms,
            key: "c-x".to_owned(),
            tasks: 50,
            max_acquisitions: 10_000,
            body: Duration::from_millis(1),
            body_mode: BodyMode::Exact,
            proc_id: 1,
        };
        let cli =
            Cli::try_parse_from(std::iter::once("lockbench".to_owned()).chain(sent.to_args()))
                .expect("parses");
        let Some(Internal::Worker(got)) = cli.command else {
            panic!("not a worker: {cli:?}")
        };
        assert_eq!(
            (got.url, got.kind, got.key, got.tasks, got.max_acquisitions),
            (
                sent.url,
                sent.kind,
                sent.key,
                sent.tasks,
                sent.max_acquisitions
            )
        );
        assert_eq!(
            (got.body, got.body_mode, got.proc_id),
            (sent.body, sent.body_mode, sent.proc_id)
        );
    }

    #[test]
    fn lists_are_comma_separated() {
        let cli = Cli::try_parse_from([
            "lockbench",
            "--impls",
            "raw,lockattr",
            "--scenarios",
            "new-keys,footprint",
        ])
        .expect("parses");
        assert_eq!(cli.options.impls, vec![Kind::Raw, Kind::Lockattr]);
        assert_eq!(
            cli.options.scenarios,
            vec![Scenario::NewKeys, Scenario::Footprint]
        );
        assert!(Cli::try_parse_from(["lockbench", "--scenarios", "everything"]).is_err());
        let cli = Cli::try_parse_from(["lockbench", "--scenarios", "cluster"]).expect("parses");
        assert_eq!(cli.options.scenarios, vec![Scenario::Cluster]);
        assert!(
            Scenario::ALL.contains(&Scenario::Cluster),
            "a full run includes the cluster rows"
        );
        let cli = Cli::try_parse_from(["lockbench", "--quick", "--scenarios", "replicated"])
            .expect("parses");
        assert_eq!(cli.options.scenarios, vec![Scenario::Replicated]);
        assert!(
            Scenario::ALL.contains(&Scenario::Replicated),
            "a full run includes the replicated rows"
        );
    }
}
