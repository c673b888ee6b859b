//! A chaos controller: random network faults on a set of proxies for a bounded time.
//!
//! Each proxy gets its own timeline of episodes, one after another with calm gaps between
//! them. An episode is one of:
//!
//! - **latency** (25 %): 1-5 ms delay both ways, up to 4 ms jitter, for 0.2-2 s;
//! - **lag** (20 %): a delay of 30-90 % of the lease for 0.2-2 leases, mostly on the reply path
//!   (Redis executes at once, the client learns it late: the scenario that tests lease
//!   accounting), else on requests or both ways;
//! - **stall** (25 %): one or both directions stopped for 0.2-1.5 leases, then resumed;
//! - **cut** (15 %): every connection reset;
//! - **fragment** (10 %): writes split into 1-16 byte pieces with pauses up to 0.3 ms, for
//!   0.2-1.5 s;
//! - or a longer calm (5 %).
//!
//! When the time is up every proxy is cleared, so the run ends calm. Choices come from a
//! seeded [`Rng`]: a run is described by its seed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::proxy::{Direction, Proxy};
use crate::rng::Rng;

/// How much chaos, and for how long.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// Total time of the chaos.
    pub duration: Duration,
    /// The lease of the locks under test: stalls and lags are scaled to it.
    pub lease: Duration,
    /// Seed of every choice.
    pub seed: u64,
}

/// What the controller did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChaosStats {
    pub latency: u64,
    pub lag: u64,
    pub stalls: u64,
    pub cuts: u64,
    pub fragments: u64,
}

impl ChaosStats {
    /// The sum of several proxies' stats.
    pub fn sum(all: &[ChaosStats]) -> ChaosStats {
        let mut total = ChaosStats::default();
        for o in all {
            total.latency += o.latency;
            total.lag += o.lag;
            total.stalls += o.stalls;
            total.cuts += o.cuts;
            total.fragments += o.fragments;
        }
        total
    }

    /// Episodes of every kind.
    pub fn total(&self) -> u64 {
        self.latency + self.lag + self.stalls + self.cuts + self.fragments
    }
}

/// Runs chaos on every proxy at once until `plan.duration` has passed, then clears them.
/// Returns what was done to each proxy, in order.
pub async fn unleash(proxies: &[Arc<Proxy>], plan: &ChaosPlan) -> Vec<ChaosStats> {
    let mut seeds = Rng::new(plan.seed);
    let handles: Vec<_> = proxies
        .iter()
        .map(|p| {
            let (p, plan, seed) = (p.clone(), plan.clone(), seeds.next_u64());
            tokio::spawn(async move { one_proxy(&p, &plan, Rng::new(seed)).await })
        })
        .collect();
    let mut stats = Vec::with_capacity(handles.len());
    for h in handles {
        stats.push(h.await.expect("chaos task"));
    }
    for p in proxies {
        p.clear();
    }
    stats
}

async fn one_proxy(proxy: &Proxy, plan: &ChaosPlan, mut rng: Rng) -> ChaosStats {
    let end = Instant::now() + plan.duration;
    let ms = Duration::from_millis;
    let mut stats = ChaosStats::default();
    // Bounded: every iteration sleeps at least the 20 ms calm gap.
    while Instant::now() < end {
        let calm = rng.duration(ms(20), ms(200));
        sleep_until_or(end, calm).await;
        if Instant::now() >= end {
            break;
        }
        let roll = rng.range(0..100);
        let lease = plan.lease;
        let hold = match roll {
            0..=24 => {
                stats.latency += 1;
                let delay = rng.duration(ms(1), ms(5));
                let jitter = rng.duration(Duration::ZERO, ms(4));
                proxy.set_delay(Direction::Both, delay, jitter);
                rng.duration(ms(200), ms(2000))
            }
            25..=44 => {
                stats.lag += 1;
                // Mostly the reply path: Redis acts at once, the client hears late.
                let direction = match rng.range(0..4) {
                    0 | 1 => Direction::Replies,
                    2 => Direction::Requests,
                    _ => Direction::Both,
                };
                let delay = rng.duration(lease.mul_f64(0.3), lease.mul_f64(0.9));
                proxy.set_delay(direction, delay, rng.duration(Duration::ZERO, ms(5)));
                rng.duration(lease.mul_f64(0.2), lease.mul_f64(2.0))
            }
            45..=69 => {
                stats.stalls += 1;
                let direction = match rng.range(0..3) {
                    0 => Direction::Requests,
                    1 => Direction::Replies,
                    _ => Direction::Both,
                };
                proxy.stall(direction);
                rng.duration(lease.mul_f64(0.2), lease.mul_f64(1.5))
            }
            70..=84 => {
                stats.cuts += 1;
                proxy.cut_all();
                Duration::ZERO
            }
            85..=94 => {
                stats.fragments += 1;
                let size = usize::try_from(rng.range(1..17)).expect("small");
                proxy.fragment(
                    Direction::Both,
                    size,
                    rng.duration(Duration::ZERO, Duration::from_micros(300)),
                );
                rng.duration(ms(200), ms(1500))
            }
            _ => rng.duration(ms(100), ms(500)), // a longer calm
        };
        sleep_until_or(end, hold).await;
        proxy.clear();
    }
    proxy.clear();
    stats
}

async fn sleep_until_or(end: Instant, d: Duration) {
    tokio::time::sleep_until(end.min(Instant::now() + d)).await;
}
