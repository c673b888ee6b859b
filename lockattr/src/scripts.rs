//! Every Lua script the runtime sends to Redis, each with its contract.
//!
//! All scripts touch only keys of one lock (one hash tag), so they run unchanged on Redis
//! Cluster. They compare the caller's token before changing anything: nobody can extend,
//! hand over or delete a lock they do not own.
//!
//! Redis counts the commands a script runs in `INFO commandstats`, so the command budget per
//! operation is written next to each script (the `EVALSHA` itself included).

use std::sync::LazyLock;

use redis::Script;

/// Take a free lock.
///
/// * `KEYS[1]` lock key, `KEYS[2]` fencing counter
/// * `ARGV[1]` token, `ARGV[2]` lease in ms, `ARGV[3]` fencing counter TTL in ms
/// * returns `{1, fencing_token}` when taken, `{0, holder_pttl_ms}` when held by someone else
///   (`-1`: the holder's key has no TTL, `-2`: it vanished between the two calls)
///
/// Commands: 4 when taken (EVALSHA, SET, INCR, PEXPIRE), 3 when busy (EVALSHA, SET, PTTL).
const ACQUIRE_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {1, fence}
end
return {0, redis.call('PTTL', KEYS[1])}
";
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));

/// Release a lock and wake the waiters of other processes.
///
/// * `KEYS[1]` lock key
/// * `ARGV[1]` token, `ARGV[2]` release channel
/// * returns `0` when the lock was not ours any more (expired or taken), otherwise `1 +` the
///   number of subscribers the release reached. The releasing process is not subscribed to its
///   own lock's channel while it holds the lock, so that number counts the *other* processes
///   waiting, which lets the releaser give them precedence over its own queue.
///
/// Commands: 4 (EVALSHA, GET, DEL, PUBLISH), 2 when not ours.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1 + redis.call('PUBLISH', ARGV[2], '')
end
return 0
";
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Hand a held lock to another task of the same process without ever letting it go: the lock
/// gets the new owner's token, a fresh lease and the next fencing token in one step.
///
/// * `KEYS[1]` lock key, `KEYS[2]` fencing counter
/// * `ARGV[1]` old token, `ARGV[2]` new token, `ARGV[3]` new lease in ms
/// * returns the new fencing token, or `0` when the lock was not ours any more
///
/// The fencing counter's TTL is not refreshed here: acquisitions from free set it long enough
/// to outlive the longest chain of handoffs (see `Config::fence_ttl_ms`).
///
/// Commands: 4 (EVALSHA, GET, SET, INCR), 2 when not ours.
const HANDOFF_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return redis.call('INCR', KEYS[2])
end
return 0
";
pub(crate) static HANDOFF: LazyLock<Script> = LazyLock::new(|| Script::new(HANDOFF_LUA));

/// `HANDOFF` as a bare `EVALSHA`, without redis-rs's reload-and-retry on `NOSCRIPT`: an early
/// handover relies on this command reaching Redis before anything the new holder sends, which
/// a retry would break. (The scripts are loaded when the `Locker` is built; after a
/// `SCRIPT FLUSH` the handover fails safely and the new holder is told the lock is lost.)
pub(crate) fn handoff_cmd(
    names: &crate::key::RedisNames,
    old_token: &str,
    new_token: &str,
    lease_ms: u64,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(HANDOFF.get_hash())
        .arg(2)
        .arg(&names.lock)
        .arg(&names.fence)
        .arg(old_token)
        .arg(new_token)
        .arg(lease_ms);
    cmd
}

/// Extend the lease of a held lock (the watchdog's renewal, and `LockGuard::extend`).
///
/// * `KEYS[1]` lock key, `KEYS[2]` fencing counter
/// * `ARGV[1]` token, `ARGV[2]` lease in ms, `ARGV[3]` fencing counter TTL in ms
/// * returns `1` when extended, `0` when the lock was not ours any more
///
/// Commands: 4 (EVALSHA, GET, PEXPIRE, PEXPIRE), 2 when not ours.
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
";
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));

/// The source of every script, for loading them once when a `Locker` is built.
pub(crate) fn all() -> [&'static str; 4] {
    [ACQUIRE_LUA, RELEASE_LUA, HANDOFF_LUA, RENEW_LUA]
}
