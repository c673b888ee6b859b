//! The uncontended scenarios: one task lock + release in a loop (on one key, or on a new key
//! every cycle), and many tasks at once on distinct keys.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::clock::now_ns;
use crate::impls::{Kind, LockImpl};
use crate::stats::Summary;

/// Which key a cycle locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// The same key every cycle (per implementation, or per task).
    Reused,
    /// A key never locked before, every cycle: what a service whose keys come from its
    /// arguments mostly does (a new order, a new user, a new party).
    Fresh,
}

impl Keys {
    /// A key name prefix unique to the pattern and the scenario.
    fn prefix(self, scenario: &str) -> String {
        match self {
            Keys::Reused => format!("{scenario}r"),
            Keys::Fresh => format!("{scenario}f"),
        }
    }
}

/// Hands out key names: the same one for [`Keys::Reused`], a new one per call for
/// [`Keys::Fresh`].
#[derive(Debug)]
pub struct KeySource {
    base: String,
    keys: Keys,
    next: AtomicU64,
}

impl KeySource {
    /// Keys for `kind` in `scenario` (a short tag), `owner` distinguishing tasks.
    pub fn new(scenario: &str, keys: Keys, kind: Kind, owner: usize) -> KeySource {
        KeySource {
            base: format!("{}-{}-{owner}", keys.prefix(scenario), kind.id()),
            keys,
            next: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> String {
        match self.keys {
            Keys::Reused => self.base.clone(),
            Keys::Fresh => format!(
                "{}-{}",
                self.base,
                self.next.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

/// One implementation's sequential row.
#[derive(Debug)]
pub struct SequentialRow {
    pub kind: Kind,
    pub latency: Summary,
    /// Every sample, ascending (for the plot).
    pub samples: Vec<u64>,
    /// Request flights per lock + release through the counting forwarder (see `flights`).
    pub round_trips: Option<f64>,
    /// Redis commands per lock + release (Lua-internal calls included).
    pub commands: Option<f64>,
    /// The same, by command name.
    pub commands_by_name: BTreeMap<String, f64>,
}

/// One task, lock + release in a loop: PING and every implementation.
#[derive(Debug)]
pub struct Sequential {
    pub keys: Keys,
    pub ping: Summary,
    pub rows: Vec<SequentialRow>,
}

impl Sequential {
    pub fn row(&self, kind: Kind) -> Option<&SequentialRow> {
        self.rows.iter().find(|r| r.kind == kind)
    }

    pub fn p50(&self, kind: Kind) -> Option<u64> {
        self.row(kind)?.latency.p50
    }
}

/// Measures PING and each implementation in interleaved batches (`rounds` x `batch` samples
/// each), so that drift in machine load hits every row alike. The round-trip and command
/// counts are filled in by the caller.
pub async fn sequential(
    url: &str,
    impls: &[(Kind, Arc<dyn LockImpl>)],
    keys: Keys,
    rounds: usize,
    batch: usize,
) -> Result<Sequential> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut ping = Vec::with_capacity(rounds * batch);
    let mut samples: Vec<Vec<u64>> = impls
        .iter()
        .map(|_| Vec::with_capacity(rounds * batch))
        .collect();
    let sources: Vec<KeySource> = impls
        .iter()
        .map(|(kind, _)| KeySource::new("s", keys, *kind, 0))
        .collect();
    let wait = Duration::from_secs(5);
    // Warm-up: connections, scripts, allocator.
    for ((_, imp), source) in impls.iter().zip(&sources) {
        for _ in 0..20 {
            imp.acquire(&source.next(), wait).await?.release().await?;
        }
    }
    for _ in 0..rounds {
        for _ in 0..batch {
            let t0 = now_ns();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            ping.push(now_ns() - t0);
        }
        for (((kind, imp), out), source) in impls.iter().zip(samples.iter_mut()).zip(&sources) {
            for _ in 0..batch {
                let key = source.next();
                let t0 = now_ns();
                let held = imp
                    .acquire(&key, wait)
                    .await
                    .with_context(|| format!("{} acquire", kind.id()))?;
                held.release()
                    .await
                    .with_context(|| format!("{} release", kind.id()))?;
                out.push(now_ns() - t0);
            }
        }
    }
    Ok(Sequential {
        keys,
        ping: Summary::of(ping),
        rows: impls
            .iter()
            .zip(samples)
            .map(|((kind, _), mut s)| {
                s.sort_unstable();
                SequentialRow {
                    kind: *kind,
                    latency: Summary::of(s.clone()),
                    samples: s,
                    round_trips: None,
                    commands: None,
                    commands_by_name: BTreeMap::new(),
                }
            })
            .collect(),
    })
}

/// `n` sequential lock + release cycles with keys from `keys` (for counting).
pub async fn cycles(imp: &dyn LockImpl, keys: &KeySource, n: usize) -> Result<()> {
    for _ in 0..n {
        imp.acquire(&keys.next(), Duration::from_secs(5))
            .await?
            .release()
            .await?;
    }
    Ok(())
}

/// `tasks` tasks, each locking and releasing its own keys: one implementation's row, summed
/// over its rounds.
#[derive(Debug)]
pub struct Distinct {
    pub kind: Kind,
    pub cycles: u64,
    pub per_sec: f64,
    pub cycle: Summary,
    /// Every cycle's latency, ascending (for the plot).
    pub samples: Vec<u64>,
    pub errors: u64,
    /// CPU time of this process per cycle (all threads: the tasks, redis-rs, the runtime).
    pub client_cpu_ns: Option<f64>,
    /// redis-server CPU time per cycle (`INFO cpu`).
    pub redis_cpu_ns: Option<f64>,
}

/// One round of one implementation in [`distinct_keys`].
#[derive(Debug, Default)]
pub struct DistinctRound {
    pub elapsed_ns: u64,
    pub samples: Vec<u64>,
    pub errors: u64,
    pub client_cpu_ns: Option<u64>,
    /// Filled in by the caller, which reads redis-server's CPU time around the round.
    pub redis_cpu_ns: Option<u64>,
}

impl Distinct {
    /// The row of `kind` over its `rounds`.
    pub fn of_rounds(kind: Kind, rounds: Vec<DistinctRound>) -> Distinct {
        let elapsed: u64 = rounds.iter().map(|r| r.elapsed_ns).sum();
        let errors = rounds.iter().map(|r| r.errors).sum();
        let sum = |f: fn(&DistinctRound) -> Option<u64>| -> Option<u64> {
            rounds.iter().map(f).sum::<Option<u64>>()
        };
        let (client, redis) = (sum(|r| r.client_cpu_ns), sum(|r| r.redis_cpu_ns));
        let mut samples: Vec<u64> = rounds.into_iter().flat_map(|r| r.samples).collect();
        samples.sort_unstable();
        let cycles = samples.len() as u64;
        let per_cycle = |ns: Option<u64>| ns.map(|ns| ns as f64 / cycles.max(1) as f64);
        Distinct {
            kind,
            cycles,
            per_sec: cycles as f64 * 1e9 / elapsed.max(1) as f64,
            cycle: Summary::of(samples.clone()),
            samples,
            errors,
            client_cpu_ns: per_cycle(client),
            redis_cpu_ns: per_cycle(redis),
        }
    }
}

/// `tasks` concurrent lock + release loops for `duration`, task `t` on the keys of
/// `KeySource::new(scenario, keys, kind, t)` (`scenario` must differ between rounds, so that a
/// new key is never one an earlier round used).
pub async fn distinct_keys(
    kind: Kind,
    imp: Arc<dyn LockImpl>,
    scenario: &str,
    keys: Keys,
    tasks: usize,
    duration: Duration,
) -> DistinctRound {
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = crate::clock::process_cpu_ns();
    let start = now_ns();
    let deadline = start + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (imp, errors) = (imp.clone(), errors.clone());
        let source = KeySource::new(scenario, keys, kind, t);
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            // Bounded by the deadline and by a generous count.
            while now_ns() < deadline && lat.len() < 1_000_000 {
                let key = source.next();
                let t0 = now_ns();
                match imp.acquire(&key, Duration::from_secs(5)).await {
                    Ok(h) => {
                        if h.release().await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                lat.push(now_ns() - t0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        match tokio::time::timeout(duration + Duration::from_secs(20), h).await {
            Ok(Ok(lat)) => all.extend(lat),
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let elapsed_ns = now_ns() - start;
    let client_cpu_ns = match (cpu_before, crate::clock::process_cpu_ns()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    DistinctRound {
        elapsed_ns,
        samples: all,
        errors: errors.load(Ordering::Relaxed),
        client_cpu_ns,
        redis_cpu_ns: None,
    }
}
