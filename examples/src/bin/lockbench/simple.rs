//! Round-trip floor, uncontended lock+release, and many tasks on distinct keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::clock::now_ns;
use crate::impls::{Kind, LockImpl};
use crate::stats::Summary;

/// PING and uncontended lock+release latencies.
#[derive(Debug)]
pub struct Uncontended {
    pub ping: Summary,
    pub rows: Vec<(Kind, Summary)>,
    /// Redis commands per lock + release (Lua-internal calls included), filled in by the caller.
    pub commands: Vec<(Kind, f64)>,
}

/// Measures PING and each implementation in interleaved batches (`rounds` x `batch` samples
/// each), so that drift in machine load hits every row alike.
pub async fn uncontended(
    url: &str,
    impls: &[(Kind, Arc<dyn LockImpl>)],
    rounds: usize,
    batch: usize,
) -> Result<Uncontended> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut ping = Vec::with_capacity(rounds * batch);
    let mut samples: Vec<Vec<u64>> = impls
        .iter()
        .map(|_| Vec::with_capacity(rounds * batch))
        .collect();
    let wait = Duration::from_secs(5);
    // Warm-up: connections, scripts, allocator.
    for (kind, imp) in impls {
        for _ in 0..20 {
            let key = format!("u-{}", kind.id());
            imp.acquire(&key, wait).await?.release().await?;
        }
    }
    for _ in 0..rounds {
        for _ in 0..batch {
            let t0 = now_ns();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            ping.push(now_ns() - t0);
        }
        for ((kind, imp), out) in impls.iter().zip(samples.iter_mut()) {
            let key = format!("u-{}", kind.id());
            for _ in 0..batch {
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
    Ok(Uncontended {
        ping: Summary::of(ping),
        rows: impls
            .iter()
            .zip(samples)
            .map(|((k, _), s)| (*k, Summary::of(s)))
            .collect(),
        commands: Vec::new(),
    })
}

/// `n` sequential lock + release cycles on `key` (for counting Redis commands per cycle).
pub async fn cycles(imp: &dyn LockImpl, key: &str, n: usize) -> Result<()> {
    for _ in 0..n {
        imp.acquire(key, Duration::from_secs(5))
            .await?
            .release()
            .await?;
    }
    Ok(())
}

/// `tasks` tasks, each locking and releasing its own key for `duration`.
#[derive(Debug)]
pub struct Distinct {
    pub kind: Kind,
    pub cycles: u64,
    pub per_sec: f64,
    pub cycle: Summary,
    pub errors: u64,
    /// CPU time of this process per cycle (all threads: the tasks, redis-rs, the runtime).
    pub client_cpu_ns: Option<f64>,
    /// redis-server CPU time per cycle (`INFO cpu`), filled in by the caller.
    pub redis_cpu_ns: Option<f64>,
}

pub async fn distinct_keys(
    kind: Kind,
    imp: Arc<dyn LockImpl>,
    tasks: usize,
    duration: Duration,
) -> Distinct {
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = crate::clock::process_cpu_ns();
    let start = now_ns();
    let deadline = start + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (imp, errors) = (imp.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let key = format!("d-{}-{t}", kind.id());
            let mut lat = Vec::new();
            // Bounded by the deadline and by a generous count.
            while now_ns() < deadline && lat.len() < 1_000_000 {
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
    let elapsed = now_ns() - start;
    let cycles = all.len().max(1) as f64;
    let client_cpu_ns = match (cpu_before, crate::clock::process_cpu_ns()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / cycles),
        _ => None,
    };
    Distinct {
        client_cpu_ns,
        redis_cpu_ns: None,
        kind,
        cycles: all.len() as u64,
        per_sec: all.len() as f64 * 1e9 / elapsed.max(1) as f64,
        cycle: Summary::of(all),
        errors: errors.load(Ordering::Relaxed),
    }
}
