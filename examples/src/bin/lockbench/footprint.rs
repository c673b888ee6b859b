//! What locking many distinct keys leaves in Redis.
//!
//! Each implementation gets a private, empty `redis-server`. After it has connected and done
//! one warm-up cycle, the bench records the baseline (`DBSIZE`, `used_memory`), locks and
//! releases N distinct keys (64 tasks, each key once), records the same right after the last
//! release, and again 10 s later. Nothing else talks to that server in between: no clean-up
//! command is sent. What is left above the baseline is the implementation's footprint.
//!
//! The yardstick is the peak footprint of N locks: N raw-floor locks (`SET key token NX PX`,
//! the bench's key names) held at once, measured the same way on a server of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use lockattr_tests::RedisServer;

use crate::impls::{build, Kind, LockImpl, LEASE};

/// How long after the last release the footprint is read the second time.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Tasks locking the N keys.
const TASKS: usize = 64;

/// Keys and memory of a server at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub keys: u64,
    pub used_memory: u64,
}

impl Snapshot {
    pub fn take(server: &RedisServer) -> Result<Snapshot> {
        let mut conn = server
            .client()
            .get_connection_with_timeout(Duration::from_secs(5))?;
        let keys: u64 = redis::cmd("DBSIZE").query(&mut conn)?;
        let info: String = redis::cmd("INFO").arg("memory").query(&mut conn)?;
        let used_memory = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no used_memory in INFO memory"))?;
        Ok(Snapshot { keys, used_memory })
    }

    /// Keys and bytes above `baseline` (negative when below).
    pub fn above(self, baseline: Snapshot) -> (i64, i64) {
        let d =
            |a: u64, b: u64| i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(0);
        (
            d(self.keys, baseline.keys),
            d(self.used_memory, baseline.used_memory),
        )
    }
}

/// One implementation's footprint.
#[derive(Debug)]
pub struct Footprint {
    pub kind: Kind,
    pub keys_locked: u64,
    pub errors: u64,
    pub fill: Duration,
    pub baseline: Snapshot,
    pub after: Snapshot,
    /// Read [`SETTLE`] after `after` (or a little later; see `settled_after`).
    pub settled: Option<Snapshot>,
    pub settled_after: Duration,
}

/// The peak footprint of `n` held locks (the yardstick).
#[derive(Debug, Clone, Copy)]
pub struct Peak {
    pub keys: u64,
    pub bytes: i64,
}

/// Holds `n` raw-floor locks at once on a private server and returns what they take.
pub fn peak_of_held_locks(n: u64) -> Result<Peak> {
    let server = RedisServer::start();
    let baseline = Snapshot::take(&server)?;
    let mut conn = server.conn();
    let lease_ms = LEASE.as_millis() as u64 * 12;
    let mut i = 0;
    while i < n {
        let mut pipe = redis::pipe();
        for j in i..(i + 1000).min(n) {
            // Key and value shaped like the raw floor's: `fp-<impl>-<n>` and a 32-hex token.
            pipe.cmd("SET")
                .arg(format!("fp-raw-{j}"))
                .arg(format!("{:032x}", u128::from(j) * 0x9E37_79B9_7F4A_7C15))
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .ignore();
        }
        let () = pipe.query(&mut conn)?;
        i += 1000;
    }
    let held = Snapshot::take(&server)?;
    let (_, bytes) = held.above(baseline);
    Ok(Peak { keys: n, bytes })
}

/// A footprint run whose second reading is still to come.
pub struct Pending {
    footprint: Footprint,
    /// The implementation stays connected (its connections' memory is in the baseline too)
    /// until the second reading; it is dropped inside the runtime by [`Pending::finish`].
    imp: Arc<dyn LockImpl>,
    reading: JoinHandle<(RedisServer, Result<Snapshot>, Duration)>,
}

/// Locks and releases `n` distinct keys with `kind` on a private server, reads the footprint
/// right after, and schedules the second reading [`SETTLE`] later on a thread of its own, so
/// the bench goes on meanwhile.
pub fn start(rt: &tokio::runtime::Runtime, kind: Kind, n: u64) -> Result<Pending> {
    let server = RedisServer::start();
    let url = server.url();
    let imp = rt.block_on(async {
        let imp = build(kind, &url).await?;
        imp.acquire("fp-warm", LEASE).await?.release().await?;
        anyhow::Ok(imp)
    })?;
    let baseline = Snapshot::take(&server)?;
    let started = Instant::now();
    let errors = rt.block_on(fill(&imp, kind, n));
    let fill_time = started.elapsed();
    let after = Snapshot::take(&server).context("read the footprint")?;
    let at = Instant::now();
    let reading = std::thread::spawn(move || {
        std::thread::sleep(SETTLE.saturating_sub(at.elapsed()));
        let snapshot = Snapshot::take(&server);
        (server, snapshot, at.elapsed())
    });
    Ok(Pending {
        footprint: Footprint {
            kind,
            keys_locked: n,
            errors,
            fill: fill_time,
            baseline,
            after,
            settled: None,
            settled_after: SETTLE,
        },
        imp,
        reading,
    })
}

impl Pending {
    /// Waits for the second reading, then disconnects the implementation and stops its server.
    pub fn finish(self, rt: &tokio::runtime::Runtime) -> Footprint {
        let Pending {
            mut footprint,
            imp,
            reading,
        } = self;
        if let Ok((server, snapshot, after)) = reading.join() {
            footprint.settled = snapshot.ok();
            footprint.settled_after = after;
            rt.block_on(async move { drop(imp) });
            drop(server);
        }
        footprint
    }
}

/// `n` distinct keys, each locked and released once, by [`TASKS`] tasks; returns the errors.
async fn fill(imp: &Arc<dyn LockImpl>, kind: Kind, n: u64) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let (imp, next, errors) = (imp.clone(), next.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let key = format!("fp-{}-{i}", kind.id());
                let ok = match imp.acquire(&key, Duration::from_secs(5)).await {
                    Ok(held) => held.release().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        // Bounded: every cycle is bounded by the acquire wait and the implementation's own
        // operation timeouts; this is the backstop.
        if tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .is_err()
        {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    errors.load(Ordering::Relaxed)
}
