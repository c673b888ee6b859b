//! Helpers shared by the runtime tests.

use std::time::{Duration, Instant};

use lockattr::Locker;
use lockattr_tests::RedisServer;

/// A locker with a 20 s default wait and a 500 ms operation timeout.
pub async fn locker(server: &RedisServer) -> Locker {
    locker_at(&server.url()).await
}

/// The same, for any URL (a proxy's).
pub async fn locker_at(url: &str) -> Locker {
    Locker::builder(url)
        .default_wait(Duration::from_secs(20))
        .operation_timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("connect to test redis")
}

/// Polls `cond` every 10 ms for at most `limit`; returns whether it became true.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// The raw value of `key`, if it exists.
pub fn raw(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.conn())
        .expect("GET")
}

/// `PTTL key` in ms (-1: no TTL, -2: no key).
pub fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut server.conn())
        .expect("PTTL")
}

/// A lock value, read the way the protocol documents it (`owner[@fence][!...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub owner: String,
    pub fence: Option<u64>,
    /// The part from `!` on, if any.
    pub mark: Option<String>,
    /// The registered waiter's token, if any.
    pub waiter: Option<String>,
}

impl Value {
    pub fn parse(v: &str) -> Option<Value> {
        let owner = v.get(..32)?;
        if !owner.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut rest = &v[32..];
        let mut fence = None;
        if let Some(after) = rest.strip_prefix('@') {
            let end = after.find('!').unwrap_or(after.len());
            fence = Some(after[..end].parse().ok()?);
            rest = &after[end..];
        }
        let mark = (!rest.is_empty()).then(|| rest.to_owned());
        let waiter = rest
            .strip_prefix('!')
            .and_then(|r| r.split(':').next())
            .filter(|w| w.len() == 32)
            .map(str::to_owned);
        Some(Value {
            owner: owner.to_owned(),
            fence,
            mark,
            waiter,
        })
    }
}

/// The parsed lock value of `key`, if it exists and is a lock value.
pub fn value(server: &RedisServer, key: &str) -> Option<Value> {
    raw(server, key).as_deref().and_then(Value::parse)
}

/// Every key in the server except the tests' own counters.
pub fn lock_keys(server: &RedisServer) -> Vec<String> {
    server
        .keys()
        .into_iter()
        .filter(|k| !k.starts_with("counter:"))
        .collect()
}

/// Commands of the test itself and of connection setup (`HELLO`, `CLIENT SETINFO`), which are
/// not what a lock costs.
pub fn is_setup_command(name: &str) -> bool {
    name.starts_with("config")
        || name.starts_with("client")
        || name == "info"
        || name == "hello"
        || name.starts_with("script")
}

/// Redis commands by name since the last reset, without setup commands.
pub fn lock_commands(server: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    server
        .command_counts()
        .into_iter()
        .filter(|(name, _)| !is_setup_command(name))
        .collect()
}

/// Subscribers of a pub/sub channel.
pub fn subscribers(server: &RedisServer, channel: &str) -> i64 {
    let v: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut server.conn())
        .expect("PUBSUB NUMSUB");
    v.1
}

/// Redis's clock in microseconds.
pub fn redis_time_us(server: &RedisServer) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    s * 1_000_000 + us
}

/// A waiter token that belongs to nobody.
pub const GHOST: &str = "0123456789abcdef0123456789abcdef";

/// Registers a waiter that does not exist ([`GHOST`]) on the held lock `key`, as if it had
/// registered at `at_ms` (Redis time) for a grant of `lease_ms`.
pub fn register_ghost(server: &RedisServer, key: &str, lease_ms: u64, at_ms: u64) {
    let v = value(server, key).expect("the lock is held");
    let head = match v.fence {
        Some(f) => format!("{}@{f}", v.owner),
        None => v.owner,
    };
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(format!("{head}!{GHOST}:{lease_ms}:{at_ms}"))
        .arg("KEEPTTL")
        .query(&mut server.conn())
        .unwrap();
}
