//! Fencing tokens: issued by Redis, strictly increasing per key, through restarts and
//! handovers, and never before Redis issued them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockattr::Error;
use lockattr_tests::proxy::{Direction, Proxy};
use lockattr_tests::RedisServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase_across_lockers_and_handovers() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let locker = if i % 2 == 0 { a.clone() } else { b.clone() };
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let g = locker.lock("fenced").await.unwrap();
                let token = g.fencing_token().await.unwrap();
                tokens.lock().unwrap().push(token);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 100);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens in acquisition order must strictly increase: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_redis_clock_and_survive_a_restart_without_persistence() {
    let mut server = RedisServer::start();
    let locker = locker(&server).await;
    let before = redis_time_us(&server);
    let g = locker.lock("f").await.unwrap();
    let first = g.fencing_token().await.unwrap();
    g.release().await.unwrap();
    let after = redis_time_us(&server);
    assert!(
        (before * 100..=after * 100).contains(&first),
        "the token is Redis's clock in µs times 100: {before} <= {first} / 100 <= {after}"
    );
    assert_eq!(
        first % 100,
        0,
        "an acquisition's token is a multiple of 100"
    );
    let g = locker.lock("f").await.unwrap();
    let second = g.fencing_token().await.unwrap();
    g.release().await.unwrap();
    assert!(second > first);
    assert!(
        server.keys().is_empty(),
        "no counter is kept: {:?}",
        server.keys()
    );

    // Redis restarts without persistence and forgets everything: still larger.
    server.restart();
    let mut after_restart = None;
    for _ in 0..50 {
        match locker.lock("f").await {
            Ok(g) => {
                after_restart = Some(g.fencing_token().await.unwrap());
                g.release().await.unwrap();
                break;
            }
            // The first calls after the restart may meet the broken connection.
            Err(Error::Redis(_) | Error::OperationTimeout { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let after_restart = after_restart.expect("lock after the restart");
    assert!(after_restart > second, "{after_restart} after {second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_guard_holds_the_token_redis_recorded_for_it() {
    // Handed over between tasks of one locker, granted across lockers, or taken plain: once the
    // guard's token was asked for (which records a fast-path lock's) and an `extend` (which
    // records a local handover's) went through, the value in Redis carries exactly the guard's
    // token, and the extension succeeded, so the guard's token owns the key.
    let server = RedisServer::start();
    let lockers = [locker(&server).await, locker(&server).await];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (locker, seen, url) = (lockers[i % 2].clone(), seen.clone(), server.url());
        tasks.push(tokio::spawn(async move {
            let mut conn = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for _ in 0..10 {
                let g = locker.lock("chain").await.unwrap();
                let token = g.fencing_token().await.unwrap();
                g.extend(Duration::from_secs(5)).await.unwrap();
                let v: String = redis::cmd("GET")
                    .arg("lock:{chain}")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(g.is_held());
                seen.lock()
                    .unwrap()
                    .push((token, Value::parse(&v).unwrap().fence));
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 80);
    for (token, in_redis) in &seen {
        assert_eq!(
            Some(*token),
            *in_redis,
            "the guard's token is the one Redis recorded"
        );
    }
}

/// Issue 9.3: an early handover exposed `old + 1` before Redis confirmed it; when the handover
/// reached Redis after the old lease had ended, another process got the same number. Now a
/// local handover keeps the lock under its token and uses a token Redis reserved for it: every
/// holder's token is above the one before it, whatever reaches Redis late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_that_reaches_redis_late_never_repeats_a_token() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = locker_at(&proxy.url()).await;
    let b = locker(&server).await;
    let taken = Instant::now();
    let holder = a
        .lock("late")
        .lease(Duration::from_millis(300))
        .renew(false)
        .await
        .unwrap();
    let first = holder.fencing_token().await.unwrap();
    // Holding intervals (from, to) and tokens of everyone who held the lock.
    let next = tokio::spawn({
        let a = a.clone();
        async move {
            let g = a.lock("late").wait(Duration::from_secs(10)).await?;
            let from = Instant::now();
            let token = g.fencing_token().await.unwrap();
            let mut to = from;
            while g.is_held() && from.elapsed() < Duration::from_millis(100) {
                to = Instant::now();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = g.release().await;
            Ok::<_, Error>((from, to, token))
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // `next` is queued behind `holder`
                                                         // From now on A's commands reach Redis 400 ms late: whatever checks the handover arrives
                                                         // after the old lease (300 ms) has run out.
    proxy.set_delay(
        Direction::Requests,
        Duration::from_millis(400),
        Duration::ZERO,
    );
    let released_at = Instant::now();
    let release = tokio::spawn(holder.release());
    // Another process takes the lock as soon as the old lease runs out.
    let started = Instant::now();
    let (other_from, other) = loop {
        if let Ok(g) = b.try_lock("late").await {
            break (Instant::now(), g);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the old lease ends"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let other_token = other.fencing_token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other_to = Instant::now();
    other.release().await.unwrap();
    proxy.clear();
    let _ = release.await.unwrap();
    let (next_from, next_to, next_token) =
        next.await.unwrap().expect("the queued task gets the lock");
    let mut held = [
        (taken, released_at, first, "holder"),
        (next_from, next_to, next_token, "handed over"),
        (other_from, other_to, other_token, "other process"),
    ];
    held.sort_by_key(|h| h.0);
    for w in held.windows(2) {
        assert!(w[0].1 <= w[1].0, "{} and {} overlap", w[0].3, w[1].3);
        assert!(
            w[0].2 < w[1].2,
            "{}'s token {} then {}'s {}",
            w[0].3,
            w[0].2,
            w[1].3,
            w[1].2
        );
    }
}

/// `INFO commandstats` of `server`, calls per command.
fn command_counts(server: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .expect("INFO commandstats");
    let mut counts = lockattr_tests::parse_commandstats(&info);
    counts.remove("info");
    counts.remove("config|resetstat");
    counts
}

fn reset_stats(server: &RedisServer) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut server.conn())
        .expect("CONFIG RESETSTAT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_lock_is_one_set_and_its_token_one_script_when_asked() {
    let server = RedisServer::start();
    let locker = locker(&server).await;
    // Warm up (connection, script cache).
    let g = locker.lock("w").await.unwrap();
    g.fencing_token().await.unwrap();
    g.release().await.unwrap();

    // Lock + release, never asking: the raw floor's four commands, no clock read.
    reset_stats(&server);
    for i in 0..10 {
        let g = locker.lock(format!("n{i}")).await.unwrap();
        g.release().await.unwrap();
    }
    let counts = command_counts(&server);
    let expect: std::collections::BTreeMap<String, u64> =
        [("set", 10), ("evalsha", 10), ("get", 10), ("del", 10)]
            .into_iter()
            .map(|(c, n)| (c.to_owned(), n))
            .collect();
    assert_eq!(counts, expect);

    // Asked three times: one script issues it (GET, TIME, SET KEEPTTL), the others are free.
    reset_stats(&server);
    let g = locker
        .lock("asked")
        .lease(Duration::from_secs(10))
        .await
        .unwrap();
    let token = g.fencing_token().await.unwrap();
    assert_eq!(g.fencing_token().await.unwrap(), token);
    assert_eq!(g.fencing_token().await.unwrap(), token);
    let counts = command_counts(&server);
    assert_eq!(counts.get("evalsha"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("time"), Some(&1), "{counts:?}");
    assert_eq!(
        counts.get("set"),
        Some(&2),
        "SET NX, then SET KEEPTTL: {counts:?}"
    );
    // The token is Redis's clock now, recorded in the value; the lease is kept.
    let v = value(&server, "lock:{asked}").expect("held");
    assert_eq!(v.fence, Some(token));
    let ttl = pttl(&server, "lock:{asked}");
    assert!(ttl > 9_000 && ttl <= 10_000, "TTL kept: {ttl} ms");
    let now = redis_time_us(&server) * 100;
    assert!(
        token <= now && now - token < 5_000_000 * 100,
        "{token} vs {now}"
    );
    // A release of a recorded token is the plain compare-and-delete.
    reset_stats(&server);
    g.release().await.unwrap();
    let counts = command_counts(&server);
    assert_eq!(
        (counts.get("evalsha"), counts.get("get"), counts.get("del")),
        (Some(&1), Some(&1), Some(&1)),
        "{counts:?}"
    );
    assert!(server.keys().is_empty(), "{:?}", server.keys());

    // Requested `fenced`: `TIME` pipelined with the `SET`, and no script for the token.
    reset_stats(&server);
    let g = locker.lock("eager").fenced(true).await.unwrap();
    let eager = g.fencing_token().await.unwrap();
    let counts = command_counts(&server);
    let expect: std::collections::BTreeMap<String, u64> = [("set", 1), ("time", 1)]
        .into_iter()
        .map(|(c, n)| (c.to_owned(), n))
        .collect();
    assert_eq!(counts, expect);
    assert!(eager > token, "{eager} after {token}");
    let now = redis_time_us(&server) * 100;
    assert!(
        eager <= now && now - eager < 5_000_000 * 100,
        "{eager} vs {now}"
    );
    assert_eq!(
        value(&server, "lock:{eager}").unwrap().fence,
        None,
        "not written"
    );
    g.release().await.unwrap();
    assert!(server.keys().is_empty(), "{:?}", server.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_under_a_waiter_keeps_its_mark_and_the_grant_follows_it() {
    let server = RedisServer::start();
    let (a, b) = (locker(&server).await, locker(&server).await);
    let g = a.lock("m").await.unwrap();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            let g = b.lock("m").wait(Duration::from_secs(10)).await?;
            let token = g.fencing_token().await?;
            g.release().await?;
            Ok::<_, Error>(token)
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || value(&server, "lock:{m}")
            .is_some_and(|v| v.waiter.is_some()))
        .await,
        "the waiter registers"
    );
    // Issued after the waiter marked and registered: the mark and registration stay, so the
    // release still grants the lock to the waiter, with a larger token.
    let token = g.fencing_token().await.unwrap();
    let v = value(&server, "lock:{m}").expect("held");
    assert_eq!(v.fence, Some(token));
    assert!(v.waiter.is_some(), "{v:?}");
    g.release().await.unwrap();
    let granted = waiter.await.unwrap().unwrap();
    assert!(granted > token, "{granted} after {token}");
    assert!(eventually(Duration::from_secs(2), || server.keys().is_empty()).await);
}
