//! Declarative Redis distributed locks that are safe at the edges.
//!
//! ```no_run
//! use lockattr::distributed_lock;
//!
//! # #[derive(Debug)] struct Participant;
//! # #[derive(Debug)] enum AppError { Lock(lockattr::Error) }
//! # impl From<lockattr::Error> for AppError { fn from(e: lockattr::Error) -> Self { AppError::Lock(e) } }
//! # struct PartyService;
//! impl PartyService {
//!     /// Runs only while this process holds the Redis lock `party:<party_id>`.
//!     #[distributed_lock(key = "party:<party_id>", wait = "100s", lease = "2s")]
//!     async fn participate(&self, party_id: i64, name: String) -> Result<Participant, AppError> {
//!         // read the party, count its members, insert if there is room ...
//!         # let _ = name;
//!         Ok(Participant)
//!     }
//! }
//!
//! # async fn start() -> Result<(), lockattr::Error> {
//! // Once at startup:
//! lockattr::set_default(lockattr::Locker::connect("redis://127.0.0.1:6379").await?);
//! # Ok(())
//! # }
//! ```
//!
//! The attribute checks the key template and durations at compile time and rewrites the
//! function to take the lock before its body and release it on every exit path. Code that
//! cannot be an annotated function uses the runtime directly:
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockattr::Error> {
//! use std::time::Duration;
//!
//! let locker = lockattr::Locker::connect("redis://127.0.0.1:6379").await?;
//! let guard = locker.lock("party:42").wait(Duration::from_secs(5)).await?;
//! // ... critical section; guard.fencing_token().await? orders this holder after all earlier ones ...
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What you get
//!
//! * **Token-safe ownership.** Each acquisition gets a random 128-bit token; release, renewal
//!   and handoff compare it inside a Lua script, so nobody deletes or extends a lock they do not
//!   own, however late they are. Ownership is never tied to a thread or task.
//! * **Leases that cannot silently run out.** The lease is the lock's TTL in Redis and bounds
//!   how long a crashed holder blocks others. While a guard lives a watchdog renews it every
//!   lease/3. One lease clock per lock decides until when it is held: the send time of the
//!   command that last set the lease, plus that lease, minus a small margin. At that deadline,
//!   whatever replies are still in flight, or as soon as Redis says the lock is not ours, the
//!   lock is *lost*: the critical section is *cancelled* at its next `.await` and the call
//!   returns [`Error::Lost`], instead of going on unprotected. A loss that only the final
//!   release finds (the key was deleted or taken over) makes the call return [`Error::Lost`]
//!   too.
//! * **Fencing tokens.** Every holder of a key can have a number strictly greater than every
//!   earlier holder's and smaller than every later one's ([`LockGuard::fencing_token`],
//!   [`fencing_token()`]), issued by Redis: Redis's clock in microseconds while the lock was
//!   held, times 100 (the 99 numbers above belong to in-process handovers that follow). A lock
//!   taken after waiting, by a grant or a handover has it at once; one taken by the
//!   uncontended fast path gets it the first time its holder asks (one round trip, in which
//!   Redis also checks that the lock is still the holder's: a lost lock gets no token), so a
//!   critical section that never uses a token never pays for it. Storage that remembers the
//!   highest token per resource can reject a stale holder's writes. No holder ever sees a
//!   token Redis did not issue.
//! * **Redis 6 or newer.** Release announcements use RESP3 pushes; `SET ... KEEPTTL` marks
//!   waiters.
//! * **Waiting without spinning.** Tasks of one process that want the same key queue locally;
//!   only one talks to Redis. It marks the busy lock, registers for it and sleeps until the
//!   release is announced on the lock's pub/sub channel (one shared subscription per contended
//!   key per process), with the holder's TTL as a fallback timer. An uncontended lock is taken
//!   with a plain `SET NX PX` (no script, the same one command as a hand-rolled lock) and
//!   released by a compare-and-delete script without any announcement.
//! * **Direct grants between processes.** The release of a lock another process waits for hands
//!   the lock straight to that waiter in the same script, with the waiter's lease and the next
//!   fencing token, and announces it: the waiter holds the lock when the message arrives, with
//!   no round trip of its own. A grant carries at most 2 s of lease (the new holder renews to
//!   its own lease at once; a fixed lease is granted whole), and a waiter is granted the lock
//!   only within half of that after it registered: a waiter that died blocks the lock at most
//!   for the grant's lease, like a holder that died.
//! * **Handoff inside a process.** When the holder releases and another local task waits, the
//!   lock is handed over without ever being free and without a round trip: the next task
//!   starts at once, with the next fencing token and the deadline the lock has in Redis (never
//!   later), and a renewal under its lease confirms the handover behind it; if that renewal
//!   finds the lock gone, the previous holder's release reports [`Error::Lost`] and the next
//!   holder is lost at once. Bounded, so other processes get their turn.
//! * **Cancellation safety.** Dropping a guard releases the lock at once in the background.
//!   Dropping an acquire future at any point leaves no lock, queue entry or subscription
//!   behind, even when Redis granted the lock just as the future was dropped.
//! * **A small footprint.** lockattr keeps the lock key in Redis while the lock is held, and
//!   nothing else: no counters, no per-key state after the release. A key holding a value
//!   lockattr did not write is treated as busy and never written to.
//! * **Reentrancy.** Under [`LockRequest::run`] and the attribute, a nested call in the same task
//!   for a key the task already holds enters at once.
//! * **Escaped, namespaced keys.** See [Keys](#keys).
//!
//! # Keys
//!
//! The lock `party:42` of a locker with namespace `lock` (the default) is the Redis key
//! `lock:{party:42}`, and its release channel is `lock:{party:42}:released`: both share the
//! hash tag `{party:42}`, so they live in one Redis Cluster slot. In a key, `%`, `{`, `}` and control characters are written `%XX` (their UTF-8
//! bytes in hex); in a value substituted into an attribute template, `:` is escaped as well.
//! So escaping is injective and a value cannot forge another key of the same template:
//! `key = "party:<a>:<b>"` renders `(1, 2)` as `party:1:2` and `("1:2", "")` as `party:1%3A2:`.
//! The attribute refuses templates whose placeholders could run together (two placeholders
//! must be separated by literal text containing `:`; see [`distributed_lock`]), and no value
//! can break out of the hash tag. Keys of *different* templates can coincide if the templates
//! are written to (`"party:1<b>"` with `b = ":2"` is `party:1%3A2` too): give each kind of
//! resource its own prefix. A key that is empty, or longer than [`MAX_KEY_LEN`] bytes once
//! escaped, is refused with [`Error::InvalidKey`].
//!
//! # Durations and defaults
//!
//! | setting | attribute | request | default |
//! |---|---|---|---|
//! | how long to wait for a busy lock | `wait = "5s"` | [`LockRequest::wait`] | [`LockerBuilder::default_wait`], 30 s |
//! | lease (TTL in Redis) | `lease = "2s"` | [`LockRequest::lease`] | [`LockerBuilder::default_lease`], 30 s |
//! | renew the lease while held | `renew = false` | [`LockRequest::renew`] | on |
//!
//! A zero wait is a single attempt. In the attribute, durations are an integer and a unit
//! (`ms`, `s`, `m`, `h`), combinable: `"1m30s"`.
//!
//! # Errors
//!
//! Every failure is an [`Error`]: [`Error::Timeout`] (busy for the whole wait; the body did
//! not run), [`Error::Lost`], [`Error::InvalidKey`], [`Error::NotConfigured`] (no locker),
//! [`Error::InvalidConfig`], [`Error::Redis`] (Redis refused or the connection failed),
//! [`Error::OperationTimeout`] (Redis did not answer within the operation timeout, 2 s by
//! default), [`Error::NotReplicated`] (with [`LockerBuilder::wait_for_replicas`]). When Redis
//! is unreachable, calls fail within the operation timeout, never with a misleading
//! `Timeout`, and the connection recovers by itself when Redis is back.
//!
//! # Deployments
//!
//! Everything above works the same on every deployment; only the constructor differs.
//!
//! * **One Redis**: [`Locker::connect`] or [`Locker::builder`] with a `redis://` URL
//!   (`redis://user:password@host:6379/0` for an ACL user).
//! * **TLS**: a `rediss://` URL with the `tls-rustls` feature (a rustls crypto provider is
//!   installed for the process if none is); `rediss://host:6380/#insecure` skips the
//!   certificate check with `tls-rustls-insecure` (self-signed test servers only). For a
//!   private CA or client certificates build a `redis::Client` with
//!   `redis::Client::build_with_tls` and pass it to [`Locker::builder_with_client`].
//! * **Redis Cluster**: [`Locker::cluster`] with the URLs of some nodes, or
//!   [`Locker::cluster_with_client`]. All keys of one lock share a hash tag, so each lock lives
//!   on one master, and on Redis 7 releases are announced with sharded pub/sub (`SPUBLISH`),
//!   which stays in that shard.
//! * **Sentinel**: [`Locker::sentinel`] with the master's name and the sentinels' URLs, or
//!   [`Locker::sentinel_with_client`]; the locker follows the master across failovers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockattr::Error> {
//! use lockattr::Locker;
//!
//! let tls = Locker::connect("rediss://locks:secret@redis.internal:6380").await?; // `tls-rustls`
//! let cluster = Locker::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).build().await?;
//! let sentinel = Locker::sentinel("mymaster", ["redis://10.0.0.5:26379"]).build().await?;
//! # let _ = (tls, cluster, sentinel);
//! # Ok(())
//! # }
//! ```
//!
//! **ACL.** A restricted user needs these rules for a locker with namespace `lock` (Redis 7
//! checks every command a script runs against them too):
//!
//! ```text
//! ACL SETUSER locks on >secret ~lock:* &lock:* +set +get +del +time +pttl +pexpire +publish +evalsha +script|load +subscribe +unsubscribe
//! ```
//!
//! Add `+wait` (and `+info`, to name the replicas in [`Error::NotReplicated`]) for
//! `wait_for_replicas`, `+role` on the data nodes for Sentinel, and `+spublish +ssubscribe
//! +sunsubscribe +cluster|slots +info +asking` on a Cluster (the one-server rules are tested,
//! the Cluster additions are not). A user without a needed right gets an [`Error::Redis`]
//! naming the refused command (`NOPERM`) at once, never a hang or a `Timeout`.
//!
//! **Failover** (Sentinel, or a Cluster master replaced by its replica). Calls made while no
//! master answers fail with [`Error::Redis`] or [`Error::OperationTimeout`]; retry them. A
//! holder keeps its lock across a failover if the replica had its key; otherwise it learns at
//! its next renewal that the lock is gone ([`Error::Lost`]). Because replication is
//! asynchronous, a lock taken or renewed just before the master failed can be missing on the
//! promoted replica, which then grants it again while the old holder still runs. A
//! `Locker::sentinel` leaves the old master at the first announcement of any sentinel (when
//! the leader sends `REPLICAOF NO ONE` to the replica it promotes), which in the tests' failovers
//! left no overlap; the window between that promotion and the announcement reaching the
//! locker remains. With
//! [`LockerBuilder::wait_for_replicas`] an acquisition counts only once replicas acknowledged
//! it, which narrows that window but does not close it (`WAIT` is not consensus: an
//! acknowledging replica can fail too, or be passed over). Fencing tokens keep increasing
//! across a failover in either mode, as long as the promoted replica's clock is not behind
//! the old master's by more than the failover took: storage that checks them rejects the
//! stale holder.
//!
//! # What a Redis lock cannot guarantee
//!
//! * **Pauses.** A holder paused longer than its lease (GC, swap, a stopped VM or container)
//!   resumes believing it holds the lock while another holder is inside. The watchdog and the
//!   cancellation above shrink the window to "until the paused task's next `.await`", but
//!   cannot close it: code that runs between two awaits cannot be interrupted. Fencing tokens
//!   close it for storage that checks them.
//! * **Failover.** Redis replication is asynchronous. If the master fails after granting a
//!   lock and before the replica received it, the promoted replica grants it again (see
//!   [Deployments](#deployments); `wait_for_replicas` narrows the window, it cannot close it).
//!   Use a Redis without failover for locks that must never be granted twice, or check fencing
//!   tokens in storage.
//! * **Restart without persistence.** A Redis restarted without persistence forgets every
//!   lock (holders see [`Error::Lost`] at their next renewal). Fencing tokens need no state in
//!   Redis, so they keep increasing across the restart.
//! * **Clocks.** Redis expires keys by its own wall clock, and fencing tokens are that clock
//!   in microseconds times 100 (about 1.8 × 10¹⁷ in 2026; they fit a `u64`, and a signed
//!   64-bit database column until 2262). A token is always above the previous holder's,
//!   because at least a whole client round trip separates the two readings of the clock,
//!   unless the Redis host's clock is *set back*: then a key taken again within that step can
//!   get a smaller token. A clock set *forward* ends leases
//!   early. Run Redis for locks on a host whose clock is slewed, not stepped (the NTP and chrony
//!   defaults after the first sync). The guard considers the lease over at its deadline by the
//!   local monotonic clock (see [`LockGuard`]), never later than Redis's expiry unless the two
//!   clocks' rates differ grossly.
//!
//! # Observability
//!
//! Two `tracing` spans per acquisition (target `lockattr`, level info), so that a request's
//! trace shows how long it waited for a lock and how long it held it:
//!
//! * `lock.acquire` from the request until the lock is held or the wait ends: fields `key`,
//!   `wait`, `waited`, `outcome` (`acquired`, `timed out`, `failed`, `cancelled`) and
//!   `fencing_token` (when the lock was taken with one: after waiting, by a grant or a
//!   handover);
//! * `lock.held` for the critical section, until the guard is released or dropped: fields
//!   `key`, `fencing_token` (at once, or when a fast-path lock's holder first asks for it),
//!   `held`, `outcome` (`released`, `lost`, `failed`, `dropped`). A
//!   body under [`LockRequest::run`] or the attribute runs inside it, so its own spans are
//!   children of the lock's.
//!
//! Both are children of the span current where the lock was requested. Events (same target):
//! acquired (debug), timed out (info), renewal failed (warn), lost (warn), handed over and
//! released (trace). With the `metrics` feature: counters `lockattr_acquired_total`,
//! `lockattr_timeouts_total`, `lockattr_lost_total`, `lockattr_renew_failures_total`,
//! `lockattr_handoffs_total` and the histogram `lockattr_wait_seconds`.
//!
//! # Features
//!
//! * `tls-rustls`: `rediss://` URLs (see [Deployments](#deployments)); `tls-rustls-insecure`
//!   also accepts `#insecure` URLs.
//! * `metrics`: the counters and histogram above, through the
//!   [`metrics`](https://docs.rs/metrics) facade.
//!
// The modules form layers; each imports only from the ones above it in this list.
mod config;
mod error;
mod key;
mod observe;
mod sync;

mod lease;
mod protocol;
mod scripts;
mod store;

mod queue;
mod upkeep;

mod acquire;
mod core;
mod release;
mod wait;

mod context;
mod guard;
mod inspect;
mod request;

mod default;
mod locker;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use context::fencing_token;
pub use default::{clear_default, default_locker, set_default};
pub use error::Error;
pub use guard::LockGuard;
pub use inspect::LockInfo;
pub use key::MAX_KEY_LEN;
pub use locker::{Locker, LockerBuilder};
pub use request::LockRequest;
pub use store::MemoryStore;

#[doc(inline)]
#[doc = include_str!("distributed_lock.md")]
pub use lockattr_macros::distributed_lock;
