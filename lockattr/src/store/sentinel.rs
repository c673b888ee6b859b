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
//! * Sentinel announces `+switch-master` for this master: a watcher task subscribed to the
//!   sentinels drops the connection at once, before the old master (which may accept writes
//!   for seconds after a failover, until the sentinels reconfigure it) can take another lock,
//!   and from then on only the announced master is accepted (sentinels learn of a failover one
//!   after another, and one that has not yet would still name the old master).
//!
//! While no master can be reached (a failover in progress), a call keeps resolving, every
//! 100 ms, until its deadline, then fails with an error that says so. The pub/sub hub follows
//! the same master: it reconnects whenever the connection here is dropped (`SentinelConn::epoch`).

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

/// The master in use: a connection, and a client for the pub/sub hub's own connection.
#[derive(Clone)]
pub(crate) struct Current {
    generation: u64,
    pub(crate) conn: MultiplexedConnection,
    pub(crate) client: redis::Client,
}

/// A Sentinel-managed master (see the module docs).
pub(crate) struct SentinelConn {
    name: String,
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Current>>,
    /// The master the last `+switch-master` announced, until a resolution finds it: sentinels
    /// learn of a failover one after another, and one that has not yet would name the old
    /// master, which may still accept writes.
    announced: Mutex<Option<(String, u16)>>,
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
            let attempt = async {
                let client = sentinel.async_get_client().await?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.op_timeout))
                    .set_response_timeout(None);
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok::<_, redis::RedisError>((client, conn))
            };
            match tokio::time::timeout_at(until, attempt).await {
                Ok(Ok((client, _))) if !self.is_announced(&client) => {
                    last = format!(
                        "the sentinels still name {:?}, not the master announced by \
                         +switch-master",
                        client.get_connection_info().addr()
                    );
                }
                Ok(Ok((client, conn))) => {
                    *lock(&self.announced) = None;
                    let generation = {
                        let mut g = lock(&self.next_generation);
                        *g += 1;
                        *g
                    };
                    let current = Current {
                        generation,
                        conn,
                        client,
                    };
                    *lock(&self.current) = Some(current.clone());
                    return Ok(current);
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

    /// Whether `client` is the master `+switch-master` announced (or none was announced).
    fn is_announced(&self, client: &redis::Client) -> bool {
        let announced = lock(&self.announced);
        let Some((host, port)) = announced.as_ref() else {
            return true;
        };
        match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(h, p)
            | redis::ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => h == host && p == port,
            _ => true,
        }
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

    /// Sentinel switched the master to `new` (`host`, `port`): drop the one in use, whatever it
    /// is, and resolve only that one.
    fn switched(&self, new: Option<(String, u16)>) {
        *lock(&self.announced) = new;
        *lock(&self.current) = None;
        self.epoch.send_modify(|e| *e += 1);
        tracing::info!(target: "lockattr", master = %self.name, "Sentinel switched the master; following it");
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

/// Subscribes to `+switch-master` on a sentinel and tells `conn` when its master switched;
/// reconnects (to any sentinel) when the subscription breaks. Ends with `conn`.
async fn watch_switches(conn: Weak<SentinelConn>) {
    loop {
        let Some(strong) = conn.upgrade() else { return };
        let op_timeout = strong.op_timeout;
        let name = strong.name.clone();
        let client = {
            let mut s = strong.sentinel.lock().await;
            tokio::time::timeout(op_timeout, s.async_get_sentinel_client()).await
        };
        drop(strong);
        // `Some(new master)` for an announcement, `None` when the subscription broke.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Option<(String, u16)>>>();
        let subscribed = async {
            let client = client.ok()?.ok()?;
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings)).ok()?;
            let name = name.clone();
            let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                match push.kind {
                    PushKind::Message => {
                        if let [_, redis::Value::BulkString(payload), ..] = push.data.as_slice() {
                            // `<name> <old ip> <old port> <new ip> <new port>`
                            let text = String::from_utf8_lossy(payload);
                            let parts: Vec<&str> = text.split(' ').collect();
                            if parts.first() == Some(&name.as_str()) {
                                let new = match parts.as_slice() {
                                    [_, _, _, ip, port] => {
                                        port.parse().ok().map(|p| ((*ip).to_owned(), p))
                                    }
                                    _ => None,
                                };
                                let _ = tx.send(Some(new));
                            }
                        }
                    }
                    PushKind::Disconnection => {
                        let _ = tx.send(None);
                    }
                    _ => {}
                }
                Ok(())
            };
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
            tokio::time::timeout(op_timeout, c.subscribe("+switch-master"))
                .await
                .ok()?
                .ok()?;
            Some(c)
        }
        .await;
        if let Some(_subscription) = subscribed {
            // Until the subscription's connection breaks.
            while let Some(Some(new)) = rx.recv().await {
                match conn.upgrade() {
                    Some(c) => c.switched(new),
                    None => return,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
