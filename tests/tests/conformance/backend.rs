//! The two backends every case runs on, behind one fixture trait.

use std::future::Future;
use std::time::Duration;

use lockattr::{Error, Locker, MemoryStore};
use lockattr_tests::RedisServer;

/// How long one case may take before it fails, on either backend.
pub const CASE_LIMIT: Duration = Duration::from_secs(20);

/// The settings a case gives a new locker.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub namespace: &'static str,
    pub wait: Duration,
    pub lease: Duration,
    pub handoff_limit: u32,
}

impl Default for Settings {
    /// The library's defaults, except a wait short enough to fail a case well inside
    /// [`CASE_LIMIT`].
    fn default() -> Self {
        Settings {
            namespace: "lock",
            wait: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            handoff_limit: 16,
        }
    }
}

/// Where the locks live: one store per test, and as many lockers on it as the case wants.
pub trait Backend {
    /// For messages.
    const NAME: &'static str;

    /// A fresh, empty store.
    fn start() -> Self;

    /// A new locker on this store, built from `settings`: another "process" (its own
    /// connection, local queues and lease scheduler).
    fn build(&self, settings: Settings) -> impl Future<Output = Result<Locker, Error>>;

    /// A new locker with the default [`Settings`].
    async fn locker(&self) -> Locker {
        self.locker_with(Settings::default()).await
    }

    /// A new locker with `settings`, which must be valid.
    async fn locker_with(&self, settings: Settings) -> Locker {
        match self.build(settings).await {
            Ok(locker) => locker,
            Err(e) => panic!("{}: building a locker failed: {e}", Self::NAME),
        }
    }
}

/// A real `redis-server` of this test's own; every locker connects to it.
#[derive(Debug)]
pub struct Redis {
    server: RedisServer,
}

impl Backend for Redis {
    const NAME: &'static str = "redis";

    fn start() -> Self {
        Redis {
            server: RedisServer::start(),
        }
    }

    async fn build(&self, s: Settings) -> Result<Locker, Error> {
        Locker::builder(self.server.url())
            .namespace(s.namespace)
            .default_wait(s.wait)
            .default_lease(s.lease)
            .handoff_limit(s.handoff_limit)
            .operation_timeout(Duration::from_secs(2))
            .build()
            .await
    }
}

/// A [`MemoryStore`] of this test's own; every locker is built on it.
#[derive(Debug)]
pub struct Memory {
    store: MemoryStore,
}

impl Backend for Memory {
    const NAME: &'static str = "memory";

    fn start() -> Self {
        Memory {
            store: MemoryStore::new(),
        }
    }

    async fn build(&self, s: Settings) -> Result<Locker, Error> {
        self.store
            .builder()
            .namespace(s.namespace)
            .default_wait(s.wait)
            .default_lease(s.lease)
            .handoff_limit(s.handoff_limit)
            .operation_timeout(Duration::from_secs(2))
            .build()
            .await
    }
}

/// Runs one case's future (made on a backend `B`), failing it if it takes longer than
/// [`CASE_LIMIT`]. The limit is checked when the case yields, so every loop in a case
/// awaits a timer: on the memory store, lock operations alone never yield (see
/// [`scheduling`](crate::scheduling)).
pub async fn bounded<B: Backend>(case: impl Future<Output = ()>) {
    if tokio::time::timeout(CASE_LIMIT, case).await.is_err() {
        panic!("{}: the case did not finish within {CASE_LIMIT:?}", B::NAME);
    }
}
