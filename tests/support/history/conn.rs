//! The history worker's own connection to Redis (counters, write logs, the broken lock): one
//! server, a cluster or the master of a Sentinel deployment behind one type, so the critical
//! section reads the same on all three.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// Connect and response timeouts: long enough for a loaded machine and for a node paused by
/// the chaos (well under a second), short enough that nothing hangs.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one redis-server, to a Redis Cluster, or to whichever server the sentinels
/// currently name master.
///
/// On a cluster every command goes to the master of its key's slot; a `MULTI`/`EXEC`
/// pipeline goes to the slot of its keys, which must share one hash tag.
#[derive(Clone)]
pub enum Direct {
    /// One server.
    Server(MultiplexedConnection),
    /// A cluster (redirections and topology changes are followed by redis-rs).
    Cluster(ClusterConnection),
    /// The master of a Sentinel deployment, followed across failovers ([`SentinelMaster`]).
    Sentinel(Arc<SentinelMaster>),
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direct::Server(_) => "Direct::Server",
            Direct::Cluster(_) => "Direct::Cluster",
            Direct::Sentinel(_) => "Direct::Sentinel",
        })
    }
}

impl Direct {
    /// Connects to the server at `url`.
    ///
    /// # Errors
    /// When it cannot be reached within the timeout.
    pub async fn server(url: &str) -> Result<Direct, String> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let conn = redis::Client::open(url)
            .map_err(|e| e.to_string())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("connect to {url}: {e}"))?;
        Ok(Direct::Server(conn))
    }

    /// Connects to the cluster that `seeds` belong to.
    ///
    /// # Errors
    /// When no seed can be reached within the timeout.
    pub async fn cluster(seeds: &[String]) -> Result<Direct, String> {
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        let conn = redis::cluster::ClusterClient::new(seeds.to_vec())
            .map_err(|e| e.to_string())?
            .get_async_connection_with_config(config)
            .await
            .map_err(|e| format!("connect to the cluster at {seeds:?}: {e}"))?;
        Ok(Direct::Cluster(conn))
    }

    /// Connects to the master that the sentinels at `sentinels` name `master_name`, and keeps
    /// following it (see [`SentinelMaster`]). Must be called inside a Tokio runtime (it spawns
    /// the watcher).
    ///
    /// # Errors
    /// When no sentinel names a master that answers as one within the timeout.
    pub async fn sentinel(master_name: &str, sentinels: &[String]) -> Result<Direct, String> {
        let master = SentinelMaster::connect(master_name, sentinels).await?;
        Ok(Direct::Sentinel(master))
    }

    /// What a [`Direct::Sentinel`] did to follow the master; `None` for the others.
    pub fn following(&self) -> Option<FollowStats> {
        match self {
            Direct::Sentinel(m) => Some(m.stats()),
            _ => None,
        }
    }
}

impl ConnectionLike for Direct {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Direct::Server(c) => c.req_packed_command(cmd),
            Direct::Cluster(c) => c.req_packed_command(cmd),
            Direct::Sentinel(m) => {
                let m = m.clone();
                Box::pin(async move {
                    m.request(is_read(cmd), |mut c| async move {
                        c.req_packed_command(cmd).await
                    })
                    .await
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Direct::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Direct::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Direct::Sentinel(m) => {
                let m = m.clone();
                let read = pipeline.cmd_iter().all(is_read);
                Box::pin(async move {
                    m.request(read, |mut c| async move {
                        c.req_packed_commands(pipeline, offset, count).await
                    })
                    .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Direct::Server(c) => c.get_db(),
            Direct::Cluster(c) => c.get_db(),
            Direct::Sentinel(_) => 0,
        }
    }
}

// ---- following a Sentinel master ---------------------------------------------------------

/// Attempts per command on a [`SentinelMaster`] (the first included), and the pause between
/// them: about 6 s in all, longer than an automatic failover of the test deployment (1 s to
/// declare the master down, then the election and the promotion).
const ATTEMPTS: u32 = 30;
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Timeout of one question to a sentinel, and of connecting to a master.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the watcher asks a sentinel whether the master changed, and for how long at most
/// it keeps asking (far longer than any history).
const WATCH_EVERY: Duration = Duration::from_millis(100);
const WATCH_AT_MOST: Duration = Duration::from_secs(30 * 60);

/// A connection to the master of a Sentinel deployment that follows failovers.
///
/// The master is the address that the sentinels report (`SENTINEL GET-MASTER-ADDR-BY-NAME`)
/// with the highest config epoch (from `SENTINEL MASTER`): a sentinel that has not heard of a
/// failover yet names the old master with an older epoch. It must answer `ROLE` as a master.
/// It is resolved again
///
/// - when a command fails because the server is no longer a master or not there: `READONLY`,
///   `EXECABORT` (a transaction refused, e.g. because of a `READONLY`), `MASTERDOWN`,
///   `LOADING`, or an I/O error;
/// - when a watcher, asking one sentinel every 100 ms, sees a newer epoch naming another
///   address: after a `SENTINEL FAILOVER` the old master keeps accepting writes until the
///   sentinels reconfigure it, and writes sent there would be lost without an error.
///
/// Retries are bounded (`ATTEMPTS`, about 6 s). A command that Redis certainly did not
/// run (refused as above, or not sent because no master was reachable) is sent again to the
/// new master. After an I/O error on a sent command only reads (`GET`, `LRANGE`, ..) are sent
/// again: a write may have landed, so its error is returned (the section records the write as
/// in flight, and the write log says whether it landed).
pub struct SentinelMaster {
    name: String,
    sentinels: Vec<redis::Client>,
    current: tokio::sync::Mutex<Current>,
    /// Bumped on every (re)connection; stale failures do not drop a newer connection.
    generation: AtomicU64,
    resolutions: AtomicU64,
    switches: AtomicU64,
    watcher_switches: AtomicU64,
    retries: AtomicU64,
}

impl std::fmt::Debug for SentinelMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelMaster")
            .field("name", &self.name)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Current {
    master: Option<Master>,
    /// The address of the last master connected to.
    last_addr: Option<String>,
}

#[derive(Clone)]
struct Master {
    addr: String,
    epoch: u64,
    conn: MultiplexedConnection,
    generation: u64,
}

/// What a [`SentinelMaster`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Connections made to a master (the first one included).
    pub resolutions: u64,
    /// Of those, how many went to a different address than the previous one.
    pub switches: u64,
    /// Times the watcher saw a newer master before any command failed.
    pub watcher_switches: u64,
    /// Commands sent again after a failure.
    pub retries: u64,
}

impl std::fmt::Display for FollowStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections to a master ({} to a new address, {} noticed by the watcher), {} \
             retried commands",
            self.resolutions, self.switches, self.watcher_switches, self.retries
        )
    }
}

/// What to do after a failed command.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Redis did not run it (or it was not sent): reconnect, send it again.
    NotRun,
    /// It may have run: reconnect; send it again only if it is a read.
    Unknown,
    /// Anything else: return the error.
    Final,
}

fn classify(e: &RedisError) -> Failure {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
            | ServerErrorKind::ExecAbort
            | ServerErrorKind::MasterDown
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain,
        ) => Failure::NotRun,
        ErrorKind::Io => Failure::Unknown,
        _ => Failure::Final,
    }
}

/// Commands that change nothing, safe to send twice.
fn is_read(cmd: &Cmd) -> bool {
    const READS: [&[u8]; 7] = [
        b"GET", b"LRANGE", b"LLEN", b"EXISTS", b"PING", b"ROLE", b"INFO",
    ];
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => READS.iter().any(|r| r.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

impl SentinelMaster {
    async fn connect(name: &str, sentinels: &[String]) -> Result<Arc<SentinelMaster>, String> {
        let clients = sentinels
            .iter()
            .map(|url| redis::Client::open(url.as_str()).map_err(|e| format!("{url}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if clients.is_empty() {
            return Err("no sentinel URL".to_owned());
        }
        let master = Arc::new(SentinelMaster {
            name: name.to_owned(),
            sentinels: clients,
            current: tokio::sync::Mutex::new(Current::default()),
            generation: AtomicU64::new(0),
            resolutions: AtomicU64::new(0),
            switches: AtomicU64::new(0),
            watcher_switches: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        master
            .master()
            .await
            .map_err(|e| format!("resolve the master {name:?} through {sentinels:?}: {e}"))?;
        tokio::spawn(watch(Arc::downgrade(&master)));
        Ok(master)
    }

    fn stats(&self) -> FollowStats {
        FollowStats {
            resolutions: self.resolutions.load(Ordering::Relaxed),
            switches: self.switches.load(Ordering::Relaxed),
            watcher_switches: self.watcher_switches.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// Runs `op` on the current master, following it as the type's docs say.
    async fn request<T, F, Fut>(&self, read: bool, op: F) -> RedisResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let mut attempt = 1;
        loop {
            let failure = match self.master().await {
                // Nothing was sent.
                Err(e) => (e, Failure::NotRun, None),
                Ok(m) => match op(m.conn.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        let kind = classify(&e);
                        (e, kind, Some(m.generation))
                    }
                },
            };
            let (e, kind, generation) = failure;
            if kind == Failure::Final {
                return Err(e);
            }
            if let Some(g) = generation {
                self.forget(g).await;
            }
            let again = kind == Failure::NotRun || read;
            if !again || attempt >= ATTEMPTS {
                return Err(e);
            }
            attempt += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The current master, resolved if there is none.
    async fn master(&self) -> RedisResult<Master> {
        let mut current = self.current.lock().await;
        if let Some(m) = current.master.as_ref() {
            return Ok(m.clone());
        }
        let (addr, epoch) = self.ask_sentinels().await?;
        let client = redis::Client::open(format!("redis://{addr}"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(SENTINEL_TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        let role: String = role
            .into_iter()
            .next()
            .map(redis::from_redis_value)
            .transpose()?
            .unwrap_or_default();
        if role != "master" {
            // A promotion under way: `MASTERDOWN`, so that the caller waits and asks again.
            return Err(RedisError::from((
                ErrorKind::Server(ServerErrorKind::MasterDown),
                "the sentinels' master does not answer as one yet",
                format!("{addr} says ROLE {role}"),
            )));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.resolutions.fetch_add(1, Ordering::Relaxed);
        if current.last_addr.as_ref().is_some_and(|a| *a != addr) {
            self.switches.fetch_add(1, Ordering::Relaxed);
        }
        current.last_addr = Some(addr.clone());
        let m = Master {
            addr,
            epoch,
            conn,
            generation,
        };
        current.master = Some(m.clone());
        Ok(m)
    }

    /// Drops the connection of `generation` (not a newer one).
    async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current
            .master
            .as_ref()
            .is_some_and(|m| m.generation == generation)
        {
            current.master = None;
        }
    }

    /// The master as the sentinels report it: the answer with the highest config epoch.
    async fn ask_sentinels(&self) -> RedisResult<(String, u64)> {
        let mut best: Option<(String, u64)> = None;
        let mut last_error = None;
        for sentinel in &self.sentinels {
            match ask_sentinel(sentinel, &self.name).await {
                Ok((addr, epoch)) => {
                    if best.as_ref().is_none_or(|(_, e)| epoch > *e) {
                        best = Some((addr, epoch));
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (best, last_error) {
            (Some(best), _) => Ok(best),
            (None, Some(e)) => Err(e),
            (None, None) => unreachable!("at least one sentinel"),
        }
    }

    /// Notes that the sentinels moved the master (a newer epoch, another address): the next
    /// command resolves it again. An older or equal epoch changes nothing.
    async fn saw(&self, addr: &str, epoch: u64) {
        let mut current = self.current.lock().await;
        if let Some(m) = current.master.as_mut() {
            if epoch > m.epoch {
                if m.addr == addr {
                    m.epoch = epoch;
                } else {
                    current.master = None;
                    self.watcher_switches.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The master that one sentinel names, with the sentinel's config epoch for it.
///
/// The address comes from `SENTINEL GET-MASTER-ADDR-BY-NAME`, not from `SENTINEL MASTER`: while
/// the sentinel that leads a failover reconfigures the other replicas, it already reports the
/// new epoch but still lists the old master in `SENTINEL MASTER` (and in `SENTINEL MASTERS`),
/// whereas `GET-MASTER-ADDR-BY-NAME` names the promoted replica. The epoch is read first: if the
/// sentinel switches between the two questions, the pair is the new master with the old epoch,
/// which [`SentinelMaster::saw`] ignores until the next round.
async fn ask_sentinel(sentinel: &redis::Client, name: &str) -> RedisResult<(String, u64)> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut conn = sentinel
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let state: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(name)
        .query_async(&mut conn)
        .await?;
    let epoch = state
        .get("config-epoch")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| {
            RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "SENTINEL MASTER without a config-epoch",
            ))
        })?;
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query_async(&mut conn)
        .await?;
    Ok((format!("{host}:{port}"), epoch))
}

/// Asks one sentinel after another whether the master moved, until the connection is dropped
/// (or for [`WATCH_AT_MOST`]). One sentinel per round, so that a sentinel that has not heard
/// of a failover yet only delays the news; [`SentinelMaster::saw`] ignores older epochs.
async fn watch(master: Weak<SentinelMaster>) {
    let rounds = WATCH_AT_MOST.as_millis() / WATCH_EVERY.as_millis();
    for round in 0..rounds {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(m) = master.upgrade() else { return };
        let sentinel = &m.sentinels[round as usize % m.sentinels.len()];
        if let Ok((addr, epoch)) = ask_sentinel(sentinel, &m.name).await {
            m.saw(&addr, epoch).await;
        }
    }
}
