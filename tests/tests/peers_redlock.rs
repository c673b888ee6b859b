//! The Redlock clients' tests, ported to lockattr by intent: redsync (`mutex_test.go`,
//! `redsync_test.go`, `error_test.go`, `scripts_test.go`) and node-redlock (`src/single.test.ts`,
//! `src/multi.test.ts`). `tests/PEERS.md` maps every one of them.
//!
//! What differs: both run Redlock over several independent masters (quorum, clock drift);
//! lockattr locks on one Redis, so the quorum scenarios do not apply, and their single-node
//! core is what is ported here. Their leases are fixed unless extended by hand (node-redlock's
//! `using` extends automatically); lockattr renews by default, and `renew(false)` is the fixed
//! lease that these tests exercise.

mod peers_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr::{Error, Locker};
use lockattr_tests::RedisServer;
use peers_common::*;

#[track_caller]
fn assert_lost<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(
        matches!(r, Err(Error::Lost { .. })),
        "expected Lost, got {r:?}"
    );
}

/// Leases that run out, and what the expired holder can still do.
mod expiry {
    use super::*;

    /// Ports node-redlock "locks automatically expire", redsync `TestMutexExtendExpired`, `TestMutexUnlockExpired`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fixed_lease_is_lost_at_its_deadline_and_the_next_holder_gets_in() {
        // A 200 ms lease is declared lost at its deadline, the next holder gets in, and the expired
        // holder's extend and unlock both fail.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let key = a.redis_key("d").unwrap();
        let lease = Duration::from_millis(200);
        let asked = Instant::now();
        let first = a.lock("d").lease(lease).renew(false).await.unwrap();
        assert!(first.is_held());
        tokio::time::timeout(Duration::from_secs(2), first.lost())
            .await
            .expect("the lease ran out");
        let lost_after = asked.elapsed();
        // Declared at the lease clock's deadline: the lease minus its margin (5 %, at most
        // 50 ms), before Redis can expire the key.
        assert!(
            lost_after >= lease - Duration::from_millis(15)
                && lost_after < lease + Duration::from_millis(300),
            "declared lost {lost_after:?} after the acquire was sent, lease {lease:?}"
        );
        assert!(!first.is_held());
        let second = b.lock("d").wait(Duration::from_secs(2)).await.unwrap();
        let owner = raw_value(&server, &key);
        assert_lost(first.extend(Duration::from_secs(10)).await);
        assert_lost(first.release().await);
        assert_eq!(
            raw_value(&server, &key),
            owner,
            "the next holder's lock is untouched"
        );
        second.release().await.unwrap();
        assert!(!is_locked(&server, &key));
    }

    /// Ports redsync `TestSetNXOnExtendAcquiresLockWhenKeyIsExpired`, `TestSetNXOnExtendFailsToAcquireLockWhenKeyIsTaken`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_lock_is_not_revived_by_extend() {
        // The first by intent: lockattr does the opposite of `setNXOnExtend` on purpose.
        // Extending an expired lock never takes it again, free or not, because someone may
        // have held it in between; a new acquisition, with a new fencing token, is the way back.
        let server = RedisServer::start();
        let a = locker(&server).await;
        let key = a.redis_key("e").unwrap();
        let lease = Duration::from_millis(200);
        let g = a.lock("e").lease(lease).renew(false).await.unwrap();
        let token = g.fencing_token().await.unwrap();
        tokio::time::sleep(lease * 2).await;
        assert!(!is_locked(&server, &key), "Redis expired it");
        assert_lost(g.extend(Duration::from_secs(10)).await);
        assert!(
            !is_locked(&server, &key),
            "extend did not take the free key"
        );
        assert_lost(g.release().await);
        let again = a.lock("e").wait(Duration::from_secs(2)).await.unwrap();
        assert!(again.fencing_token().await.unwrap() > token);
        again.release().await.unwrap();
    }
}

/// node-redlock's `using(resources, duration, routine)`: lockattr's `run` with renewal.
mod using {
    use super::*;

    /// Ports node-redlock "the `using` helper acquires, extends, and releases locks".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_renews_one_unchanged_lock_under_a_long_body() {
        // A body that outlives its 500 ms lease runs under one lock throughout (same value in
        // Redis), and the lock is gone when it returns.
        let server = RedisServer::start();
        let a = locker(&server).await;
        let key = a.redis_key("x").unwrap();
        let lease = Duration::from_millis(500);
        let (before, after) = a
            .lock("x")
            .lease(lease)
            .run(async {
                let before = raw_value(&server, &key).expect("held");
                tokio::time::sleep(Duration::from_millis(1_200)).await;
                (before, raw_value(&server, &key))
            })
            .await
            .expect("renewed, not lost");
        // The same owner throughout (renewals keep the value).
        let owner = |v: &[u8]| v[..32].to_vec();
        assert_eq!(
            after.as_deref().map(owner),
            Some(owner(&before)),
            "the same lock, renewed"
        );
        assert!(!is_locked(&server, &key), "released when the body returned");
    }

    /// Ports node-redlock "the `using` helper is exclusive".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_bodies_on_one_key_never_overlap_and_hold_different_values() {
        // Two routines on one resource, from two processes, never run at once and run under
        // different lock values.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let key = a.redis_key("y").unwrap();
        let inside = Arc::new(AtomicBool::new(false));
        let body = |server: &RedisServer| {
            let (inside, key) = (inside.clone(), key.clone());
            let value = raw_value(server, &key);
            async move {
                assert!(!inside.swap(true, Ordering::SeqCst), "two bodies at once");
                tokio::time::sleep(Duration::from_millis(300)).await;
                inside.store(false, Ordering::SeqCst);
                value
            }
        };
        let lease = Duration::from_millis(200);
        let (va, vb) = tokio::join!(
            a.lock("y").lease(lease).run(async { body(&server).await }),
            b.lock("y").lease(lease).run(async { body(&server).await }),
        );
        let (va, vb) = (va.unwrap(), vb.unwrap());
        assert!(va.is_some() && vb.is_some(), "each body saw its lock");
        assert_ne!(va, vb, "two acquisitions, two lock values");
        assert!(!is_locked(&server, &key));
    }
}

/// One Redis where the Redlock clients use several: what is left of their single-node tests.
mod single_node {
    use super::*;

    /// Ports redsync `TestMutex` and `TestRedsync` to one Redis.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn distinct_keys_are_held_at_the_same_time() {
        // Many mutexes, each on its own name, all acquired and checked in Redis: locks on distinct
        // keys do not wait for each other and are all held at once, each under its own value.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let started = Instant::now();
        let mut guards = Vec::new();
        for i in 0..8 {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            guards.push(tokio::spawn(
                async move { l.try_lock(format!("m-{i}")).await },
            ));
        }
        let mut held = Vec::new();
        for g in guards {
            held.push(g.await.unwrap().expect("a distinct key is free"));
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        let mut values: Vec<Vec<u8>> = (0..8)
            .map(|i| raw_value(&server, &a.redis_key(&format!("m-{i}")).unwrap()).expect("held"))
            .collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), 8, "eight locks, eight owner values");
        for g in held {
            g.release().await.unwrap();
        }
        assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
    }

    /// Ports redsync `TestRedisErrorIs` and `TestRedisErrorAs`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_failure_keeps_its_cause() {
        // A node's error stays reachable through the wrapper: a Redis failure is `Error::Redis`,
        // whose source is redis-rs's error.
        let mut server = RedisServer::start();
        let a = locker(&server).await;
        server.kill();
        let e = a.lock("k").await.expect_err("Redis is down");
        assert!(matches!(e, Error::Redis(_)), "{e:?}");
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert!(
            source.downcast_ref::<redis::RedisError>().is_some(),
            "{source:?}"
        );
        assert!(
            e.to_string().contains("reachable"),
            "says what to check: {e}"
        );
    }

    /// Ports redsync `TestScripts_Hash` by intent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn locking_survives_a_script_cache_flush() {
        // Its scripts must match what Redis loads; lockattr's scripts keep working when Redis
        // forgets them (`SCRIPT FLUSH`, as after a restart or failover): renewal, waiting, release
        // and grant.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let flush = || {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query(&mut server.conn())
                .unwrap();
        };
        let g = a.lock("s").lease(Duration::from_secs(10)).await.unwrap();
        g.extend(Duration::from_secs(10)).await.unwrap();
        flush();
        g.extend(Duration::from_secs(10))
            .await
            .expect("extend after a flush");
        flush();
        let waiter = tokio::spawn(async move {
            let g = b.lock("s").wait(Duration::from_secs(5)).await?;
            g.release().await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        flush();
        g.release().await.expect("release after a flush");
        waiter
            .await
            .unwrap()
            .expect("the waiter got the lock after a flush");
        flush();
        let fresh = Locker::connect(server.url()).await.unwrap();
        fresh.lock("s").await.unwrap().release().await.unwrap();
        assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
    }
}
