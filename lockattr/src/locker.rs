//! `Locker`: the handle users create once and clone everywhere.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::key::{validate_namespace, LockKey, RedisNames};
use crate::pubsub::Hub;
use crate::queue::KeyLocal;
use crate::renewal::{SchedulerTask, Timers};
use crate::request::LockRequest;
use crate::Error;

/// A handle to a Redis server for taking locks.
///
/// Create one per process (or per Redis) with [`Locker::connect`] or [`Locker::builder`] and
/// clone it freely: clones are cheap (`Arc`) and share the Redis connection, the pub/sub
/// subscription and the local wait queues, which is what keeps contention cheap. Two
/// *separately built* `Locker`s behave like two processes.
///
/// The command connection is a redis-rs `ConnectionManager`: after Redis restarts or the
/// connection breaks, it reconnects by itself. While Redis is unreachable every operation fails
/// with [`Error::Redis`] within the operation timeout (2 s by default); nothing hangs.
///
/// ```no_run
/// # async fn demo() -> Result<(), lockattr::Error> {
/// use std::time::Duration;
///
/// let locker = lockattr::Locker::builder("redis://127.0.0.1:6379")
///     .namespace("myapp:lock")
///     .default_wait(Duration::from_secs(10))
///     .default_lease(Duration::from_secs(30))
///     .build()
///     .await?;
/// lockattr::set_default(locker.clone()); // for #[distributed_lock] without `locker = ..`
///
/// let guard = locker.lock("party:42").await?;
/// // ... critical section ...
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Locker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) conn: ConnectionManager,
    pub(crate) config: Config,
    pub(crate) hub: Hub,
    /// Per-key local state (holder flag and FIFO of waiting tasks), keyed by the lock's Redis
    /// name. An entry exists only while a task of this process holds or wants the key.
    pub(crate) keys: Mutex<HashMap<Arc<str>, KeyLocal>>,
    /// Lease upkeep of every lock held through this locker.
    pub(crate) timers: Arc<Timers>,
    _scheduler: SchedulerTask,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) namespace: String,
    pub(crate) default_wait: Duration,
    pub(crate) default_lease: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) handoff_limit: u32,
    pub(crate) fence_ttl: Duration,
}

impl Config {
    /// TTL of a fencing counter from its creation, in ms (see `scripts::ACQUIRE_LUA` for why
    /// its expiry never makes tokens go backwards).
    pub(crate) fn fence_ttl_ms(&self) -> u64 {
        millis(self.fence_ttl)
    }
}

/// Longest lease accepted: a lease bounds how long a crashed holder blocks everyone, and
/// anything longer than this is a unit mistake, not a choice.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(366 * 24 * 3600);

/// Checks a lease: at least 1 ms (Redis's resolution), at most [`MAX_LEASE`].
/// `what` names the lease in the error message (built only when the lease is refused).
pub(crate) fn check_lease(lease: Duration, what: impl FnOnce() -> String) -> Result<(), Error> {
    if lease < Duration::from_millis(1) || lease > MAX_LEASE {
        return Err(Error::config(format!(
            "{} is {lease:?}; a lease must be between 1 ms and 366 days",
            what()
        )));
    }
    Ok(())
}

/// Milliseconds, rounded up so that a sub-millisecond lease never becomes zero.
pub(crate) fn millis(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)) < d {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("namespace", &self.inner.config.namespace)
            .field("default_wait", &self.inner.config.default_wait)
            .field("default_lease", &self.inner.config.default_lease)
            .finish_non_exhaustive()
    }
}

impl Locker {
    /// Connects with the default settings (namespace `lock`, wait 30 s, lease 30 s).
    ///
    /// # Errors
    /// [`Error::Redis`] when the URL is malformed or Redis does not answer within the
    /// operation timeout.
    pub async fn connect(url: impl AsRef<str>) -> Result<Locker, Error> {
        LockerBuilder::new(url.as_ref().to_owned()).build().await
    }

    /// Starts configuring a `Locker` for the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> LockerBuilder {
        LockerBuilder::new(url.into())
    }

    /// A request for the lock named `key`; `.await` it to wait for the lock, or call
    /// [`LockRequest::run`] to run a future under it.
    ///
    /// The key is namespaced and escaped (see the crate docs); it is checked when the request
    /// is awaited, which fails with [`Error::InvalidKey`] for an empty key or one longer than
    /// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes once escaped.
    ///
    /// A guard is not reentrant: a task that awaits `lock` for a key it already holds through a
    /// [`LockGuard`](crate::LockGuard) waits for itself until its `wait` runs out. Code under
    /// [`LockRequest::run`] or `#[distributed_lock]` re-enters instead.
    ///
    /// A dropped guard is released by a background task; until that task's round trip is done
    /// the key still counts as held, also for this process. Await
    /// [`LockGuard::release`](crate::LockGuard::release) when the next step depends on the lock
    /// being free.
    pub fn lock(&self, key: impl Into<String>) -> LockRequest {
        LockRequest::new(self.clone(), LockKey::from_user(key.into()))
    }

    /// Like [`lock`](Self::lock) with a zero wait: one attempt, `Err(Error::Timeout)` if the
    /// lock is busy. A busy lock held by another task of this process costs no round trip.
    pub fn try_lock(&self, key: impl Into<String>) -> LockRequest {
        self.lock(key).wait(Duration::ZERO)
    }

    /// The namespace prefixed to every Redis key of this locker.
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// The Redis key that holds the lock `key` (for inspection and tests), e.g.
    /// `lock:{party:42}`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] as for [`lock`](Self::lock).
    pub fn redis_key(&self, key: &str) -> Result<String, Error> {
        let key = LockKey::from_user(key.to_owned())?;
        Ok(RedisNames::new(&self.inner.config.namespace, &key)
            .lock()
            .to_owned())
    }

    pub(crate) fn names(&self, key: &LockKey) -> RedisNames {
        RedisNames::new(&self.inner.config.namespace, key)
    }

    /// A stable identity for "the same locker" (clones share it).
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Runs one script call with the operation timeout; a script Redis does not know (after a
    /// restart or `SCRIPT FLUSH`) is loaded and the call sent once more.
    pub(crate) async fn eval<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        call: &crate::scripts::Call,
    ) -> Result<T, Error> {
        match self.query(what, &call.cmd).await {
            Err(Error::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let mut conn = self.inner.conn.clone();
                self.bounded(what, call.script.prepare_invoke().load_async(&mut conn))
                    .await?;
                self.query(what, &call.cmd).await
            }
            other => other,
        }
    }

    /// Sends one command with the operation timeout.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, Error> {
        let mut conn = self.inner.conn.clone();
        self.bounded(what, cmd.query_async(&mut conn)).await
    }

    /// Sends a pipeline with the operation timeout.
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, Error> {
        let mut conn = self.inner.conn.clone();
        self.bounded(what, pipe.query_async(&mut conn)).await
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        request: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        let timeout = self.inner.config.op_timeout;
        match tokio::time::timeout(timeout, request).await {
            Ok(r) => r.map_err(Error::Redis),
            Err(_) => Err(Error::redis_timeout(what, timeout)),
        }
    }

    /// Releases the lock if `token` owns it (see `scripts::RELEASE` for the answer). Retried
    /// once when the connection broke under it: a compare-and-delete is safe to repeat.
    pub(crate) async fn release_token(
        &self,
        names: &RedisNames,
        token: &str,
    ) -> Result<i64, Error> {
        let release = crate::scripts::release(names, token);
        match self.eval("release", &release).await {
            Err(e) if e.is_connection_dropped() => self.eval("release", &release).await,
            other => other,
        }
    }

    /// Withdraws, in the background, a token that may hold the lock or be its registered waiter
    /// (an acquire attempt or a waiter that went away; see `scripts::WITHDRAW_LUA`).
    pub(crate) fn spawn_withdraw(&self, names: Arc<RedisNames>, token: String) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // without a runtime, the lock or the registration expires by itself
        };
        let locker = self.clone();
        rt.spawn(async move {
            let withdraw = crate::scripts::withdraw(&names, &token);
            let _ = locker.eval::<i64>("withdraw", &withdraw).await;
        });
    }

    /// Releases, in the background, the lock under any of `tokens` (used when an operation's
    /// outcome is unknown, so that no token that may own the key is left behind), then runs
    /// `then`.
    pub(crate) fn spawn_release(
        &self,
        names: Arc<RedisNames>,
        tokens: Vec<String>,
        then: impl FnOnce() + Send + 'static,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            then();
            return;
        };
        let locker = self.clone();
        rt.spawn(async move {
            for token in &tokens {
                let _ = locker.release_token(&names, token).await;
            }
            then();
        });
    }
}

/// Settings for a [`Locker`]; create it with [`Locker::builder`].
#[derive(Debug, Clone)]
#[must_use = "call .build().await to connect"]
pub struct LockerBuilder {
    url: String,
    config: Config,
}

impl LockerBuilder {
    fn new(url: String) -> Self {
        LockerBuilder {
            url,
            config: Config {
                namespace: "lock".to_owned(),
                default_wait: Duration::from_secs(30),
                default_lease: Duration::from_secs(30),
                op_timeout: Duration::from_secs(2),
                handoff_limit: 16,
                fence_ttl: Duration::from_secs(7 * 24 * 3600),
            },
        }
    }

    /// Prefix of every Redis key (default `lock`). Lock `party:42` lives at
    /// `<namespace>:{party:42}`. Must not contain `{`, `}`, `%` or control characters.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// How long a request waits for a busy lock when it does not say (default 30 s).
    pub fn default_wait(mut self, wait: Duration) -> Self {
        self.config.default_wait = wait;
        self
    }

    /// The lease (the lock's TTL in Redis) when a request does not say (default 30 s). It
    /// bounds how long a crashed holder blocks others; while a guard lives the lease is renewed
    /// every lease/3 unless renewal is turned off.
    pub fn default_lease(mut self, lease: Duration) -> Self {
        self.config.default_lease = lease;
        self
    }

    /// Longest time any single Redis operation may take, connecting included (default 2 s).
    /// When Redis is down, requests fail with [`Error::Redis`] within this time.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }

    /// How many times in a row a lock may be handed from one task of this process directly to
    /// another waiting task (no release, no wait for Redis) before it is released in Redis so that
    /// other processes get a chance (default 16; 0 disables in-process handoff).
    pub fn handoff_limit(mut self, limit: u32) -> Self {
        self.config.handoff_limit = limit;
        self
    }

    /// How long a per-key fencing counter lives from its creation (default 7 days). When it has
    /// expired, the next acquisition of the key starts the counter from Redis's clock in
    /// microseconds, which is above every token the old counter handed out: tokens keep
    /// increasing across counters (see the crate docs for the one caveat, a Redis wall clock set
    /// back). Shorter values only mean more counter restarts; the TTL exists so that counters of
    /// keys nobody locks any more do not stay in Redis forever.
    pub fn fence_ttl(mut self, ttl: Duration) -> Self {
        self.config.fence_ttl = ttl;
        self
    }

    /// Checks the settings, connects and loads the scripts.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad namespace or zero durations, [`Error::Redis`] when
    /// the URL is malformed or Redis does not answer within the operation timeout.
    pub async fn build(self) -> Result<Locker, Error> {
        let config = self.config;
        validate_namespace(&config.namespace)?;
        check_lease(config.default_lease, || "the default lease".to_owned())?;
        if config.op_timeout.is_zero() {
            return Err(Error::config("the operation timeout must not be zero"));
        }
        if config.fence_ttl < Duration::from_secs(1) {
            return Err(Error::config(
                "the fencing counter TTL must be at least 1 s",
            ));
        }
        let client = redis::Client::open(self.url.as_str())?;
        // No response timeout inside redis-rs: `bounded` puts the operation timeout around
        // every call already (reconnect waits included), and a second timer per command costs
        // measurable time on the uncontended path.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.op_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let connect = ConnectionManager::new_with_config(client.clone(), manager_config);
        let mut conn = match tokio::time::timeout(config.op_timeout, connect).await {
            Ok(conn) => conn?,
            Err(_) => return Err(Error::redis_timeout("connect", config.op_timeout)),
        };
        let mut load = redis::pipe();
        for script in crate::scripts::all() {
            load.cmd("SCRIPT").arg("LOAD").arg(script);
        }
        // Loading is an optimisation (first use skips the NOSCRIPT round trip); scripts are
        // reloaded on demand after a Redis restart anyway.
        let _ = tokio::time::timeout(config.op_timeout, load.exec_async(&mut conn)).await;
        let hub = Hub::start(client, config.op_timeout);
        let timers = Arc::new(Timers::new());
        let scheduler = SchedulerTask(tokio::spawn(timers.clone().run()));
        Ok(Locker {
            inner: Arc::new(Inner {
                conn,
                config,
                hub,
                keys: Mutex::new(HashMap::new()),
                timers,
                _scheduler: scheduler,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(5)), 5);
        assert_eq!(millis(Duration::from_micros(5001)), 6);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
