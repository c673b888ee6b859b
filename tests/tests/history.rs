//! Randomized multi-process histories, judged by `lockattr_tests::history::check`.
//!
//! Several worker processes (`lockattr-test-worker history`), each with several `Locker`s and
//! tasks, take locks on a few keys and increment per-key counters the unsafe way inside the
//! critical sections. Afterwards the records and the final Redis state must show no overlap,
//! unique and increasing fencing tokens, and an exact count.
//!
//! On one redis-server, under chaos, each worker's lockers reach Redis through their own
//! fault-injecting proxy while its counters use a direct connection. On a Redis Cluster
//! (3 masters, 3 replicas) the lockers are `Locker::cluster`, each counter lives on its lock's
//! master, the keys are spread over every master, and the faults hit the nodes
//! (`lockattr_tests::history::node_chaos`: stopped and client-paused masters, one coordinated
//! failover).
//!
//! `LOCKATTR_HISTORY_SECS` (default 30 on one server, 20 on the cluster) sets the chaos runs'
//! length, `LOCKATTR_HISTORY_SEED` replays a run's random choices (the seed is printed). The
//! tests run one at a time (a mutex) so that one history's load is not another's scheduling
//! noise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr_tests::chaos::{self, ChaosPlan, ChaosStats};
use lockattr_tests::cluster::RedisCluster;
use lockattr_tests::history::node_chaos::{self, NodeChaosPlan, NodeChaosStats};
use lockattr_tests::history::worker::{LockMode, Target, WorkerConfig};
use lockattr_tests::history::{self, KeyState, Report, WorkerTally};
use lockattr_tests::proxy::Proxy;
use lockattr_tests::rng::Rng;
use lockattr_tests::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the history runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deployment {
    /// One redis-server.
    Server,
    /// A Redis Cluster of 3 masters, each with one replica.
    Cluster,
}

/// What goes wrong while it runs.
#[derive(Debug, Clone)]
enum Chaos {
    None,
    /// Network faults on each worker's proxy for this long from the start (one server only).
    Proxies(Duration),
    /// Faults on the cluster's nodes for this long from the start, with one coordinated
    /// failover at `failover_at` (cluster only).
    Nodes {
        duration: Duration,
        failover_at: Option<Duration>,
    },
}

#[derive(Debug, Clone)]
struct Run {
    name: &'static str,
    deployment: Deployment,
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
    /// Chaos from the start (then calm until `duration`).
    chaos: Chaos,
}

#[derive(Debug)]
struct Outcome {
    report: Report,
    tally: WorkerTally,
    /// What the chaos did to each worker's proxy.
    chaos: Vec<ChaosStats>,
    /// Connections each proxy accepted before the chaos, and in all.
    proxy_connections: Vec<(u64, u64)>,
    /// What the chaos did to the cluster's nodes.
    node_chaos: Option<NodeChaosStats>,
    /// Sections whose lock call failed after entering, by message.
    failures: BTreeMap<String, u64>,
    took: Duration,
}

/// The Redis a history runs on.
enum Env {
    Server(RedisServer),
    Cluster(Arc<RedisCluster>),
}

impl Env {
    async fn start(deployment: Deployment) -> Env {
        match deployment {
            Deployment::Server => Env::Server(RedisServer::start()),
            Deployment::Cluster => {
                let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
                    .await
                    .expect("start the cluster");
                Env::Cluster(Arc::new(cluster))
            }
        }
    }

    /// `n` lock keys: on a cluster, spread evenly over the masters (the key's master in the
    /// second field).
    fn keys(&self, n: usize) -> Vec<(String, Option<u16>)> {
        let Env::Cluster(cluster) = self else {
            return (0..n).map(|k| (format!("hist{k}"), None)).collect();
        };
        let topology = cluster.topology();
        let masters = cluster.masters();
        let per_master = n.div_ceil(masters.len());
        let mut taken: BTreeMap<u16, usize> = BTreeMap::new();
        let mut keys = Vec::new();
        for i in 0..10_000 {
            if keys.len() == n {
                break;
            }
            let key = format!("hist{i}");
            // The lock `lock:{hist<i>}` and the counters `hist:{hist<i>}:..` share this slot.
            let slot = cluster.keyslot(&format!("{{{key}}}"));
            let master = topology
                .iter()
                .find(|m| m.master && m.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
                .expect("every slot is served")
                .port;
            let count = taken.entry(master).or_default();
            if *count < per_master {
                *count += 1;
                keys.push((key, Some(master)));
            }
        }
        assert_eq!(keys.len(), n, "keys over the masters {masters:?}");
        keys
    }

    fn target(&self, lock_url: Option<String>) -> Target {
        match self {
            Env::Server(server) => Target::Server {
                lock_urls: vec![lock_url.unwrap_or_else(|| server.url())],
                direct_url: server.url(),
            },
            Env::Cluster(cluster) => Target::Cluster {
                seeds: cluster.seed_urls(),
            },
        }
    }

    fn read_state(&self, keys: &[String]) -> BTreeMap<String, KeyState> {
        match self {
            Env::Server(server) => {
                history::read_state(&mut server.conn(), keys).expect("read counters")
            }
            Env::Cluster(cluster) => {
                let client = redis::cluster::ClusterClient::builder(cluster.seed_urls())
                    .connection_timeout(Duration::from_secs(5))
                    .response_timeout(Duration::from_secs(5))
                    .build()
                    .expect("cluster client");
                let mut conn = client.get_connection().expect("connect to the cluster");
                history::read_state(&mut conn, keys).expect("read counters")
            }
        }
    }
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
    let env = Env::start(run.deployment).await;
    let dir = lockattr_tests::temp_dir("history");
    let placed = env.keys(run.keys);
    if let Env::Cluster(cluster) = &env {
        let on: Vec<String> = placed
            .iter()
            .map(|(k, m)| format!("{k}@{}", m.unwrap_or(0)))
            .collect();
        eprintln!(
            "[{}] cluster up in {:?}; masters {:?}; keys on masters {}",
            run.name,
            cluster.startup_time(),
            cluster.masters(),
            on.join(" ")
        );
    }
    let keys: Vec<String> = placed.into_iter().map(|(k, _)| k).collect();

    let mut proxies = Vec::new();
    let mut children = Vec::new();
    let mut configs = Vec::new();
    for p in 0..run.processes {
        let lock_url = match (&env, &run.chaos) {
            (Env::Server(server), Chaos::Proxies(_)) => {
                let proxy = Arc::new(Proxy::start(server.addr()).await);
                let url = proxy.url();
                proxies.push(proxy);
                Some(url)
            }
            _ => None,
        };
        let config = WorkerConfig {
            process: p,
            target: env.target(lock_url),
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

    let (chaos, node_chaos) = match (&env, &run.chaos) {
        (_, Chaos::None) => (Vec::new(), None),
        (Env::Server(_), &Chaos::Proxies(duration)) => {
            let plan = ChaosPlan {
                duration,
                lease: run.lease,
                seed,
            };
            (chaos::unleash(&proxies, &plan).await, None)
        }
        (
            Env::Cluster(cluster),
            &Chaos::Nodes {
                duration,
                failover_at,
            },
        ) => {
            let plan = NodeChaosPlan {
                duration,
                lease: run.lease,
                failover_at,
                seed,
            };
            (
                Vec::new(),
                Some(node_chaos::unleash(cluster.clone(), &plan).await),
            )
        }
        (_, chaos) => panic!("{chaos:?} does not apply to {:?}", run.deployment),
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
    let state = tokio::task::block_in_place(|| env.read_state(&keys));
    let report = history::check(&sections, &state);
    let mut failures = BTreeMap::new();
    for s in &sections {
        if let history::Outcome::Failed(e) = &s.outcome {
            *failures.entry(e.clone()).or_default() += 1;
        }
    }
    let outcome = Outcome {
        report,
        tally,
        chaos,
        proxy_connections: connected
            .iter()
            .zip(&proxies)
            .map(|(&before, p)| (before, p.accepted()))
            .collect(),
        node_chaos,
        failures,
        took: t.elapsed(),
    };
    print_figures(run, &outcome);
    if outcome.report.violations.is_empty() || run.mode == LockMode::Broken {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("[{}] worker records kept in {}", run.name, dir.display());
    }
    // The cluster's nodes are stopped on the blocking pool: dropping them kills processes and
    // waits for them.
    tokio::task::block_in_place(move || drop(env));
    outcome
}

fn print_figures(run: &Run, o: &Outcome) {
    eprintln!(
        "[{}] {:?}: {} processes x {} lockers x {} tasks on {} keys, lease {:?}, {:?} (chaos \
         {:?}), took {:?}",
        run.name,
        run.deployment,
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
        "[{}] lock calls {}, timeouts {}, errors before entering {:?}, failures after \
         entering {:?}",
        run.name, o.tally.attempts, o.tally.timeouts, o.tally.errors, o.failures
    );
    if matches!(run.chaos, Chaos::Proxies(_)) {
        eprintln!(
            "[{}] chaos {:?}; connections per proxy (before chaos, in all) {:?}",
            run.name,
            ChaosStats::sum(&o.chaos),
            o.proxy_connections
        );
    }
    if let Some(stats) = &o.node_chaos {
        eprintln!("[{}] node chaos: {}", run.name, stats.summary());
        if !o.report.violations.is_empty() {
            for e in &stats.episodes {
                eprintln!(
                    "[{}]   {:>7.3} s +{:>5} ms {} on {}",
                    run.name,
                    e.at.as_secs_f64(),
                    e.took.as_millis(),
                    e.kind,
                    e.port
                );
            }
        }
    }
    eprintln!("[{}] {}", run.name, o.report);
}

/// `LOCKATTR_HISTORY_SECS`, or `default`; at least 6.
fn history_secs(default: u64) -> u64 {
    std::env::var("LOCKATTR_HISTORY_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("LOCKATTR_HISTORY_SECS is a number of seconds")
        })
        .unwrap_or(default)
        .max(6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_without_chaos() {
    let run = Run {
        name: "plain",
        deployment: Deployment::Server,
        processes: 3,
        lockers: 2,
        tasks: 3,
        keys: 3,
        duration: Duration::from_secs(8),
        lease: Duration::from_secs(2),
        hold_max: Duration::from_millis(1),
        long_holds: (10, Duration::from_millis(1500)),
        mode: LockMode::Lockattr,
        chaos: Chaos::None,
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
    let secs = history_secs(30);
    let run = Run {
        name: "chaos",
        deployment: Deployment::Server,
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
        chaos: Chaos::Proxies(Duration::from_secs(secs - 4)),
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
        deployment: Deployment::Server,
        processes: 2,
        lockers: 1,
        tasks: 3,
        keys: 2,
        duration: Duration::from_secs(3),
        lease: Duration::from_millis(500),
        hold_max: Duration::from_millis(2),
        long_holds: (0, Duration::ZERO),
        mode: LockMode::Broken,
        chaos: Chaos::None,
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

/// The baseline on a cluster: no fault, keys on every master. Nothing may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_on_a_cluster_without_chaos() {
    let run = Run {
        name: "cluster-plain",
        deployment: Deployment::Cluster,
        processes: 3,
        lockers: 2,
        tasks: 3,
        keys: 6,
        duration: Duration::from_secs(8),
        lease: Duration::from_secs(2),
        hold_max: Duration::from_millis(1),
        long_holds: (10, Duration::from_millis(1500)),
        mode: LockMode::Lockattr,
        chaos: Chaos::None,
    };
    let o = run_history(&run).await;
    assert!(
        o.report.sections > 100,
        "too few sections to judge: {}",
        o.report
    );
    assert!(
        o.report.violations.is_empty(),
        "violations on a cluster without any fault:\n{}",
        o.report
    );
    assert_eq!(
        o.report.lost(),
        0,
        "locks lost on a cluster without any fault:\n{}",
        o.report
    );
}

/// Faults on the cluster's nodes: masters stopped (SIGSTOP) and client-paused for up to 1.5
/// leases, and one coordinated `CLUSTER FAILOVER` in the middle. Losses are allowed (a stop
/// longer than the lease causes real ones); running unprotected is not, and a coordinated
/// failover must lose no lock, token or write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_on_a_cluster() {
    let secs = history_secs(20);
    let chaos_secs = secs - 4;
    let run = Run {
        name: "cluster-chaos",
        deployment: Deployment::Cluster,
        processes: 3,
        lockers: 2,
        tasks: 3,
        keys: 6,
        duration: Duration::from_secs(secs),
        lease: Duration::from_millis(500),
        hold_max: Duration::from_millis(2),
        long_holds: (20, Duration::from_millis(1200)),
        mode: LockMode::Lockattr,
        // The last seconds are calm: everything must work again after the faults.
        chaos: Chaos::Nodes {
            duration: Duration::from_secs(chaos_secs),
            failover_at: Some(Duration::from_secs(chaos_secs) / 2),
        },
    };
    let o = run_history(&run).await;
    assert!(
        o.report.sections > 100,
        "too few sections to judge: {}",
        o.report
    );
    let stats = o.node_chaos.as_ref().expect("node chaos ran");
    assert_eq!(stats.count("failover"), 1, "{}", stats.summary());
    assert!(
        stats.count("stop") + stats.count("client pause") >= 5,
        "the chaos did little: {}",
        stats.summary()
    );
    assert!(
        o.report.violations.is_empty(),
        "the lock did not exclude on a cluster under faults (seed printed above):\n{}",
        o.report
    );
}
