//! Every Lua script the runtime sends to Redis, each with its contract.
//!
//! All scripts touch only keys of one lock (one hash tag), so they run unchanged on Redis
//! Cluster. They compare the caller's token before changing anything: nobody can extend,
//! hand over or delete a lock they do not own.
//!
//! Redis counts the commands a script runs in `INFO commandstats`, so the command budget per
//! operation is written next to each script (the `EVALSHA` itself included).
//!
//! **The waiter mark.** A lock's value is its owner's token, followed by `!` once a contender of
//! another process (or of another `Locker`) has found it busy and may be waiting for its
//! release. Only a marked lock's release is published, so an uncontended lock never pays for a
//! `PUBLISH`. Every script that checks ownership accepts the token with or without the mark, and
//! a handoff carries the mark over to the new token. A mark can outlive the waiter that set it
//! (one needless `PUBLISH`), but is never missing while a waiter sleeps: a waiter marks the lock
//! in the same script that found it busy, before it sleeps, and a waiter whose holder changed
//! without a release (an expired lease) wakes on its fallback timer and marks the new holder.

use std::sync::LazyLock;

use redis::{Cmd, Script};

use crate::key::RedisNames;

/// Take a free lock.
///
/// * `KEYS[1]` lock key, `KEYS[2]` fencing counter
/// * `ARGV[1]` token, `ARGV[2]` lease in ms, `ARGV[3]` fencing counter TTL in ms
/// * returns the fencing token (`>= 1`) when taken; when the lock is held by someone else,
///   `-2 - holder_pttl_ms` (so `<= 0`: `-1` means the holder's key has no TTL, `0` that it
///   vanished between the two calls)
///
/// The fencing counter is not refreshed on every acquisition: it lives `ARGV[3]` from its
/// creation. A counter below [`SEED_FLOOR`] did not exist a moment ago (it expired, Redis lost
/// it in a restart, or a failed [`try_plain`] attempt created it by incrementing nothing); it
/// then starts again from Redis's clock in microseconds. That value is larger than any token
/// an earlier counter handed out (it would have had to count more than once per microsecond of
/// its life to catch up), so tokens keep increasing across the counter's lifetimes.
///
/// A failed attempt appends the waiter mark to the holder's token, so that the
/// holder's release knows to announce itself. The taken path is kept as cheap as a fenced lock
/// can be (a single-integer reply, no `PEXPIRE`): `lockbench` measures it against a bare
/// `SET NX PX`.
///
/// Commands: 3 when taken (EVALSHA, SET, INCR; 2 more when the counter starts again), 4 or 5
/// when busy (EVALSHA, SET, GET, PTTL; APPEND when the holder was not marked yet).
const ACQUIRE_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  if fence < 1000000000000000 then
    local now = redis.call('TIME')
    fence = now[1] * 1000000 + now[2]
    redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', ARGV[3])
  end
  return fence
end
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, -1) ~= '!' then
  redis.call('APPEND', KEYS[1], '!')
end
return -2 - redis.call('PTTL', KEYS[1])
";
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));

/// Release a lock, and wake the waiters of other processes if the lock is marked.
///
/// * `KEYS[1]` lock key
/// * `ARGV[1]` token
/// * publishes on the release channel, `KEYS[1]` followed by `:released`
/// * returns `0` when the lock was not ours any more (expired or taken), otherwise `1 +` the
///   number of subscribers the release reached. The releasing process is not subscribed to its
///   own lock's channel while it holds the lock, so that number counts the *other* processes
///   waiting, which lets the releaser give them precedence over its own queue.
///
/// Commands: 3 (EVALSHA, GET, DEL), 4 with PUBLISH when marked, 2 when not ours.
const RELEASE_LUA: &str = r"
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if value == ARGV[1] .. '!' then
  redis.call('DEL', KEYS[1])
  return 1 + redis.call('PUBLISH', KEYS[1] .. ':released', '')
end
return 0
";
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Hand a held lock to another task of the same process without ever letting it go: the lock
/// gets the new owner's token (keeping the waiter mark), a fresh lease and the next fencing
/// token in one step.
///
/// * `KEYS[1]` lock key, `KEYS[2]` fencing counter
/// * `ARGV[1]` old token, `ARGV[2]` new token, `ARGV[3]` new lease in ms, `ARGV[4]` the old
///   holder's fencing token + 1, `ARGV[5]` fencing counter TTL in ms
/// * returns the new fencing token, or `0` when the lock was not ours any more
///
/// The new token is always `ARGV[4]`, so the caller can hand the lock over before the reply
/// arrives: it is above the old holder's, and the counter is raised to at least it, so every
/// later acquisition gets a larger one. (The counter may be ahead already: a failed
/// [`try_plain`] attempt of another process increments it; such values are never used.)
///
/// Commands: 4 (EVALSHA, GET, SET, INCR; 1 more when the counter was behind), 2 when not ours.
const HANDOFF_LUA: &str = r"
local value = redis.call('GET', KEYS[1])
local mark = ''
if value ~= ARGV[1] then
  if value ~= ARGV[1] .. '!' then
    return 0
  end
  mark = '!'
end
redis.call('SET', KEYS[1], ARGV[2] .. mark, 'PX', ARGV[3])
if redis.call('INCR', KEYS[2]) < tonumber(ARGV[4]) then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
end
return tonumber(ARGV[4])
";
static HANDOFF: LazyLock<Script> = LazyLock::new(|| Script::new(HANDOFF_LUA));

/// Fencing tokens below this (10¹⁵ µs after the epoch, in 2001) come from a counter that did
/// not exist a moment ago, never from a clock-seeded one (see [`ACQUIRE_LUA`]).
pub(crate) const SEED_FLOOR: u64 = 1_000_000_000_000_000;

/// Start the fencing counter of a lock just taken by [`try_plain`] that found no counter.
///
/// * `KEYS[1]` lock key, `KEYS[2]` fencing counter
/// * `ARGV[1]` token, `ARGV[2]` fencing counter TTL in ms
/// * returns the lock's fencing token: the larger of the incremented counter and Redis's clock
///   in microseconds; `0` when the lock is not ours any more
///
/// Commands: 6 (EVALSHA, GET, INCR, TIME, SET or PEXPIRE), 2 when not ours. Runs once per
/// counter lifetime.
const RESEED_LUA: &str = r"
local value = redis.call('GET', KEYS[1])
if value ~= ARGV[1] and value ~= ARGV[1] .. '!' then
  return 0
end
local fence = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local seed = now[1] * 1000000 + now[2]
if fence < seed then
  fence = seed
  redis.call('SET', KEYS[2], string.format('%.0f', seed), 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return fence
";
static RESEED: LazyLock<Script> = LazyLock::new(|| Script::new(RESEED_LUA));

/// Extend the lease of a held lock (the watchdog's renewal, and `LockGuard::extend`); the
/// token may carry the waiter mark.
///
/// * `KEYS[1]` lock key
/// * `ARGV[1]` token, `ARGV[2]` lease in ms
/// * returns `1` when extended, `0` when the lock was not ours any more
///
/// Commands: 3 (EVALSHA, GET, PEXPIRE), 2 when not ours.
const RENEW_LUA: &str = r"
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] or value == ARGV[1] .. '!' then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));

/// The source of every script, for loading them once when a `Locker` is built.
pub(crate) fn all() -> [&'static str; 5] {
    [ACQUIRE_LUA, RELEASE_LUA, HANDOFF_LUA, RENEW_LUA, RESEED_LUA]
}

/// `EVALSHA <script> <numkeys>`; the caller appends the keys and arguments.
///
/// Commands are built directly rather than through redis-rs's `ScriptInvocation`, which copies
/// every key and argument into vectors of its own first: the acquire and release paths are
/// measured against a raw two-round-trip floor, and every allocation shows. `Locker::eval`
/// reloads a script that Redis does not know (`NOSCRIPT`) and sends the command again.
fn evalsha(script: &'static LazyLock<Script>, numkeys: u8, args: usize, bytes: usize) -> Call {
    let script: &'static Script = script;
    // Sized up front: growing the command's buffers showed up in instruction counts.
    let mut cmd = Cmd::with_capacity(args + 3, bytes + 64);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(numkeys);
    Call { script, cmd }
}

/// One script call: the `EVALSHA` command and the script, for reloading it on `NOSCRIPT`.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) script: &'static Script,
    pub(crate) cmd: Cmd,
}

/// [`ACQUIRE_LUA`] for `token` with `lease_ms`.
pub(crate) fn acquire(names: &RedisNames, token: &str, lease_ms: u64, counter_ttl_ms: u64) -> Call {
    let mut call = evalsha(&ACQUIRE, 2, 5, names.fence().len() * 2 + token.len() + 40);
    call.cmd
        .arg(names.lock())
        .arg(names.fence())
        .arg(token)
        .arg(lease_ms)
        .arg(counter_ttl_ms);
    call
}

/// What an [`ACQUIRE_LUA`] reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Taken, with this fencing token.
    Taken(u64),
    /// Held by someone else; the holder's remaining TTL in ms, if it has one.
    Busy(Option<u64>),
}

impl Acquired {
    pub(crate) fn decode(reply: i64) -> Acquired {
        match u64::try_from(reply) {
            Ok(fence) if fence > 0 => Acquired::Taken(fence),
            // `-2 - pttl`: pttl >= 0 for a holder with a TTL, -1 without one, -2 when the key
            // vanished between the two calls.
            _ => Acquired::Busy(u64::try_from(-2 - reply).ok()),
        }
    }
}

/// The first attempt on a lock nobody of this process waits for: `SET NX PX` and `INCR` of the
/// fencing counter, pipelined in one round trip with no script, which makes an uncontended
/// acquisition cost Redis no more than a bare `SET NX PX` does (the script costs measurably more;
/// see `lockbench`). Reply: `(Option<String>, u64)`, the `SET` answer (`Some` when taken) and
/// the counter.
///
/// Why this is safe without a script:
/// * **Order.** The holder's increment runs after its `SET`, and both before it releases (it
///   releases only once it has the reply), so every later holder's increment, which follows its
///   own later `SET`, is larger. Redis runs a pipeline received in one read back to back; if it
///   ever did not, and the lease ran out between the two commands, the reply would arrive after
///   the lease, and the caller throws such a lock away (it checks the reply against
///   `sent + lease`).
/// * **Failed attempts** increment the counter too. That only skips numbers; `HANDOFF_LUA` does
///   not rely on the counter being untouched while the lock is held.
/// * **No counter**: the increment then returns a small number (below [`SEED_FLOOR`]); the
///   caller starts the counter with [`reseed`] before using the lock.
/// * **Waiters** are not marked by this attempt (a `SET` that failed cannot be followed by a
///   conditional `APPEND` without a script); a busy answer sends the caller straight on to
///   [`acquire`], which marks.
pub(crate) fn try_plain(names: &RedisNames, token: &str, lease_ms: u64) -> redis::Pipeline {
    let mut pipe = redis::Pipeline::with_capacity(2);
    pipe.cmd("SET")
        .arg(names.lock())
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(lease_ms)
        .cmd("INCR")
        .arg(names.fence());
    pipe
}

/// [`RESEED_LUA`] for the holder of `token`.
pub(crate) fn reseed(names: &RedisNames, token: &str, counter_ttl_ms: u64) -> Call {
    let mut call = evalsha(&RESEED, 2, 4, names.fence().len() * 2 + token.len() + 20);
    call.cmd
        .arg(names.lock())
        .arg(names.fence())
        .arg(token)
        .arg(counter_ttl_ms);
    call
}

/// [`RELEASE_LUA`] for `token`.
pub(crate) fn release(names: &RedisNames, token: &str) -> Call {
    let mut call = evalsha(&RELEASE, 1, 2, names.lock().len() + token.len());
    call.cmd.arg(names.lock()).arg(token);
    call
}

/// [`HANDOFF_LUA`] from `old_token` (whose fencing token is `old_fence`) to `new_token`.
///
/// Sent as a bare `EVALSHA` by the early handover, which relies on this command reaching Redis
/// before anything the new holder sends, so a reload-and-retry on `NOSCRIPT` would break it.
/// (The scripts are loaded when the `Locker` is built; after a `SCRIPT FLUSH` the handover fails
/// safely and the new holder is told the lock is lost.)
pub(crate) fn handoff(
    names: &RedisNames,
    old_token: &str,
    old_fence: u64,
    new_token: &str,
    lease_ms: u64,
    counter_ttl_ms: u64,
) -> Call {
    let mut call = evalsha(
        &HANDOFF,
        2,
        7,
        names.fence().len() * 2 + 2 * old_token.len() + 60,
    );
    call.cmd
        .arg(names.lock())
        .arg(names.fence())
        .arg(old_token)
        .arg(new_token)
        .arg(lease_ms)
        .arg(old_fence.saturating_add(1))
        .arg(counter_ttl_ms);
    call
}

/// [`RENEW_LUA`] for `token`, setting the lease to `lease_ms`.
pub(crate) fn renew(names: &RedisNames, token: &str, lease_ms: u64) -> Call {
    let mut call = evalsha(&RENEW, 1, 3, names.lock().len() + token.len() + 20);
    call.cmd.arg(names.lock()).arg(token).arg(lease_ms);
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_replies_decode() {
        assert_eq!(Acquired::decode(7), Acquired::Taken(7));
        assert_eq!(
            Acquired::decode(1_764_578_644_123_456),
            Acquired::Taken(1_764_578_644_123_456)
        );
        assert_eq!(Acquired::decode(-2 - 1500), Acquired::Busy(Some(1500)));
        assert_eq!(Acquired::decode(-2), Acquired::Busy(Some(0)));
        assert_eq!(Acquired::decode(-1), Acquired::Busy(None));
        assert_eq!(Acquired::decode(0), Acquired::Busy(None));
    }
}
