//! `lockbench`: lockattr against the Redis round-trip floor and its peers, measured in one run.
//!
//! ```text
//! cargo run --release -p lockattr-examples --bin lockbench [-- --quick] [-- --help]
//! ```
//!
//! The bench starts its own `redis-server` on a free loopback port, then measures:
//! 1. PING and the raw two-round-trip floor (`SET NX PX` + compare-and-delete `EVALSHA`),
//!    lockattr, rslock and a spin lock uncontended (interleaved batches, p50/p99, Redis commands
//!    per lock + release);
//! 2. 64 tasks on distinct keys (cycles/s, client and redis-server CPU per cycle);
//! 3. one key under contention with forced handoffs, 10 and 100 waiters, in one process and across
//!    two (the bench re-executes itself with a hidden `--worker` command), with 0 ms bodies (handoff
//!    latency) and 1 ms bodies (throughput): handoff p50/mean/p99, acquisitions/s, Redis commands
//!    per acquisition from `INFO commandstats`, p99 wait, exclusion violations;
//!
//! and prints markdown tables and a PASS/MISS list against the issue's targets. Every loop is
//! bounded by a count and a deadline; the full run takes about 1.5 min on 2 cores, `--quick`
//! about 30 s.

mod clock;
mod contended;
mod impls;
mod lockattr_impl;
mod procs;
mod report;
mod simple;
mod stats;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use lockattr_tests::RedisServer;

use crate::contended::{analyze, run_tasks, BodyMode, TaskParams};
use crate::impls::{build, Kind, LockImpl};
use crate::procs::{run_workers, WorkerArgs};
use crate::report::{is_harness_command, ContendedRow, Report};

/// The tokio runtime every process of the bench uses (multi-threaded, one worker per core).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[derive(Debug)]
struct Options {
    quick: bool,
    body_mode: BodyMode,
    out: Option<String>,
    impls: Vec<Kind>,
    scenarios: Vec<String>,
}

/// Iteration counts and time bounds.
#[derive(Debug)]
struct Plan {
    rounds: usize,
    batch: usize,
    distinct_tasks: usize,
    distinct_duration: Duration,
    contended_duration: Duration,
    max_acquisitions: u64,
    body_mode: BodyMode,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 50,
                batch: 20,
                distinct_tasks: 64,
                distinct_duration: Duration::from_millis(500),
                contended_duration: Duration::from_millis(600),
                max_acquisitions: 3_000,
                body_mode: BodyMode::Exact,
            }
        } else {
            Plan {
                rounds: 250,
                batch: 20,
                distinct_tasks: 64,
                distinct_duration: Duration::from_millis(1500),
                contended_duration: Duration::from_millis(2500),
                max_acquisitions: 20_000,
                body_mode: BodyMode::Exact,
            }
        }
    }
}

/// Optional scenarios; PING, the raw floor and the uncontended rows always run (every target
/// is relative to them).
const SCENARIOS: [&str; 3] = ["distinct", "one-proc", "two-proc"];

const USAGE: &str =
    "usage: lockbench [--quick] [--body-mode M] [--out FILE] [--impls LIST] [--scenarios LIST]
  --quick           fewer iterations (about 30 s instead of about 1.5-2 min)
  --body-mode M     how 1 ms critical sections pass: exact (default; std::thread::sleep on the
                    blocking pool for all but the last 200 µs, which are spun: CPU-free for most
                    of the body and exact to a few µs), sleep (only the blocking-pool sleep,
                    ~60-100 µs longer than asked) or spin (CPU-bound, exact, but competes for the
                    CPU with Redis and the lock's own work)
  --out FILE        also write the markdown report to FILE
  --impls LIST      comma-separated subset of raw,fenced-floor,spin,rslock,rslock-2ms,lockattr
                    (default: all; fenced-floor is a diagnostic row: the Redis-side work of a
                    fenced, pub/sub-waking lock without any runtime)
  --scenarios LIST  comma-separated subset of distinct,one-proc,two-proc (default: all;
                    PING, the raw floor and the uncontended rows always run)";

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        quick: false,
        body_mode: BodyMode::Exact,
        out: None,
        impls: Kind::ALL.to_vec(),
        scenarios: SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--body-mode" => {
                let m = it
                    .next()
                    .context("--body-mode needs exact, sleep or spin")?;
                o.body_mode = BodyMode::parse(m).with_context(|| {
                    format!("unknown body mode `{m}`; expected exact, sleep or spin")
                })?;
            }
            "--out" => o.out = Some(it.next().context("--out needs a file")?.clone()),
            "--impls" => {
                o.impls = it
                    .next()
                    .context("--impls needs a list")?
                    .split(',')
                    .map(Kind::parse)
                    .collect::<Result<_>>()?;
            }
            "--scenarios" => {
                o.scenarios = it
                    .next()
                    .context("--scenarios needs a list")?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = o
                    .scenarios
                    .iter()
                    .find(|s| !SCENARIOS.contains(&s.as_str()))
                {
                    bail!("unknown scenario `{bad}`; expected some of {SCENARIOS:?}");
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--worker") {
        WorkerArgs::parse(&args[1..]).and_then(procs::worker_main)
    } else {
        parse_options(&args).and_then(run)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(msg: &str) {
    eprintln!("[lockbench] {msg}");
}

fn run(opts: Options) -> Result<()> {
    let started = Instant::now();
    let mut plan = Plan::new(opts.quick);
    plan.body_mode = opts.body_mode;
    let server = RedisServer::start();
    let url = server.url();
    let rt = runtime()?;
    let mut notes = Vec::new();

    // Which implementations can run in this build.
    let mut kinds = Vec::new();
    for &kind in &opts.impls {
        match rt.block_on(build(kind, &url)) {
            Ok(_) => kinds.push(kind),
            Err(e) => {
                progress(&format!("{} unavailable: {e:#}", kind.id()));
                notes.push(format!("{} not measured: {e:#}", kind.label()));
            }
        }
    }
    let has = |k: Kind| kinds.contains(&k);
    let wants = |s: &str| opts.scenarios.iter().any(|x| x == s);

    progress("PING, raw floor and uncontended lock+release");
    let uncontended_kinds: Vec<Kind> = [
        Kind::Raw,
        Kind::FencedFloor,
        Kind::Lockattr,
        Kind::Rslock,
        Kind::Spin,
    ]
    .into_iter()
    .filter(|k| has(*k))
    .collect();
    let impls = rt.block_on(async {
        let mut impls: Vec<(Kind, Arc<dyn LockImpl>)> = Vec::new();
        for &k in &uncontended_kinds {
            impls.push((k, build(k, &url).await?));
        }
        anyhow::Ok(impls)
    })?;
    let mut uncontended =
        rt.block_on(simple::uncontended(&url, &impls, plan.rounds, plan.batch))?;
    const COUNTED_CYCLES: usize = 200;
    for (kind, imp) in &impls {
        let key = format!("u-{}", kind.id());
        server.reset_stats();
        rt.block_on(simple::cycles(&**imp, &key, COUNTED_CYCLES))?;
        let total: u64 = lock_commands(server.command_counts()).values().sum();
        uncontended
            .commands
            .push((*kind, total as f64 / COUNTED_CYCLES as f64));
    }
    rt.block_on(async move { drop(impls) });

    let mut distinct = Vec::new();
    for kind in [Kind::Raw, Kind::FencedFloor, Kind::Lockattr, Kind::Rslock] {
        if !has(kind) || !wants("distinct") {
            continue;
        }
        progress(&format!(
            "{} tasks on distinct keys: {}",
            plan.distinct_tasks,
            kind.id()
        ));
        let imp = rt.block_on(build(kind, &url))?;
        let redis_cpu_before = redis_cpu_ns(&server);
        let mut d = rt.block_on(simple::distinct_keys(
            kind,
            imp,
            plan.distinct_tasks,
            plan.distinct_duration,
        ));
        if let (Some(a), Some(b)) = (redis_cpu_before, redis_cpu_ns(&server)) {
            d.redis_cpu_ns = Some(b.saturating_sub(a) as f64 / d.cycles.max(1) as f64);
        }
        distinct.push(d);
    }

    let mut contended = Vec::new();
    for kind in [Kind::Lockattr, Kind::Spin, Kind::Rslock, Kind::Rslock2ms] {
        if !has(kind) {
            continue;
        }
        for procs in [1u32, 2] {
            if !wants(if procs == 1 { "one-proc" } else { "two-proc" }) {
                continue;
            }
            for waiters in [10u32, 100] {
                for body in [Duration::ZERO, Duration::from_millis(1)] {
                    progress(&format!(
                        "contended: {} {procs} proc {waiters} waiters body {} µs",
                        kind.id(),
                        body.as_micros()
                    ));
                    let row = if procs == 1 {
                        contended_in_process(&rt, &server, kind, waiters, body, &plan)
                    } else {
                        contended_two_procs(&server, kind, waiters, body, &plan)
                    };
                    match row {
                        Ok(row) => contended.push(row),
                        Err(e) => notes.push(format!(
                            "{} {procs} proc {waiters} waiters body {} µs failed: {e:#}",
                            kind.label(),
                            body.as_micros()
                        )),
                    }
                }
            }
        }
    }

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
                "{} ({} s per contended scenario, max {} acquisitions, {} bodies; {} × {} uncontended samples); total {:.0} s",
                if opts.quick { "--quick" } else { "full" },
                plan.contended_duration.as_secs_f64(),
                plan.max_acquisitions,
                plan.body_mode.id(),
                plan.rounds,
                plan.batch,
                started.elapsed().as_secs_f64()
            ),
        ),
    ];
    let report = Report {
        header,
        uncontended: Some(uncontended),
        distinct,
        distinct_tasks: plan.distinct_tasks,
        contended,
        notes,
    };
    let text = report.render();
    println!("{text}");
    if let Some(path) = opts.out {
        std::fs::write(&path, &text).with_context(|| format!("write {path}"))?;
    }
    Ok(())
}

fn run_key(kind: Kind, procs: u32, waiters: u32, body: Duration) -> String {
    format!("c-{}-{procs}p-{waiters}w-{}us", kind.id(), body.as_micros())
}

fn lock_commands(counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts
        .into_iter()
        .filter(|(name, calls)| !is_harness_command(name) && *calls > 0)
        .collect()
}

fn contended_in_process(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    kind: Kind,
    waiters: u32,
    body: Duration,
    plan: &Plan,
) -> Result<ContendedRow> {
    let url = server.url();
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
    server.reset_stats();
    let deadline_ns =
        clock::now_ns() + u64::try_from(plan.contended_duration.as_nanos()).unwrap_or(u64::MAX);
    let outcome = rt.block_on(run_tasks(
        imp.clone(),
        TaskParams {
            key,
            tasks: waiters,
            max_acquisitions: plan.max_acquisitions,
            deadline_ns,
            body,
            body_mode: plan.body_mode,
            proc_id: 0,
        },
    ));
    let commands = lock_commands(server.command_counts());
    rt.block_on(async move { drop(imp) });
    Ok(ContendedRow {
        kind,
        procs: 1,
        waiters,
        body,
        a: analyze(outcome.records, outcome.inside_violations, deadline_ns),
        commands,
        errors: outcome.errors,
    })
}

fn contended_two_procs(
    server: &RedisServer,
    kind: Kind,
    waiters: u32,
    body: Duration,
    plan: &Plan,
) -> Result<ContendedRow> {
    let key = run_key(kind, 2, waiters, body);
    let args: Vec<WorkerArgs> = (0..2u32)
        .map(|proc_id| WorkerArgs {
            url: server.url(),
            kind,
            key: key.clone(),
            tasks: waiters / 2,
            max_acquisitions: plan.max_acquisitions / 2,
            body,
            body_mode: plan.body_mode,
            proc_id,
        })
        .collect();
    let (outcome, counts, deadline_ns) = run_workers(
        &args,
        plan.contended_duration,
        || server.reset_stats(),
        || server.command_counts(),
    )?;
    Ok(ContendedRow {
        kind,
        procs: 2,
        waiters,
        body,
        a: analyze(outcome.records, outcome.inside_violations, deadline_ns),
        commands: lock_commands(counts),
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

/// redis-server's CPU time so far (`used_cpu_sys + used_cpu_user` from `INFO cpu`), in ns.
fn redis_cpu_ns(server: &RedisServer) -> Option<u64> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(&mut server.conn())
        .ok()?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(((field("used_cpu_sys")? + field("used_cpu_user")?) * 1e9) as u64)
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
