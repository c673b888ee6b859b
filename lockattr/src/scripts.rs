//! Every Lua script the runtime sends to Redis, each with its contract.
//!
//! All scripts touch only keys of one lock (one hash tag), so they run unchanged on Redis
//! Cluster. They compare the caller's token before changing anything: nobody can extend,
//! hand over or delete a lock they do not own.
//!
//! Redis counts the commands a script runs in `INFO commandstats`, so the command budget per
//! operation is written next to each script (the `EVALSHA` itself included).
//!
//! **The lock's value.** A lock's value is its owner's 32-digit token, alone or followed by a
//! waiter mark:
//!
//! * `T`: held by `T`, nobody else asked for it;
//! * `T!`: a contender of another process (or another `Locker`) found it busy and may be
//!   waiting for its release;
//! * `T!W:L:S`: the same, and that contender registered for a *direct grant*: its token `W`, the
//!   lease `L` in ms a grant gives it, and when it registered, `S` (Redis's clock in ms). `L` is
//!   the waiter's lease, at most 2 s when it renews its lease (the granted holder renews to its
//!   full lease at once): a short grant bounds what a dead waiter can cost.
//!
//! Ownership is checked on the first 32 characters, so marks never get in the owner's way, and a
//! handoff carries the mark over to the new token. An unmarked lock's release is silent (an
//! uncontended lock never pays for a `PUBLISH`); a marked lock's release is announced on the
//! lock's channel, and a registered waiter is granted the lock in the release itself: the
//! release sets the lock to `W` with `W`'s lease and the next fencing token, and announces
//! `W:fence`. The waiter holds the lock when the announcement arrives, without another round
//! trip: half of what a cross-process handoff costs otherwise.
//!
//! Why grants are safe and live:
//! * The waiter takes its lease as running out at *the time it sent the attempt that registered
//!   it* + `L`: Redis granted later, so the real expiry is later. A grant made more than `L/2`
//!   after the registration is not made (the release announces a plain release instead), so the
//!   waiter's bound is always useful, and a waiter that died (or went away without saying so)
//!   can be granted the lock only within `L/2` of its registration; the lock then expires
//!   after `L` (at most 2 s for a renewing waiter), as if a holder had died.
//! * A waiter that gives up (timeout, cancellation) withdraws in the background: its registration
//!   is removed, or, if it was granted the lock meanwhile, the lock is released.
//! * A grant whose announcement was lost (pub/sub reconnecting) is found by the waiter's next
//!   attempt (after the reconnect wake-up or its fallback timer): [`ACQUIRE_LUA`] recognises
//!   the waiter's own registered token, renews the lease to a full `L` from that attempt, and
//!   hands out a fencing token.
//! * A mark can outlive the waiter that set it (one needless `PUBLISH`), but is never missing
//!   while a waiter sleeps: a waiter marks the lock in the same script that found it busy,
//!   before it sleeps, and a waiter whose holder changed without a release (an expired lease)
//!   wakes on its fallback timer and marks the new holder.

use std::sync::LazyLock;

use redis::{Cmd, Script};

use crate::key::RedisNames;

/// Take a free lock, or find it granted to this waiter; otherwise mark it and register.
///
/// * `KEYS[1]` lock key, `KEYS[2]` fencing counter
/// * `ARGV[1]` token, `ARGV[2]` lease in ms, `ARGV[3]` fencing counter TTL in ms, `ARGV[4]` the
///   token this contender registered with earlier (`''` if none), `ARGV[5]` the lease in ms a
///   grant should carry (see the module docs)
/// * returns the fencing token (an integer `>= 1`) when taken with `ARGV[1]`; `{fence}` when a
///   release had granted the lock to `ARGV[4]` (its lease is then renewed to `ARGV[2]`); when
///   the lock is held by someone else, `{holder_pttl_ms, registered}`, where `registered` is `1`
///   when `ARGV[1]` is now the registered waiter (see the module docs)
///
/// The fencing counter is not refreshed on every acquisition: it lives `ARGV[3]` from its
/// creation. A counter below [`SEED_FLOOR`] did not exist a moment ago (it expired, Redis lost
/// it in a restart, or a failed [`try_plain`] attempt created it by incrementing nothing); it
/// then starts again from Redis's clock in microseconds. That value is larger than any token
/// an earlier counter handed out (it would have had to count more than once per microsecond of
/// its life to catch up), so tokens keep increasing across the counter's lifetimes.
///
/// A busy lock is marked, and the caller registers unless a live registration is there (one
/// that is not older than half its lease).
///
/// Commands: 3 when taken (EVALSHA, SET, INCR; 2 more when the counter starts again), 5 or 6
/// when busy (EVALSHA, SET, GET, TIME, PTTL; SET to register), 5 for a found grant (EVALSHA,
/// SET, GET, PEXPIRE, INCR).
const ACQUIRE_LUA: &str = r"
local function next_fence()
  local fence = redis.call('INCR', KEYS[2])
  if fence < 1000000000000000 then
    local now = redis.call('TIME')
    fence = now[1] * 1000000 + now[2]
    redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', ARGV[3])
  end
  return fence
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return next_fence()
end
local value = redis.call('GET', KEYS[1])
if not value then
  return {-2, 0}
end
local owner = string.sub(value, 1, 32)
if ARGV[4] ~= '' and owner == ARGV[4] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {next_fence()}
end
local registered = 0
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local _, lease, at = string.match(value, '^%x+!(%x+):(%d+):(%d+)$')
if not lease or now_ms - tonumber(at) > tonumber(lease) / 2 then
  local mark = owner .. '!' .. ARGV[1] .. ':' .. ARGV[5] .. ':' .. string.format('%.0f', now_ms)
  redis.call('SET', KEYS[1], mark, 'KEEPTTL')
  registered = 1
end
return {redis.call('PTTL', KEYS[1]), registered}
";
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));

/// Release a lock: silently when unmarked, announced when marked, granted to the registered
/// waiter when there is a live registration (see the module docs).
///
/// * `KEYS[1]` lock key; the fencing counter is `KEYS[1]` followed by `:fence` (same hash tag,
///   so the same Cluster slot: it is not passed, because every argument costs the uncontended
///   release measurably)
/// * `ARGV[1]` token
/// * announces on the release channel, `KEYS[1]` followed by `:released`: `''` for a plain
///   release, `W:fence` for a grant to `W`. A counter that has to start again (it expired) is
///   not started here: the lock is released plainly and the waiter's own acquire starts it.
/// * returns `0` when the lock was not ours any more (expired or taken), otherwise `1 +` the
///   number of subscribers the announcement reached. The releasing process is not subscribed to
///   its own lock's channel while it holds the lock, so that number counts the *other*
///   processes waiting, which lets the releaser give them precedence over its own queue.
///
/// Commands: 3 (EVALSHA, GET, DEL), 4 with PUBLISH when marked, 6 for a grant (EVALSHA, GET,
/// TIME, INCR, SET, PUBLISH), 2 when not ours.
const RELEASE_LUA: &str = r"
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if not value or string.sub(value, 1, 32) ~= ARGV[1] then
  return 0
end
local channel = KEYS[1] .. ':released'
local waiter, lease, at = string.match(value, '^%x+!(%x+):(%d+):(%d+)$')
if waiter then
  local now = redis.call('TIME')
  if (now[1] * 1000 + math.floor(now[2] / 1000)) - tonumber(at) <= tonumber(lease) / 2 then
    local fence = redis.call('INCR', KEYS[1] .. ':fence')
    if fence >= 1000000000000000 then
      redis.call('SET', KEYS[1], waiter .. '!', 'PX', lease)
      return 1 + redis.call('PUBLISH', channel, waiter .. ':' .. string.format('%.0f', fence))
    end
  end
end
redis.call('DEL', KEYS[1])
return 1 + redis.call('PUBLISH', channel, '')
";
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Hand a held lock to another task of the same process without ever letting it go: the lock
/// gets the new owner's token (keeping the waiter mark and registration), a fresh lease and the
/// next fencing token in one step.
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
if not value or string.sub(value, 1, 32) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2] .. string.sub(value, 33), 'PX', ARGV[3])
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
if not value or string.sub(value, 1, 32) ~= ARGV[1] then
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

/// Extend the lease of a held lock (the watchdog's renewal, and `LockGuard::extend`).
///
/// * `KEYS[1]` lock key
/// * `ARGV[1]` token, `ARGV[2]` lease in ms
/// * returns `1` when extended, `0` when the lock was not ours any more
///
/// Commands: 3 (EVALSHA, GET, PEXPIRE), 2 when not ours.
const RENEW_LUA: &str = r"
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, 32) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));

/// A token goes away that may hold the lock or be its registered waiter (a waiter that timed
/// out or was cancelled, an acquire attempt whose answer nobody will read): release the lock if
/// the token holds it (announcing a plain release if it was marked; a grant it got is released
/// the same way), else drop the token's registration.
///
/// * `KEYS[1]` lock key
/// * `ARGV[1]` the token
/// * returns `1` when it released the lock, `2` when it removed a registration, `0` when there
///   was neither
///
/// Commands: 2 to 4 (EVALSHA, GET; DEL and PUBLISH, or SET).
const WITHDRAW_LUA: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
if string.sub(value, 1, 32) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if #value > 32 then
    redis.call('PUBLISH', KEYS[1] .. ':released', '')
  end
  return 1
end
if string.sub(value, 34, 65) == ARGV[1] then
  redis.call('SET', KEYS[1], string.sub(value, 1, 33), 'KEEPTTL')
  return 2
end
return 0
";
static WITHDRAW: LazyLock<Script> = LazyLock::new(|| Script::new(WITHDRAW_LUA));

/// The source of every script, for loading them once when a `Locker` is built.
pub(crate) fn all() -> [&'static str; 6] {
    [
        ACQUIRE_LUA,
        RELEASE_LUA,
        HANDOFF_LUA,
        RENEW_LUA,
        RESEED_LUA,
        WITHDRAW_LUA,
    ]
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

/// [`ACQUIRE_LUA`] for `token` with `lease_ms`; `registered` is the token this contender
/// registered with earlier, if any.
pub(crate) fn acquire(
    names: &RedisNames,
    token: &str,
    lease_ms: u64,
    counter_ttl_ms: u64,
    registered: Option<&str>,
    grant_lease_ms: u64,
) -> Call {
    let mut call = evalsha(
        &ACQUIRE,
        2,
        7,
        names.fence().len() * 2 + token.len() * 2 + 60,
    );
    call.cmd
        .arg(names.lock())
        .arg(names.fence())
        .arg(token)
        .arg(lease_ms)
        .arg(counter_ttl_ms)
        .arg(registered.unwrap_or(""))
        .arg(grant_lease_ms);
    call
}

/// What an [`ACQUIRE_LUA`] reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Taken with the attempt's token, with this fencing token.
    Taken(u64),
    /// Granted earlier to the token the caller registered with (its lease now renewed), with
    /// this fencing token.
    Granted(u64),
    /// Held by someone else: the holder's remaining TTL in ms, if it has one, and whether this
    /// attempt's token is now the registered waiter.
    Busy {
        holder_ttl: Option<u64>,
        registered: bool,
    },
}

impl Acquired {
    /// Decodes an [`ACQUIRE_LUA`] reply.
    pub(crate) fn decode(reply: &redis::Value) -> Result<Acquired, redis::RedisError> {
        use redis::Value;
        match reply {
            Value::Int(fence) => match u64::try_from(*fence) {
                Ok(fence) if fence > 0 => Ok(Acquired::Taken(fence)),
                _ => Err(unexpected(reply)),
            },
            Value::Array(items) => match items.as_slice() {
                [Value::Int(fence)] => match u64::try_from(*fence) {
                    Ok(fence) if fence > 0 => Ok(Acquired::Granted(fence)),
                    _ => Err(unexpected(reply)),
                },
                [Value::Int(ttl), Value::Int(registered)] => Ok(Acquired::Busy {
                    holder_ttl: u64::try_from(*ttl).ok(),
                    registered: *registered == 1,
                }),
                _ => Err(unexpected(reply)),
            },
            _ => Err(unexpected(reply)),
        }
    }
}

fn unexpected(reply: &redis::Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply to the acquire script",
        format!("{reply:?}"),
    ))
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
/// * **Waiters** are not marked or registered by this attempt (a `SET` that failed cannot be
///   followed by a conditional write without a script); a busy answer sends the caller straight
///   on to [`acquire`], which does both.
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
    owner_call(&RESEED, names, token, counter_ttl_ms)
}

/// [`RELEASE_LUA`] for `token`.
pub(crate) fn release(names: &RedisNames, token: &str) -> Call {
    let mut call = evalsha(&RELEASE, 1, 2, names.lock().len() + token.len());
    call.cmd.arg(names.lock()).arg(token);
    call
}

/// A script of the shape `KEYS = lock, counter; ARGV = token, counter TTL`.
fn owner_call(
    script: &'static LazyLock<Script>,
    names: &RedisNames,
    token: &str,
    counter_ttl_ms: u64,
) -> Call {
    let mut call = evalsha(script, 2, 4, names.fence().len() * 2 + token.len() + 20);
    call.cmd
        .arg(names.lock())
        .arg(names.fence())
        .arg(token)
        .arg(counter_ttl_ms);
    call
}

/// [`WITHDRAW_LUA`] for the waiter registered as `token`.
pub(crate) fn withdraw(names: &RedisNames, token: &str) -> Call {
    let mut call = evalsha(&WITHDRAW, 1, 2, names.lock().len() + token.len());
    call.cmd.arg(names.lock()).arg(token);
    call
}

/// A release announcement: `None` for a plain release, `Some((token, fence))` for a grant.
pub(crate) fn parse_announcement(payload: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (token, fence) = text.split_once(':')?;
    Some((token.to_owned(), fence.parse().ok()?))
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
        use redis::Value;
        assert_eq!(
            Acquired::decode(&Value::Int(7)).unwrap(),
            Acquired::Taken(7)
        );
        assert_eq!(
            Acquired::decode(&Value::Int(1_764_578_644_123_456)).unwrap(),
            Acquired::Taken(1_764_578_644_123_456)
        );
        assert_eq!(
            Acquired::decode(&Value::Array(vec![Value::Int(1500), Value::Int(1)])).unwrap(),
            Acquired::Busy {
                holder_ttl: Some(1500),
                registered: true
            }
        );
        assert_eq!(
            Acquired::decode(&Value::Array(vec![Value::Int(-1), Value::Int(0)])).unwrap(),
            Acquired::Busy {
                holder_ttl: None,
                registered: false
            }
        );
        assert_eq!(
            Acquired::decode(&Value::Array(vec![Value::Int(9)])).unwrap(),
            Acquired::Granted(9)
        );
        assert!(Acquired::decode(&Value::Int(0)).is_err());
        assert!(Acquired::decode(&Value::Nil).is_err());
    }

    #[test]
    fn announcements_parse() {
        assert_eq!(parse_announcement(b""), None);
        assert_eq!(
            parse_announcement(b"0123456789abcdef0123456789abcdef:1764578644123456"),
            Some((
                "0123456789abcdef0123456789abcdef".to_owned(),
                1_764_578_644_123_456
            ))
        );
        assert_eq!(parse_announcement(b"garbage"), None);
    }
}
