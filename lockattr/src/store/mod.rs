//! Where locks live: the lock protocol (`protocol`) as operations the lock state machine calls,
//! without knowing what is behind them.
//!
//! [`Store`] is a cheap handle (an `Arc`) over one deployment. Each operation takes a deadline
//! (`until`, see `conn`) and answers in the protocol's terms ([`AttemptReply`],
//! [`ReleaseReply`], fencing tokens), so the state machines above (acquire, wait, release,
//! upkeep) are the same for every deployment.

mod channels;
mod conn;
mod memory;
mod pubsub;
mod redis;
mod sentinel;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use self::channels::Subscription;
pub use self::memory::MemoryStore;
use self::memory::MemoryView;
use self::redis::RedisStore;
use crate::config::Config;
use crate::key::RedisNames;
use crate::protocol::{AttemptReply, ReleaseReply, Token};
use crate::Error;

/// How an acquire attempt is made.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AttemptKind<'a> {
    /// The uncontended fast path: take a free lock, learn nothing about a busy one; with
    /// `fenced`, learn the fencing token in the same round trip (`LockRequest::fenced`).
    Plain { fenced: bool },
    /// The contended path: take a free lock, or find a grant to `registered`, or mark the busy
    /// lock and register for a direct grant of `grant_lease`.
    Scripted {
        registered: Option<&'a str>,
        grant_lease: Duration,
    },
}

/// A handle to the store a `Locker` uses; clones share it.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    Redis(Arc<RedisStore>),
    Memory(Arc<MemoryView>),
}

/// A store being connected to, type-erased: connecting reaches deep into redis-rs, and the
/// futures of callers (`Locker::connect`'s, the caller's own) would otherwise carry all of it,
/// which costs compile time and, for deep callers, the compiler's recursion limit.
pub(crate) type Connecting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Store, Error>> + Send + 'a>>;

/// An in-memory operation answers at once, where Redis would take a round trip during which
/// the runtime runs other tasks: spending the task's cooperative budget keeps a loop of memory
/// operations from starving the other tasks of its thread (it yields once the budget is gone).
async fn yield_like_a_round_trip() {
    tokio::task::consume_budget().await;
}

/// How long an in-memory operation may take: it never waits, so any deadline will do.
const MEMORY_DEADLINE: Duration = Duration::from_secs(3600);

impl Store {
    /// One Redis server.
    pub(crate) fn standalone(client: ::redis::Client, config: &Config) -> Connecting<'_> {
        Box::pin(async move {
            Ok(Store::Redis(Arc::new(
                RedisStore::standalone(client, config).await?,
            )))
        })
    }

    /// A Redis Cluster.
    pub(crate) fn cluster(
        client: ::redis::cluster::ClusterClient,
        config: &Config,
    ) -> Connecting<'_> {
        Box::pin(async move {
            Ok(Store::Redis(Arc::new(
                RedisStore::cluster(client, config).await?,
            )))
        })
    }

    /// The master that Sentinel names `master`, followed across failovers.
    pub(crate) fn sentinel(
        master: String,
        client: ::redis::sentinel::SentinelClient,
        config: &Config,
    ) -> Connecting<'_> {
        Box::pin(async move {
            Ok(Store::Redis(Arc::new(
                RedisStore::sentinel(master, client, config).await?,
            )))
        })
    }

    /// One `Locker`'s view of an in-memory store.
    pub(crate) fn memory(store: &MemoryStore) -> Store {
        Store::Memory(Arc::new(store.view()))
    }

    /// The deadline of one operation started now.
    pub(crate) fn deadline(&self) -> Instant {
        match self {
            Store::Redis(r) => r.deadline(),
            Store::Memory(_) => Instant::now() + MEMORY_DEADLINE,
        }
    }

    /// One acquire attempt for `token` with `lease`.
    pub(crate) async fn attempt(
        &self,
        names: &RedisNames,
        token: &str,
        lease: Duration,
        kind: AttemptKind<'_>,
        until: Instant,
    ) -> Result<AttemptReply, Error> {
        match self {
            Store::Redis(r) => r.attempt(names, token, lease, kind, until).await,
            Store::Memory(m) => {
                yield_like_a_round_trip().await;
                Ok(m.attempt(names, token, lease, kind))
            }
        }
    }

    /// Releases the lock held by `token` (granting it to a registered waiter, announcing it to
    /// a marked one).
    pub(crate) async fn release(
        &self,
        names: &RedisNames,
        token: &str,
        until: Instant,
    ) -> Result<ReleaseReply, Error> {
        match self {
            Store::Redis(r) => r.release(names, token, until).await,
            Store::Memory(m) => {
                yield_like_a_round_trip().await;
                Ok(m.release(names, token))
            }
        }
    }

    /// Sets the lease of the lock held by `token` to `lease` from now, recording `fence` when
    /// given; `false` when not ours.
    pub(crate) async fn renew(
        &self,
        names: &RedisNames,
        token: &str,
        fence: Option<u64>,
        lease: Duration,
        until: Instant,
    ) -> Result<bool, Error> {
        match self {
            Store::Redis(r) => r.renew(names, token, fence, lease, until).await,
            Store::Memory(m) => {
                yield_like_a_round_trip().await;
                Ok(m.renew(names, token, fence, lease))
            }
        }
    }

    /// Issues the fencing token of the lock held by `token` (one taken by the fast path, which
    /// has none yet); `None` when the lock is not `token`'s.
    pub(crate) async fn fence(
        &self,
        names: &RedisNames,
        token: &str,
        until: Instant,
    ) -> Result<Option<u64>, Error> {
        match self {
            Store::Redis(r) => r.fence(names, token, until).await,
            Store::Memory(m) => {
                yield_like_a_round_trip().await;
                Ok(m.fence(names, token))
            }
        }
    }

    /// Moves the lock from `old_token` to `new_token` with `lease`; the new fencing token, or
    /// `None` when the lock was not `old_token`'s.
    pub(crate) async fn handoff(
        &self,
        names: &RedisNames,
        old_token: &str,
        old_fence: Option<u64>,
        new_token: &str,
        lease: Duration,
        until: Instant,
    ) -> Result<Option<u64>, Error> {
        match self {
            Store::Redis(r) => {
                r.handoff(names, old_token, old_fence, new_token, lease, until)
                    .await
            }
            Store::Memory(m) => {
                yield_like_a_round_trip().await;
                Ok(m.handoff(names, old_token, new_token, lease))
            }
        }
    }

    /// The raw lock value and its remaining lease in ms, if the key exists.
    pub(crate) async fn inspect(
        &self,
        names: &RedisNames,
        until: Instant,
    ) -> Result<Option<(String, Option<u64>)>, Error> {
        match self {
            Store::Redis(r) => r.inspect(names, until).await,
            Store::Memory(m) => {
                yield_like_a_round_trip().await;
                Ok(m.inspect(names))
            }
        }
    }

    /// Deletes the lock whoever holds it: `1` deleted, `0` none, `-1` a foreign value (kept).
    pub(crate) async fn force_unlock(
        &self,
        names: &RedisNames,
        until: Instant,
    ) -> Result<i64, Error> {
        match self {
            Store::Redis(r) => r.force_unlock(names, until).await,
            Store::Memory(m) => {
                yield_like_a_round_trip().await;
                Ok(m.force_unlock(names))
            }
        }
    }

    /// Listens to a lock's release channel: confirmed, or not after a failure to reach the
    /// store (see [`Subscription::confirmed`]); an error when the store refused it.
    pub(crate) async fn subscribe(&self, channel: String) -> Result<Subscription, Error> {
        match self {
            Store::Redis(r) => r.subscribe(channel).await,
            Store::Memory(m) => Ok(m.subscribe(channel)),
        }
    }

    /// Withdraws, in the background, a token that may hold the lock or be its registered
    /// waiter (see `scripts::WITHDRAW_BODY`).
    pub(crate) fn spawn_withdraw(&self, names: Arc<RedisNames>, token: Token) {
        if let Store::Memory(m) = self {
            m.withdraw(&names, &token);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // without a runtime, the lock or the registration expires by itself
        };
        let store = self.clone();
        rt.spawn(async move {
            let until = store.deadline();
            if let Store::Redis(r) = &store {
                let _ = r.withdraw(&names, &token, until).await;
            }
        });
    }

    /// Releases, in the background, the lock under any of `tokens` (for an operation whose
    /// outcome is unknown, so that no token that may own the key is left behind), then runs
    /// `then`.
    pub(crate) fn spawn_release(
        &self,
        names: Arc<RedisNames>,
        tokens: Vec<Token>,
        then: impl FnOnce() + Send + 'static,
    ) {
        if let Store::Memory(m) = self {
            for token in &tokens {
                m.release(&names, token);
            }
            then();
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            then();
            return;
        };
        let store = self.clone();
        rt.spawn(async move {
            for token in &tokens {
                let _ = store.release(&names, token, store.deadline()).await;
            }
            then();
        });
    }
}
