//! Faults on the nodes of a Redis Cluster while a history is recorded.
//!
//! The proxies of [`crate::chaos`] do not fit a cluster: clients learn the nodes' real
//! addresses from the topology (`CLUSTER SLOTS`) and connect to them directly, so a proxy in
//! front of a seed only sees the first contact. The faults here hit the nodes themselves, one
//! episode at a time with calm gaps of 20-200 ms:
//!
//! - **stop** (40 %): `SIGSTOP` of a random master for 0.2-1.5 leases, then `SIGCONT`: nothing
//!   is answered, and on resume the node's clock has moved on (leases that ran out meanwhile are
//!   over). Capped at half the cluster's node timeout, so that the node is not failed over.
//! - **client pause** (40 %): `CLIENT PAUSE <ms> WRITE` or `ALL` on a random master, for the same
//!   durations: Redis holds the commands and runs them when the pause ends (and expires no key
//!   during a `WRITE` pause).
//! - a longer calm (20 %).
//! - Once, at [`NodeChaosPlan::failover_at`], a coordinated `CLUSTER FAILOVER` on the replica of
//!   a random master, waited for until the cluster is healthy again. A coordinated failover
//!   loses no write: the master pauses its clients until the replica has caught up with it.
//!
//! Masters are looked up before each episode, so a promoted replica can be paused later. The
//! harness's helpers are synchronous; they run on Tokio's blocking pool. Choices come from a
//! seeded [`Rng`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::RedisCluster;
use crate::rng::Rng;

/// What to do to the cluster, and for how long.
#[derive(Debug, Clone)]
pub struct NodeChaosPlan {
    /// Total time of the chaos.
    pub duration: Duration,
    /// The lease of the locks under test: pauses are scaled to it.
    pub lease: Duration,
    /// When (from the start) to run the one coordinated failover; `None` for none.
    pub failover_at: Option<Duration>,
    /// Seed of every choice.
    pub seed: u64,
}

/// One fault, as it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// When it began, from the start of the chaos.
    pub at: Duration,
    /// How long it lasted.
    pub took: Duration,
    /// The node it hit (for a failover: the replica that was promoted).
    pub port: u16,
    /// `stop`, `client pause write`, `client pause all` or `failover`.
    pub kind: &'static str,
}

/// What the chaos did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChaosStats {
    /// Every episode, in order.
    pub episodes: Vec<Episode>,
}

impl NodeChaosStats {
    /// How many episodes of `kind` (a prefix: `client pause` counts both modes).
    pub fn count(&self, kind: &str) -> usize {
        self.episodes
            .iter()
            .filter(|e| e.kind.starts_with(kind))
            .count()
    }

    /// A one-line summary: counts by kind, total time stopped or paused, the failovers.
    pub fn summary(&self) -> String {
        let faulted: Duration = self
            .episodes
            .iter()
            .filter(|e| e.kind != "failover")
            .map(|e| e.took)
            .sum();
        let failovers: Vec<String> = self
            .episodes
            .iter()
            .filter(|e| e.kind == "failover")
            .map(|e| {
                format!(
                    "{} promoted at {:.1} s in {:.1} s",
                    e.port,
                    e.at.as_secs_f64(),
                    e.took.as_secs_f64()
                )
            })
            .collect();
        format!(
            "{} stops, {} client pauses ({:.1} s of faults in all), {} failovers [{}]",
            self.count("stop"),
            self.count("client pause"),
            faulted.as_secs_f64(),
            self.count("failover"),
            failovers.join("; ")
        )
    }
}

/// Runs faults on `cluster`'s nodes until `plan.duration` has passed (the episode in progress
/// finishes first: a stopped node is always resumed), then waits until the cluster is healthy.
///
/// # Panics
/// When a harness operation fails (a failover that does not complete, a node that cannot be
/// reached outside a fault), with the reason.
pub async fn unleash(cluster: Arc<RedisCluster>, plan: &NodeChaosPlan) -> NodeChaosStats {
    let start = Instant::now();
    let end = start + plan.duration;
    let cap = (cluster.options().node_timeout / 2).max(Duration::from_millis(50));
    let mut rng = Rng::new(plan.seed);
    let mut stats = NodeChaosStats::default();
    let mut failover_at = plan.failover_at.map(|d| start + d);
    let ms = Duration::from_millis;
    // Bounded: every iteration sleeps at least the 20 ms calm gap, and each episode is bounded.
    while Instant::now() < end {
        let calm = rng.duration(ms(20), ms(200));
        tokio::time::sleep_until(end.min(Instant::now() + calm)).await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        if failover_at.is_some_and(|t| now >= t) {
            failover_at = None;
            let pick = rng.next_u64();
            stats
                .episodes
                .push(failover(&cluster, pick, now - start).await);
            continue;
        }
        let roll = rng.range(0..100);
        let hold = rng
            .duration(plan.lease.mul_f64(0.2), plan.lease.mul_f64(1.5))
            .min(cap);
        let pick = rng.next_u64();
        let episode = match roll {
            0..=39 => stop(&cluster, pick, hold).await,
            40..=79 => {
                let mode = if rng.chance(0.5) { "WRITE" } else { "ALL" };
                client_pause(&cluster, pick, hold, mode).await
            }
            _ => {
                tokio::time::sleep(rng.duration(ms(100), ms(500))).await;
                continue;
            }
        };
        let (port, kind) = episode;
        stats.episodes.push(Episode {
            at: now - start,
            took: hold,
            port,
            kind,
        });
    }
    blocking(&cluster, |c| c.wait_ok(Duration::from_secs(30))).await;
    stats
}

/// Runs a synchronous harness call on the blocking pool.
async fn blocking<T: Send + 'static>(
    cluster: &Arc<RedisCluster>,
    f: impl FnOnce(&RedisCluster) -> T + Send + 'static,
) -> T {
    let cluster = cluster.clone();
    match tokio::task::spawn_blocking(move || f(&cluster)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A master chosen by `pick`.
async fn some_master(cluster: &Arc<RedisCluster>, pick: u64) -> u16 {
    let masters = blocking(cluster, RedisCluster::masters).await;
    assert!(!masters.is_empty(), "no master serves slots");
    masters[usize::try_from(pick % masters.len() as u64).expect("few masters")]
}

/// Resumes a stopped node when dropped, so that no path leaves it stopped.
struct Resume<'a>(&'a RedisCluster, u16);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.node(self.1).resume();
    }
}

async fn stop(cluster: &Arc<RedisCluster>, pick: u64, hold: Duration) -> (u16, &'static str) {
    let port = some_master(cluster, pick).await;
    cluster.node(port).pause();
    let _resume = Resume(cluster, port);
    tokio::time::sleep(hold).await;
    (port, "stop")
}

async fn client_pause(
    cluster: &Arc<RedisCluster>,
    pick: u64,
    hold: Duration,
    mode: &'static str,
) -> (u16, &'static str) {
    let port = some_master(cluster, pick).await;
    let millis = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
    blocking(cluster, move |c| {
        let () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(millis)
            .arg(mode)
            .query(&mut c.conn(port))
            .unwrap_or_else(|e| panic!("CLIENT PAUSE on {port}: {e}"));
    })
    .await;
    // The pause ends by itself; wait for it so that episodes do not overlap.
    tokio::time::sleep(hold).await;
    let kind = if mode == "WRITE" {
        "client pause write"
    } else {
        "client pause all"
    };
    (port, kind)
}

async fn failover(cluster: &Arc<RedisCluster>, pick: u64, at: Duration) -> Episode {
    let master = some_master(cluster, pick).await;
    let started = Instant::now();
    let replica = blocking(cluster, move |c| {
        let replica = *c
            .replicas_of(master)
            .first()
            .unwrap_or_else(|| panic!("master {master} has no replica to fail over to"));
        c.failover(replica);
        replica
    })
    .await;
    Episode {
        at,
        took: started.elapsed(),
        port: replica,
        kind: "failover",
    }
}
