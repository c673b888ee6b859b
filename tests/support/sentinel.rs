//! A throwaway Sentinel deployment: one master, replicas and sentinels on loopback ports.
//!
//! [`RedisSentinel::start`] starts the master, the replicas (`--replicaof`), waits until the
//! replicas are in sync, then starts the sentinels as `redis-server <dir>/sentinel.conf
//! --sentinel` with a config written into each one's own temporary directory (sentinels rewrite
//! their config). It waits until every sentinel sees the master, every replica and every other
//! sentinel.
//!
//! Sentinels declare a master down after 1 s without answers (`down-after-milliseconds`), so an
//! automatic failover takes a few seconds; quorum 2 of 3.
//!
//! All helpers are synchronous and bounded; from a multi-threaded Tokio test, wrap the slow
//! ones in `tokio::task::block_in_place`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cluster::info_field;
use crate::{connect_bounded, free_port, poll_until, temp_dir, Launch, RedisServer};

/// How a Sentinel deployment is laid out.
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// The monitored master's name.
    pub master_name: String,
    /// Replicas of the master.
    pub replicas: usize,
    /// Sentinel processes.
    pub sentinels: usize,
    /// Sentinels that must agree the master is down before a failover.
    pub quorum: usize,
    /// `down-after-milliseconds`.
    pub down_after: Duration,
    /// `failover-timeout`.
    pub failover_timeout: Duration,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        SentinelOptions {
            master_name: "lockattr".to_owned(),
            replicas: 2,
            sentinels: 3,
            quorum: 2,
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(5000),
        }
    }
}

/// A running Sentinel deployment; everything is killed on drop (sentinels first, so that
/// they do not fail the master over while it goes), logs printed if the test is panicking.
#[derive(Debug)]
pub struct RedisSentinel {
    // Field order is drop order.
    sentinels: Vec<RedisServer>,
    data: Vec<RedisServer>,
    paused: Vec<u16>,
    options: SentinelOptions,
    started_in: Duration,
}

impl RedisSentinel {
    /// 1 master, 2 replicas, 3 sentinels (quorum 2); ready within 30 s.
    ///
    /// # Panics
    /// When `redis-server` is missing (with install instructions) or the deployment does not
    /// become ready in time (with the logs).
    pub fn start() -> Self {
        Self::start_with(SentinelOptions::default())
    }

    /// A deployment laid out by `options`.
    pub fn start_with(options: SentinelOptions) -> Self {
        let t = Instant::now();
        let master = RedisServer::start();
        let master_port = master.port().to_string();
        let mut data = vec![master];
        for _ in 0..options.replicas {
            data.push(RedisServer::start_with(&[
                "--replicaof",
                "127.0.0.1",
                &master_port,
            ]));
        }
        let mut deployment = RedisSentinel {
            sentinels: Vec::new(),
            data,
            paused: Vec::new(),
            options,
            started_in: Duration::ZERO,
        };
        // Sentinels learn the replicas from the master's INFO, which they read at once and then
        // only every 10 s: start them when the replicas are attached.
        deployment.wait_replicas_in_sync();
        for _ in 0..deployment.options.sentinels {
            let sentinel = deployment.start_sentinel();
            deployment.sentinels.push(sentinel);
        }
        deployment.wait_for("sentinels ready", Duration::from_secs(30), |d| {
            d.check_sentinels_see_everything()
        });
        deployment.started_in = t.elapsed();
        deployment
    }

    fn start_sentinel(&self) -> RedisServer {
        let master = self.data[0].port();
        let o = &self.options;
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = temp_dir("sentinel");
            let config = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 dir {dir}\n\
                 logfile {log}\n\
                 sentinel monitor {name} 127.0.0.1 {master} {quorum}\n\
                 sentinel down-after-milliseconds {name} {down}\n\
                 sentinel failover-timeout {name} {failover}\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.display(),
                log = dir.join(crate::LOG_FILE).display(),
                name = o.master_name,
                quorum = o.quorum,
                down = o.down_after.as_millis(),
                failover = o.failover_timeout.as_millis(),
            );
            std::fs::write(&config, text).expect("write sentinel config");
            match RedisServer::start_on(port, dir.clone(), Launch::Sentinel { config }) {
                Ok(s) => return s,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    last_err = e;
                }
            }
        }
        panic!("could not start a sentinel: {last_err}");
    }

    /// How long [`start`](Self::start) took until everything was ready.
    pub fn startup_time(&self) -> Duration {
        self.started_in
    }

    /// The monitored master's name (`lockattr` by default).
    pub fn master_name(&self) -> &str {
        &self.options.master_name
    }

    /// `redis://127.0.0.1:<port>` of every running sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .filter(|s| s.is_running())
            .map(RedisServer::url)
            .collect()
    }

    /// The sentinel processes.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The data servers (the first one started as the master), killed ones included.
    pub fn data_nodes(&self) -> &[RedisServer] {
        &self.data
    }

    /// The data server on `port`, to pause, kill or restart it by hand.
    ///
    /// # Panics
    /// If no data server has that port.
    pub fn data_node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.data
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// The master's address as the first sentinel that answers reports it
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    ///
    /// # Panics
    /// If no sentinel answers.
    pub fn master_addr(&self) -> SocketAddr {
        self.sentinels
            .iter()
            .filter(|s| s.is_running())
            .find_map(|s| self.reported_master(s).ok())
            .expect("no sentinel reports the master")
    }

    fn reported_master(&self, sentinel: &RedisServer) -> Result<SocketAddr, String> {
        let mut conn =
            connect_bounded(sentinel.addr(), Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let (host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.options.master_name)
            .query(&mut conn)
            .map_err(|e| e.to_string())?;
        format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("{host}:{port}: {e}"))
    }

    /// The data server that the sentinels report as master.
    pub fn master(&self) -> &RedisServer {
        let addr = self.master_addr();
        self.data
            .iter()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("the reported master {addr} is not one of ours"))
    }

    /// The running data servers other than the reported master.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        let master = self.master_addr();
        self.data
            .iter()
            .filter(|n| n.is_running() && n.addr() != master)
            .collect()
    }

    /// `redis://127.0.0.1:<port>` of the reported master.
    pub fn master_url(&self) -> String {
        format!("redis://{}", self.master_addr())
    }

    /// Forces a failover (`SENTINEL FAILOVER <name>`) and waits (at most 30 s) until every
    /// sentinel reports a different master, it answers as a master, and the other replicas
    /// replicate from it. Returns the new master's address.
    ///
    /// The old master is still running and, for a while, still a master that accepts writes:
    /// sentinels demote it when they next read its `INFO`, which they do every 10 s. That is
    /// what a real deployment does too; [`wait_all_follow`](Self::wait_all_follow) waits for it.
    pub fn failover(&mut self) -> SocketAddr {
        let old = self.master_addr();
        let sentinel = self.running_sentinel().addr();
        let name = self.options.master_name.clone();
        // A failover still being finished, or replicas not yet known as usable, make the
        // command fail for a moment: retry for a bounded time.
        poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
            let mut conn =
                connect_bounded(sentinel, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(&name)
                .query::<()>(&mut conn)
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("SENTINEL FAILOVER {name}: {e}"));
        self.wait_new_master(old)
    }

    /// Waits (at most 30 s) until every running, unpaused data node other than the master
    /// replicates from it, an old master demoted after [`failover`](Self::failover) included.
    pub fn wait_all_follow(&self) {
        let master = self.master_addr();
        self.wait_for(
            "every node following the master",
            Duration::from_secs(30),
            |d| d.check_replicas_follow(master, None),
        );
    }

    /// Kills the master (SIGKILL) and waits (at most 30 s) until the sentinels have promoted a
    /// replica and the other running replicas replicate from it. Returns its address.
    pub fn kill_master(&mut self) -> SocketAddr {
        let old = self.master_addr();
        self.data
            .iter_mut()
            .find(|n| n.addr() == old)
            .expect("the master is one of ours")
            .kill();
        self.wait_new_master(old)
    }

    fn wait_new_master(&self, old: SocketAddr) -> SocketAddr {
        self.wait_for("a new master", Duration::from_secs(30), |d| {
            let mut reported = None;
            for s in d.sentinels.iter().filter(|s| s.is_running()) {
                let addr = d.reported_master(s)?;
                if addr == old {
                    return Err(format!("sentinel {} still reports {old}", s.port()));
                }
                if reported.is_some_and(|r| r != addr) {
                    return Err(format!("sentinels disagree: {reported:?} vs {addr}"));
                }
                reported = Some(addr);
            }
            let new = reported.ok_or("no sentinel running")?;
            let info = replication_info(new)?;
            if info_field(&info, "role") != Some("master") {
                return Err(format!("{new} does not answer as master yet"));
            }
            d.check_replicas_follow(new, Some(old))?;
            Ok(new)
        })
    }

    /// Every running, unpaused data node other than `master` (and `except`) replicates from
    /// it, link up.
    fn check_replicas_follow(
        &self,
        master: SocketAddr,
        except: Option<SocketAddr>,
    ) -> Result<(), String> {
        let others = self
            .data
            .iter()
            .filter(|n| self.live(n) && n.addr() != master && Some(n.addr()) != except);
        for n in others {
            let info = replication_info(n.addr())?;
            let following = info_field(&info, "role") == Some("slave")
                && info_field(&info, "master_port") == Some(&master.port().to_string())
                && info_field(&info, "master_link_status") == Some("up");
            if !following {
                return Err(format!("{} does not replicate from {master} yet", n.port()));
            }
        }
        Ok(())
    }

    fn live(&self, node: &RedisServer) -> bool {
        node.is_running() && !self.paused.contains(&node.port())
    }

    /// Freezes every replica (SIGSTOP): the master's writes then reach none of them.
    pub fn pause_replicas(&mut self) {
        let master = self.master_addr();
        for n in self
            .data
            .iter()
            .filter(|n| n.is_running() && n.addr() != master)
        {
            if !self.paused.contains(&n.port()) {
                n.pause();
                self.paused.push(n.port());
            }
        }
    }

    /// Resumes the replicas paused by [`pause_replicas`](Self::pause_replicas).
    pub fn resume_replicas(&mut self) {
        for port in std::mem::take(&mut self.paused) {
            if let Some(n) = self
                .data
                .iter()
                .find(|n| n.port() == port && n.is_running())
            {
                n.resume();
            }
        }
    }

    /// Waits (at most 10 s) until every running, unpaused replica has received everything the
    /// master had written when this was called (replication offsets) and its link is up. An old
    /// master that the sentinels have not demoted yet is not a replica and is not waited for.
    pub fn wait_replicas_in_sync(&self) {
        let master = if self.sentinels.is_empty() {
            self.data[0].addr() // still starting: the first node is the master
        } else {
            self.master_addr()
        };
        let target: u64 = replication_info(master)
            .ok()
            .and_then(|i| info_field(&i, "master_repl_offset").and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        let want_port = master.port().to_string();
        self.wait_for("replicas in sync", Duration::from_secs(10), |d| {
            for n in d.data.iter().filter(|n| d.live(n) && n.addr() != master) {
                let info = replication_info(n.addr())?;
                if info_field(&info, "role") == Some("master") {
                    continue;
                }
                let offset: u64 = info_field(&info, "slave_repl_offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let synced = info_field(&info, "master_port") == Some(want_port.as_str())
                    && info_field(&info, "master_link_status") == Some("up")
                    && offset >= target;
                if !synced {
                    return Err(format!(
                        "replica {} of {:?}, link {:?}, offset {offset} (want {target})",
                        n.port(),
                        info_field(&info, "master_port"),
                        info_field(&info, "master_link_status")
                    ));
                }
            }
            Ok(())
        });
    }

    fn running_sentinel(&self) -> &RedisServer {
        self.sentinels
            .iter()
            .find(|s| s.is_running())
            .expect("no sentinel running")
    }

    /// `SENTINEL MASTER <name>` as field -> value, from one sentinel.
    pub fn sentinel_master_state(
        &self,
        sentinel: &RedisServer,
    ) -> Result<HashMap<String, String>, String> {
        let mut conn =
            connect_bounded(sentinel.addr(), Duration::from_secs(2)).map_err(|e| e.to_string())?;
        redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.options.master_name)
            .query(&mut conn)
            .map_err(|e| e.to_string())
    }

    fn check_sentinels_see_everything(&self) -> Result<(), String> {
        let want_replicas = self.options.replicas.to_string();
        let want_others = (self.options.sentinels - 1).to_string();
        for s in &self.sentinels {
            let state = self.sentinel_master_state(s)?;
            let field = |k: &str| state.get(k).map_or("?", String::as_str);
            if field("flags") != "master"
                || field("num-slaves") != want_replicas
                || field("num-other-sentinels") != want_others
            {
                return Err(format!(
                    "sentinel {}: flags {}, {} replicas, {} other sentinels",
                    s.port(),
                    field("flags"),
                    field("num-slaves"),
                    field("num-other-sentinels")
                ));
            }
        }
        Ok(())
    }

    fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut(&Self) -> Result<T, String>,
    ) -> T {
        match poll_until(limit, Duration::from_millis(50), || f(self)) {
            Ok(v) => v,
            Err(e) => {
                for n in self.data.iter().chain(&self.sentinels) {
                    eprintln!("--- {} log ---\n{}\n--- end of log ---", n.port(), n.log());
                }
                panic!("Sentinel: {what} not reached within {limit:?}: {e}");
            }
        }
    }
}

fn replication_info(addr: SocketAddr) -> Result<String, String> {
    let mut conn = connect_bounded(addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    redis::cmd("INFO")
        .arg("replication")
        .query(&mut conn)
        .map_err(|e| format!("{addr}: {e}"))
}
