//! The lock protocol in this process's memory, for tests without Redis.
//!
//! It runs the same protocol as the Lua scripts (`scripts`), step for step, over the same
//! lock values (`protocol::LockValue`): marks, registrations, direct grants, handovers, the
//! treatment of values it did not write. So everything above the store (the local queue, the
//! lease clock, renewal and loss, the waiting loop, cancellation) is exercised exactly as it is
//! on Redis. What differs is only what Redis itself provides:
//!
//! * leases expire by **tokio's clock** (`tokio::time::Instant`), so `tokio::time::pause()` and
//!   `#[tokio::test(start_paused = true)]` control them;
//! * fencing tokens are the store's clock in microseconds, as Redis's are its `TIME`: the wall
//!   clock when the store was made, moved on by tokio's clock (so paused time moves it too),
//!   and raised above the last token issued, so they strictly increase and
//!   [`LockInfo::held_since`](crate::LockInfo::held_since) says when a holder took the lock;
//! * announcements are delivered directly to every `Locker` on the store that listens;
//! * nothing is shared with other processes, and nothing fails: there is no connection.
//!
//! Several `Locker`s on one [`MemoryStore`] behave like several processes on one Redis.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::channels::{Channels, Subscription};
use super::AttemptKind;
use crate::config::millis;
use crate::key::RedisNames;
use crate::protocol::{
    fence_from_time, registration_live, Announcement, AttemptReply, LockValue, Mark, ReleaseReply,
    FENCE_SLOTS,
};
use crate::sync::lock;

/// An in-memory store that several `Locker`s can share, like processes sharing one Redis.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockattr::Error> {
/// let store = lockattr::MemoryStore::new();
/// let (a, b) = (store.locker(), store.locker()); // two "processes"
/// let guard = a.lock("party:42").await?;
/// assert!(b.try_lock("party:42").await.unwrap_err().is_timeout());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("locks", &lock(&self.shared.state).locks.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

struct State {
    locks: HashMap<String, Entry>,
    /// The last fencing token issued.
    fence: u64,
    /// Every `Locker`'s announcement listeners.
    listeners: Vec<Weak<Channels>>,
    /// The store's clock origin, for registration times (Redis uses its clock in ms) and
    /// fencing tokens.
    epoch: Instant,
    /// The wall clock at `epoch` in microseconds since 1970: the store's clock reads this plus
    /// tokio's time since `epoch`.
    epoch_us: u64,
    /// `locks.len()` after the last sweep of expired entries.
    swept_at: usize,
}

impl Default for State {
    fn default() -> Self {
        State {
            locks: HashMap::new(),
            fence: 0,
            listeners: Vec::new(),
            epoch: Instant::now(),
            epoch_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            swept_at: 0,
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: String,
    expires_at: Instant,
}

impl MemoryStore {
    /// A new, empty store.
    #[must_use]
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A new `Locker` on this store with the default settings; each call is like another
    /// process. For other settings use [`builder`](Self::builder).
    pub fn locker(&self) -> crate::Locker {
        crate::Locker::on_memory(self.clone(), crate::config::Config::default())
    }

    /// Configures a `Locker` on this store (namespace, default wait and lease, handoff limit);
    /// `build().await` returns at once.
    pub fn builder(&self) -> crate::LockerBuilder {
        crate::LockerBuilder::on_memory(self.clone())
    }

    /// The store as one `Locker` sees it: the shared locks, and that locker's own listeners.
    pub(crate) fn view(&self) -> MemoryView {
        let channels = Arc::new(Channels::default());
        lock(&self.shared.state)
            .listeners
            .push(Arc::downgrade(&channels));
        MemoryView {
            shared: self.shared.clone(),
            channels,
        }
    }
}

/// One `Locker`'s handle on a [`MemoryStore`].
pub(crate) struct MemoryView {
    shared: Arc<Shared>,
    channels: Arc<Channels>,
}

impl fmt::Debug for MemoryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryView").finish_non_exhaustive()
    }
}

/// What a step of the protocol announces, delivered once the store's lock is released.
type Announce = Option<(String, Announcement)>;

impl State {
    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The store's clock in microseconds, raised above the last token (`fence_after` in the
    /// scripts).
    /// A fencing token as Redis issues them: the store's clock in microseconds times
    /// [`FENCE_SLOTS`], and always a multiple of it above every earlier one (the numbers in
    /// between are the acquisition's, for its local handovers).
    fn next_fence(&mut self, now: Instant) -> u64 {
        let since = u64::try_from(now.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX);
        let clock = fence_from_time(0, self.epoch_us.saturating_add(since));
        let next_slot = (self.fence / FENCE_SLOTS + 1).saturating_mul(FENCE_SLOTS);
        self.fence = clock.max(next_slot);
        self.fence
    }

    /// The live entry of `name` (an expired one is removed).
    fn live(&mut self, name: &str, now: Instant) -> Option<&mut Entry> {
        if self.locks.get(name).is_some_and(|e| e.expires_at <= now) {
            self.locks.remove(name);
        }
        self.locks.get_mut(name)
    }

    fn insert(&mut self, name: &str, value: String, lease: Duration, now: Instant) {
        self.locks.insert(
            name.to_owned(),
            Entry {
                value,
                expires_at: now + lease,
            },
        );
        // Expired entries nobody looks at again are swept when the map has doubled since the
        // last sweep, so the store's size follows the locks that are held.
        if self.locks.len() > 64 && self.locks.len() >= 2 * self.swept_at {
            self.locks.retain(|_, e| e.expires_at > now);
            self.swept_at = self.locks.len();
        }
    }
}

fn remaining(entry: &Entry, now: Instant) -> Duration {
    entry.expires_at.saturating_duration_since(now)
}

impl MemoryView {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Delivers an announcement to every locker listening; returns how many did.
    fn announce(&self, announce: Announce) -> u64 {
        let Some((channel, announcement)) = announce else {
            return 0;
        };
        let listeners: Vec<Arc<Channels>> = {
            let mut st = self.state();
            st.listeners.retain(|w| w.strong_count() > 0);
            st.listeners.iter().filter_map(Weak::upgrade).collect()
        };
        let mut reached = 0;
        for channels in listeners {
            if channels.deliver(&channel, announcement.clone()) {
                reached += 1;
            }
        }
        reached
    }

    /// See `ACQUIRE_BODY` and `try_plain` in `scripts`.
    pub(crate) fn attempt(
        &self,
        names: &RedisNames,
        token: &str,
        lease: Duration,
        kind: AttemptKind<'_>,
    ) -> AttemptReply {
        let now = Instant::now();
        let mut st = self.state();
        let name = names.lock();
        if st.live(name, now).is_none() {
            // The fast path's `SET token NX PX` issues no fencing token (`fence` does, when
            // asked), or reads it without writing it (`TIME` after the `SET`); the script
            // writes `token@fence`.
            let (fence, written) = match kind {
                AttemptKind::Plain { fenced: false } => (None, None),
                AttemptKind::Plain { fenced: true } => (Some(st.next_fence(now)), None),
                AttemptKind::Scripted { .. } => {
                    let f = st.next_fence(now);
                    (Some(f), Some(f))
                }
            };
            let value = LockValue {
                owner: token,
                fence: written,
                mark: Mark::None,
            };
            st.insert(name, value.render(), lease, now);
            return AttemptReply::Taken { fence };
        }
        let AttemptKind::Scripted {
            registered,
            grant_lease,
        } = kind
        else {
            return AttemptReply::Busy {
                holder_ttl: None,
                registered: false,
                foreign: false,
            };
        };
        let now_ms = st.now_ms(now);
        let entry = st.live(name, now).expect("checked above");
        let holder_ttl = Some(remaining(entry, now));
        let Some(value) = LockValue::parse(&entry.value) else {
            return AttemptReply::Busy {
                holder_ttl,
                registered: false,
                foreign: true,
            };
        };
        if let (Some(reg), Some(fence)) = (registered, value.fence) {
            if value.owner == reg {
                // Granted to our registration and the announcement was missed.
                entry.expires_at = now + lease;
                return AttemptReply::Granted { fence };
            }
        }
        let live = match value.mark {
            Mark::Registered {
                grant_lease_ms,
                registered_ms,
                ..
            } => registration_live(now_ms, registered_ms, grant_lease_ms),
            _ => false,
        };
        let mut is_registered = false;
        if !live {
            let marked = LockValue {
                owner: value.owner,
                fence: value.fence,
                mark: Mark::Registered {
                    waiter: token,
                    grant_lease_ms: millis(grant_lease),
                    registered_ms: now_ms,
                },
            }
            .render();
            entry.value = marked;
            is_registered = true;
        }
        AttemptReply::Busy {
            holder_ttl,
            registered: is_registered,
            foreign: false,
        }
    }

    /// See `RELEASE_BODY` in `scripts`.
    pub(crate) fn release(&self, names: &RedisNames, token: &str) -> ReleaseReply {
        let now = Instant::now();
        let name = names.lock();
        let announce: Announce = {
            let mut st = self.state();
            let now_ms = st.now_ms(now);
            let Some(entry) = st.live(name, now) else {
                return ReleaseReply::NotOurs;
            };
            let Some(value) = LockValue::parse(&entry.value).filter(|v| v.owner == token) else {
                return ReleaseReply::NotOurs;
            };
            match value.mark {
                Mark::None => {
                    st.locks.remove(name);
                    return ReleaseReply::Released { woke: 0 };
                }
                Mark::Registered {
                    waiter,
                    grant_lease_ms,
                    registered_ms,
                } if registration_live(now_ms, registered_ms, grant_lease_ms) => {
                    let waiter = waiter.to_owned();
                    let fence = st.next_fence(now);
                    let granted = LockValue {
                        owner: &waiter,
                        fence: Some(fence),
                        mark: Mark::Waiting,
                    }
                    .render();
                    st.insert(name, granted, Duration::from_millis(grant_lease_ms), now);
                    Some((
                        names.channel(),
                        Announcement::Granted {
                            token: waiter,
                            fence,
                        },
                    ))
                }
                _ => {
                    st.locks.remove(name);
                    Some((names.channel(), Announcement::Released))
                }
            }
        };
        ReleaseReply::Released {
            woke: self.announce(announce),
        }
    }

    /// See `RENEW_BODY` in `scripts` (the fencing token it records is the one the fast path
    /// issued, kept beside the value).
    pub(crate) fn renew(
        &self,
        names: &RedisNames,
        token: &str,
        fence: Option<u64>,
        lease: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut st = self.state();
        let Some(entry) = st.live(names.lock(), now) else {
            return false;
        };
        let Some(v) = LockValue::parse(&entry.value).filter(|v| v.owner == token) else {
            return false;
        };
        // Records the holder's token, when it has one, if the value lacks it or carries an
        // earlier holder's (a local handover), as `RENEW_BODY` does.
        if fence.is_some() && v.fence != fence {
            entry.value = LockValue { fence, ..v }.render();
        }
        entry.expires_at = now + lease;
        true
    }

    /// See `FENCE_BODY` in `scripts`.
    pub(crate) fn fence(&self, names: &RedisNames, token: &str) -> Option<u64> {
        let now = Instant::now();
        let mut st = self.state();
        let value = st.live(names.lock(), now)?.value.clone();
        let v = LockValue::parse(&value).filter(|v| v.owner == token)?;
        // The store's clock is above every token it issued, `v.fence` included.
        let fence = st.next_fence(now);
        let next = LockValue {
            fence: Some(fence),
            ..v
        }
        .render();
        if let Some(entry) = st.live(names.lock(), now) {
            entry.value = next;
        }
        Some(fence)
    }

    /// See `HANDOFF_BODY` in `scripts`.
    pub(crate) fn handoff(
        &self,
        names: &RedisNames,
        old_token: &str,
        new_token: &str,
        lease: Duration,
    ) -> Option<u64> {
        let now = Instant::now();
        let mut st = self.state();
        let name = names.lock();
        let value = st.live(name, now)?.value.clone();
        let old = LockValue::parse(&value).filter(|v| v.owner == old_token)?;
        let fence = st.next_fence(now);
        let next = LockValue {
            owner: new_token,
            fence: Some(fence),
            mark: old.mark,
        }
        .render();
        st.insert(name, next, lease, now);
        Some(fence)
    }

    /// See `WITHDRAW_BODY` in `scripts`.
    pub(crate) fn withdraw(&self, names: &RedisNames, token: &str) {
        let now = Instant::now();
        let name = names.lock();
        let announce: Announce = {
            let mut st = self.state();
            let Some(entry) = st.live(name, now) else {
                return;
            };
            let Some(value) = LockValue::parse(&entry.value) else {
                return;
            };
            if value.owner == token {
                let marked = value.mark != Mark::None;
                st.locks.remove(name);
                marked.then(|| (names.channel(), Announcement::Released))
            } else if matches!(value.mark, Mark::Registered { waiter, .. } if waiter == token) {
                entry.value = LockValue {
                    mark: Mark::Waiting,
                    ..value
                }
                .render();
                None
            } else {
                None
            }
        };
        self.announce(announce);
    }

    /// See `INSPECT_BODY` in `scripts`.
    pub(crate) fn inspect(&self, names: &RedisNames) -> Option<(String, Option<u64>)> {
        let now = Instant::now();
        let mut st = self.state();
        let entry = st.live(names.lock(), now)?;
        Some((entry.value.clone(), Some(millis(remaining(entry, now)))))
    }

    /// See `FORCE_UNLOCK_BODY` in `scripts`.
    pub(crate) fn force_unlock(&self, names: &RedisNames) -> i64 {
        let now = Instant::now();
        let name = names.lock();
        {
            let mut st = self.state();
            let Some(entry) = st.live(name, now) else {
                return 0;
            };
            if LockValue::parse(&entry.value).is_none() {
                return -1;
            }
            st.locks.remove(name);
        }
        self.announce(Some((names.channel(), Announcement::Released)));
        1
    }

    /// Listens to `channel`: confirmed at once.
    pub(crate) fn subscribe(&self, channel: String) -> Subscription {
        let mut sub = Subscription::new(self.channels.clone(), None, channel);
        sub.confirmed = true;
        sub
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: AttemptKind<'static> = AttemptKind::Plain { fenced: false };
    use crate::key::LockKey;

    fn names(k: &str) -> RedisNames {
        RedisNames::new("lock", &LockKey::from_user(k.to_owned()).unwrap())
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn scripted(registered: Option<&str>) -> AttemptKind<'_> {
        AttemptKind::Scripted {
            registered,
            grant_lease: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_by_tokios_clock() {
        let store = MemoryStore::new().view();
        let n = names("k");
        let lease = Duration::from_millis(100);
        assert_eq!(
            store.attempt(&n, A, lease, PLAIN),
            AttemptReply::Taken { fence: None }
        );
        let first = store.fence(&n, A).expect("A holds it");
        assert!(matches!(
            store.attempt(&n, B, lease, PLAIN),
            AttemptReply::Busy { .. }
        ));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!store.renew(&n, A, Some(first), lease), "expired");
        assert_eq!(store.fence(&n, A), None, "an expired lock gets no token");
        assert_eq!(
            store.attempt(&n, B, lease, PLAIN),
            AttemptReply::Taken { fence: None }
        );
        let second = store.fence(&n, B).expect("B holds it");
        // The store's clock in microseconds times 100: 100 ms later.
        assert_eq!(second - first, 100_000 * FENCE_SLOTS);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fast_path_issues_its_token_when_asked() {
        let store = MemoryStore::new().view();
        let n = names("p");
        let lease = Duration::from_secs(1);
        assert_eq!(
            store.attempt(&n, A, lease, PLAIN),
            AttemptReply::Taken { fence: None }
        );
        assert_eq!(store.inspect(&n).unwrap().0, A, "like `SET token NX PX`");
        // A contender marks it without inventing a token; a renewal without one adds none.
        store.attempt(&n, B, lease, scripted(None));
        assert!(store.renew(&n, A, None, lease));
        let marked = store.inspect(&n).unwrap().0;
        assert!(marked.starts_with(&format!("{A}!{B}:")), "{marked}");
        // Only the owner is issued a token; it is recorded, the mark kept.
        assert_eq!(store.fence(&n, B), None);
        let fence = store.fence(&n, A).expect("A holds it");
        let fenced = store.inspect(&n).unwrap().0;
        assert!(fenced.starts_with(&format!("{A}@{fence}!{B}:")), "{fenced}");
        // Asked again, a fresh one above it (the hold keeps its first).
        let again = store.fence(&n, A).expect("A holds it");
        assert!(again > fence);
        // A renewal after a local handover records the handover's token.
        assert!(store.renew(&n, A, Some(again + 1), lease));
        let renewed = store.inspect(&n).unwrap().0;
        assert!(
            renewed.starts_with(&format!("{A}@{}!{B}:", again + 1)),
            "{renewed}"
        );
        // With the token asked for in the attempt, it is issued at once, not written.
        let e = names("e");
        let AttemptReply::Taken { fence: Some(eager) } =
            store.attempt(&e, A, lease, AttemptKind::Plain { fenced: true })
        else {
            panic!("a free lock is taken with a token")
        };
        assert!(eager > again);
        assert_eq!(
            store.inspect(&e).unwrap().0,
            A,
            "like `SET token NX PX` + `TIME`"
        );
        // A scripted attempt on a free lock writes it at once.
        let s = names("s");
        let AttemptReply::Taken { fence: Some(fence) } =
            store.attempt(&s, A, lease, scripted(None))
        else {
            panic!("a free lock is taken with a token")
        };
        assert_eq!(store.inspect(&s).unwrap().0, format!("{A}@{fence}"));
    }

    #[tokio::test(start_paused = true)]
    async fn fencing_tokens_are_the_clock_and_strictly_increase() {
        let store = MemoryStore::new().view();
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let lease = Duration::from_secs(1);
        let mut last = 0;
        // Within one microsecond of paused time, each token is still above the one before,
        // whether a script issues it or the first request of a fast-path holder.
        for i in 0..10 {
            let n = names(&format!("c{i}"));
            let fence = if i % 2 == 0 {
                let AttemptReply::Taken { fence: Some(f) } =
                    store.attempt(&n, A, lease, scripted(None))
                else {
                    panic!("a free lock is taken")
                };
                f
            } else {
                store.attempt(&n, A, lease, PLAIN);
                store.fence(&n, A).expect("A holds it")
            };
            assert!(fence > last, "{fence} after {last}");
            assert_eq!(fence % FENCE_SLOTS, 0, "the store issues multiples of 100");
            last = fence;
        }
        let held_since = u128::from(last / FENCE_SLOTS);
        assert!(
            held_since.abs_diff(now_us) < 5_000_000,
            "{held_since} vs {now_us}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_grants_to_a_live_registration_and_announces() {
        let shared = MemoryStore::new();
        let holder = shared.view();
        let waiter = shared.view();
        let n = names("g");
        let lease = Duration::from_secs(10);
        holder.attempt(&n, A, lease, PLAIN);
        let first = holder.fence(&n, A).expect("A holds it");
        let sub = waiter.subscribe(n.channel());
        assert!(matches!(
            waiter.attempt(&n, B, lease, scripted(None)),
            AttemptReply::Busy {
                registered: true,
                foreign: false,
                ..
            }
        ));
        assert_eq!(holder.release(&n, A), ReleaseReply::Released { woke: 1 });
        match sub.take_announcement() {
            Some(Announcement::Granted { token, fence }) => {
                assert_eq!(token, B);
                assert!(fence > first);
            }
            other => panic!("{other:?}"),
        }
        assert!(waiter.renew(&n, B, Some(2), lease), "the waiter holds it");
        assert_eq!(waiter.release(&n, B), ReleaseReply::Released { woke: 1 });
    }

    #[tokio::test(start_paused = true)]
    async fn foreign_values_are_left_alone() {
        let store = MemoryStore::new().view();
        let n = names("f");
        lock(&store.shared.state).insert(
            n.lock(),
            "bar".into(),
            Duration::from_secs(5),
            Instant::now(),
        );
        assert!(matches!(
            store.attempt(&n, A, Duration::from_secs(1), scripted(None)),
            AttemptReply::Busy {
                foreign: true,
                registered: false,
                ..
            }
        ));
        assert_eq!(store.force_unlock(&n), -1);
        assert_eq!(store.inspect(&n).unwrap().0, "bar");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept() {
        let store = MemoryStore::new().view();
        for i in 0..1000 {
            store.attempt(
                &names(&format!("k{i}")),
                A,
                Duration::from_millis(10),
                PLAIN,
            );
        }
        tokio::time::advance(Duration::from_millis(20)).await;
        for i in 0..100 {
            store.attempt(
                &names(&format!("later{i}")),
                A,
                Duration::from_secs(1),
                PLAIN,
            );
        }
        assert!(
            lock(&store.shared.state).locks.len() <= 100,
            "only the live ones are left"
        );
    }
}
