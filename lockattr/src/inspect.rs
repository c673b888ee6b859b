//! What [`Locker::inspect`](crate::Locker::inspect) reports about a lock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::protocol::{LockValue, Mark, FENCE_SLOTS};

/// A lock as Redis (and this `Locker`) sees it at one moment: for operators and tests.
///
/// Returned by [`Locker::inspect`](crate::Locker::inspect) when the lock's key exists.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// How much longer the lock lasts unless its holder renews it (Redis's remaining TTL);
    /// `None` when the key has no TTL, which only a value lockattr did not write can lack.
    pub remaining_lease: Option<Duration>,
    /// The holder's fencing token, once it has one: a lock taken through a script (a contended
    /// acquisition, a direct grant, a handover) has it at once, and Redis records it; a lock
    /// taken by the uncontended fast path has none until its holder first asks for it
    /// ([`LockGuard::fencing_token`](crate::LockGuard::fencing_token)), which records it (with
    /// [`LockRequest::fenced`](crate::LockRequest::fenced) it has one at once, which Redis
    /// records with the first renewal; this `Locker` knows it before). `None` otherwise.
    pub fencing_token: Option<u64>,
    /// When the holder's fencing token was issued, by Redis's clock (tokens are that clock in
    /// microseconds times 100), when there is one: for a lock taken through a script, when it
    /// was taken from Redis (by the current holder, or by the first of the holders it was
    /// handed on between in this process); for a fast-path lock, when its holder first asked
    /// for the token, which is some time after it took the lock.
    pub held_since: Option<SystemTime>,
    /// A contender of another process or `Locker` found the lock busy: its release will be
    /// announced to it.
    pub contended: bool,
    /// A contender is registered for a direct grant: the release will hand it the lock.
    pub waiter_registered: bool,
    /// Tasks of this `Locker` waiting for the key: the one that contends in Redis for this
    /// process and those queued behind it locally (other processes' waiters are not counted).
    pub local_waiters: usize,
    /// The key holds a value that lockattr did not write (an operator's `SET`, another
    /// library): contenders treat it as busy and never change it, and
    /// [`force_unlock`](crate::Locker::force_unlock) leaves it alone.
    pub foreign: bool,
}

impl LockInfo {
    /// Builds the report from the key's value and remaining TTL in ms, and the local knowledge
    /// of this `Locker`.
    pub(crate) fn from_store(
        value: &str,
        pttl_ms: Option<u64>,
        local_waiters: usize,
        local_fence: Option<(&str, u64)>,
    ) -> Self {
        let remaining_lease = pttl_ms.map(Duration::from_millis);
        let Some(v) = LockValue::parse(value) else {
            return LockInfo {
                remaining_lease,
                fencing_token: None,
                held_since: None,
                contended: false,
                waiter_registered: false,
                local_waiters,
                foreign: true,
            };
        };
        let fencing_token = v.fence.or_else(|| {
            local_fence
                .filter(|(token, _)| *token == v.owner)
                .map(|(_, fence)| fence)
        });
        LockInfo {
            remaining_lease,
            fencing_token,
            held_since: fencing_token.map(|f| UNIX_EPOCH + Duration::from_micros(f / FENCE_SLOTS)),
            contended: v.mark != Mark::None,
            waiter_registered: matches!(v.mark, Mark::Registered { .. }),
            local_waiters,
            foreign: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn reports() {
        let i = LockInfo::from_store(
            &format!("{T}@176457864412345601!{T}:2000:1"),
            Some(1500),
            2,
            None,
        );
        assert_eq!(i.remaining_lease, Some(Duration::from_millis(1500)));
        assert_eq!(i.fencing_token, Some(176_457_864_412_345_601));
        assert_eq!(
            i.held_since,
            Some(UNIX_EPOCH + Duration::from_micros(1_764_578_644_123_456))
        );
        assert!(i.contended && i.waiter_registered && !i.foreign);
        assert_eq!(i.local_waiters, 2);
        let plain = LockInfo::from_store(T, Some(10), 0, None);
        assert_eq!(plain.fencing_token, None);
        assert!(!plain.contended);
        let local = LockInfo::from_store(T, Some(10), 0, Some((T, 42)));
        assert_eq!(local.fencing_token, Some(42));
        let other = LockInfo::from_store(T, Some(10), 0, Some(("f", 42)));
        assert_eq!(other.fencing_token, None);
        let foreign = LockInfo::from_store("bar", None, 0, None);
        assert!(foreign.foreign && foreign.remaining_lease.is_none());
    }
}
