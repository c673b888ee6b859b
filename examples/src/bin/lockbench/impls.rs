//! The lock implementations under test, behind one small object-safe interface.
//!
//! Every implementation talks to Redis through redis-rs `MultiplexedConnection`s, the client
//! stack lockattr uses, so the numbers compare lock algorithms rather than clients. A URL of
//! the form `cluster:<url>,<url>,..` means a Redis Cluster with those seed nodes: lockattr is
//! then `Locker::cluster`, the token locks use redis-rs's async cluster connection (which
//! lockattr uses there too), and rslock, which has no cluster support, is unavailable.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;

use crate::clock::{now_ns, Rng};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A lock implementation: acquire a key, get something that releases it.
pub trait LockImpl: Send + Sync {
    /// Acquires `key`, giving up after `wait`.
    fn acquire<'a>(&'a self, key: &'a str, wait: Duration) -> BoxFut<'a, Result<Box<dyn Held>>>;
}

/// A held lock.
pub trait Held: Send {
    /// Releases the lock (token-safe for every implementation here).
    fn release(self: Box<Self>) -> BoxFut<'static, Result<()>>;
}

/// Which implementation; also the name a `worker` process is told (`--impls`, `--kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `SET NX PX` once + compare-and-delete: the two-round-trip floor (no waiting).
    Raw,
    /// `SET NX PX`, on failure sleep 1 ms + up to 1 ms jitter and retry; compare-and-delete.
    Spin,
    /// rslock 0.10 with its defaults (3 tries, random 0-200 ms between tries).
    Rslock,
    /// rslock 0.10 with a 2 ms retry delay (random 0-2 ms between tries).
    #[value(name = "rslock-2ms")]
    Rslock2ms,
    /// lockattr.
    Lockattr,
    /// Diagnostic row: lockattr with every request `fenced(true)` and the holder reading its
    /// fencing token (`LockGuard::fencing_token`), as a holder that fences its writes does.
    #[value(name = "lockattr-fenced")]
    LockattrFenced,
    /// Diagnostic row: the raw floor doing the Redis-side work a fenced, pub/sub-waking lock
    /// needs — `EVALSHA {SET NX PX; INCR fence; PEXPIRE fence}` and `EVALSHA {GET; DEL;
    /// PUBLISH}` — with no runtime around it (uncontended and distinct-key tables only).
    FencedFloor,
}

impl Kind {
    /// The implementations measured by default.
    pub const ALL: [Kind; 7] = [
        Kind::Raw,
        Kind::FencedFloor,
        Kind::Spin,
        Kind::Rslock,
        Kind::Rslock2ms,
        Kind::Lockattr,
        Kind::LockattrFenced,
    ];

    /// Short name, as on the command line (and in key names).
    pub fn id(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Spin => "spin",
            Kind::Rslock => "rslock",
            Kind::Rslock2ms => "rslock-2ms",
            Kind::Lockattr => "lockattr",
            Kind::LockattrFenced => "lockattr-fenced",
            Kind::FencedFloor => "fenced-floor",
        }
    }

    /// Name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw floor (SET NX PX + CAD)",
            Kind::Spin => "SET NX spin, 1 ms + jitter",
            Kind::Rslock => "rslock 0.10 (0-200 ms retry)",
            Kind::Rslock2ms => "rslock 0.10, 2 ms retry",
            Kind::Lockattr => "lockattr",
            Kind::LockattrFenced => {
                "lockattr, fenced(true): the holder using its fencing token (diagnostic)"
            }
            Kind::FencedFloor => {
                "fenced floor: Lua SET NX+INCR+PEXPIRE, Lua GET+DEL+PUBLISH (diagnostic)"
            }
        }
    }
}

/// Lease used by every implementation: long enough that no lease expires during a run.
pub const LEASE: Duration = Duration::from_secs(5);

/// The seed URLs of a `cluster:<url>,<url>,..` URL; `None` for one server.
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    url.strip_prefix("cluster:")
        .map(|seeds| seeds.split(',').map(str::to_owned).collect())
}

/// Builds an implementation connected to `url` (one server, or `cluster:<seeds>`).
pub async fn build(kind: Kind, url: &str) -> Result<Arc<dyn LockImpl>> {
    if cluster_seeds(url).is_some() && matches!(kind, Kind::Rslock | Kind::Rslock2ms) {
        bail!("{} has no Redis Cluster support", kind.label());
    }
    if cluster_seeds(url).is_some() && kind == Kind::FencedFloor {
        // Its fence key has no hash tag in common with the lock key.
        bail!("the fenced floor's two keys are in different cluster slots");
    }
    Ok(match kind {
        Kind::Raw => Arc::new(TokenLock::connect(url, None, false).await?),
        Kind::FencedFloor => Arc::new(TokenLock::connect(url, None, true).await?),
        Kind::Spin => Arc::new(
            TokenLock::connect(
                url,
                Some((Duration::from_millis(1), Duration::from_millis(1))),
                false,
            )
            .await?,
        ),
        Kind::Rslock => Arc::new(RsLock::new(url, None)),
        Kind::Rslock2ms => Arc::new(RsLock::new(url, Some(Duration::from_millis(2)))),
        Kind::Lockattr => crate::lockattr_impl::build(url).await?,
        Kind::LockattrFenced => crate::lockattr_impl::build_fenced(url).await?,
    })
}

/// The raw floor on one server with every `SET NX PX` pipelined with `WAIT replicas timeout`
/// (the replicated scenario's diagnostic row): what acknowledged acquisitions cost at least.
/// An acquisition fewer replicas acknowledged fails (its key is left to the lease).
pub async fn build_waited_floor(
    url: &str,
    replicas: usize,
    timeout: Duration,
) -> Result<Arc<dyn LockImpl>> {
    if cluster_seeds(url).is_some() {
        bail!("the raw floor with WAIT runs on one server only");
    }
    // redis-rs's default response timeout (500 ms) must not cut a `WAIT` short.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(timeout + Duration::from_secs(2)));
    let conn = redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connect")?;
    let mut lock = TokenLock::on(AnyConn::Server(conn), None, false).await?;
    lock.replicas = Some((replicas, timeout));
    Ok(Arc::new(lock))
}

/// Compare-and-delete: `KEYS[1]` the lock, `ARGV[1]` the holder's token; returns 1 if deleted.
const COMPARE_AND_DELETE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// Fenced acquire: `KEYS[1]` lock, `KEYS[2]` fence counter; `ARGV[1]` token, `ARGV[2]` lease
/// ms; returns the fencing token, or 0 when held.
const FENCED_ACQUIRE: &str = r#"
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  local fence = redis.call("INCR", KEYS[2])
  redis.call("PEXPIRE", KEYS[2], 3600000)
  return fence
end
return 0
"#;

/// Compare-and-delete that also publishes on `KEYS[1]`'s release channel; returns 1 if deleted.
const PUBLISHING_RELEASE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("DEL", KEYS[1])
  redis.call("PUBLISH", KEYS[1] .. ":released", "")
  return 1
end
return 0
"#;

/// `SET key token NX PX lease` to acquire, compare-and-delete (EVALSHA) to release.
/// With `retry = None` it tries once (the raw floor); with `Some((delay, jitter))` it sleeps
/// `delay + rand(0..jitter)` between tries (the spin lock). `fenced` swaps in the scripts of
/// [`Kind::FencedFloor`]. With `replicas = Some((n, timeout))` (see [`build_waited_floor`]) the
/// `SET` is pipelined with `WAIT n timeout`.
struct TokenLock {
    conn: AnyConn,
    acquire: Option<redis::Script>,
    release: Arc<redis::Script>,
    retry: Option<(Duration, Duration)>,
    replicas: Option<(usize, Duration)>,
    rng: Mutex<Rng>,
}

impl TokenLock {
    async fn connect(url: &str, retry: Option<(Duration, Duration)>, fenced: bool) -> Result<Self> {
        Self::on(AnyConn::connect(url).await?, retry, fenced).await
    }

    /// The lock on an open connection (see [`connect`](Self::connect)).
    async fn on(
        mut conn: AnyConn,
        retry: Option<(Duration, Duration)>,
        fenced: bool,
    ) -> Result<Self> {
        let release = redis::Script::new(if fenced {
            PUBLISHING_RELEASE
        } else {
            COMPARE_AND_DELETE
        });
        // Loaded once so every call is a single EVALSHA round trip.
        release.prepare_invoke().load_async(&mut conn).await?;
        let acquire = fenced.then(|| redis::Script::new(FENCED_ACQUIRE));
        if let Some(a) = &acquire {
            a.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(TokenLock {
            conn,
            acquire,
            release: Arc::new(release),
            retry,
            replicas: None,
            rng: Mutex::new(Rng::new(7)),
        })
    }

    fn rng_next(&self, f: impl FnOnce(&mut Rng) -> u64) -> u64 {
        let mut g = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl LockImpl for TokenLock {
    fn acquire<'a>(&'a self, key: &'a str, wait: Duration) -> BoxFut<'a, Result<Box<dyn Held>>> {
        Box::pin(async move {
            let token = {
                let mut g = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                g.token()
            };
            let deadline = now_ns() + u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
            let mut conn = self.conn.clone();
            let lease_ms = LEASE.as_millis() as u64;
            loop {
                let taken = match (&self.acquire, self.replicas) {
                    (None, None) => {
                        let ok: Option<String> = redis::cmd("SET")
                            .arg(key)
                            .arg(&token)
                            .arg("NX")
                            .arg("PX")
                            .arg(lease_ms)
                            .query_async(&mut conn)
                            .await?;
                        ok.is_some()
                    }
                    (None, Some((n, timeout))) => {
                        let (ok, acked): (Option<String>, usize) = redis::pipe()
                            .cmd("SET")
                            .arg(key)
                            .arg(&token)
                            .arg("NX")
                            .arg("PX")
                            .arg(lease_ms)
                            .cmd("WAIT")
                            .arg(n)
                            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
                            .query_async(&mut conn)
                            .await?;
                        if ok.is_some() && acked < n {
                            // Left to its lease: a diagnostic row has no undo path.
                            bail!(
                                "`{key}`: {acked} of {n} replicas acknowledged within {timeout:?}"
                            );
                        }
                        ok.is_some()
                    }
                    (Some(script), _) => {
                        let fence: i64 = script
                            .key(key)
                            .key(format!("{key}:fence"))
                            .arg(&token)
                            .arg(lease_ms)
                            .invoke_async(&mut conn)
                            .await?;
                        fence > 0
                    }
                };
                if taken {
                    return Ok(Box::new(TokenHeld {
                        conn,
                        release: self.release.clone(),
                        key: key.to_owned(),
                        token,
                    }) as Box<dyn Held>);
                }
                let Some((delay, jitter)) = self.retry else {
                    bail!("`{key}` is held");
                };
                if now_ns() >= deadline {
                    bail!("timed out waiting for `{key}`");
                }
                let jitter_ns = u64::try_from(jitter.as_nanos()).unwrap_or(0);
                let extra = self.rng_next(|r| r.below(jitter_ns));
                tokio::time::sleep(delay + Duration::from_nanos(extra)).await;
            }
        })
    }
}

struct TokenHeld {
    conn: AnyConn,
    release: Arc<redis::Script>,
    key: String,
    token: String,
}

impl Held for TokenHeld {
    fn release(self: Box<Self>) -> BoxFut<'static, Result<()>> {
        Box::pin(async move {
            let TokenHeld {
                mut conn,
                release,
                key,
                token,
            } = *self;
            let deleted: i64 = release
                .key(&key)
                .arg(&token)
                .invoke_async(&mut conn)
                .await?;
            if deleted != 1 {
                bail!("`{key}` was no longer held at release");
            }
            Ok(())
        })
    }
}

/// A connection to one server or to a cluster (every command to its key's master).
#[derive(Clone)]
pub enum AnyConn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl AnyConn {
    /// Connects to `url` (one server, or `cluster:<seeds>`).
    pub async fn connect(url: &str) -> Result<AnyConn> {
        Ok(match cluster_seeds(url) {
            None => AnyConn::Server(
                redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await
                    .context("connect")?,
            ),
            Some(seeds) => AnyConn::Cluster(
                redis::cluster::ClusterClient::new(seeds)?
                    .get_async_connection()
                    .await
                    .context("connect to the cluster")?,
            ),
        })
    }
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AnyConn::Server(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AnyConn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Server(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

/// rslock 0.10 against one Redis: `lock()` (its own retry loop) called in a bounded loop, as its
/// unbounded `acquire()` would; `unlock()` to release.
struct RsLock {
    manager: rslock::LockManager,
}

impl RsLock {
    fn new(url: &str, retry_delay: Option<Duration>) -> Self {
        let mut manager = rslock::LockManager::new(vec![url.to_owned()]);
        if let Some(delay) = retry_delay {
            // Same retry count as the default; only the delay between tries changes.
            manager.set_retry(3, delay);
        }
        RsLock { manager }
    }
}

impl LockImpl for RsLock {
    fn acquire<'a>(&'a self, key: &'a str, wait: Duration) -> BoxFut<'a, Result<Box<dyn Held>>> {
        Box::pin(async move {
            let deadline = now_ns() + u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
            loop {
                match self.manager.lock(key.as_bytes(), LEASE).await {
                    Ok(lock) => return Ok(Box::new(RsHeld(lock)) as Box<dyn Held>),
                    Err(rslock::LockError::Unavailable) if now_ns() < deadline => {}
                    Err(e) => return Err(anyhow!("rslock: {e}")),
                }
            }
        })
    }
}

struct RsHeld(rslock::Lock);

impl Held for RsHeld {
    fn release(self: Box<Self>) -> BoxFut<'static, Result<()>> {
        Box::pin(async move {
            // rslock's unlock is best effort and reports nothing.
            self.0.release().await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds() {
        assert_eq!(cluster_seeds("redis://127.0.0.1:6379"), None);
        assert_eq!(
            cluster_seeds("cluster:redis://127.0.0.1:7000,redis://127.0.0.1:7001"),
            Some(vec![
                "redis://127.0.0.1:7000".to_owned(),
                "redis://127.0.0.1:7001".to_owned()
            ])
        );
    }
}
