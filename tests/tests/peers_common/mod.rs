//! Helpers shared by the ports of the peers' lock test suites (`peers_*.rs`).
//!
//! Where a peer test inspects Redis directly ("is it locked", "how long is left", "force
//! unlock"), the ports do the same with raw commands on the test server. `is_locked`,
//! `remaining_ttl` and `force_unlock` are the ones to switch to `Locker::inspect` and
//! `Locker::force_unlock` once those exist (see `tests/PEERS.md`).

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use lockattr::Locker;
use lockattr_tests::RedisServer;

/// A locker with a wait long enough never to be the reason a test fails, and a short operation
/// timeout so that fault tests stay quick.
pub async fn locker(server: &RedisServer) -> Locker {
    Locker::builder(server.url())
        .default_wait(Duration::from_secs(20))
        .operation_timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("connect to the test redis-server")
}

/// Polls `cond` every 10 ms for at most `limit`; returns whether it became true.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The raw bytes stored at `redis_key`, if any.
pub fn raw_value(server: &RedisServer, redis_key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(redis_key)
        .query(&mut server.conn())
        .expect("GET")
}

/// Asserts that `redis_key` holds exactly the bytes `expected` (printed as text when not).
#[track_caller]
pub fn assert_value(server: &RedisServer, redis_key: &str, expected: &str) {
    let got = raw_value(server, redis_key);
    assert!(
        got.as_deref() == Some(expected.as_bytes()),
        "`{redis_key}` holds {:?}, expected exactly {expected:?}",
        got.as_deref().map(String::from_utf8_lossy)
    );
}

/// `SET redis_key value`, without a TTL: what an operator or another program might do.
pub fn set_foreign(server: &RedisServer, redis_key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(redis_key)
        .arg(value)
        .query(&mut server.conn())
        .expect("SET");
}

/// `PTTL redis_key`: milliseconds left, `-1` without a TTL, `-2` when the key does not exist.
/// Switch to `Locker::inspect` once it exists.
pub fn remaining_ttl(server: &RedisServer, redis_key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(redis_key)
        .query(&mut server.conn())
        .expect("PTTL")
}

/// Whether anyone holds the lock whose Redis key is `redis_key`. Switch to `Locker::inspect`.
pub fn is_locked(server: &RedisServer, redis_key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(redis_key)
        .query(&mut server.conn())
        .expect("EXISTS");
    n == 1
}

/// Deletes the lock key by hand, whoever holds it; returns whether there was one. Switch to
/// `Locker::force_unlock`.
pub fn force_unlock(server: &RedisServer, redis_key: &str) -> bool {
    let n: i64 = redis::cmd("DEL")
        .arg(redis_key)
        .query(&mut server.conn())
        .expect("DEL");
    n == 1
}

/// Every key in Redis except fencing counters and the tests' own counters: the locks that are
/// held, and any per-lock state left behind.
pub fn lock_keys(server: &RedisServer) -> Vec<String> {
    server
        .keys()
        .into_iter()
        .filter(|k| !k.ends_with(":fence") && !k.starts_with("counter:"))
        .collect()
}

/// Commands Redis ran since the last `reset_stats`, without the connection set-up and the
/// test's own inspection commands.
pub fn lock_commands(server: &RedisServer) -> u64 {
    server
        .command_counts()
        .iter()
        .filter(|(name, _)| {
            !(name.starts_with("config")
                || name.starts_with("client")
                || name.starts_with("info")
                || name.starts_with("hello"))
        })
        .map(|(_, n)| n)
        .sum()
}
