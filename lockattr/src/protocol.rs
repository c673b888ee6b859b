//! The lock protocol: what a lock's value in Redis looks like, how fencing tokens are made,
//! and the direct-grant rules. The Lua scripts (`scripts`) and the in-memory store implement
//! exactly this; the shared Lua helpers are [`LUA_PRELUDE`].
//!
//! # The lock's value
//!
//! ```text
//! value = owner [ "@" fence ] [ "!" [ waiter ":" grant_lease_ms ":" registered_ms ] ]
//! owner, waiter = 32 lowercase hex digits (a random 128-bit token per acquisition)
//! ```
//!
//! * `T`: held by token `T`; taken by the uncontended fast path, which issues no fencing token
//!   (see [Fencing tokens](#fencing-tokens)).
//! * `T@F`: held by `T` with fencing token `F` (every scripted way to take a lock records it,
//!   as does the first request for a fast-path lock's token, and a renewal after a local
//!   handover).
//! * `...!`: a contender found the lock busy and may be waiting for its release, so the
//!   release announces itself on the lock's channel. An unmarked lock's release is silent: an
//!   uncontended lock never pays for a `PUBLISH`.
//! * `...!W:L:S`: the same, and the contender registered for a *direct grant*: its token `W`,
//!   the lease `L` (ms) a grant gives it, and when it registered, `S` (Redis's clock, ms).
//!
//! A value that does not have this form was not written by lockattr (an operator's `SET`,
//! another library): contenders treat such a key as busy and never write to it; only its TTL
//! (or a person) ends it. Ownership is the owner part, compared inside a script before anything
//! is changed, so nobody extends, hands over or deletes a lock they do not own.
//!
//! # Fencing tokens
//!
//! A fencing token is Redis's clock in microseconds (`TIME`) at a moment the lock was held,
//! times [`FENCE_SLOTS`] (100), raised above the previous holder's token where a script knows
//! it. Only multiples of 100 are ever issued by Redis: the 99 numbers above an issued token
//! belong to that holder's lock, for the in-process handovers that follow it (the `n`-th next
//! local holder gets the token plus `n`; see `release`).
//!
//! * **Fast path: issued when first asked for.** An uncontended acquisition is `SET key T NX
//!   PX lease` alone: no script, no `TIME`, the raw floor's one command. The lock has no token
//!   yet. The first time its holder asks for one, the `FENCE` script checks that the value's
//!   owner is still `T`, reads `TIME`, and writes `T@F` (keeping the TTL and any mark), `F`
//!   being `max(TIME × 100, the next multiple of 100 above a token the value records)`.
//!   Why `F` is above every earlier holder's token and below every later one's:
//!   * every earlier holder's token was issued (by a script or by `TIME` inside one) while that
//!     holder held the key, and that hold ended (released, or expired) before this `SET`
//!     succeeded, which is before `FENCE` ran: Redis runs one command at a time, so `FENCE`'s
//!     `TIME` is later than theirs, by at least a client round trip (far more than the clock's
//!     1 µs step), hence a higher multiple of 100 than theirs and every number they reserved;
//!   * `FENCE` ran while `T` owned the key (it checked, atomically), so every later holder's
//!     `SET` or script runs after it, and their `TIME` is later still;
//!   * a lock that is not `T`'s any more (expired, taken over) gets no token: the caller learns
//!     that the lock is lost instead of a number it could write with.
//!
//!   The holder keeps the first token it was given; concurrent first requests of one holder
//!   may each run `FENCE` (the later one writes a higher token into the value, which only
//!   raises the floor for later holders). A holder that never asks never pays for it.
//! * **Fast path with the token at once** (`LockRequest::fenced`): `SET key T NX PX lease`
//!   and `TIME` pipelined in one round trip; the token is `TIME`'s answer times 100, not
//!   written into the value (a renewal records it). `TIME` runs after the `SET`, so it is
//!   later than every earlier holder's token, as above. The next holder takes the key only
//!   after this lock ended: released (this holder releases only after it received its token,
//!   a whole client round trip after its `TIME`) or expired (at least a lease after the
//!   `SET`). If the pipeline's `TIME` ran late, after the lease had run out in Redis (the two
//!   commands split across reads and delayed), its answer arrives after `sent + lease` by the
//!   local clock, and the attempt is thrown away (the local deadline rules; see `lease`). So
//!   the next holder's clock reading is at least a microsecond later, and its token above
//!   every number reserved for this one.
//! * **Scripts** (the contended attempt, a direct grant inside the release, a handover through
//!   Redis) compute `max(TIME × 100, the next multiple of 100 above the previous token)` where
//!   they know the previous token, and write the token into the value: those locks have their
//!   token at once. A renewal records the token of a local handover in the value, so the next
//!   script knows it.
//! * **Nothing to lose.** No counter is kept in Redis: tokens keep increasing across a Redis
//!   restart without persistence, and the keys a lock leaves behind are only the lock itself,
//!   while it is held. A failover to a replica keeps them increasing as long as the replica's
//!   clock is not behind the old master's by more than the failover took.
//! * **The caveat.** Tokens follow the Redis host's wall clock: if it is set back by `d`, a key
//!   taken again within `d` can get a smaller token than its previous holder. The same clock
//!   expires the leases (a clock set forward ends them early), so a Redis host for locks needs
//!   a clock that is slewed, not stepped (NTP/chrony defaults after the first sync).
//!
//! Tokens are about 1.8 × 10¹⁷ in 2026: they fit a `u64`, and a signed 64-bit database column
//! until the year 2262.
//!
//! # Direct grants
//!
//! A release whose lock has a live registration hands the lock to that waiter in the same
//! script: it sets the value to `W@F!` with the waiter's lease `L` and a fresh fencing token `F`,
//! and announces `W:F` on the lock's channel. The waiter holds the lock when the announcement
//! arrives, without a round trip of its own. Why that is safe and live:
//!
//! * The waiter measures the grant's lease from *the time it sent the attempt that registered
//!   it*: Redis granted later, so the real expiry is later still.
//! * A registration is live for `L/2` after it was made ([`registration_live`]); a grant is made
//!   only to a live one, so the waiter's bound is always useful, and a waiter that died can be
//!   granted the lock only within `L/2` of registering: the lock then expires after `L`, as if a
//!   holder had died. `L` is at most [`GRANT_LEASE_CAP`] for a waiter that renews its lease (it
//!   renews to its full lease at once); a fixed lease is granted whole.
//! * A waiter that gives up (timeout, cancellation) withdraws in the background: its registration
//!   is removed, or, if it was granted the lock meanwhile, the lock is released.
//! * A grant whose announcement was lost (pub/sub reconnecting) is found by the waiter's next
//!   attempt, which renews it to the full lease from that attempt; the token is the grant's.
//! * A mark may outlive the waiter that set it (one needless `PUBLISH`), but is never missing
//!   while a waiter sleeps: the attempt that found the lock busy marks it in the same script,
//!   before the waiter sleeps; a waiter whose holder changed without a release (an expired
//!   lease) wakes on its fallback timer (the holder's TTL) and marks the new holder.

use std::fmt::Write as _;
use std::time::Duration;

/// The longest lease a direct grant gives a waiter that renews its lease (see the module docs).
pub(crate) const GRANT_LEASE_CAP: Duration = Duration::from_secs(2);

/// The lease a direct grant gives a waiter that asked for `lease`.
pub(crate) fn grant_lease(lease: Duration, renew: bool) -> Duration {
    if renew {
        lease.min(GRANT_LEASE_CAP)
    } else {
        lease
    }
}

/// Whether a registration made at `registered_ms` for a grant of `grant_lease_ms` may still be
/// granted at `now_ms` (Redis's clock).
/// A registration with a zero grant lease is never granted (with `wait_for_replicas`, a
/// waiter takes the lock itself, so that its own acquisition waits for the replicas).
pub(crate) fn registration_live(now_ms: u64, registered_ms: u64, grant_lease_ms: u64) -> bool {
    grant_lease_ms > 0 && now_ms.saturating_sub(registered_ms) <= grant_lease_ms / 2
}

/// The length of an owner token.
pub(crate) const TOKEN_LEN: usize = 32;

/// A fresh 128-bit random owner token, as 32 lowercase hex digits.
pub(crate) fn new_token() -> Token {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    // Written digit by digit on the stack and copied once into the shared token: `format!`
    // costs more than the random number, and a `String` would be a second allocation.
    let mut digits = [0u8; TOKEN_LEN];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[usize::from((bits >> (124 - 4 * i)) as u8 & 0xf)];
    }
    match std::str::from_utf8(&digits) {
        Ok(hex) => Token::from(hex),
        Err(_) => unreachable!("hex digits are ASCII"),
    }
}

/// An owner token, shared by everything that may have to release it (the holder, a release
/// in flight, the local queue's record of the holder) without copying it.
pub(crate) type Token = std::sync::Arc<str>;

fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A lock value, parsed (see the module docs for the grammar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LockValue<'a> {
    pub(crate) owner: &'a str,
    pub(crate) fence: Option<u64>,
    pub(crate) mark: Mark<'a>,
}

/// The waiter part of a lock value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mark<'a> {
    /// Nobody asked for the lock.
    None,
    /// A contender may be waiting: the release announces itself.
    Waiting,
    /// A contender registered for a direct grant.
    Registered {
        waiter: &'a str,
        grant_lease_ms: u64,
        registered_ms: u64,
    },
}

impl<'a> LockValue<'a> {
    /// Parses a value; `None` for one lockattr did not write.
    pub(crate) fn parse(value: &'a str) -> Option<Self> {
        let owner = value.get(..TOKEN_LEN).filter(|o| is_token(o))?;
        let mut rest = &value[TOKEN_LEN..];
        let mut fence = None;
        if let Some(after) = rest.strip_prefix('@') {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            fence = Some(after[..digits].parse().ok()?);
            rest = &after[digits..];
        }
        let mark = match rest {
            "" => Mark::None,
            "!" => Mark::Waiting,
            _ => {
                let reg = rest.strip_prefix('!')?;
                let mut parts = reg.splitn(3, ':');
                let waiter = parts.next().filter(|w| is_token(w))?;
                let grant_lease_ms = digits_only(parts.next()?)?;
                let registered_ms = digits_only(parts.next()?)?;
                Mark::Registered {
                    waiter,
                    grant_lease_ms,
                    registered_ms,
                }
            }
        };
        Some(LockValue { owner, fence, mark })
    }

    /// The value as stored.
    pub(crate) fn render(&self) -> String {
        let mut v = String::with_capacity(2 * TOKEN_LEN + 48);
        v.push_str(self.owner);
        if let Some(f) = self.fence {
            let _ = write!(v, "@{f}");
        }
        match self.mark {
            Mark::None => {}
            Mark::Waiting => v.push('!'),
            Mark::Registered {
                waiter,
                grant_lease_ms,
                registered_ms,
            } => {
                let _ = write!(v, "!{waiter}:{grant_lease_ms}:{registered_ms}");
            }
        }
        v
    }
}

fn digits_only(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Fencing tokens per microsecond of Redis's clock: an acquisition's token is a multiple of
/// this, and the tokens up to the next multiple are reserved for the local handovers that
/// follow it (see [Fencing tokens](self#fencing-tokens)).
pub(crate) const FENCE_SLOTS: u64 = 100;

/// A fencing token from `TIME`'s answer (seconds and microseconds): Redis's clock in
/// microseconds, times [`FENCE_SLOTS`].
pub(crate) fn fence_from_time(secs: u64, micros: u64) -> u64 {
    secs.saturating_mul(1_000_000)
        .saturating_add(micros)
        .saturating_mul(FENCE_SLOTS)
}

/// What an attempt's reply says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttemptReply {
    /// Taken with the attempt's token, with this fencing token; `None` for the fast path,
    /// whose token is issued when first asked for (see [Fencing tokens](self#fencing-tokens)).
    Taken { fence: Option<u64> },
    /// Granted earlier to the token the contender registered with (its lease now renewed from
    /// this attempt), with this fencing token.
    Granted { fence: u64 },
    /// Held by someone else.
    Busy {
        /// The holder's remaining lease, if it has one.
        holder_ttl: Option<Duration>,
        /// This attempt's token is now the registered waiter.
        registered: bool,
        /// The key holds a value lockattr did not write (it was left untouched).
        foreign: bool,
    },
}

/// What a release did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReleaseReply {
    /// Released (or granted to a waiting process); `woke` other processes were waiting.
    Released { woke: u64 },
    /// The lock was not ours any more.
    NotOurs,
}

/// What a release announced on the lock's channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// The lock was released and is free (or was taken away from its holder by force).
    Released,
    /// The lock was granted to the waiter registered with this token, with this fencing token.
    Granted { token: String, fence: u64 },
}

impl Announcement {
    /// Parses a channel message: empty for a release, `W:F` for a grant.
    pub(crate) fn parse(payload: &[u8]) -> Announcement {
        let granted = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.split_once(':'))
            .filter(|(token, _)| is_token(token))
            .and_then(|(token, fence)| Some((token.to_owned(), fence.parse().ok()?)));
        match granted {
            Some((token, fence)) => Announcement::Granted { token, fence },
            None => Announcement::Released,
        }
    }
}

/// Lua helpers shared by every script: the same grammar as [`LockValue::parse`], the clock, and
/// the fencing rule.
///
/// * `parse(v)` returns `owner, fence, mark, waiter, grant_lease, registered` for a lockattr
///   value (`fence`: a string of digits or nil; `mark`: nil, `'!'` or the whole `!W:L:S`), and
///   nil for anything else (including a missing key);
/// * `head(owner, fence)` is `owner` with `@fence` when there is one;
/// * `clock()` is Redis's clock as a fencing token ([`fence_from_time`]) and in milliseconds;
/// * `fence_after(now, prev)` is the token `now`, or the first multiple of [`FENCE_SLOTS`] above
///   `prev` when `now` is not above `prev`: the store only ever issues multiples of it.
///
/// Fencing tokens stay decimal strings inside the scripts (they exceed the 2⁵³ up to which Lua's
/// numbers are exact); tokens of the same number of digits compare as strings do.
pub(crate) const LUA_PRELUDE: &str = r"
local function parse(v)
  if not v then return nil end
  local owner = string.match(v, '^[0-9a-f]+')
  if not owner or #owner ~= 32 then return nil end
  local rest = string.sub(v, 33)
  local fence = string.match(rest, '^@(%d+)')
  if fence then rest = string.sub(rest, #fence + 2) end
  if rest == '' then return owner, fence, nil end
  if rest == '!' then return owner, fence, rest end
  local w, l, s = string.match(rest, '^!([0-9a-f]+):(%d+):(%d+)$')
  if w and #w == 32 then return owner, fence, rest, w, tonumber(l), tonumber(s) end
  return nil
end
local function head(owner, fence)
  if fence then return owner .. '@' .. fence end
  return owner
end
local function clock()
  local t = redis.call('TIME')
  local us = string.format('%06d', tonumber(t[2]))
  return t[1] .. us .. '00', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function above(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local function incr(s)
  local digits, nines = string.match(s, '^(.-)(9*)$')
  if digits == '' then return '1' .. string.rep('0', #nines) end
  local last = tonumber(string.sub(digits, -1)) + 1
  return string.sub(digits, 1, -2) .. last .. string.rep('0', #nines)
end
local function fence_after(now, prev)
  if prev and not above(now, prev) then
    if #prev <= 2 then return '100' end
    return incr(string.sub(prev, 1, -3)) .. '00'
  end
  return now
end
local function str(n)
  return string.format('%.0f', n)
end
";

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";
    const W: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn tokens_are_32_random_hex_digits() {
        let a = new_token();
        assert!(is_token(&a));
        assert_ne!(a, new_token());
    }

    #[test]
    fn values_parse_and_render() {
        let cases = [
            (T.to_owned(), None, Mark::None),
            (
                format!("{T}@1764578644123456"),
                Some(1_764_578_644_123_456),
                Mark::None,
            ),
            (format!("{T}!"), None, Mark::Waiting),
            (format!("{T}@7!"), Some(7), Mark::Waiting),
            (
                format!("{T}@7!{W}:2000:1764578644123"),
                Some(7),
                Mark::Registered {
                    waiter: W,
                    grant_lease_ms: 2000,
                    registered_ms: 1_764_578_644_123,
                },
            ),
            (
                format!("{T}!{W}:1:2"),
                None,
                Mark::Registered {
                    waiter: W,
                    grant_lease_ms: 1,
                    registered_ms: 2,
                },
            ),
        ];
        for (text, fence, mark) in cases {
            let v = LockValue::parse(&text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!((v.owner, v.fence, v.mark), (T, fence, mark), "{text}");
            assert_eq!(v.render(), text);
        }
    }

    #[test]
    fn foreign_values_are_not_ours() {
        for text in [
            "bar",
            "",
            &T[..31],
            &format!("{T}0"),
            &T.to_uppercase(),
            &format!("{T}@"),
            &format!("{T}@x"),
            &format!("{T}!!"),
            &format!("{T}!{W}"),
            &format!("{T}!{W}:1"),
            &format!("{T}!{W}:1:x"),
            &format!("{T}!{W}:1:2:3"),
            &format!("{T}#7"),
        ] {
            assert_eq!(LockValue::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn announcements() {
        assert_eq!(Announcement::parse(b""), Announcement::Released);
        let g = Announcement::parse(format!("{W}:1764578644123456").as_bytes());
        assert_eq!(
            g,
            Announcement::Granted {
                token: W.to_owned(),
                fence: 1_764_578_644_123_456
            }
        );
        assert_eq!(Announcement::parse(b"garbage"), Announcement::Released);
        assert_eq!(Announcement::parse(b"xyz:12"), Announcement::Released);
    }

    #[test]
    fn grant_rules() {
        assert_eq!(grant_lease(Duration::from_secs(30), true), GRANT_LEASE_CAP);
        assert_eq!(
            grant_lease(Duration::from_millis(300), true),
            Duration::from_millis(300)
        );
        assert_eq!(
            grant_lease(Duration::from_secs(30), false),
            Duration::from_secs(30)
        );
        assert!(registration_live(1000, 0, 2000));
        assert!(!registration_live(1001, 0, 2000));
        assert!(
            registration_live(5, 10, 2000),
            "a clock behind the registration"
        );
    }

    #[test]
    fn fences_from_time() {
        assert_eq!(
            fence_from_time(1_764_578_644, 123_456),
            176_457_864_412_345_600
        );
        assert_eq!(fence_from_time(1_764_578_644, 5), 176_457_864_400_000_500);
        assert!(
            fence_from_time(9_999_999_999, 999_999) < u64::MAX / 10,
            "until the year 2286"
        );
    }
}
