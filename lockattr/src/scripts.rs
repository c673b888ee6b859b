//! Every Lua script the runtime sends to Redis, with its contract, and the commands that call
//! them. The lock-value format and the fencing rule they implement are in `protocol`, whose
//! [`LUA_PRELUDE`] every script starts with.
//!
//! Every key a script touches is in its `KEYS`: only the lock itself, since fencing tokens need
//! no counter. The release channel is the lock's name followed by `:released` (same hash tag,
//! so the same Redis Cluster slot); on Cluster the scripts announce with `SPUBLISH`, which stays
//! in the channel's shard, elsewhere with `PUBLISH` (see [`Scripts`]). Every script compares
//! the caller's token before it changes anything, and leaves a value lockattr did not write
//! untouched.
//!
//! Redis counts the commands a script runs in `INFO commandstats`, so each script's command
//! budget is written next to it (the `EVALSHA` itself included).

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Cmd, Script, Value};

use crate::config::millis;
use crate::key::RedisNames;
use crate::protocol::{fence_from_time, AttemptReply, ReleaseReply, LUA_PRELUDE};

/// Take a free lock, or find it granted to this contender's registration; otherwise mark it
/// and register for a direct grant.
///
/// * `KEYS[1]` the lock
/// * `ARGV[1]` token, `ARGV[2]` lease ms, `ARGV[3]` the token this contender registered with
///   earlier (`''` if none), `ARGV[4]` the lease ms a grant should give it
/// * returns the fencing token (a string of digits) when taken with `ARGV[1]`; `{fence}` when a release
///   had granted the lock to `ARGV[3]` (its lease is now renewed to `ARGV[2]` from this call);
///   otherwise `{holder_pttl_ms, registered, foreign}`: `registered` is 1 when `ARGV[1]` is now
///   the registered waiter, `foreign` is 1 when the key holds a value lockattr did not write
///   (nothing was written then)
///
/// Commands: 3 when taken (EVALSHA, TIME, SET), 5 or 6 when busy (EVALSHA, TIME, SET, GET,
/// PTTL; SET to mark and register), 5 for a found grant (EVALSHA, TIME, SET, GET, PEXPIRE).
const ACQUIRE_BODY: &str = r"
local now, now_ms = clock()
if redis.call('SET', KEYS[1], ARGV[1] .. '@' .. now, 'NX', 'PX', ARGV[2]) then
  return now
end
local owner, fence, mark, waiter, lease, since = parse(redis.call('GET', KEYS[1]))
if not owner then
  return {redis.call('PTTL', KEYS[1]), 0, 1}
end
if ARGV[3] ~= '' and owner == ARGV[3] and fence then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {fence}
end
local registered = 0
if not waiter or now_ms - since > lease / 2 then
  redis.call('SET', KEYS[1], head(owner, fence) .. '!' .. ARGV[1] .. ':' .. ARGV[4] .. ':' .. str(now_ms), 'KEEPTTL')
  registered = 1
end
return {redis.call('PTTL', KEYS[1]), registered, 0}
";

/// Release a lock: silently when unmarked, announced when marked, granted to the registered
/// waiter when its registration is live (see `protocol`).
///
/// * `KEYS[1]` the lock
/// * `ARGV[1]` token
/// * announces on the lock's channel: `''` for a release, `W:fence` for a grant to `W`
/// * returns `0` when the lock was not ours (expired, deleted, taken, or not a lockattr value),
///   otherwise `1 +` the number of subscribers the announcement reached. The releasing process
///   is not subscribed to its own lock's channel while it holds the lock, so that number
///   counts the *other* processes waiting, which lets the releaser give them precedence.
///
/// Commands: 3 (EVALSHA, GET, DEL), 4 with the announcement when marked, 5 for a grant
/// (EVALSHA, GET, TIME, SET, PUBLISH), 2 when not ours.
///
/// The common case, an unmarked lock (the bare token of a fast-path lock, or the token and its
/// fencing token: `T` or `T@F`), is [`RELEASE_HEAD`]: it runs before the prelude's helpers are
/// defined, so it does not pay for making them.
const RELEASE_HEAD: &str = r"
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] or (value and string.sub(value, 1, 33) == ARGV[1] .. '@'
    and not string.find(value, '!', 34, true)) then
  redis.call('DEL', KEYS[1])
  return 1
end
";

/// The rest of the release (see [`RELEASE_HEAD`]); `value` is the lock's value.
const RELEASE_BODY: &str = r"
local owner, fence, mark, waiter, lease, since = parse(value)
if owner ~= ARGV[1] then
  return 0
end
if not mark then
  redis.call('DEL', KEYS[1])
  return 1
end
local channel = KEYS[1] .. ':released'
if waiter and lease > 0 then
  local now, now_ms = clock()
  if now_ms - since <= lease / 2 then
    local f = fence_after(now, fence)
    redis.call('SET', KEYS[1], waiter .. '@' .. f .. '!', 'PX', lease)
    return 1 + redis.call('PUBLISH', channel, waiter .. ':' .. f)
  end
end
redis.call('DEL', KEYS[1])
return 1 + redis.call('PUBLISH', channel, '')
";

/// Hand a held lock to another task of the same process without letting it go: the lock gets
/// the new owner's token (keeping the mark and registration), a fresh lease and the next
/// fencing token in one step.
///
/// * `KEYS[1]` the lock
/// * `ARGV[1]` old token, `ARGV[2]` new token, `ARGV[3]` new lease ms, `ARGV[4]` the old
///   holder's fencing token
/// * returns the new fencing token (above the old holder's, a string of digits), or `0` when
///   the lock was not ours
///
/// Commands: 4 (EVALSHA, GET, TIME, SET), 2 when not ours.
const HANDOFF_BODY: &str = r"
local owner, fence, mark = parse(redis.call('GET', KEYS[1]))
if owner ~= ARGV[1] then
  return 0
end
local prev = ARGV[4]
if fence and above(fence, prev) then prev = fence end
local f = fence_after(clock(), prev)
redis.call('SET', KEYS[1], ARGV[2] .. '@' .. f .. (mark or ''), 'PX', ARGV[3])
return f
";

/// Extend the lease of a held lock (the lease upkeep's renewal, and `LockGuard::extend`), and
/// record the holder's fencing token, when it has one, in a value that lacks it or carries an
/// earlier holder's (a local handover keeps the lock under one token).
///
/// * `KEYS[1]` the lock
/// * `ARGV[1]` token, `ARGV[2]` lease ms, `ARGV[3]` the holder's fencing token (`''` when it
///   has none yet: a fast-path lock whose token was not asked for)
/// * returns `1` when extended, `0` when the lock was not ours
///
/// Commands: 3 (EVALSHA, GET, PEXPIRE or SET), 2 when not ours.
const RENEW_BODY: &str = r"
local owner, fence, mark = parse(redis.call('GET', KEYS[1]))
if owner ~= ARGV[1] then
  return 0
end
if ARGV[3] ~= '' and fence ~= ARGV[3] then
  redis.call('SET', KEYS[1], owner .. '@' .. ARGV[3] .. (mark or ''), 'PX', ARGV[2])
  return 1
end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
";

/// Issue the fencing token of a held lock that has none yet (taken by the fast path, see
/// `protocol`): Redis's clock, raised above a token the value records, written into the value
/// so that later scripts know it. Checked against the owner first: a lock that is not ours any
/// more gets no token.
///
/// * `KEYS[1]` the lock
/// * `ARGV[1]` token
/// * returns the fencing token (a string of digits), or `0` when the lock was not ours
///
/// Commands: 4 (EVALSHA, GET, TIME, SET), 2 when not ours.
///
/// The common case, a fast-path lock nobody marked (the value is the bare token), is
/// [`FENCE_HEAD`], which runs before the prelude's helpers are defined (like [`RELEASE_HEAD`]).
const FENCE_HEAD: &str = r"
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  local t = redis.call('TIME')
  local f = t[1] .. string.format('%06d', tonumber(t[2])) .. '00'
  redis.call('SET', KEYS[1], value .. '@' .. f, 'KEEPTTL')
  return f
end
";

/// The rest of the fencing-token script (see [`FENCE_HEAD`]); `value` is the lock's value.
const FENCE_BODY: &str = r"
local owner, fence, mark = parse(value)
if owner ~= ARGV[1] then
  return 0
end
local f = fence_after(clock(), fence)
redis.call('SET', KEYS[1], owner .. '@' .. f .. (mark or ''), 'KEEPTTL')
return f
";

/// A token goes away that may hold the lock or be its registered waiter (a waiter that timed
/// out or was cancelled, an acquire attempt whose answer nobody will use, a lock declared lost
/// by its holder's clock): release the lock if the token holds it (announcing it if it was
/// marked), else drop the token's registration.
///
/// * `KEYS[1]` the lock
/// * `ARGV[1]` the token
/// * returns `1` when it released the lock, `2` when it removed a registration, `0` otherwise
///
/// Commands: 2 to 4 (EVALSHA, GET; DEL and PUBLISH, or SET).
const WITHDRAW_BODY: &str = r"
local owner, fence, mark, waiter = parse(redis.call('GET', KEYS[1]))
if not owner then
  return 0
end
if owner == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if mark then
    redis.call('PUBLISH', KEYS[1] .. ':released', '')
  end
  return 1
end
if waiter == ARGV[1] then
  redis.call('SET', KEYS[1], head(owner, fence) .. '!', 'KEEPTTL')
  return 2
end
return 0
";

/// Read a lock for inspection, in one atomic step.
///
/// * `KEYS[1]` the lock
/// * returns nil when the key does not exist, else `{value, pttl_ms}`
///
/// Commands: 3 (EVALSHA, GET, PTTL).
const INSPECT_BODY: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then
  return nil
end
return {value, redis.call('PTTL', KEYS[1])}
";

/// Delete a lock whoever holds it (an administrative unlock), and wake its waiters. A value
/// lockattr did not write is left alone.
///
/// * `KEYS[1]` the lock
/// * returns `1` when a lock was deleted, `0` when there was none, `-1` for a foreign value
///
/// Commands: 4 (EVALSHA, GET, DEL, PUBLISH), 2 otherwise.
const FORCE_UNLOCK_BODY: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
if not parse(value) then
  return -1
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[1] .. ':released', '')
return 1
";

/// The scripts for one kind of deployment: announcements by `PUBLISH`, or by `SPUBLISH` on
/// Redis Cluster, where a plain `PUBLISH` is broadcast to every node.
#[derive(Debug)]
pub(crate) struct Scripts {
    acquire: Lua,
    release: Lua,
    handoff: Lua,
    renew: Lua,
    fence: Lua,
    withdraw: Lua,
    inspect: Lua,
    force_unlock: Lua,
}

/// A script's source and its SHA-1 (what `EVALSHA` names it by).
#[derive(Debug)]
pub(crate) struct Lua {
    code: String,
    hash: String,
}

impl Lua {
    fn new(code: String) -> Lua {
        let hash = Script::new(&code).get_hash().to_owned();
        Lua { code, hash }
    }

    /// The source, for `SCRIPT LOAD`.
    pub(crate) fn code(&self) -> &str {
        &self.code
    }
}

static PUBLISHING: LazyLock<Scripts> = LazyLock::new(|| Scripts::new("PUBLISH"));
static SHARDED: LazyLock<Scripts> = LazyLock::new(|| Scripts::new("SPUBLISH"));

impl Scripts {
    /// The scripts that announce with `PUBLISH` (one Redis, Sentinel).
    pub(crate) fn publishing() -> &'static Scripts {
        &PUBLISHING
    }

    /// The scripts that announce with `SPUBLISH` (Redis Cluster, Redis 7 or newer).
    pub(crate) fn sharded() -> &'static Scripts {
        &SHARDED
    }

    fn new(publish: &str) -> Scripts {
        // `head` runs before the prelude: a script's most common case may end there without
        // defining the helpers it does not use.
        let script = |head: &str, body: &str| {
            let body = body.replace("'PUBLISH'", &format!("'{publish}'"));
            Lua::new(format!("{head}{LUA_PRELUDE}{body}"))
        };
        Scripts {
            acquire: script("", ACQUIRE_BODY),
            release: script(RELEASE_HEAD, RELEASE_BODY),
            handoff: script("", HANDOFF_BODY),
            renew: script("", RENEW_BODY),
            fence: script(FENCE_HEAD, FENCE_BODY),
            withdraw: script("", WITHDRAW_BODY),
            inspect: script("", INSPECT_BODY),
            force_unlock: script("", FORCE_UNLOCK_BODY),
        }
    }

    /// Every script, for loading them when a `Locker` is built.
    pub(crate) fn all(&self) -> [&Lua; 8] {
        [
            &self.acquire,
            &self.release,
            &self.handoff,
            &self.renew,
            &self.fence,
            &self.withdraw,
            &self.inspect,
            &self.force_unlock,
        ]
    }

    /// [`ACQUIRE_BODY`] for `token`; `registered` is the token this contender registered with.
    pub(crate) fn acquire(
        &'static self,
        names: &RedisNames,
        token: &str,
        lease: Duration,
        registered: Option<&str>,
        grant_lease: Duration,
    ) -> Call {
        let mut call = evalsha(&self.acquire, 4, names.lock().len() + 2 * token.len() + 48);
        call.cmd
            .arg(names.lock())
            .arg(token)
            .arg(millis(lease))
            .arg(registered.unwrap_or(""))
            .arg(millis(grant_lease));
        call
    }

    /// [`RELEASE_BODY`] for `token`.
    pub(crate) fn release(&'static self, names: &RedisNames, token: &str) -> Call {
        let mut call = evalsha(&self.release, 1, names.lock().len() + token.len());
        call.cmd.arg(names.lock()).arg(token);
        call
    }

    /// [`HANDOFF_BODY`] from `old_token` (fencing token `old_fence`, if it has one) to
    /// `new_token`.
    pub(crate) fn handoff(
        &'static self,
        names: &RedisNames,
        old_token: &str,
        old_fence: Option<u64>,
        new_token: &str,
        lease: Duration,
    ) -> Call {
        let mut call = evalsha(
            &self.handoff,
            4,
            names.lock().len() + 2 * old_token.len() + 48,
        );
        call.cmd
            .arg(names.lock())
            .arg(old_token)
            .arg(new_token)
            .arg(millis(lease))
            .arg(fence_arg(old_fence));
        call
    }

    /// [`RENEW_BODY`] for `token` (fencing token `fence`, if it has one), setting the lease to
    /// `lease`.
    pub(crate) fn renew(
        &'static self,
        names: &RedisNames,
        token: &str,
        fence: Option<u64>,
        lease: Duration,
    ) -> Call {
        let mut call = evalsha(&self.renew, 3, names.lock().len() + token.len() + 48);
        call.cmd
            .arg(names.lock())
            .arg(token)
            .arg(millis(lease))
            .arg(fence_arg(fence));
        call
    }

    /// [`FENCE_BODY`] for `token`.
    pub(crate) fn fence(&'static self, names: &RedisNames, token: &str) -> Call {
        let mut call = evalsha(&self.fence, 1, names.lock().len() + token.len());
        call.cmd.arg(names.lock()).arg(token);
        call
    }

    /// [`WITHDRAW_BODY`] for `token`.
    pub(crate) fn withdraw(&'static self, names: &RedisNames, token: &str) -> Call {
        let mut call = evalsha(&self.withdraw, 1, names.lock().len() + token.len());
        call.cmd.arg(names.lock()).arg(token);
        call
    }

    /// [`INSPECT_BODY`].
    pub(crate) fn inspect(&'static self, names: &RedisNames) -> Call {
        let mut call = evalsha(&self.inspect, 0, names.lock().len());
        call.cmd.arg(names.lock());
        call
    }

    /// [`FORCE_UNLOCK_BODY`].
    pub(crate) fn force_unlock(&'static self, names: &RedisNames) -> Call {
        let mut call = evalsha(&self.force_unlock, 0, names.lock().len());
        call.cmd.arg(names.lock());
        call
    }
}

/// A fencing token as a script argument: its digits, or `''` for none.
fn fence_arg(fence: Option<u64>) -> String {
    fence.map(|f| f.to_string()).unwrap_or_default()
}

/// `EVALSHA <script> 1 <lock>`-shaped commands, sized up front; the caller appends the lock and
/// `args` arguments.
///
/// Built directly rather than through redis-rs's `ScriptInvocation`, which copies every key and
/// argument into vectors of its own first: the acquire and release paths are measured against a
/// raw two-round-trip floor, and every allocation shows. The store reloads a script Redis does
/// not know (`NOSCRIPT`) and sends the call again.
fn evalsha(script: &'static Lua, args: usize, bytes: usize) -> Call {
    let mut cmd = Cmd::with_capacity(args + 4, bytes + 64);
    cmd.arg("EVALSHA").arg(&script.hash).arg(1);
    Call { script, cmd }
}

/// One script call: the `EVALSHA` command and the script, for reloading it on `NOSCRIPT`.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) script: &'static Lua,
    pub(crate) cmd: Cmd,
}

/// The uncontended fast path: `SET lock token NX PX lease`, alone, no script. The lock has
/// no fencing token yet: it is issued when first asked for ([`FENCE_BODY`]; see `protocol` for
/// why that is safe). The reply decodes with [`decode_plain`].
pub(crate) fn try_plain(names: &RedisNames, token: &str, lease: Duration) -> Cmd {
    // Sized up front (like `evalsha`): built for every uncontended acquisition.
    let mut set = Cmd::with_capacity(6, names.lock().len() + token.len() + 32);
    set.arg("SET")
        .arg(names.lock())
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(millis(lease));
    set
}

/// `TIME`, pipelined after [`try_plain`] for a request that wants its fencing token at once
/// (`LockRequest::fenced`; see `protocol`). The replies decode with [`decode_plain_fenced`].
pub(crate) fn time() -> Cmd {
    let mut time = Cmd::with_capacity(1, 4);
    time.arg("TIME");
    time
}

/// Decodes [`try_plain`]'s reply: `OK` when taken, nil when the key exists.
pub(crate) fn decode_plain(set: &Value) -> Result<AttemptReply, redis::RedisError> {
    match set {
        Value::Nil => Ok(AttemptReply::Busy {
            holder_ttl: None,
            registered: false,
            foreign: false,
        }),
        Value::Okay => Ok(AttemptReply::Taken { fence: None }),
        _ => Err(unexpected("acquire", set)),
    }
}

/// Decodes [`try_plain`]'s and [`time`]'s replies: the `SET` answer (`OK` or nil) and `TIME`'s
/// (seconds and microseconds), whose fencing token a lock taken here has at once.
///
/// `TIME`'s numbers are read from the values directly (redis-rs's typed conversion validates
/// and copies each number's text); anything malformed is an error, never a lock taken with a
/// made-up token.
pub(crate) fn decode_plain_fenced(
    set: &Value,
    time: &Value,
) -> Result<AttemptReply, redis::RedisError> {
    let bad = || unexpected("acquire", &Value::Array(vec![set.clone(), time.clone()]));
    match (decode_plain(set).map_err(|_| bad())?, time) {
        (busy @ AttemptReply::Busy { .. }, _) => Ok(busy),
        (_, Value::Array(time)) => match time.as_slice() {
            [secs, micros] => match (decimal(secs), decimal(micros)) {
                (Some(secs), Some(micros)) => Ok(AttemptReply::Taken {
                    fence: Some(fence_from_time(secs, micros)),
                }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// A non-negative integer reply: an integer, or a bulk string of 1 to 19 decimal digits.
fn decimal(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(digits) if (1..=19).contains(&digits.len()) => {
            digits.iter().try_fold(0u64, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
            })
        }
        _ => None,
    }
}

/// Decodes [`ACQUIRE_BODY`]'s reply.
pub(crate) fn decode_acquire(reply: &Value) -> Result<AttemptReply, redis::RedisError> {
    match reply {
        Value::Int(_) | Value::BulkString(_) => decode_fence(reply)
            .map(|fence| AttemptReply::Taken { fence: Some(fence) })
            .ok_or_else(|| unexpected("acquire", reply)),
        Value::Array(items) => match items.as_slice() {
            [f @ (Value::Int(_) | Value::BulkString(_))] => decode_fence(f)
                .map(|fence| AttemptReply::Granted { fence })
                .ok_or_else(|| unexpected("acquire", reply)),
            [Value::Int(ttl), Value::Int(registered), Value::Int(foreign)] => {
                Ok(AttemptReply::Busy {
                    holder_ttl: u64::try_from(*ttl).ok().map(Duration::from_millis),
                    registered: *registered == 1,
                    foreign: *foreign == 1,
                })
            }
            _ => Err(unexpected("acquire", reply)),
        },
        _ => Err(unexpected("acquire", reply)),
    }
}

/// A fencing token a script returned: a string of digits (or an integer); `None` for `0` or
/// anything else.
pub(crate) fn decode_fence(reply: &Value) -> Option<u64> {
    let fence = match reply {
        Value::Int(f) => u64::try_from(*f).ok()?,
        Value::BulkString(digits) => std::str::from_utf8(digits).ok()?.parse().ok()?,
        _ => return None,
    };
    (fence > 0).then_some(fence)
}

/// Decodes [`RELEASE_BODY`]'s reply.
pub(crate) fn decode_release(reply: i64) -> ReleaseReply {
    match u64::try_from(reply) {
        Ok(n) if n >= 1 => ReleaseReply::Released { woke: n - 1 },
        _ => ReleaseReply::NotOurs,
    }
}

/// Decodes [`INSPECT_BODY`]'s reply: the value and its remaining lease in ms (`None`: no TTL).
pub(crate) fn decode_inspect(
    reply: &Value,
) -> Result<Option<(String, Option<u64>)>, redis::RedisError> {
    match reply {
        Value::Nil => Ok(None),
        Value::Array(items) => match items.as_slice() {
            [Value::BulkString(value), Value::Int(pttl)] => Ok(Some((
                String::from_utf8_lossy(value).into_owned(),
                u64::try_from(*pttl).ok(),
            ))),
            _ => Err(unexpected("inspect", reply)),
        },
        _ => Err(unexpected("inspect", reply)),
    }
}

pub(crate) fn unexpected(script: &str, reply: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a lockattr script",
        format!("{script}: {reply:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_replies_decode() {
        assert_eq!(
            decode_acquire(&Value::BulkString(b"176457864412345600".to_vec())).unwrap(),
            AttemptReply::Taken {
                fence: Some(176_457_864_412_345_600)
            }
        );
        assert_eq!(
            decode_acquire(&Value::Array(vec![Value::BulkString(b"7".to_vec())])).unwrap(),
            AttemptReply::Granted { fence: 7 }
        );
        assert!(decode_acquire(&Value::BulkString(b"x".to_vec())).is_err());
        assert_eq!(
            decode_acquire(&Value::Array(vec![Value::Int(9)])).unwrap(),
            AttemptReply::Granted { fence: 9 }
        );
        assert_eq!(
            decode_acquire(&Value::Array(vec![
                Value::Int(1500),
                Value::Int(1),
                Value::Int(0)
            ]))
            .unwrap(),
            AttemptReply::Busy {
                holder_ttl: Some(Duration::from_millis(1500)),
                registered: true,
                foreign: false
            }
        );
        assert_eq!(
            decode_acquire(&Value::Array(vec![
                Value::Int(-1),
                Value::Int(0),
                Value::Int(1)
            ]))
            .unwrap(),
            AttemptReply::Busy {
                holder_ttl: None,
                registered: false,
                foreign: true
            }
        );
        assert!(decode_acquire(&Value::Int(0)).is_err());
        assert!(decode_acquire(&Value::Nil).is_err());
        assert!(decode_acquire(&Value::Array(vec![])).is_err());
    }

    #[test]
    fn plain_replies_decode() {
        assert_eq!(
            decode_plain(&Value::Okay).unwrap(),
            AttemptReply::Taken { fence: None }
        );
        assert!(matches!(
            decode_plain(&Value::Nil).unwrap(),
            AttemptReply::Busy { .. }
        ));
        // Anything else is an error, never a lock counted as taken.
        for set in [
            Value::Int(1),
            Value::BulkString(b"OK".to_vec()),
            Value::Array(vec![]),
        ] {
            assert!(decode_plain(&set).is_err(), "{set:?}");
        }
    }

    #[test]
    fn fenced_plain_replies_decode() {
        let time = |s: &str, us: &str| {
            Value::Array(vec![
                Value::BulkString(s.as_bytes().to_vec()),
                Value::BulkString(us.as_bytes().to_vec()),
            ])
        };
        assert_eq!(
            decode_plain_fenced(&Value::Okay, &time("1764578644", "5")).unwrap(),
            AttemptReply::Taken {
                fence: Some(176_457_864_400_000_500)
            }
        );
        assert_eq!(
            decode_plain_fenced(&Value::Okay, &time("1764578644", "999999")).unwrap(),
            AttemptReply::Taken {
                fence: Some(176_457_864_499_999_900)
            }
        );
        assert!(matches!(
            decode_plain_fenced(&Value::Nil, &time("1", "2")).unwrap(),
            AttemptReply::Busy { .. }
        ));
        // Anything else is an error, never a lock taken with a made-up token.
        for (set, time) in [
            (Value::Okay, time("", "5")),
            (Value::Okay, time("17x", "5")),
            (Value::Okay, time("-1", "5")),
            (Value::Okay, time("99999999999999999999", "5")),
            (Value::Okay, Value::Array(vec![Value::Int(1)])),
            (Value::Okay, Value::Nil),
            (Value::Int(1), time("1", "2")),
        ] {
            assert!(
                decode_plain_fenced(&set, &time).is_err(),
                "{set:?} {time:?}"
            );
        }
        assert_eq!(decimal(&Value::Int(7)), Some(7));
        assert_eq!(decimal(&Value::Int(-7)), None);
    }

    #[test]
    fn release_and_inspect_replies_decode() {
        assert_eq!(decode_release(0), ReleaseReply::NotOurs);
        assert_eq!(decode_release(1), ReleaseReply::Released { woke: 0 });
        assert_eq!(decode_release(3), ReleaseReply::Released { woke: 2 });
        assert_eq!(decode_inspect(&Value::Nil).unwrap(), None);
        assert_eq!(
            decode_inspect(&Value::Array(vec![
                Value::BulkString(b"v".to_vec()),
                Value::Int(-1)
            ]))
            .unwrap(),
            Some(("v".to_owned(), None))
        );
    }

    #[test]
    fn release_and_fence_of_a_bare_token_end_before_the_prelude() {
        for scripts in [Scripts::publishing(), Scripts::sharded()] {
            for (code, head, ends) in [
                (scripts.release.code(), RELEASE_HEAD, "return 1"),
                (scripts.fence.code(), FENCE_HEAD, "return f"),
            ] {
                assert!(code.starts_with(head));
                let prelude = code.find("local function").expect("the prelude follows");
                assert!(code[..prelude].contains(ends));
            }
        }
    }

    #[test]
    fn cluster_scripts_announce_in_the_shard() {
        assert!(Scripts::publishing().release.hash != Scripts::sharded().release.hash);
        assert!(Scripts::sharded().release.code().contains("'SPUBLISH'"));
        let sources = [RELEASE_BODY, WITHDRAW_BODY, FORCE_UNLOCK_BODY];
        for s in sources {
            assert!(
                s.contains("'PUBLISH'"),
                "the placeholder the sharded variant replaces"
            );
        }
    }
}
