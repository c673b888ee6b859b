//! The replicated rows: lockattr with `wait_for_replicas` next to the plain lock, on a master
//! with one replica that the bench starts itself, measured the same way in the same run.
//!
//! - **Sequential** (one task; one key reused, or a new key every cycle): PING, the raw floor,
//!   the raw floor with its `SET NX PX` pipelined with `WAIT` (diagnostic: what an acknowledged
//!   acquisition costs at least), lockattr plain and lockattr with
//!   `wait_for_replicas(REPLICAS, WAIT_TIMEOUT)`, all on the master, in interleaved batches (the
//!   diagnostic row in every [`DIAGNOSTIC_EVERY`]-th round only);
//!   round trips per cycle through the [`FlightCounter`], Redis commands and `WAIT`s per cycle
//!   from the master's `INFO commandstats`.
//! - **64 tasks, each on its own key, reused**: lockattr plain and with `wait_for_replicas`, in
//!   interleaved rounds (half the main 64-task scenario's time per row).
//!
//! Every row runs on the master; the replica only replicates (and acknowledges). A row that
//! fails is counted, not fatal: it stops after [`MAX_ERRORS`] errors, and the table after
//! [`TABLE_LIMIT`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use lockattr_tests::cluster::info_field;
use lockattr_tests::{connect_bounded, poll_until, RedisServer};

use crate::clock::now_ns;
use crate::deploy::Deploy;
use crate::flights::FlightCounter;
use crate::impls::{build, build_waited_floor, Kind, LockImpl};
use crate::progress::Progress;
use crate::simple::{self, KeySource, Keys};
use crate::stats::Summary;
use crate::{lock_commands, round_order, Plan, DISTINCT_ROUNDS};

/// Replicas the bench starts, and that `wait_for_replicas` waits for.
pub const REPLICAS: usize = 1;

/// The `wait_for_replicas` timeout (and the diagnostic floor's `WAIT` timeout).
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the replica may take to come online (`state=online` on the master,
/// `master_link_status:up` on the replica, a probe write acknowledged).
const SYNC_LIMIT: Duration = Duration::from_secs(15);

/// The key of the probe write that [`wait_until_online`] has the replica acknowledge (deleted
/// afterwards).
const PROBE_KEY: &str = "lockbench:replica-probe";

/// The diagnostic row ([`Variant::RawWait`]) runs in every `DIAGNOSTIC_EVERY`-th round only,
/// which keeps the scenario short (its p50 needs fewer samples than the rows it explains).
pub const DIAGNOSTIC_EVERY: usize = 5;

/// Errors after which a sequential row is no longer measured.
pub const MAX_ERRORS: u64 = 20;

/// The longest a sequential table may take (its rounds stop there; healthy runs take seconds).
pub const TABLE_LIMIT: Duration = Duration::from_secs(60);

/// The rows of the replicated tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The raw floor (`SET NX PX` + compare-and-delete).
    Raw,
    /// The raw floor with `SET NX PX` and `WAIT` in one pipeline (diagnostic).
    RawWait,
    /// lockattr, `Locker::builder(master)`.
    Plain,
    /// lockattr with `wait_for_replicas(REPLICAS, WAIT_TIMEOUT)`.
    Waited,
}

impl Variant {
    /// Sequential rows, in table order.
    pub const SEQUENTIAL: [Variant; 4] = [
        Variant::Raw,
        Variant::RawWait,
        Variant::Plain,
        Variant::Waited,
    ];

    /// 64-task rows, in table order.
    pub const DISTINCT: [Variant; 2] = [Variant::Plain, Variant::Waited];

    /// Name in the tables.
    pub fn label(self) -> String {
        let ms = WAIT_TIMEOUT.as_millis();
        match self {
            Variant::Raw => Kind::Raw.label().to_owned(),
            Variant::RawWait => {
                format!("raw floor + WAIT {REPLICAS} {ms} pipelined with SET NX PX (diagnostic)")
            }
            Variant::Plain => "lockattr".to_owned(),
            Variant::Waited => format!("lockattr, wait_for_replicas({REPLICAS}, {ms} ms)"),
        }
    }

    /// Short tag for key names.
    fn tag(self) -> &'static str {
        match self {
            Variant::Raw => "r",
            Variant::RawWait => "rw",
            Variant::Plain => "p",
            Variant::Waited => "w",
        }
    }

    /// The implementation kind behind the row (for key names and [`simple::Distinct`]).
    fn kind(self) -> Kind {
        match self {
            Variant::Raw | Variant::RawWait => Kind::Raw,
            Variant::Plain | Variant::Waited => Kind::Lockattr,
        }
    }

    async fn build(self, url: &str) -> Result<Arc<dyn LockImpl>> {
        let imp = match self {
            Variant::Raw => build(Kind::Raw, url).await,
            Variant::RawWait => build_waited_floor(url, REPLICAS, WAIT_TIMEOUT).await,
            Variant::Plain => crate::lockattr_impl::build_with(url, None).await,
            Variant::Waited => {
                crate::lockattr_impl::build_with(url, Some((REPLICAS, WAIT_TIMEOUT))).await
            }
        };
        imp.with_context(|| format!("build {}", self.label()))
    }
}

/// Redis commands per cycle, counted on the master.
#[derive(Debug, Clone, Default)]
pub struct Counted {
    /// The lock's commands (Lua-internal calls included, the harness's left out).
    pub commands: f64,
    /// `WAIT` calls.
    pub waits: f64,
    /// The lock's commands by name.
    pub by_name: BTreeMap<String, f64>,
}

impl Counted {
    fn of(counts: BTreeMap<String, u64>, n: u64) -> Counted {
        let per = |c: u64| c as f64 / n.max(1) as f64;
        let lock: BTreeMap<String, u64> = lock_commands(counts)
            .into_iter()
            // The replication link's own commands, if Redis counts them.
            .filter(|(name, _)| !name.starts_with("replconf"))
            .collect();
        Counted {
            commands: per(lock.values().sum()),
            waits: per(lock.get("wait").copied().unwrap_or(0)),
            by_name: lock.into_iter().map(|(k, v)| (k, per(v))).collect(),
        }
    }
}

/// One row of a sequential table.
#[derive(Debug)]
pub struct SeqRow {
    pub variant: Variant,
    pub latency: Summary,
    /// Cycles that failed (acquire or release), and the first error.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Request flights per lock + release through the counting forwarder.
    pub round_trips: Option<f64>,
    /// Commands per lock + release over the counted cycles.
    pub counted: Option<Counted>,
}

/// One sequential table.
#[derive(Debug)]
pub struct SeqTable {
    pub keys: Keys,
    /// PING on the master, interleaved with the rows.
    pub ping: Summary,
    pub rows: Vec<SeqRow>,
    /// Whether [`TABLE_LIMIT`] cut the rounds short.
    pub cut_short: bool,
}

impl SeqTable {
    pub fn row(&self, variant: Variant) -> Option<&SeqRow> {
        self.rows.iter().find(|r| r.variant == variant)
    }

    pub fn p50(&self, variant: Variant) -> Option<u64> {
        self.row(variant)?.latency.p50
    }
}

/// One row of the 64-task table.
#[derive(Debug)]
pub struct DistinctRow {
    pub variant: Variant,
    /// Its `redis_cpu_ns` is the master's.
    pub row: simple::Distinct,
    /// The replica's redis-server CPU time per cycle.
    pub replica_cpu_ns: Option<f64>,
    /// Commands per cycle over all rounds.
    pub counted: Option<Counted>,
}

/// Everything the replicated section measured.
#[derive(Debug)]
pub struct ReplicatedReport {
    pub master: u16,
    pub replica: u16,
    /// From starting the master to the replica being online.
    pub startup: Duration,
    pub sequential: Vec<SeqTable>,
    pub distinct: Vec<DistinctRow>,
    pub distinct_tasks: usize,
    pub notes: Vec<String>,
}

/// Progress steps [`run`] takes.
pub fn steps() -> u64 {
    1 + 2 * 2 + DISTINCT_ROUNDS
}

/// Starts a master and its replica, measures every replicated row, and kills both.
pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<ReplicatedReport> {
    progress.step(&format!(
        "replicated: starting a master and {REPLICAS} replica"
    ));
    let started = Instant::now();
    let master = RedisServer::start();
    let master_port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]);
    wait_until_online(&master, &replica, SYNC_LIMIT)?;
    let mut report = ReplicatedReport {
        master: master.port(),
        replica: replica.port(),
        startup: started.elapsed(),
        sequential: Vec::new(),
        distinct: Vec::new(),
        distinct_tasks: plan.distinct_tasks,
        notes: Vec::new(),
    };

    for keys in [Keys::Reused, Keys::Fresh] {
        let what = match keys {
            Keys::Reused => "one key reused",
            Keys::Fresh => "a new key every cycle",
        };
        progress.step(&format!("replicated: lock+release, {what}"));
        let mut table = rt.block_on(sequential(&master, keys, plan))?;
        if table.cut_short {
            report.notes.push(format!(
                "the replicated table ({what}) stopped after {} s",
                TABLE_LIMIT.as_secs()
            ));
        }
        progress.step(&format!(
            "replicated: round trips and Redis commands per cycle, {what}"
        ));
        for row in &mut table.rows {
            match rt.block_on(count(&master, row.variant, keys, plan.counted_cycles)) {
                Ok((flights, counted)) => {
                    row.round_trips = Some(flights);
                    row.counted = Some(counted);
                }
                Err(e) => report.notes.push(format!(
                    "counting the round trips of {} ({what}) failed: {e:#}",
                    row.variant.label()
                )),
            }
        }
        report.sequential.push(table);
    }

    report.distinct = distinct(rt, &master, &replica, plan, progress)?;
    // Both servers are killed here (and on every early return, when their handles drop).
    drop(replica);
    drop(master);
    Ok(report)
}

/// Waits (at most `limit`) until the master lists `replica` as `state=online`, the replica says
/// `master_link_status:up`, and a probe write is acknowledged by `WAIT`.
///
/// The last step is needed: after a diskless full sync, Redis 7.0 lists the replica as online
/// but streams commands to it (its `REPLCONF GETACK`s included) only once the replica's first
/// `REPLCONF ACK` has arrived ("Waiting for REPLCONF ACK from slave to enable streaming" in the
/// master's log). That takes up to about 1 s, the replica's ACK period, and a `WAIT` in that
/// window runs into its timeout.
fn wait_until_online(master: &RedisServer, replica: &RedisServer, limit: Duration) -> Result<()> {
    let info = |server: &RedisServer| -> Result<String, String> {
        let mut conn =
            connect_bounded(server.addr(), Duration::from_secs(1)).map_err(|e| e.to_string())?;
        redis::cmd("INFO")
            .arg("replication")
            .query(&mut conn)
            .map_err(|e| format!("INFO replication on {}: {e}", server.port()))
    };
    let acknowledged = || -> Result<(), String> {
        let mut conn =
            connect_bounded(master.addr(), Duration::from_secs(1)).map_err(|e| e.to_string())?;
        let (acked,): (usize,) = redis::pipe()
            .cmd("INCR")
            .arg(PROBE_KEY)
            .ignore()
            .cmd("WAIT")
            .arg(REPLICAS)
            .arg(100)
            .query(&mut conn)
            .map_err(|e| format!("INCR + WAIT on the master: {e}"))?;
        if acked < REPLICAS {
            return Err(format!(
                "a probe write was acknowledged by {acked} of {REPLICAS} replicas within 100 ms"
            ));
        }
        let _: () = redis::cmd("DEL")
            .arg(PROBE_KEY)
            .query(&mut conn)
            .map_err(|e| format!("DEL {PROBE_KEY}: {e}"))?;
        Ok(())
    };
    poll_until(limit, Duration::from_millis(20), || {
        replica_online(&info(master)?, replica.port())?;
        let link = info(replica)?;
        match info_field(&link, "master_link_status") {
            Some("up") => acknowledged(),
            other => Err(format!(
                "the replica says master_link_status:{}",
                other.unwrap_or("?")
            )),
        }
    })
    .map_err(|e| {
        let log = replica.log();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        anyhow!(
            "the replica on port {} of the master on port {} did not come online within {limit:?}; \
             last state: {e}; end of the replica's log:\n{}",
            replica.port(),
            master.port(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })
}

/// `Ok` when the master's `INFO replication` lists a replica on `port` with `state=online`.
fn replica_online(master_info: &str, port: u16) -> Result<(), String> {
    let needle = format!("port={port},");
    let line = master_info
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("slave") && l.contains(&needle))
        .ok_or_else(|| format!("the master lists no replica on port {port}"))?;
    if line.contains("state=online") {
        Ok(())
    } else {
        Err(format!("the master says {line}"))
    }
}

/// Interleaved batches of PING and every row of [`Variant::SEQUENTIAL`] on the master.
async fn sequential(master: &RedisServer, keys: Keys, plan: &Plan) -> Result<SeqTable> {
    let url = master.url();
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .context("connect to the master")?;
    let mut imps: Vec<(Variant, Arc<dyn LockImpl>, KeySource)> = Vec::new();
    for variant in Variant::SEQUENTIAL {
        let source = KeySource::new(&format!("e{}", variant.tag()), keys, variant.kind(), 0);
        imps.push((variant, variant.build(&url).await?, source));
    }
    let mut errors: Vec<(u64, Option<String>)> = imps.iter().map(|_| (0, None)).collect();
    // Warm-up: connections, scripts, allocator (its errors count like any other).
    for ((_, imp, source), (failed, first)) in imps.iter().zip(&mut errors) {
        for _ in 0..20 {
            if let Err(e) = cycle(&**imp, &source.next()).await {
                *failed += 1;
                first.get_or_insert_with(|| format!("warm-up: {e:#}"));
            }
        }
    }
    let n = plan.rounds * plan.batch;
    let mut ping = Vec::with_capacity(n);
    let mut samples: Vec<Vec<u64>> = imps.iter().map(|_| Vec::with_capacity(n)).collect();
    let deadline = Instant::now() + TABLE_LIMIT;
    let mut cut_short = false;
    for round in 0..plan.rounds {
        if Instant::now() >= deadline {
            cut_short = true;
            break;
        }
        for _ in 0..plan.batch {
            let t0 = now_ns();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            ping.push(now_ns() - t0);
        }
        for (((variant, imp, source), out), (failed, first)) in
            imps.iter().zip(&mut samples).zip(&mut errors)
        {
            if *variant == Variant::RawWait && round % DIAGNOSTIC_EVERY != 0 {
                continue;
            }
            for _ in 0..plan.batch {
                if *failed >= MAX_ERRORS {
                    break;
                }
                match cycle(&**imp, &source.next()).await {
                    Ok(ns) => out.push(ns),
                    Err(e) => {
                        *failed += 1;
                        first.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        }
    }
    drop(imps);
    Ok(SeqTable {
        keys,
        ping: Summary::of(ping),
        rows: Variant::SEQUENTIAL
            .into_iter()
            .zip(samples)
            .zip(errors)
            .map(|((variant, s), (errors, first_error))| SeqRow {
                variant,
                latency: Summary::of(s),
                errors,
                first_error,
                round_trips: None,
                counted: None,
            })
            .collect(),
        cut_short,
    })
}

/// One lock + release of `key`: how long it took.
async fn cycle(imp: &dyn LockImpl, key: &str) -> Result<u64> {
    let t0 = now_ns();
    let held = imp
        .acquire(key, Duration::from_secs(5))
        .await
        .context("acquire")?;
    held.release().await.context("release")?;
    Ok(now_ns() - t0)
}

/// Round trips and commands per lock + release of `variant`, over `n` cycles through a
/// [`FlightCounter`] after 5 warm-up cycles.
async fn count(
    master: &RedisServer,
    variant: Variant,
    keys: Keys,
    n: usize,
) -> Result<(f64, Counted)> {
    let counter = FlightCounter::start(master.addr()).await?;
    let imp = variant.build(&counter.url()).await?;
    let source = KeySource::new(&format!("n{}", variant.tag()), keys, variant.kind(), 0);
    simple::cycles(&*imp, &source, 5).await?;
    counter.reset();
    master.reset_stats();
    simple::cycles(&*imp, &source, n).await?;
    let flights = counter.flights();
    let counts = master.command_counts();
    drop(imp);
    Ok((
        flights as f64 / n.max(1) as f64,
        Counted::of(counts, n as u64),
    ))
}

/// 64 tasks, each on its own key reused, every row of [`Variant::DISTINCT`] once per round.
fn distinct(
    rt: &tokio::runtime::Runtime,
    master: &RedisServer,
    replica: &RedisServer,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<Vec<DistinctRow>> {
    let url = master.url();
    let imps = rt.block_on(async {
        let mut imps: Vec<(Variant, Arc<dyn LockImpl>)> = Vec::new();
        for variant in Variant::DISTINCT {
            imps.push((variant, variant.build(&url).await?));
        }
        anyhow::Ok(imps)
    })?;
    // redis-server CPU of both: the replica's work is part of a replicated write.
    let cpu = || {
        (
            Deploy::Server(master).redis_cpu_ns(),
            Deploy::Server(replica).redis_cpu_ns(),
        )
    };
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    // Half the main scenario's time per row: the replicated section must stay short.
    let per_round = plan.distinct_duration / 2 / u32::try_from(DISTINCT_ROUNDS).unwrap_or(1);
    let mut rounds: Vec<Vec<simple::DistinctRound>> = imps.iter().map(|_| Vec::new()).collect();
    let mut counts: Vec<BTreeMap<String, u64>> = imps.iter().map(|_| BTreeMap::new()).collect();
    let mut replica_cpu: Vec<Option<u64>> = imps.iter().map(|_| Some(0)).collect();
    for round in 0..DISTINCT_ROUNDS {
        progress.step(&format!(
            "replicated: {} tasks, each on its own key: round {}/{DISTINCT_ROUNDS}",
            plan.distinct_tasks,
            round + 1
        ));
        for i in round_order(imps.len(), round) {
            let ((variant, imp), out, total, replica_total) = (
                &imps[i],
                &mut rounds[i],
                &mut counts[i],
                &mut replica_cpu[i],
            );
            master.reset_stats();
            let (master_before, replica_before) = cpu();
            let mut r = rt.block_on(simple::distinct_keys(
                variant.kind(),
                imp.clone(),
                &format!("y{}{round}", variant.tag()),
                Keys::Reused,
                plan.distinct_tasks,
                per_round,
            ));
            let (master_after, replica_after) = cpu();
            r.redis_cpu_ns = delta(master_before, master_after);
            *replica_total = replica_total
                .zip(delta(replica_before, replica_after))
                .map(|(a, b)| a + b);
            for (name, calls) in master.command_counts() {
                *total.entry(name).or_default() += calls;
            }
            out.push(r);
        }
    }
    rt.block_on(async move { drop(imps) });
    Ok(Variant::DISTINCT
        .into_iter()
        .zip(rounds)
        .zip(counts.into_iter().zip(replica_cpu))
        .map(|((variant, r), (counts, replica_cpu))| {
            let row = simple::Distinct::of_rounds(variant.kind(), r);
            let counted = (row.cycles > 0).then(|| Counted::of(counts, row.cycles));
            DistinctRow {
                variant,
                replica_cpu_ns: replica_cpu.map(|ns| ns as f64 / row.cycles.max(1) as f64),
                row,
                counted,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_online_when_the_master_says_so() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
            slave0:ip=127.0.0.1,port=17002,state=online,offset=0,lag=0\r\n";
        assert_eq!(replica_online(info, 17002), Ok(()));
        assert!(replica_online(info, 1700).is_err(), "another port");
        let syncing = info.replace("state=online", "state=wait_bgsave");
        assert!(replica_online(&syncing, 17002).is_err_and(|e| e.contains("wait_bgsave")));
        assert!(replica_online("# Replication\r\nconnected_slaves:0\r\n", 17002).is_err());
    }

    #[test]
    fn waits_and_replication_traffic_are_counted_apart() {
        let counts: BTreeMap<String, u64> = [
            ("set", 10),
            ("wait", 10),
            ("evalsha", 10),
            ("info", 3),
            ("replconf", 7),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
        let c = Counted::of(counts, 10);
        assert_eq!((c.commands, c.waits), (3.0, 1.0));
        assert!(!c.by_name.contains_key("replconf"));
        assert!(!c.by_name.contains_key("info"));
    }
}
