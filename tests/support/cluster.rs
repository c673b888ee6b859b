//! A throwaway Redis Cluster: masters with replicas on loopback ports.
//!
//! [`RedisCluster::start`] starts every node with `--cluster-enabled yes` (each node's cluster
//! bus listens on its port + 10000, so ports are chosen where both are free), joins them with
//! `redis-cli --cluster create`, and waits until every node reports `cluster_state:ok`, all
//! 16384 slots are served, every master has its replicas and every replica's link is up.
//!
//! Nodes are named by their port. Node timeouts are short (2 s by default), so a killed master
//! is replaced in a few seconds; they are not shorter because on a busy two-core machine a
//! node starved for longer than the timeout would be failed over in the middle of a test.
//! Replicas always attempt a failover (`cluster-replica-validity-factor 0`) and never migrate
//! between masters, which keeps the topology predictable.
//!
//! All helpers are synchronous and bounded; from a multi-threaded Tokio test, wrap the slow
//! ones ([`failover`](RedisCluster::failover), [`kill`](RedisCluster::kill)) in
//! `tokio::task::block_in_place`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::rng::Rng;
use crate::{
    connect_bounded, poll_until, redis_cli_binary, run_cli, temp_dir, Launch, RedisServer,
};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u32 = 16384;

/// How a cluster is laid out.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Masters (at least 3, as `redis-cli --cluster create` requires).
    pub masters: usize,
    /// Replicas of each master.
    pub replicas_per_master: usize,
    /// `--cluster-node-timeout`: how long a node may be unreachable before it is failed.
    pub node_timeout: Duration,
    /// More `redis-server` arguments for every node.
    pub extra_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_millis(2000),
            extra_args: Vec::new(),
        }
    }
}

/// A node as one node's `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id (40 hex characters).
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// `true` for the node that answered.
    pub myself: bool,
    /// Whether it is a master.
    pub master: bool,
    /// Flagged `fail` or `fail?` by the node that answered.
    pub failing: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// Slot ranges it serves (inclusive).
    pub slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES` output.
///
/// # Errors
/// A line that does not have the documented fields.
pub fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeInfo>, String> {
    let mut nodes = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("short CLUSTER NODES line: {line:?}"));
        }
        // `ip:port@cport[,hostname]`
        let port = fields[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("bad address in {line:?}"))?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let mut slots = Vec::new();
        for s in &fields[8..] {
            if s.starts_with('[') {
                continue; // a slot being imported or migrated
            }
            let range = match s.split_once('-') {
                Some((a, b)) => (a.parse(), b.parse()),
                None => (s.parse(), s.parse()),
            };
            match range {
                (Ok(a), Ok(b)) => slots.push((a, b)),
                _ => return Err(format!("bad slot range {s:?} in {line:?}")),
            }
        }
        nodes.push(NodeInfo {
            id: fields[0].to_owned(),
            port,
            myself: flags.contains(&"myself"),
            master: flags.contains(&"master"),
            failing: flags.contains(&"fail") || flags.contains(&"fail?"),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
        });
    }
    Ok(nodes)
}

/// A running Redis Cluster; every node is killed on drop (and its log printed if the test is
/// panicking).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    options: ClusterOptions,
    started_in: Duration,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas_per_master` replicas each and waits until the
    /// cluster is healthy (at most 30 s).
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing (with install instructions), or the
    /// cluster does not form in time (with every node's log).
    pub fn start(masters: usize, replicas_per_master: usize) -> Self {
        Self::start_with(ClusterOptions {
            masters,
            replicas_per_master,
            ..ClusterOptions::default()
        })
    }

    /// Starts a cluster laid out by `options`.
    pub fn start_with(options: ClusterOptions) -> Self {
        assert!(options.masters >= 3, "redis-cli needs at least 3 masters");
        let t = Instant::now();
        let total = options.masters * (1 + options.replicas_per_master);
        let mut rng = Rng::new(Rng::seed_from_time());
        let mut nodes: Vec<RedisServer> = Vec::with_capacity(total);
        let mut last_err = String::new();
        // A chosen port may be taken before the node binds it: bounded retries per node.
        for _attempt in 0..total * 5 {
            if nodes.len() == total {
                break;
            }
            let port = pick_port_pair(&mut rng, &nodes);
            let dir = temp_dir("cluster-node");
            let mut args = vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                dir.join("nodes.conf").display().to_string(),
                "--cluster-node-timeout".to_owned(),
                options.node_timeout.as_millis().to_string(),
                "--cluster-replica-validity-factor".to_owned(),
                "0".to_owned(),
                "--cluster-allow-replica-migration".to_owned(),
                "no".to_owned(),
            ];
            args.extend(options.extra_args.iter().cloned());
            let launch = Launch::Data {
                tls: None,
                extra_args: args,
            };
            match RedisServer::start_on(port, dir.clone(), launch) {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    last_err = e;
                }
            }
        }
        assert_eq!(
            nodes.len(),
            total,
            "could not start the cluster's nodes: {last_err}"
        );
        let mut cluster = RedisCluster {
            nodes,
            options,
            started_in: Duration::ZERO,
        };
        cluster.create();
        cluster.wait_healthy(true, Duration::from_secs(30));
        cluster.started_in = t.elapsed();
        cluster
    }

    fn create(&self) {
        let mut cmd = Command::new(redis_cli_binary());
        cmd.args(["-e", "--cluster", "create"]);
        for node in &self.nodes {
            cmd.arg(node.addr().to_string());
        }
        cmd.arg("--cluster-replicas")
            .arg(self.options.replicas_per_master.to_string())
            .arg("--cluster-yes");
        if let Err(e) = run_cli(&mut cmd) {
            panic!("redis-cli --cluster create failed: {e}");
        }
    }

    /// How long [`start`](Self::start) took until the cluster was healthy.
    pub fn startup_time(&self) -> Duration {
        self.started_in
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Every node's port, in start order (killed nodes included).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis://127.0.0.1:<port>` of every running node: seeds for a cluster client.
    pub fn seed_urls(&self) -> Vec<String> {
        self.running().map(RedisServer::url).collect()
    }

    /// `redis://127.0.0.1:<port>` of one node.
    pub fn url(&self, port: u16) -> String {
        self.node(port).url()
    }

    /// The node on `port`.
    ///
    /// # Panics
    /// If no node has that port.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// The node on `port`, to pause, resume, kill or restart it by hand.
    pub fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// A synchronous connection to one node (plain, not cluster-aware: it gets `MOVED` for
    /// keys the node does not serve), with 5 s bounds on connect, reads and writes.
    pub fn conn(&self, port: u16) -> redis::Connection {
        connect_bounded(self.node(port).addr(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to cluster node {port}: {e}"))
    }

    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// The cluster as the first running node that answers describes it.
    pub fn topology(&self) -> Vec<NodeInfo> {
        self.running()
            .find_map(|n| node_view(n.addr()).ok())
            .expect("no cluster node answers CLUSTER NODES")
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let port = self.running().next().expect("a running node").port();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.conn(port))
            .expect("CLUSTER KEYSLOT")
    }

    /// Ports of the masters that serve slots.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .topology()
            .into_iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// Ports of every replica of `master` (failing ones included).
    pub fn replicas_of(&self, master: u16) -> Vec<u16> {
        let topology = self.topology();
        let id = &topology
            .iter()
            .find(|n| n.port == master)
            .unwrap_or_else(|| panic!("no node {master} in the topology"))
            .id;
        let mut replicas: Vec<u16> = topology
            .iter()
            .filter(|n| n.master_id.as_ref() == Some(id))
            .map(|n| n.port)
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// The port of the master serving `slot`.
    pub fn master_for_slot(&self, slot: u16) -> u16 {
        self.topology()
            .into_iter()
            .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
            .port
    }

    /// The port of the master serving `key`.
    pub fn master_for_key(&self, key: &str) -> u16 {
        self.master_for_slot(self.keyslot(key))
    }

    /// The first replica of the master serving `key`.
    ///
    /// # Panics
    /// If that master has no replica.
    pub fn replica_for_key(&self, key: &str) -> u16 {
        let master = self.master_for_key(key);
        *self
            .replicas_of(master)
            .first()
            .unwrap_or_else(|| panic!("master {master} has no replica"))
    }

    /// Whether the node on `port` says it is a master (`INFO replication`).
    pub fn is_master(&self, port: u16) -> bool {
        role(self.node(port).addr()).is_ok_and(|r| r == "master")
    }

    /// Promotes `replica` with a coordinated `CLUSTER FAILOVER` and waits (at most 30 s) until
    /// it is a master, its old master is its replica, and the cluster is healthy.
    ///
    /// # Panics
    /// If `replica` is not a replica, or the failover does not complete in time.
    pub fn failover(&self, replica: u16) {
        assert!(!self.is_master(replica), "node {replica} is not a replica");
        let old_master = self
            .topology()
            .iter()
            .find(|n| n.port == replica)
            .and_then(|n| n.master_id.clone());
        let () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut self.conn(replica))
            .unwrap_or_else(|e| panic!("CLUSTER FAILOVER on {replica}: {e}"));
        self.wait_for("the failover", Duration::from_secs(30), || {
            if !self.is_master(replica) {
                return Err(format!("{replica} is not a master yet"));
            }
            let topology = self.topology();
            let me = topology.iter().find(|n| n.port == replica).map(|n| &n.id);
            let demoted = topology
                .iter()
                .find(|n| Some(&n.id) == old_master.as_ref())
                .is_some_and(|n| n.master_id.as_ref() == me);
            if !demoted {
                return Err("the old master is not the new master's replica yet".to_owned());
            }
            self.check_healthy(false)
        });
    }

    /// Kills the node on `port` with SIGKILL and waits (at most 30 s) until the cluster is
    /// healthy without it: every slot it served is served by a running master (its replica,
    /// promoted), as every running node agrees. Returns the promoted replica's port if the
    /// killed node was a master.
    pub fn kill(&mut self, port: u16) -> Option<u16> {
        let topology = self.topology();
        let killed = topology
            .iter()
            .find(|n| n.port == port)
            .cloned()
            .unwrap_or_else(|| panic!("no node {port} in the topology"));
        self.node_mut(port).kill();
        self.wait_for("recovery after the kill", Duration::from_secs(30), || {
            self.check_healthy(false)
        });
        let (first, _) = *killed.slots.first()?;
        Some(self.master_for_slot(first))
    }

    /// Waits (at most `limit`) until the cluster is healthy: every running node says
    /// `cluster_state:ok` with all slots served, all agree which running master serves each
    /// slot, and every running replica's link to its master is up.
    pub fn wait_ok(&self, limit: Duration) {
        self.wait_for("a healthy cluster", limit, || self.check_healthy(false));
    }

    fn wait_healthy(&self, complete: bool, limit: Duration) {
        self.wait_for("a healthy cluster", limit, || self.check_healthy(complete));
    }

    fn wait_for(&self, what: &str, limit: Duration, f: impl FnMut() -> Result<(), String>) {
        if let Err(e) = poll_until(limit, Duration::from_millis(50), f) {
            self.dump_logs();
            panic!("Redis Cluster: {what} not reached within {limit:?}: {e}");
        }
    }

    /// `complete`: also every master has all its replicas (only true right after start).
    fn check_healthy(&self, complete: bool) -> Result<(), String> {
        let running: Vec<u16> = self.running().map(RedisServer::port).collect();
        let mut owners: Option<Vec<(u16, u16, u16)>> = None;
        for &port in &running {
            let addr = self.node(port).addr();
            let info = cluster_info(addr)?;
            for (field, want) in [
                ("cluster_state", "ok".to_owned()),
                ("cluster_slots_assigned", SLOTS.to_string()),
                ("cluster_slots_ok", SLOTS.to_string()),
            ] {
                let got = info_field(&info, field).unwrap_or("?");
                if got != want {
                    return Err(format!("node {port}: {field}:{got}, want {want}"));
                }
            }
            let view = node_view(addr)?;
            let mut owned = Vec::new();
            for n in view.iter().filter(|n| !n.slots.is_empty()) {
                if n.failing || !n.master || !running.contains(&n.port) {
                    return Err(format!(
                        "node {port} sees slots {:?} on {} (failing {}, master {})",
                        n.slots, n.port, n.failing, n.master
                    ));
                }
                owned.extend(n.slots.iter().map(|&(a, b)| (a, b, n.port)));
            }
            owned.sort_unstable();
            match &owners {
                None => owners = Some(owned),
                Some(first) if *first != owned => {
                    return Err(format!(
                        "nodes disagree on slot owners: {first:?} vs {owned:?}"
                    ))
                }
                Some(_) => {}
            }
            let me = view.iter().find(|n| n.myself).ok_or("no myself line")?;
            if !me.master {
                let repl = replication_info(addr)?;
                let link = info_field(&repl, "master_link_status").unwrap_or("?");
                if link != "up" {
                    return Err(format!("replica {port}: master_link_status:{link}"));
                }
            }
            if complete {
                let masters: Vec<&NodeInfo> = view.iter().filter(|n| n.master).collect();
                if masters.len() != self.options.masters {
                    return Err(format!("node {port} sees {} masters", masters.len()));
                }
                for m in masters {
                    let replicas = view
                        .iter()
                        .filter(|n| n.master_id.as_ref() == Some(&m.id))
                        .count();
                    if replicas != self.options.replicas_per_master {
                        return Err(format!(
                            "node {port} sees {replicas} replicas of {}",
                            m.port
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `INFO commandstats` of one node: calls per command (e.g. to show that `spublish` ran on
    /// the key's master and `publish` nowhere).
    pub fn command_counts(&self, port: u16) -> BTreeMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn(port))
            .expect("INFO commandstats");
        crate::parse_commandstats(&info)
    }

    /// [`command_counts`](Self::command_counts) of every running node, by port.
    pub fn command_counts_by_node(&self) -> BTreeMap<u16, BTreeMap<String, u64>> {
        self.running()
            .map(|n| (n.port(), self.command_counts(n.port())))
            .collect()
    }

    /// Resets `INFO commandstats` on every running node.
    pub fn reset_stats(&self) {
        for n in self.running() {
            let () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query(&mut self.conn(n.port()))
                .expect("CONFIG RESETSTAT");
        }
    }

    fn dump_logs(&self) {
        for n in &self.nodes {
            eprintln!(
                "--- cluster node {} log ---\n{}\n--- end of log ---",
                n.port(),
                n.log()
            );
        }
    }
}

/// A port `p` with `p` and its cluster bus port `p + 10000` free, not used by `taken`. Chosen
/// below the Linux ephemeral range (32768+), where outgoing connections do not grab ports.
fn pick_port_pair(rng: &mut Rng, taken: &[RedisServer]) -> u16 {
    for _ in 0..1000 {
        let port = u16::try_from(rng.range(12_000..22_000)).expect("in range");
        // Bus ports (22000+) cannot collide with client ports (below 22000).
        let clash = taken.iter().any(|n| n.port() == port);
        if !clash && free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair (p, p + 10000) found on 127.0.0.1");
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn query_text(addr: SocketAddr, cmd: &redis::Cmd) -> Result<String, String> {
    let mut conn = connect_bounded(addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    cmd.query(&mut conn).map_err(|e| format!("{addr}: {e}"))
}

fn node_view(addr: SocketAddr) -> Result<Vec<NodeInfo>, String> {
    parse_cluster_nodes(&query_text(addr, redis::cmd("CLUSTER").arg("NODES"))?)
}

fn cluster_info(addr: SocketAddr) -> Result<String, String> {
    query_text(addr, redis::cmd("CLUSTER").arg("INFO"))
}

fn replication_info(addr: SocketAddr) -> Result<String, String> {
    query_text(addr, redis::cmd("INFO").arg("replication"))
}

fn role(addr: SocketAddr) -> Result<String, String> {
    let info = replication_info(addr)?;
    info_field(&info, "role")
        .map(str::to_owned)
        .ok_or_else(|| "no role in INFO".to_owned())
}

/// The value of `field:value` in `INFO`/`CLUSTER INFO` text.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_parse() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002,host2 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383 [93->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 5461
";
        let nodes = parse_cluster_nodes(text).unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].port, 30004);
        assert!(!nodes[0].master && !nodes[0].myself);
        assert_eq!(
            nodes[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(nodes[1].port, 30002);
        assert_eq!(nodes[1].slots, vec![(5461, 10922)]);
        assert!(nodes[2].failing && nodes[2].master);
        assert_eq!(nodes[2].slots, vec![(10923, 16383)]);
        assert!(nodes[3].myself && nodes[3].master_id.is_none());
        assert_eq!(nodes[3].slots, vec![(0, 5460), (5461, 5461)]);
        assert!(parse_cluster_nodes("garbage line").is_err());
    }

    #[test]
    fn info_fields() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role"), Some("slave"));
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "master"), None);
    }
}
