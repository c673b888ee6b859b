//! The Redis a scenario runs on, one server or a cluster, behind the few things the bench asks
//! of it: a URL for the implementations, and the statistics of every node.

use std::collections::BTreeMap;

use lockattr_tests::cluster::RedisCluster;
use lockattr_tests::RedisServer;

/// Commands per node (by port), by command name, from `INFO commandstats`.
pub type CountsByNode = BTreeMap<u16, BTreeMap<String, u64>>;

/// A deployment the bench started.
#[derive(Debug, Clone, Copy)]
pub enum Deploy<'a> {
    Server(&'a RedisServer),
    /// Masters only (the bench's cluster has no replicas), so every node does lock work.
    Cluster(&'a RedisCluster),
}

impl Deploy<'_> {
    /// What [`crate::impls::build`] connects to: the server's URL or `cluster:<seed urls>`.
    pub fn url(&self) -> String {
        match self {
            Deploy::Server(s) => s.url(),
            Deploy::Cluster(c) => format!("cluster:{}", c.seed_urls().join(",")),
        }
    }

    /// Resets `INFO commandstats` on every node.
    pub fn reset_stats(&self) {
        match self {
            Deploy::Server(s) => s.reset_stats(),
            Deploy::Cluster(c) => c.reset_stats(),
        }
    }

    /// `INFO commandstats` of every node.
    pub fn counts_by_node(&self) -> CountsByNode {
        match self {
            Deploy::Server(s) => BTreeMap::from([(s.port(), s.command_counts())]),
            Deploy::Cluster(c) => c.command_counts_by_node(),
        }
    }

    /// redis-server CPU time so far, summed over the nodes (`used_cpu_sys + used_cpu_user`
    /// from `INFO cpu`), in ns.
    pub fn redis_cpu_ns(&self) -> Option<u64> {
        match self {
            Deploy::Server(s) => cpu_ns(&mut s.conn()),
            Deploy::Cluster(c) => c
                .ports()
                .into_iter()
                .map(|port| cpu_ns(&mut c.conn(port)))
                .sum(),
        }
    }
}

/// Adds up per-node counts.
pub fn sum_nodes(by_node: &CountsByNode) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for counts in by_node.values() {
        for (name, calls) in counts {
            *total.entry(name.clone()).or_default() += calls;
        }
    }
    total
}

fn cpu_ns(conn: &mut redis::Connection) -> Option<u64> {
    let info: String = redis::cmd("INFO").arg("cpu").query(conn).ok()?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(((field("used_cpu_sys")? + field("used_cpu_user")?) * 1e9) as u64)
}
