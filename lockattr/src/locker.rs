//! `Locker`: the handle users create once and clone everywhere, and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::core::Core;
use crate::inspect::LockInfo;
use crate::key::{LockKey, RedisNames};
use crate::request::LockRequest;
use crate::store::{MemoryStore, Store};
use crate::Error;

/// A handle to a Redis deployment for taking locks.
///
/// Create one per process (or per Redis) with [`Locker::connect`] or [`Locker::builder`] and
/// clone it freely: clones are cheap (`Arc`) and share the Redis connection, the pub/sub
/// subscription and the local wait queues, which is what keeps contention cheap. Two
/// *separately built* `Locker`s behave like two processes.
///
/// The command connection is a redis-rs `ConnectionManager`: after Redis restarts or the
/// connection breaks, it reconnects by itself. While Redis is unreachable every operation fails
/// with [`Error::Redis`] or [`Error::OperationTimeout`] within the operation timeout (2 s by
/// default); nothing hangs.
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
    pub(crate) core: Arc<Core>,
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.core.config;
        f.debug_struct("Locker")
            .field("namespace", &c.namespace)
            .field("default_wait", &c.default_wait)
            .field("default_lease", &c.default_lease)
            .finish_non_exhaustive()
    }
}

impl Locker {
    /// Connects with the default settings (namespace `lock`, wait 30 s, lease 30 s).
    ///
    /// # Errors
    /// [`Error::Redis`] when the URL is malformed or Redis refuses the connection,
    /// [`Error::OperationTimeout`] when it does not answer within the operation timeout.
    pub async fn connect(url: impl AsRef<str>) -> Result<Locker, Error> {
        Locker::builder(url.as_ref()).build().await
    }

    /// Starts configuring a `Locker` for the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> LockerBuilder {
        LockerBuilder::new(Target::Url(url.into()))
    }

    /// A `Locker` on a new in-memory store, for tests without Redis: the same semantics
    /// (exclusion, waiting, leases by tokio's clock so that `tokio::time::pause` works,
    /// renewal, loss, fencing tokens, re-entry, cancellation safety, the same errors), in this
    /// process only. Clones share the store; [`MemoryStore`] makes several lockers that behave
    /// like several processes on one Redis.
    ///
    /// It is not a lock between processes (nothing leaves the process), and it never fails the
    /// way a network does: it is for unit tests of code that takes locks, not for production.
    /// It needs no runtime to be created, and a Tokio runtime to be used.
    ///
    /// A test of an annotated function, with time paused (leases and waits follow tokio's
    /// clock, so a 30 s wait takes no real time; `start_paused` needs tokio's `test-util`
    /// feature in your dev-dependencies):
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockattr::Locker;
    ///
    /// #[lockattr::distributed_lock(key = "seat:<seat>", wait = "30s", lease = "10s", locker = locker)]
    /// async fn book(locker: &Locker, seat: u32) -> Result<u32, lockattr::Error> {
    ///     tokio::time::sleep(Duration::from_secs(20)).await; // longer than the lease: renewed
    ///     Ok(seat)
    /// }
    ///
    /// #[tokio::test(start_paused = true)]
    /// async fn bookings_of_one_seat_take_turns() {
    ///     let locker = Locker::in_memory();
    ///     let started = tokio::time::Instant::now();
    ///     let (a, b) = tokio::join!(book(&locker, 7), book(&locker, 7));
    ///     assert_eq!((a.unwrap(), b.unwrap()), (7, 7));
    ///     assert!(started.elapsed() >= Duration::from_secs(40), "one after the other");
    /// }
    /// # fn main() {
    /// #     tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
    /// #         .block_on(async {
    /// #             let locker = Locker::in_memory();
    /// #             let started = tokio::time::Instant::now();
    /// #             let (a, b) = tokio::join!(book(&locker, 7), book(&locker, 7));
    /// #             assert_eq!((a.unwrap(), b.unwrap()), (7, 7));
    /// #             assert!(started.elapsed() >= Duration::from_secs(40));
    /// #         });
    /// # }
    /// ```
    ///
    /// Code that uses the process default works too (`lockattr::set_default(Locker::in_memory())`),
    /// but there is one default per process: tests that run in parallel in one test binary
    /// replace each other's. Passing the locker (`locker = ..`) keeps tests apart. Under paused
    /// time, one `tokio::time::advance` longer than what is left of a lease is what a process
    /// pause is: the lock is lost (renewals run as time advances in smaller steps).
    pub fn in_memory() -> Locker {
        MemoryStore::new().locker()
    }

    pub(crate) fn on_memory(store: MemoryStore, config: Config) -> Locker {
        Locker {
            core: Core::new(Store::memory(&store), config),
        }
    }

    /// Starts configuring a `Locker` over a redis-rs client you built: for TLS with your own
    /// CA or client certificates (`redis::Client::build_with_tls`), or any connection setting
    /// a URL cannot express.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lockattr::Error> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let locker = lockattr::Locker::builder_with_client(client).build().await?;
    /// # let _ = locker;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder_with_client(client: redis::Client) -> LockerBuilder {
        LockerBuilder::new(Target::Client(Box::new(client)))
    }

    /// Starts configuring a `Locker` for a Redis Cluster, from the URLs of some of its nodes
    /// (`redis://host:port` or `rediss://host:port`; one reachable node is enough, the others
    /// are discovered).
    ///
    /// Everything works as on one Redis: every key of one lock shares one hash tag, so it lives
    /// in one slot and each script runs on that slot's master; on Redis 7 or newer, releases are
    /// announced on *sharded* channels (`SPUBLISH`/`SSUBSCRIBE`), which stay in the lock's shard
    /// instead of being broadcast to every node. Commands follow `MOVED`/`ASK` redirections and
    /// topology changes, scripts are reloaded on a freshly promoted master.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lockattr::Error> {
    /// let locker = lockattr::Locker::cluster([
    ///     "redis://10.0.0.1:7000",
    ///     "redis://10.0.0.2:7000",
    ///     "redis://10.0.0.3:7000",
    /// ])
    /// .build()
    /// .await?;
    /// let guard = locker.lock("party:42").await?;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// What a failover can and cannot preserve is in the crate docs (replication is
    /// asynchronous).
    pub fn cluster(nodes: impl IntoIterator<Item = impl Into<String>>) -> LockerBuilder {
        LockerBuilder::new(Target::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// Starts configuring a `Locker` over a Redis Cluster client you built (TLS certificates,
    /// credentials, retries). Build it with `.use_protocol(redis::ProtocolVersion::RESP3)`:
    /// release announcements need RESP3 pushes; without them waiters fall back to timers.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lockattr::Error> {
    /// let client = redis::cluster::ClusterClientBuilder::new(["redis://10.0.0.1:7000"])
    ///     .use_protocol(redis::ProtocolVersion::RESP3)
    ///     .username("locks")
    ///     .password("secret")
    ///     .build()?;
    /// let locker = lockattr::Locker::cluster_with_client(client).build().await?;
    /// # let _ = locker;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster_with_client(client: redis::cluster::ClusterClient) -> LockerBuilder {
        LockerBuilder::new(Target::ClusterClient(Box::new(client)))
    }

    /// Starts configuring a `Locker` for the Redis master that Sentinel names `master_name`,
    /// from the URLs of some sentinels (`redis://127.0.0.1:26379`, `rediss://..`), followed
    /// across failovers.
    ///
    /// The master is resolved through the sentinels (and checked with `ROLE`), and resolved
    /// again when it refuses a write as a demoted replica (`READONLY`: the write is sent once
    /// more to the new master), when its connection breaks, and at once when any sentinel
    /// announces the new master (`+promoted-slave`, `+switch-master`; every sentinel the first
    /// reachable one knows is watched); the pub/sub connection follows it. While no master is
    /// reachable, calls keep looking for one until their operation timeout and then fail with
    /// an error that says so.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lockattr::Error> {
    /// use std::time::Duration;
    ///
    /// let locker = lockattr::Locker::sentinel(
    ///     "mymaster",
    ///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    /// )
    /// .wait_for_replicas(1, Duration::from_millis(200)) // optional, see its docs
    /// .build()
    /// .await?;
    /// let guard = locker.lock("party:42").await?;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// What holds across a failover, with and without `wait_for_replicas`, is in the crate
    /// docs.
    pub fn sentinel(
        master_name: impl Into<String>,
        sentinels: impl IntoIterator<Item = impl Into<String>>,
    ) -> LockerBuilder {
        LockerBuilder::new(Target::Sentinel {
            master: master_name.into(),
            sentinels: sentinels.into_iter().map(Into::into).collect(),
        })
    }

    /// Like [`sentinel`](Self::sentinel), over a redis-rs `SentinelClient` you built (for
    /// credentials or TLS settings of the sentinels and of the data nodes); `master_name` must
    /// be the name it was built for.
    pub fn sentinel_with_client(
        master_name: impl Into<String>,
        client: redis::sentinel::SentinelClient,
    ) -> LockerBuilder {
        LockerBuilder::new(Target::SentinelClient {
            master: master_name.into(),
            client: SentinelClientOnce(Arc::new(std::sync::Mutex::new(Some(client)))),
        })
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
        LockRequest::new(self.core.clone(), LockKey::from_user(key.into()))
    }

    /// Like [`lock`](Self::lock) with a zero wait: one attempt, `Err(Error::Timeout)` if the
    /// lock is busy. A busy lock held by another task of this process costs no round trip.
    pub fn try_lock(&self, key: impl Into<String>) -> LockRequest {
        self.lock(key).wait(Duration::ZERO)
    }

    /// The namespace prefixed to every Redis key of this locker.
    pub fn namespace(&self) -> &str {
        &self.core.config.namespace
    }

    /// The Redis key that holds the lock `key` (for inspection and tests), e.g.
    /// `lock:{party:42}`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] as for [`lock`](Self::lock).
    pub fn redis_key(&self, key: &str) -> Result<String, Error> {
        Ok(self.names(key)?.lock().to_owned())
    }

    fn names(&self, key: &str) -> Result<RedisNames, Error> {
        let key = LockKey::from_user(key.to_owned())?;
        Ok(RedisNames::new(&self.core.config.namespace, &key))
    }

    /// What Redis holds for the lock `key` right now: `None` when nobody holds it, else who
    /// holds it and how (see [`LockInfo`]). One round trip; a snapshot that may be out of date
    /// by the time it is read.
    ///
    /// ```no_run
    /// # async fn demo(locker: lockattr::Locker) -> Result<(), lockattr::Error> {
    /// match locker.inspect("party:42").await? {
    ///     None => println!("free"),
    ///     Some(info) => println!(
    ///         "held for another {:?}, fencing token {:?}, waiters: {}",
    ///         info.remaining_lease, info.fencing_token, info.contended
    ///     ),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidKey`] as for [`lock`](Self::lock); [`Error::Redis`] or
    /// [`Error::OperationTimeout`] when Redis fails.
    pub async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, Error> {
        let names = self.names(key)?;
        let store = &self.core.store;
        let Some((value, pttl)) = Box::pin(store.inspect(&names, store.deadline())).await? else {
            return Ok(None);
        };
        let local_waiters = self.core.queues.waiting(names.lock()).unwrap_or(0);
        let local = self.core.queues.holder(names.lock());
        Ok(Some(LockInfo::from_store(
            &value,
            pttl,
            local_waiters,
            local.as_ref().and_then(|(t, f)| Some((&**t, (*f)?))),
        )))
    }

    /// Deletes the lock `key` whoever holds it: an administrative unlock, for a lock whose
    /// holder is stuck. Returns `true` when a lock was deleted, `false` when there was none (or
    /// the key holds a value lockattr did not write, which is left alone).
    ///
    /// The holder is not asked: it finds out at its next renewal or at its release and then
    /// sees [`Error::Lost`] (its critical section is cancelled under `run` and the attribute),
    /// but until then it runs on believing it holds the lock, while a waiter, which is woken at
    /// once, may enter. Use it when the holder is known to be gone or stuck, and prefer fencing
    /// tokens in the storage the lock protects.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] as for [`lock`](Self::lock); [`Error::Redis`] or
    /// [`Error::OperationTimeout`] when Redis fails.
    pub async fn force_unlock(&self, key: &str) -> Result<bool, Error> {
        let names = self.names(key)?;
        let store = &self.core.store;
        let deleted = Box::pin(store.force_unlock(&names, store.deadline())).await?;
        if deleted == 1 {
            tracing::warn!(target: "lockattr", key, "lock deleted by force_unlock");
        }
        Ok(deleted == 1)
    }
}

/// Where a builder connects to.
#[derive(Debug, Clone)]
enum Target {
    Url(String),
    Client(Box<redis::Client>),
    Cluster(Vec<String>),
    ClusterClient(Box<redis::cluster::ClusterClient>),
    Sentinel {
        master: String,
        sentinels: Vec<String>,
    },
    SentinelClient {
        master: String,
        client: SentinelClientOnce,
    },
    Memory(MemoryStore),
}

/// A `SentinelClient` (neither `Clone` nor `Debug`) that one build takes.
#[derive(Clone)]
struct SentinelClientOnce(Arc<std::sync::Mutex<Option<redis::sentinel::SentinelClient>>>);

impl fmt::Debug for SentinelClientOnce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SentinelClient")
    }
}

/// Settings for a [`Locker`]; create it with [`Locker::builder`].
#[derive(Debug, Clone)]
#[must_use = "call .build().await to connect"]
pub struct LockerBuilder {
    target: Target,
    config: Config,
}

impl LockerBuilder {
    fn new(target: Target) -> Self {
        LockerBuilder {
            target,
            config: Config::default(),
        }
    }

    pub(crate) fn on_memory(store: MemoryStore) -> Self {
        LockerBuilder::new(Target::Memory(store))
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

    /// Longest time a Redis operation may take, connecting included (default 2 s). When Redis
    /// is down or stalls, requests fail with [`Error::Redis`] or [`Error::OperationTimeout`]
    /// within this time of Redis's last answer.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }

    /// How many times in a row a lock may be handed from one task of this process directly to
    /// another waiting task (no release, one round trip) before it is released in Redis so that
    /// other processes get a chance (default 16; 0 disables in-process handoff).
    pub fn handoff_limit(mut self, limit: u32) -> Self {
        self.config.handoff_limit = limit;
        self
    }

    /// Every acquisition (taking the lock, a handover) and every renewal returns only after
    /// `replicas` replicas acknowledged the write (Redis's `WAIT replicas timeout`, pipelined
    /// on the same connection). Otherwise an acquisition is undone (the lock is released) and
    /// fails with [`Error::NotReplicated`], which names the replicas and how many acknowledged;
    /// a renewal counts as not done. Direct grants between processes are off with it (a waiter
    /// takes the lock with its own, acknowledged, acquisition). Off by default.
    ///
    /// It narrows, but does not close, the failover gap: a lock or renewal that at least
    /// `replicas` replicas hold survives the master's loss if one of them is promoted (Sentinel
    /// and Cluster promote the most up to date replica they can reach). `WAIT` is not consensus:
    /// an acknowledged write can still be lost (a replica that acknowledged can fail too, or be
    /// passed over), and a write can reach replicas even when the acknowledgement timed out.
    /// The cost is the replication round trip on every acquisition and renewal (see
    /// `BENCHMARKS.md`), and the timeout whenever replicas are slow or gone. `timeout` must be
    /// shorter than the operation timeout.
    pub fn wait_for_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.config.replicas = Some((replicas, timeout));
        self
    }

    /// Has no effect: fencing tokens no longer use a per-key counter (they come from Redis's
    /// clock, see the crate docs), so there is no counter to expire.
    #[deprecated(note = "fencing tokens no longer use a per-key counter in Redis; remove the call")]
    pub fn fence_ttl(self, ttl: Duration) -> Self {
        let _ = ttl;
        self
    }

    /// Checks the settings, connects and loads the scripts.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad namespace or zero durations, [`Error::Redis`] when
    /// the URL is malformed or Redis refuses, [`Error::OperationTimeout`] when Redis does not
    /// answer within the operation timeout.
    pub async fn build(self) -> Result<Locker, Error> {
        let config = self.config;
        config.check()?;
        #[cfg(feature = "tls-rustls")]
        {
            // rustls needs a process-wide crypto provider; install ours unless the application
            // installed one already (then this does nothing).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let store = match self.target {
            Target::Url(url) => {
                Store::standalone(redis::Client::open(url.as_str())?, &config).await?
            }
            Target::Client(client) => Store::standalone(*client, &config).await?,
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(Error::config(
                        "no cluster nodes given; pass the URL of at least one node",
                    ));
                }
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .build()?;
                Store::cluster(client, &config).await?
            }
            Target::ClusterClient(client) => Store::cluster(*client, &config).await?,
            Target::Sentinel { master, sentinels } => {
                if sentinels.is_empty() {
                    return Err(Error::config(
                        "no sentinels given; pass the URL of at least one sentinel",
                    ));
                }
                let client = redis::sentinel::SentinelClient::build(
                    sentinels,
                    master.clone(),
                    None,
                    redis::sentinel::SentinelServerType::Master,
                )?;
                Store::sentinel(master, client, &config).await?
            }
            Target::SentinelClient { master, client } => {
                let client = crate::sync::lock(&client.0).take().ok_or_else(|| {
                    Error::config(
                        "this SentinelClient was used by an earlier build; pass a new one for \
                         each Locker",
                    )
                })?;
                Store::sentinel(master, client, &config).await?
            }
            Target::Memory(store) => {
                if config.replicas.is_some() {
                    return Err(Error::config(
                        "wait_for_replicas needs a Redis with replicas; an in-memory store has none",
                    ));
                }
                Store::memory(&store)
            }
        };
        Ok(Locker {
            core: Core::new(store, config),
        })
    }
}
