//! A Redis master that Sentinel names, followed across failovers.
//!
//! redis-rs's `SentinelClient` resolves the master (and checks with `ROLE` that it is one) but
//! does not follow a failover by itself, so this module does: it keeps one connection to the
//! master it last resolved and drops it, to resolve again on the next call, when
//!
//! * the master refuses a write with `READONLY` (it was demoted): the command was not applied,
//!   so it is sent once more to the new master;
//! * the connection breaks or is refused (the master died): the error goes up (an acquire
//!   retries with a fresh token, see `wait`), and the next call resolves again;
//! * a sentinel announces a new master (see [`CHANNELS`]: from the moment the failover leader
//!   sends `REPLICAOF NO ONE` to the replica it selected, then `+promoted-slave`, then each
//!   sentinel's `+switch-master`): watcher tasks subscribed to every sentinel drop the
//!   connection at once, before the old master (which accepts writes for seconds after a
//!   failover, until the sentinels reconfigure it, and whose writes no longer reach the new
//!   one) can take another lock. From then on the announced master is used: the sentinels'
//!   own answers (`SENTINEL MASTERS`, which redis-rs asks) name the old master until each has
//!   taken the new configuration, the leader only once the other replicas follow, so until
//!   they name it the announced address is connected to directly (with the data nodes'
//!   settings) and used once it answers `ROLE` as a master. A failover given up
//!   (`-failover-abort-slave-timeout`) goes back to what the sentinels name.
//!
//! While no master can be reached (a failover in progress), a call keeps resolving, every
//! 100 ms, until its deadline, then fails with an error that says so. The pub/sub hub follows
//! the same master: it reconnects whenever the connection here is dropped (`SentinelConn::epoch`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::bounded;
use crate::sync::lock;
use crate::Error;

/// The master in use: a connection, and a client for the pub/sub hub's own connection. Cloned
/// for every command, so the client (its connection settings own strings) is shared.
#[derive(Clone)]
pub(crate) struct Current {
    generation: u64,
    pub(crate) conn: MultiplexedConnection,
    pub(crate) client: Arc<redis::Client>,
}

/// A Sentinel-managed master (see the module docs).
pub(crate) struct SentinelConn {
    name: String,
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Current>>,
    /// The master the last `+switch-master` announced, until a resolution finds it: sentinels
    /// learn of a failover one after another, and one that has not yet would name the old
    /// master, which may still accept writes.
    announced: Mutex<Option<(String, u16, Instant)>>,
    /// The connection settings of the last master used (TLS, credentials), for connecting to an
    /// announced master the sentinels do not name yet.
    template: Mutex<Option<redis::ConnectionInfo>>,
    /// Bumped by every announcement that drops the master in use: a resolution that began
    /// before one is not used (it may have found the old master).
    switches: AtomicU64,
    next_generation: Mutex<u64>,
    epoch: watch::Sender<u64>,
    op_timeout: Duration,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SentinelConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConn")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How long an announced master is preferred to what the sentinels name: they take the new
/// configuration within seconds of announcing it; this bounds the effect of a missed later
/// announcement.
const ANNOUNCED_FOR: Duration = Duration::from_secs(30);

/// How often a call looks for a master again while none is reachable.
const RESOLVE_RETRY: Duration = Duration::from_millis(100);

impl SentinelConn {
    /// Resolves the master through the sentinels (failing if none is known within the
    /// operation timeout) and starts watching for `+switch-master`.
    pub(crate) async fn connect(
        name: String,
        client: SentinelClient,
        op_timeout: Duration,
    ) -> Result<Arc<Self>, Error> {
        let conn = Arc::new(SentinelConn {
            name,
            sentinel: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            announced: Mutex::new(None),
            template: Mutex::new(None),
            switches: AtomicU64::new(0),
            next_generation: Mutex::new(1),
            epoch: watch::Sender::new(0),
            op_timeout,
            watcher: Mutex::new(None),
        });
        conn.current(Instant::now() + op_timeout).await?;
        let watcher = tokio::spawn(watch_switches(Arc::downgrade(&conn)));
        *lock(&conn.watcher) = Some(watcher);
        Ok(conn)
    }

    /// Bumped whenever the master in use is dropped: the pub/sub hub reconnects then.
    pub(crate) fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// The master in use, resolving one (repeatedly, until `until`) if there is none.
    pub(crate) async fn current(&self, until: Instant) -> Result<Current, Error> {
        if let Some(c) = lock(&self.current).clone() {
            return Ok(c);
        }
        // One resolution at a time; whoever waited behind it uses its result.
        let mut sentinel = match tokio::time::timeout_at(until, self.sentinel.lock()).await {
            Ok(s) => s,
            Err(_) => return Err(self.no_master("the sentinels were busy resolving it")),
        };
        if let Some(c) = lock(&self.current).clone() {
            return Ok(c);
        }
        let mut last = String::from("no answer");
        loop {
            let switches = self.switches.load(Ordering::SeqCst);
            let announced = self.announced();
            let attempt = async {
                let named = sentinel.async_get_client().await;
                let (client, named) = match (named, &announced) {
                    (Ok(client), None) => (client, true),
                    (Ok(client), Some((host, port))) if is_at(&client, host, *port) => {
                        (client, true)
                    }
                    // The sentinels still name the old master (their `SENTINEL MASTERS` does
                    // until each takes the new configuration) or cannot be asked: go to the
                    // announced one, with the data nodes' connection settings.
                    (named, Some((host, port))) => {
                        let template = lock(&self.template).clone();
                        let Some(template) = template else {
                            return Err(named.err().unwrap_or_else(|| {
                                redis::RedisError::from((
                                    redis::ErrorKind::MasterNameNotFoundBySentinel,
                                    "the sentinels still name the old master",
                                ))
                            }));
                        };
                        let direct = redis::Client::open(with_address(&template, host, *port))?;
                        (direct, false)
                    }
                    (Err(e), None) => return Err(e),
                };
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.op_timeout))
                    .set_response_timeout(None);
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                if !named && !is_master(&mut conn).await? {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::MasterNameNotFoundBySentinel,
                        "the announced master does not answer as a master (yet)",
                    )));
                }
                Ok::<_, redis::RedisError>((client, conn, named))
            };
            match tokio::time::timeout_at(until, attempt).await {
                Ok(Ok((client, conn, named))) => {
                    let mut current = lock(&self.current);
                    if self.switches.load(Ordering::SeqCst) != switches {
                        // A new master was announced meanwhile: look again.
                        continue;
                    }
                    if named {
                        // The sentinels name the announced master themselves: their answer is
                        // followed again.
                        *lock(&self.announced) = None;
                    }
                    *lock(&self.template) = Some(client.get_connection_info().clone());
                    let generation = {
                        let mut g = lock(&self.next_generation);
                        *g += 1;
                        *g
                    };
                    let found = Current {
                        generation,
                        conn,
                        client: Arc::new(client),
                    };
                    *current = Some(found.clone());
                    return Ok(found);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => break,
            }
            if Instant::now() + RESOLVE_RETRY >= until {
                break;
            }
            tokio::time::sleep(RESOLVE_RETRY).await;
        }
        Err(self.no_master(&last))
    }

    /// The master last announced, while the sentinels' answers may still name an older one
    /// (for at most [`ANNOUNCED_FOR`]).
    fn announced(&self) -> Option<(String, u16)> {
        lock(&self.announced)
            .as_ref()
            .filter(|(_, _, at)| at.elapsed() < ANNOUNCED_FOR)
            .map(|(h, p, _)| (h.clone(), *p))
    }

    fn no_master(&self, detail: &str) -> Error {
        Error::Redis(redis::RedisError::from((
            redis::ErrorKind::MasterNameNotFoundBySentinel,
            "no reachable Redis master for this Sentinel name",
            format!(
                "master `{}`: {detail} (a failover may be in progress; check the sentinels)",
                self.name
            ),
        )))
    }

    /// Drops the master in use if it is still the one of `generation`.
    pub(crate) fn invalidate(&self, generation: u64) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
            drop(current);
            self.epoch.send_modify(|e| *e += 1);
        }
    }

    /// A sentinel announced that the master is now `new` (`host`, `port`; `None` if its message
    /// could not be read): drop the one in use and accept only that one from then on. Every
    /// sentinel announces the same switch, so one already followed, or already being followed,
    /// changes nothing.
    fn switched(&self, new: Option<(String, u16)>) {
        if let Some((host, port)) = &new {
            if self
                .announced()
                .is_some_and(|(h, p)| h == *host && p == *port)
            {
                return;
            }
            if lock(&self.current)
                .as_ref()
                .is_some_and(|c| is_at(&c.client, host, *port))
            {
                return;
            }
        }
        *lock(&self.announced) = new.map(|(h, p)| (h, p, Instant::now()));
        self.switches.fetch_add(1, Ordering::SeqCst);
        *lock(&self.current) = None;
        self.epoch.send_modify(|e| *e += 1);
        tracing::info!(target: "lockattr", master = %self.name, "Sentinel switched the master; following it");
    }

    /// The failover was given up: follow what the sentinels name again (the old master).
    fn aborted(&self) {
        if lock(&self.announced).take().is_none() {
            return;
        }
        self.switches.fetch_add(1, Ordering::SeqCst);
        *lock(&self.current) = None;
        self.epoch.send_modify(|e| *e += 1);
        tracing::warn!(target: "lockattr", master = %self.name, "Sentinel gave up a failover; following the master it names");
    }

    /// Sends one command (or pipeline) to the master, following a demotion (see the module
    /// docs).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &'static str,
        until: Instant,
        send: F,
    ) -> Result<T, Error>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut demoted_once = false;
        loop {
            let current = self.current(until).await?;
            match bounded(what, until, self.op_timeout, send(current.conn.clone())).await {
                Err(Error::Redis(e))
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) =>
                {
                    // A demoted master refused the write: nothing was applied.
                    self.invalidate(current.generation);
                    if demoted_once {
                        return Err(Error::Redis(e));
                    }
                    demoted_once = true;
                }
                Err(Error::Redis(e))
                    if e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_io_error() =>
                {
                    self.invalidate(current.generation);
                    return Err(Error::Redis(e));
                }
                other => return other,
            }
        }
    }
}

impl Drop for SentinelConn {
    fn drop(&mut self) {
        if let Some(w) = lock(&self.watcher).take() {
            w.abort();
        }
    }
}

/// Whether `client` connects to `host`:`port` (always, for a Unix socket).
fn is_at(client: &redis::Client, host: &str, port: u16) -> bool {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(h, p)
        | redis::ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => h == host && *p == port,
        _ => true,
    }
}

/// `info` with its address changed to `host`:`port` (TLS settings kept).
fn with_address(info: &redis::ConnectionInfo, host: &str, port: u16) -> redis::ConnectionInfo {
    let addr = match info.addr() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
    };
    info.clone().set_addr(addr)
}

/// Whether the server on `conn` answers `ROLE` as a master.
async fn is_master(conn: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
    let role: redis::Value = redis::cmd("ROLE").query_async(conn).await?;
    Ok(match role {
        redis::Value::Array(parts) => {
            matches!(
                parts.first(),
                Some(redis::Value::BulkString(r)) if r == b"master"
            ) || matches!(
                parts.first(),
                Some(redis::Value::SimpleString(r)) if r == "master"
            )
        }
        _ => false,
    })
}

/// Aborts its tasks when dropped (with the watcher, when the connection is dropped).
struct AbortAll(Vec<JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The channels watched on every sentinel, in the order a failover publishes them:
///
/// * `+failover-state-wait-promotion`: the leader sent `REPLICAOF NO ONE` to the replica it
///   selected. From here on the old master's writes no longer reach that replica, so nothing
///   more is sent to the old master; the replica is used once it answers `ROLE` as a master.
/// * `+promoted-slave`: the leader saw the replica answer as a master (up to a second later:
///   it polls `INFO`).
/// * `+switch-master`: a sentinel took the new configuration (the leader once the other
///   replicas follow, the others as they learn of it).
/// * `-failover-abort-slave-timeout`: the selected replica did not turn master in time; the
///   sentinels keep the old master, and so does the connection.
const CHANNELS: [&str; 4] = [
    "+failover-state-wait-promotion",
    "+promoted-slave",
    "+switch-master",
    "-failover-abort-slave-timeout",
];

/// How long a broken or refused subscription waits before it is made again.
const RESUBSCRIBE: Duration = Duration::from_millis(500);

/// What a sentinel's message says about a master.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// The master is (about to be) this one; `None` if its address could not be read.
    Moved(Option<(String, u16)>),
    /// The failover was given up before the replica turned master.
    Aborted,
}

/// What a message on one of [`CHANNELS`] says about the master `name`; `None` if it is about
/// another master.
fn event(name: &str, channel: &[u8], payload: &str) -> Option<Event> {
    let parts: Vec<&str> = payload.split(' ').collect();
    let address = |ip: &str, port: &str| port.parse().ok().map(|p| (ip.to_owned(), p));
    match channel {
        // `<name> <old ip> <old port> <new ip> <new port>`
        b"+switch-master" => match parts.as_slice() {
            [n, _, _, ip, port] if *n == name => Some(Event::Moved(address(ip, port))),
            [n, ..] if *n == name => Some(Event::Moved(None)),
            _ => None,
        },
        // `slave <ip>:<port> <ip> <port> @ <name> <master ip> <master port>`
        b"+promoted-slave" | b"+failover-state-wait-promotion" => match parts.as_slice() {
            [_, _, ip, port, "@", n, ..] if *n == name => Some(Event::Moved(address(ip, port))),
            _ => None,
        },
        // `master <name> <ip> <port>`
        b"-failover-abort-slave-timeout" => match parts.as_slice() {
            [_, n, ..] if *n == name => Some(Event::Aborted),
            _ => None,
        },
        _ => None,
    }
}

/// Watches every sentinel for announcements of a new master (see [`CHANNELS`]) and tells
/// `conn`. One sentinel is not enough: the failover leader publishes `+switch-master` only once
/// the other replicas follow the new master (a second or more after it was promoted), the others
/// as they learn of it, in any order, and any of them may be down. The sentinels are the ones the
/// first reachable sentinel knows (`SENTINEL SENTINELS`) besides itself, reached with its
/// connection settings (TLS, credentials). Ends with `conn`.
async fn watch_switches(conn: Weak<SentinelConn>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let mut subscriptions = AbortAll(Vec::new());
    loop {
        let Some(strong) = conn.upgrade() else { break };
        let found = discover(&strong).await;
        drop(strong);
        match found {
            Some(sentinels) => {
                for info in sentinels {
                    subscriptions
                        .0
                        .push(tokio::spawn(subscribe(conn.clone(), info, tx.clone())));
                }
                break;
            }
            None => tokio::time::sleep(RESUBSCRIBE).await,
        }
    }
    drop(tx);
    // Until `conn` is gone (every subscription then ends and drops its sender).
    while let Some(event) = rx.recv().await {
        let Some(c) = conn.upgrade() else { break };
        match event {
            Event::Moved(new) => c.switched(new),
            Event::Aborted => c.aborted(),
        }
    }
    drop(subscriptions);
}

/// The connection settings of every sentinel: the first reachable one, and the others it knows.
/// `None` if no sentinel answers.
async fn discover(conn: &SentinelConn) -> Option<Vec<redis::ConnectionInfo>> {
    let op_timeout = conn.op_timeout;
    let client = {
        let mut s = conn.sentinel.lock().await;
        tokio::time::timeout(op_timeout, s.async_get_sentinel_client())
            .await
            .ok()?
            .ok()?
    };
    let first = client.get_connection_info().clone();
    let mut out = vec![first.clone()];
    let others = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("SENTINEL")
            .arg("SENTINELS")
            .arg(&conn.name)
            .query_async::<Vec<std::collections::HashMap<String, String>>>(&mut c)
            .await
    };
    match tokio::time::timeout(op_timeout, others).await {
        Ok(Ok(others)) => {
            for other in others {
                let (Some(ip), Some(port)) = (
                    other.get("ip"),
                    other.get("port").and_then(|p| p.parse::<u16>().ok()),
                ) else {
                    continue;
                };
                out.push(with_address(&first, ip, port));
            }
        }
        // The first sentinel's announcements are still watched.
        Ok(Err(e)) => tracing::debug!(target: "lockattr", master = %conn.name, error = %e,
            "could not list the other sentinels"),
        Err(_) => tracing::debug!(target: "lockattr", master = %conn.name,
            "listing the other sentinels timed out"),
    }
    Some(out)
}

/// Subscribes to [`CHANNELS`] on one sentinel and forwards what it announces for `conn`'s
/// master; subscribes again when the connection breaks. Ends with `conn`.
async fn subscribe(
    conn: Weak<SentinelConn>,
    info: redis::ConnectionInfo,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
) {
    loop {
        let Some(strong) = conn.upgrade() else { return };
        let op_timeout = strong.op_timeout;
        let name = strong.name.clone();
        drop(strong);
        // Each message is forwarded; a disconnection ends this subscription.
        let (events, mut ended) = tokio::sync::mpsc::unbounded_channel::<()>();
        let forward = tx.clone();
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            match (push.kind, push.data.as_slice()) {
                (
                    PushKind::Message,
                    [redis::Value::BulkString(channel), redis::Value::BulkString(payload), ..],
                ) => {
                    let payload = String::from_utf8_lossy(payload);
                    if let Some(e) = event(&name, channel, &payload) {
                        let _ = forward.send(e);
                    }
                }
                (PushKind::Disconnection, _) => {
                    let _ = events.send(());
                }
                _ => {}
            }
            Ok(())
        };
        let subscribed = async {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.clone().set_redis_settings(settings)).ok()?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(op_timeout))
                .set_push_sender(on_push);
            let mut c = tokio::time::timeout(
                op_timeout,
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .ok()?
            .ok()?;
            tokio::time::timeout(op_timeout, c.subscribe(&CHANNELS[..]))
                .await
                .ok()?
                .ok()?;
            Some(c)
        }
        .await;
        if let Some(_subscription) = subscribed {
            // Until the subscription's connection breaks.
            let _ = ended.recv().await;
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{event, Event};

    #[test]
    fn events_name_the_new_master_of_this_name_only() {
        let moved = |s: &str, p: u16| Some(Event::Moved(Some((s.to_owned(), p))));
        assert_eq!(
            event("m", b"+switch-master", "m 10.0.0.1 6379 10.0.0.2 6380"),
            moved("10.0.0.2", 6380)
        );
        assert_eq!(
            event("m", b"+switch-master", "other 10.0.0.1 6379 10.0.0.2 6380"),
            None
        );
        assert_eq!(
            event("m", b"+switch-master", "m garbled"),
            Some(Event::Moved(None))
        );
        for channel in [&b"+promoted-slave"[..], b"+failover-state-wait-promotion"] {
            assert_eq!(
                event(
                    "m",
                    channel,
                    "slave 10.0.0.2:6380 10.0.0.2 6380 @ m 10.0.0.1 6379"
                ),
                moved("10.0.0.2", 6380)
            );
            assert_eq!(
                event(
                    "m",
                    channel,
                    "slave 10.0.0.2:6380 10.0.0.2 6380 @ mm 10.0.0.1 6379"
                ),
                None
            );
        }
        assert_eq!(
            event(
                "m",
                b"-failover-abort-slave-timeout",
                "master m 10.0.0.1 6379"
            ),
            Some(Event::Aborted)
        );
        assert_eq!(
            event(
                "m",
                b"-failover-abort-slave-timeout",
                "master x 10.0.0.1 6379"
            ),
            None
        );
        assert_eq!(event("m", b"+sdown", "master m 10.0.0.1 6379"), None);
    }
}
