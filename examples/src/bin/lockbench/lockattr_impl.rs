//! lockattr behind the bench's [`LockImpl`] interface.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::impls::{BoxFut, Held, LockImpl, LEASE};

struct Lockattr {
    locker: lockattr::Locker,
    /// Request the fencing token with every acquisition and use it (the `lockattr-fenced` row).
    fenced: bool,
}

/// The namespace of the bench's locks: lock `k` is the Redis key `bench:{k}`.
pub const NAMESPACE: &str = "bench";

/// A `Locker` on `url` (one server, or `cluster:<seeds>` for `Locker::cluster`) with
/// namespace `bench` and the bench's lease.
pub async fn build(url: &str) -> Result<Arc<dyn LockImpl>> {
    build_with(url, None).await
}

/// [`build`], with every request `fenced` and every holder using its fencing token.
pub async fn build_fenced(url: &str) -> Result<Arc<dyn LockImpl>> {
    Ok(Arc::new(Lockattr {
        locker: locker(url, None).await?,
        fenced: true,
    }))
}

/// [`build`], with `LockerBuilder::wait_for_replicas(n, timeout)` when `replicas` is
/// `Some((n, timeout))`.
pub async fn build_with(
    url: &str,
    replicas: Option<(usize, Duration)>,
) -> Result<Arc<dyn LockImpl>> {
    Ok(Arc::new(Lockattr {
        locker: locker(url, replicas).await?,
        fenced: false,
    }))
}

async fn locker(url: &str, replicas: Option<(usize, Duration)>) -> Result<lockattr::Locker> {
    let builder = match crate::impls::cluster_seeds(url) {
        Some(seeds) => lockattr::Locker::cluster(seeds),
        None => lockattr::Locker::builder(url),
    };
    let mut builder = builder.namespace(NAMESPACE).default_lease(LEASE);
    if let Some((n, timeout)) = replicas {
        builder = builder.wait_for_replicas(n, timeout);
    }
    Ok(builder.build().await?)
}

impl LockImpl for Lockattr {
    fn acquire<'a>(&'a self, key: &'a str, wait: Duration) -> BoxFut<'a, Result<Box<dyn Held>>> {
        Box::pin(async move {
            let guard = if self.fenced {
                let guard = self.locker.lock(key).wait(wait).fenced(true).await?;
                guard.fencing_token().await?;
                guard
            } else {
                self.locker.lock(key).wait(wait).await?
            };
            Ok(Box::new(Guard(guard)) as Box<dyn Held>)
        })
    }
}

struct Guard(lockattr::LockGuard);

impl Held for Guard {
    fn release(self: Box<Self>) -> BoxFut<'static, Result<()>> {
        Box::pin(async move { Ok(self.0.release().await?) })
    }
}
