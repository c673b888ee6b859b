//! Randomized multi-process histories, judged by `lockattr_tests::history::check`.
//!
//! Several worker processes (`lockattr-test-worker history`), each with several `Locker`s and
//! tasks, take locks on a few keys and increment per-key counters the unsafe way inside the
//! critical sections. Under chaos, each worker's lockers reach Redis through their own
//! fault-injecting proxy while its counters use a direct connection. Afterwards the records and
//! the final Redis state must show no overlap, unique and increasing fencing tokens, and an
//! exact count.
//!
//! `LOCKATTR_HISTORY_SECS` (default 30) sets the chaos run's length, `LOCKATTR_HISTORY_SEED`
//! replays a run's random choices (the seed is printed). The tests run one at a time (a mutex)
//! so that one history's load is not another's scheduling noise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr_tests::chaos::{self, ChaosPlan, ChaosStats};
use lockattr_tests::history::worker::{LockMode, WorkerConfig};
use lockattr_tests::history::{self, Report, WorkerTally};
use lockattr_tests::proxy::Proxy;
use lockattr_tests::rng::Rng;
use lockattr_tests::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone)]
struct Run {
    name: &'static str,
    processes: u32,
    lockers: u32,
    tasks: u32,
    keys: usize,
    duration: Duration,
    lease: Duration,
    hold_max: Duration,
    /// Per mille of sections holding up to `long_hold_max`.
    long_holds: (u32, Duration),
    mode: LockMode,
    /// Chaos for this long from the start (then calm until `duration`), or none.
    chaos: Option<Duration>,
}

#[derive(Debug)]
struct Outcome {
    report: Report,
    tally: WorkerTally,
    /// What the chaos did to each worker's proxy.
    chaos: Vec<ChaosStats>,
    /// Connections each proxy accepted before the chaos, and in all.
    proxy_connections: Vec<(u64, u64)>,
    took: Duration,
}

fn seed() -> u64 {
    std::env::var("LOCKATTR_HISTORY_SEED")
        .ok()
        .map(|s| s.parse().expect("LOCKATTR_HISTORY_SEED is a number"))
        .unwrap_or_else(Rng::seed_from_time)
}

/// A spawned worker with its stdout lines and its stderr collected in the background.
struct Child {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

async fn spawn(config: &WorkerConfig) -> Child {
    let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_lockattr-test-worker"))
        .args(config.to_args())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lockattr-test-worker");
    let stdin = process.stdin.take().expect("stdin");
    let lines = tokio::io::BufReader::new(process.stdout.take().expect("stdout")).lines();
    let mut err = process.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    Child {
        process,
        stdin,
        lines,
        stderr,
    }
}

async fn next_line(child: &mut Child, what: &str, limit: Duration) -> String {
    match tokio::time::timeout(limit, child.lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        other => {
            let _ = child.process.start_kill();
            let stderr = (&mut child.stderr).await.unwrap_or_default();
            panic!("worker did not say {what} within {limit:?} ({other:?}); stderr:\n{stderr}");
        }
    }
}

async fn run_history(run: &Run) -> Outcome {
    let _serial = ONE_AT_A_TIME.lock().await;
    let seed = seed();
    eprintln!(
        "[{}] seed {seed} (LOCKATTR_HISTORY_SEED to replay)",
        run.name
    );
    let t = Instant::now();
    let server = RedisServer::start();
    let dir = lockattr_tests::temp_dir("history");
    let keys: Vec<String> = (0..run.keys).map(|k| format!("hist{k}")).collect();

    let mut proxies = Vec::new();
    let mut children = Vec::new();
    let mut configs = Vec::new();
    for p in 0..run.processes {
        let lock_url = if run.chaos.is_some() {
            let proxy = Arc::new(Proxy::start(server.addr()).await);
            let url = proxy.url();
            proxies.push(proxy);
            url
        } else {
            server.url()
        };
        let config = WorkerConfig {
            process: p,
            lock_urls: vec![lock_url],
            direct_url: server.url(),
            keys: keys.clone(),
            lockers: run.lockers,
            tasks: run.tasks,
            duration: run.duration,
            count: 1_000_000,
            lease: run.lease,
            wait: Duration::from_secs(10),
            hold_min: Duration::ZERO,
            hold_max: run.hold_max,
            long_hold_permille: run.long_holds.0,
            long_hold_max: run.long_holds.1,
            mode: run.mode,
            seed: seed ^ u64::from(p),
            out: dir.join(format!("worker-{p}.txt")),
        };
        children.push(spawn(&config).await);
        configs.push(config);
    }
    for child in &mut children {
        let line = next_line(child, "ready", Duration::from_secs(30)).await;
        assert_eq!(line, "ready");
    }
    let connected: Vec<u64> = proxies.iter().map(|p| p.accepted()).collect();
    for child in &mut children {
        child
            .stdin
            .write_all(b"go\n")
            .await
            .expect("start a worker");
    }

    let chaos = match run.chaos {
        Some(duration) => {
            let plan = ChaosPlan {
                duration,
                lease: run.lease,
                seed,
            };
            chaos::unleash(&proxies, &plan).await
        }
        None => Vec::new(),
    };

    let mut sections = Vec::new();
    let mut tally = WorkerTally::default();
    let limit = run.duration + Duration::from_secs(60);
    for (child, config) in children.iter_mut().zip(&configs) {
        let line = next_line(child, "done", limit).await;
        assert!(line.starts_with("done "), "worker said {line:?}");
        let status = tokio::time::timeout(Duration::from_secs(10), child.process.wait())
            .await
            .expect("worker exits after done")
            .expect("wait for worker");
        let stderr = (&mut child.stderr).await.unwrap_or_default();
        assert!(
            status.success(),
            "worker {} failed: {status}\n{stderr}",
            config.process
        );
        let text = std::fs::read_to_string(&config.out).expect("read worker output");
        let out = history::parse_output(&text).expect("parse worker output");
        sections.extend(out.sections);
        tally.merge(&out.tally);
    }
    let state = history::read_state(&mut server.conn(), &keys).expect("read counters");
    let report = history::check(&sections, &state);
    let outcome = Outcome {
        report,
        tally,
        chaos,
        proxy_connections: connected
            .iter()
            .zip(&proxies)
            .map(|(&before, p)| (before, p.accepted()))
            .collect(),
        took: t.elapsed(),
    };
    print_figures(run, &outcome);
    if outcome.report.violations.is_empty() || run.mode == LockMode::Broken {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("[{}] worker records kept in {}", run.name, dir.display());
    }
    outcome
}

fn print_figures(run: &Run, o: &Outcome) {
    eprintln!(
        "[{}] {} processes x {} lockers x {} tasks on {} keys, lease {:?}, {:?} (chaos {:?}), \
         took {:?}",
        run.name,
        run.processes,
        run.lockers,
        run.tasks,
        run.keys,
        run.lease,
        run.duration,
        run.chaos,
        o.took
    );
    eprintln!(
        "[{}] lock calls {}, timeouts {}, errors before entering {:?}",
        run.name, o.tally.attempts, o.tally.timeouts, o.tally.errors
    );
    if run.chaos.is_some() {
        eprintln!(
            "[{}] chaos {:?}; connections per proxy (before chaos, in all) {:?}",
            run.name,
            ChaosStats::sum(&o.chaos),
            o.proxy_connections
        );
    }
    eprintln!("[{}] {}", run.name, o.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_without_chaos() {
    let run = Run {
        name: "plain",
        processes: 3,
        lockers: 2,
        tasks: 3,
        keys: 3,
        duration: Duration::from_secs(8),
        lease: Duration::from_secs(2),
        hold_max: Duration::from_millis(1),
        long_holds: (10, Duration::from_millis(1500)),
        mode: LockMode::Lockattr,
        chaos: None,
    };
    let o = run_history(&run).await;
    assert!(
        o.report.sections > 100,
        "too few sections to judge: {}",
        o.report
    );
    assert!(
        o.report.violations.is_empty(),
        "violations without any fault:\n{}",
        o.report
    );
    assert_eq!(
        o.report.lost(),
        0,
        "locks lost without any fault:\n{}",
        o.report
    );
}

/// Chaos on the lock path. Asserts no violation at all: a loss is allowed (the faults cause
/// real ones), running unprotected is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_chaos() {
    let secs: u64 = std::env::var("LOCKATTR_HISTORY_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("LOCKATTR_HISTORY_SECS is a number of seconds")
        })
        .unwrap_or(30)
        .max(6);
    let run = Run {
        name: "chaos",
        processes: 3,
        lockers: 2,
        tasks: 3,
        keys: 3,
        duration: Duration::from_secs(secs),
        lease: Duration::from_millis(500),
        hold_max: Duration::from_millis(2),
        // Some sections outlast the lease, so renewals must succeed under the faults.
        long_holds: (20, Duration::from_millis(1200)),
        mode: LockMode::Lockattr,
        // The last seconds are calm: everything must work again once the network is fine.
        chaos: Some(Duration::from_secs(secs - 4)),
    };
    let o = run_history(&run).await;
    assert!(
        o.report.sections > 100,
        "too few sections to judge: {}",
        o.report
    );
    assert!(
        ChaosStats::sum(&o.chaos).total() > 10,
        "the chaos did little: {:?}",
        o.chaos
    );
    for (stats, (before, after)) in o.chaos.iter().zip(&o.proxy_connections) {
        assert!(
            stats.cuts == 0 || after > before,
            "cuts must force reconnects: {stats:?}, connections {before} -> {after}"
        );
    }
    assert!(
        o.report.violations.is_empty(),
        "the lock did not exclude under chaos (seed printed above):\n{}",
        o.report
    );
}

/// The checker must catch a lock that does not exclude: `SET` without `NX`, racy tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_rejects_a_broken_lock() {
    let run = Run {
        name: "broken",
        processes: 2,
        lockers: 1,
        tasks: 3,
        keys: 2,
        duration: Duration::from_secs(3),
        lease: Duration::from_millis(500),
        hold_max: Duration::from_millis(2),
        long_holds: (0, Duration::ZERO),
        mode: LockMode::Broken,
        chaos: None,
    };
    let o = run_history(&run).await;
    let kinds = o.report.counts_by_kind();
    for kind in ["overlap", "duplicate token", "token order", "count"] {
        assert!(
            o.report.has(kind),
            "the checker missed `{kind}` in a broken lock's history: {kinds:?}\n{}",
            o.report
        );
    }
}
