//! redis-py's lock tests (`tests/test_lock.py` and `tests/test_asyncio/test_lock.py`), ported to
//! lockattr by intent. `tests/PEERS.md` maps every one of them.
//!
//! What differs: redis-py's lock has no TTL unless given one and polls every `sleep` seconds;
//! its `extend` adds to the TTL; a lock object can be released twice or never acquired, which
//! raises `LockError`; an expired or taken-over lock raises `LockNotOwnedError` on release.
//! In lockattr every lock has a lease, waiting is woken by pub/sub, `extend` sets the lease from
//! now, a guard exists only once acquired and is consumed by its release, and a lock that is no
//! longer ours is `Error::Lost`.

mod peers_common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr::{distributed_lock, Error, Locker};
use lockattr_tests::RedisServer;
use peers_common::*;

/// `Err(Error::Timeout)` for `key`, or a panic naming what came instead.
fn assert_timeout<T: std::fmt::Debug>(r: Result<T, Error>, key: &str) -> Duration {
    match r {
        Err(Error::Timeout { key: k, waited }) => {
            assert_eq!(k, key, "the error names the key as the caller wrote it");
            waited
        }
        other => panic!("expected Timeout for `{key}`, got {other:?}"),
    }
}

/// `Err(Error::Lost)` for `key`, or a panic naming what came instead.
fn assert_lost<T: std::fmt::Debug>(r: Result<T, Error>, key: &str) {
    match r {
        Err(Error::Lost { key: k }) => assert_eq!(k, key),
        other => panic!("expected Lost for `{key}`, got {other:?}"),
    }
}

/// Who owns a lock, and what happens when Redis says it is no longer ours.
mod ownership {
    use super::*;

    /// Ports `test_competing_locks` (sync and asyncio).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn competing_try_locks_alternate_between_holders() {
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        for (first, second) in [(&a, &b), (&b, &a)] {
            let g = first.try_lock("foo").await.expect("the lock is free");
            assert_timeout(second.try_lock("foo").await, "foo");
            // The holder's own locker refuses as well, without asking Redis.
            assert_timeout(first.try_lock("foo").await, "foo");
            g.release().await.unwrap();
        }
        assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
    }

    /// Ports `test_releasing_lock_no_longer_owned_raises_error` (sync and asyncio).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn releasing_a_lock_taken_over_in_redis_reports_lost_and_keeps_the_new_value() {
        let server = RedisServer::start();
        let a = locker(&server).await;
        let key = a.redis_key("foo").unwrap();
        let g = a.try_lock("foo").await.unwrap();
        set_foreign(&server, &key, "a");
        assert_lost(g.release().await, "foo");
        assert_value(&server, &key, "a");
        // Like redis-py clearing its token, nothing of the lost lock stays with the locker: once
        // the key is free it is taken again at once.
        assert!(force_unlock(&server, &key));
        a.try_lock("foo").await.unwrap().release().await.unwrap();
    }

    /// Ports `test_extending_lock_no_longer_owned_raises_error`, `test_reacquiring_lock_no_longer_owned_raises_error`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extending_a_lock_taken_over_in_redis_reports_lost_and_changes_nothing() {
        let server = RedisServer::start();
        let a = locker(&server).await;
        let key = a.redis_key("foo").unwrap();
        let g = a.lock("foo").lease(Duration::from_secs(10)).await.unwrap();
        set_foreign(&server, &key, "a");
        assert_lost(g.extend(Duration::from_secs(10)).await, "foo");
        assert!(
            !g.is_held(),
            "a guard that found its lock taken is not held"
        );
        assert_value(&server, &key, "a");
        assert_eq!(remaining_ttl(&server, &key), -1, "no TTL was put on it");
        assert_lost(g.release().await, "foo");
        assert_value(&server, &key, "a");
    }

    /// Ports asyncio `test_release_cancellation_preserves_lock_state`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_cancelled_midway_still_frees_the_lock() {
        // redis-py issue #3847: a cancelled release left the key held for good.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let key = a.redis_key("foo").unwrap();
        let points = [0u64, 20, 50, 100, 200, 500, 1000, 5000];
        // Nobody waits: the release is a compare-and-delete.
        for micros in points {
            let g = a.lock("foo").lease(Duration::from_secs(30)).await.unwrap();
            let _ = tokio::time::timeout(Duration::from_micros(micros), g.release()).await;
            assert!(
                eventually(Duration::from_secs(2), || !is_locked(&server, &key)).await,
                "release cancelled after {micros} µs left the lock held"
            );
            let again = a.lock("foo").wait(Duration::from_secs(2)).await;
            again
                .expect("the locker can take it again")
                .release()
                .await
                .unwrap();
        }
        // A task of the same locker waits (handoff), or another locker does (grant).
        for (micros, waiter_locker) in points.iter().zip([&a, &b].iter().cycle()) {
            let g = a.lock("foo").lease(Duration::from_secs(30)).await.unwrap();
            let w = (*waiter_locker).clone();
            let waiter = tokio::spawn(async move {
                let g = w.lock("foo").wait(Duration::from_secs(5)).await?;
                g.release().await
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tokio::time::timeout(Duration::from_micros(*micros), g.release()).await;
            let got = tokio::time::timeout(Duration::from_secs(6), waiter).await;
            got.expect("the waiter finishes")
                .unwrap()
                .unwrap_or_else(|e| {
                    panic!("release cancelled after {micros} µs stranded the waiter: {e}")
                });
        }
        assert!(eventually(Duration::from_secs(2), || lock_keys(&server).is_empty()).await);
    }

    /// Uses up the current task's Tokio budget, as a busy task does: until the task yields,
    /// every Tokio resource it polls (channels, semaphores, timers) answers `Pending`.
    async fn use_up_the_task_budget() {
        for _ in 0..10_000 {
            if !tokio::task::coop::has_budget_remaining() {
                return;
            }
            tokio::task::coop::consume_budget().await;
        }
        panic!("the task budget did not run out");
    }

    /// Ports asyncio `test_release_cancellation_preserves_lock_state`, at its sharpest point.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_cancelled_in_a_busy_task_still_passes_the_lock_on() {
        // The release is dropped after one poll made while the task is out of budget, so that
        // nothing it polled (the command to Redis included) got anywhere. Whoever waits, the lock
        // must go on, not stay held until its 30 s lease runs out.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let key = a.redis_key("foo").unwrap();
        for (round, waiter) in [None, Some(&a), Some(&b)]
            .iter()
            .cycle()
            .take(15)
            .enumerate()
        {
            let g = a.lock("foo").lease(Duration::from_secs(30)).await.unwrap();
            let waiter = waiter.map(|w| {
                let w = w.clone();
                tokio::spawn(async move {
                    let g = w.lock("foo").wait(Duration::from_secs(3)).await?;
                    g.release().await
                })
            });
            tokio::time::sleep(Duration::from_millis(20)).await; // the waiter queues up
            use_up_the_task_budget().await;
            let _ = tokio::time::timeout(Duration::ZERO, g.release()).await;
            if let Some(w) = waiter {
                w.await.unwrap().unwrap_or_else(|e| {
                    panic!("round {round}: the waiter could not use the lock: {e}")
                });
            }
            assert!(
                eventually(Duration::from_secs(2), || !is_locked(&server, &key)).await,
                "round {round}: the lock stayed held after the cancelled release"
            );
        }
    }
}

/// The lease as the lock's TTL in Redis, and `extend`.
mod leases {
    use super::*;

    /// Ports `test_timeout` and `test_float_timeout` (sync and asyncio).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lease_is_the_lock_ttl_in_redis_to_the_millisecond() {
        let server = RedisServer::start();
        let a = Locker::builder(server.url())
            .default_lease(Duration::from_millis(7_250))
            .build()
            .await
            .unwrap();
        let key = a.redis_key("foo").unwrap();
        for (lease_ms, request) in [
            (10_000, a.try_lock("foo").lease(Duration::from_secs(10))),
            (9_500, a.try_lock("foo").lease(Duration::from_millis(9_500))),
            (7_250, a.try_lock("foo")),
        ] {
            let g = request.await.unwrap();
            let ttl = remaining_ttl(&server, &key);
            assert!(
                ttl > lease_ms - 1_000 && ttl <= lease_ms,
                "lease {lease_ms} ms, pttl {ttl}"
            );
            g.release().await.unwrap();
            assert_eq!(remaining_ttl(&server, &key), -2, "released: no key");
        }
    }

    /// Ports `test_extend_lock_replace_ttl`, `test_extend_lock_float`, `test_reacquire_lock`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extend_sets_the_lease_from_now() {
        // redis-py's plain `extend` adds to the TTL; lockattr's sets the lease from now, like
        // redis-py's `replace_ttl=True` and `reacquire()`.
        let server = RedisServer::start();
        let a = locker(&server).await;
        let key = a.redis_key("foo").unwrap();
        let g = a.lock("foo").lease(Duration::from_secs(10)).await.unwrap();
        let owner = raw_value(&server, &key);
        let ttl_within = |low: i64, high: i64| {
            let ttl = remaining_ttl(&server, &key);
            assert!(
                ttl > low && ttl <= high,
                "pttl {ttl}, expected ({low}, {high}]"
            );
        };
        ttl_within(8_000, 10_000);
        g.extend(Duration::from_secs(20)).await.unwrap();
        ttl_within(18_000, 20_000);
        // A fractional lease, shorter than what is left: set, not added.
        g.extend(Duration::from_millis(10_500)).await.unwrap();
        ttl_within(9_500, 10_500);
        // Someone shortened the TTL by hand; extending restores a full lease (`reacquire`).
        let _: () = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(5_000)
            .query(&mut server.conn())
            .unwrap();
        ttl_within(0, 5_000);
        g.extend(Duration::from_secs(10)).await.unwrap();
        ttl_within(8_000, 10_000);
        assert!(g.is_held());
        // The first extension records the fencing token next to the owner; the owner stays.
        let now = raw_value(&server, &key);
        assert_eq!(
            now.as_deref().map(|v| &v[..32]),
            owner.as_deref().map(|v| &v[..32]),
            "the same owner throughout"
        );
        g.release().await.unwrap();
    }
}

/// Waiting for a busy lock: redis-py's `blocking`, `blocking_timeout` and `sleep`.
mod waiting {
    use super::*;

    /// Ports `test_blocking_timeout`, `test_context_manager_blocking_timeout`, `test_high_sleep_small_blocking_timeout`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_lock_times_out_after_the_wait_without_polling() {
        // redis-py retries every `sleep`; lockattr sleeps until the release is announced, with the
        // holder's TTL (here 30 s) as the fallback timer, never past the wait.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let g = a.lock("foo").lease(Duration::from_secs(30)).await.unwrap();

        // Another process: it asks Redis a few times at the start of its wait, then sleeps.
        let started = Instant::now();
        let waiter = tokio::spawn(async move { b.lock("foo").wait(Duration::from_secs(2)).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.reset_stats();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let mid_wait = lock_commands(&server);
        let waited = assert_timeout(waiter.await.unwrap(), "foo");
        let elapsed = started.elapsed();
        assert!(waited >= Duration::from_secs(2), "gave up after {waited:?}");
        assert!(
            elapsed < Duration::from_secs(3),
            "gave up only after {elapsed:?}"
        );
        assert!(
            mid_wait <= 5,
            "{mid_wait} commands in one second of waiting (a 50 ms poll sends 20): {:?}",
            server.command_counts()
        );

        // A task of the holder's own process waits in the local queue: no command at all.
        server.reset_stats();
        let started = Instant::now();
        assert_timeout(a.lock("foo").wait(Duration::from_millis(400)).await, "foo");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1_500));
        assert_eq!(lock_commands(&server), 0, "{:?}", server.command_counts());
        g.release().await.unwrap();
    }

    /// Ports asyncio `test_blocking`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_wait_the_locker_default_unless_they_say_otherwise() {
        // A lock blocks by default (the locker's `default_wait`); `blocking=False` is `try_lock`.
        let server = RedisServer::start();
        let a = Locker::builder(server.url())
            .default_wait(Duration::from_millis(400))
            .build()
            .await
            .unwrap();
        let holder = locker(&server).await;
        let g = holder.lock("foo").await.unwrap();
        for (request, low, high) in [
            (a.lock("foo"), 400, 1_500),
            (a.try_lock("foo"), 0, 300),
            (a.lock("foo").wait(Duration::from_millis(800)), 800, 2_000),
        ] {
            let started = Instant::now();
            assert_timeout(request.await, "foo");
            let ms = started.elapsed().as_millis();
            assert!(
                ms >= low && ms < high,
                "gave up after {ms} ms, expected [{low}, {high})"
            );
        }
        g.release().await.unwrap();
    }
}

/// A value in the lock key that lockattr did not write: busy, and never touched.
mod foreign_values {
    use super::*;

    /// Ports `test_context_manager_raises_when_locked_not_acquired`, `test_lock_error_gives_correct_lock_name`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_value_in_the_lock_key_is_left_byte_for_byte() {
        // `SET foo bar` by hand, then every way of asking for the lock times out, naming the key,
        // and leaves `bar` as it was.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let key = a.redis_key("foo").unwrap();
        set_foreign(&server, &key, "bar");
        let short = Duration::from_millis(300);
        assert_timeout(a.try_lock("foo").await, "foo");
        assert_timeout(a.lock("foo").wait(short).await, "foo");
        // Two processes and two local tasks contend at once.
        let (r1, r2, r3) = tokio::join!(
            a.lock("foo").wait(short).into_future(),
            a.lock("foo").wait(short).into_future(),
            b.lock("foo").wait(short).into_future(),
        );
        for r in [r1, r2, r3] {
            assert_timeout(r, "foo");
        }
        let ran = AtomicBool::new(false);
        let r = a
            .lock("foo")
            .wait(short)
            .run(async { ran.store(true, Ordering::SeqCst) });
        assert_timeout(r.await, "foo");
        assert!(!ran.load(Ordering::SeqCst), "the body must not run");

        assert_value(&server, &key, "bar");
        assert_eq!(remaining_ttl(&server, &key), -1, "no TTL was put on it");
        let keys = server.keys();
        assert!(
            keys.iter().all(|k| k.contains("{foo}")),
            "nothing written outside the lock's own names: {keys:?}"
        );
    }

    /// Ports `test_context_manager_raises_when_locked_not_acquired` by intent, with a TTL on the value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_value_with_a_ttl_blocks_until_it_expires() {
        // The foreign value blocks the lock until Redis expires it, is not rewritten or extended
        // meanwhile, and the waiter then takes the lock.
        let server = RedisServer::start();
        let a = locker(&server).await;
        let key = a.redis_key("foo").unwrap();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("bar")
            .arg("PX")
            .arg(800)
            .query(&mut server.conn())
            .unwrap();
        let started = Instant::now();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move {
                let g = a.lock("foo").wait(Duration::from_secs(5)).await?;
                let at = started.elapsed();
                g.release().await.map(|()| at)
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_value(&server, &key, "bar");
        let ttl = remaining_ttl(&server, &key);
        assert!(
            ttl > 0 && ttl <= 500,
            "the TTL runs on untouched: pttl {ttl}"
        );
        let at = waiter
            .await
            .unwrap()
            .expect("taken once the foreign value expired");
        assert!(
            at >= Duration::from_millis(790) && at < Duration::from_millis(2_000),
            "taken after {at:?}, the foreign value expired after 800 ms"
        );
    }
}

/// redis-py's `with lock:` is lockattr's `LockRequest::run` and `#[distributed_lock]`.
mod context_manager {
    use super::*;

    /// Ports `test_context_manager` (sync and asyncio).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_holds_the_lock_for_the_body_and_frees_it_after() {
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let key = a.redis_key("foo").unwrap();
        let out = a
            .lock("foo")
            .wait(Duration::from_millis(200))
            .run(async {
                assert!(is_locked(&server, &key));
                assert_timeout(b.try_lock("foo").await, "foo");
                "body done"
            })
            .await
            .unwrap();
        assert_eq!(out, "body done");
        assert!(!is_locked(&server, &key));
    }

    /// Ports `test_context_manager_reacquiring_lock_no_longer_owned_raises_error`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_reports_a_loss_found_only_at_the_release() {
        // The key is taken over, or deleted, inside the block; the block's exit reports it. No
        // renewal runs in between (30 s lease), so only the final release can find the loss.
        let server = RedisServer::start();
        let a = locker(&server).await;
        let key = a.redis_key("foo").unwrap();
        let r = a
            .lock("foo")
            .run(async { set_foreign(&server, &key, "a") })
            .await;
        assert_lost(r, "foo");
        assert_value(&server, &key, "a");
        assert!(force_unlock(&server, &key));

        let r = a
            .lock("foo")
            .run(async { assert!(force_unlock(&server, &key)) })
            .await;
        assert_lost(r, "foo");
        assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
    }

    /// Ports `test_context_manager_not_raise_on_release_lock_not_owned_error`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_reports_a_fixed_lease_that_ran_out_under_a_body_that_never_yielded() {
        // `raise_on_release_error=True` is lockattr's only behaviour. The peer test runs a 0.1 s
        // lease under a body that sleeps 0.15 s; here the body blocks its thread instead of
        // awaiting, so it cannot be cancelled while the lease runs out, and the call must still say
        // that the lock was lost.
        let server = RedisServer::start();
        let (a, b) = (locker(&server).await, locker(&server).await);
        let r = a
            .lock("foo")
            .lease(Duration::from_millis(200))
            .renew(false)
            .run(async { std::thread::sleep(Duration::from_millis(400)) })
            .await;
        assert_lost(r, "foo");
        b.try_lock("foo")
            .await
            .expect("expired")
            .release()
            .await
            .unwrap();
    }

    #[distributed_lock(key = "order:<id>", locker = locker)]
    async fn taken_over_inside(
        locker: &Locker,
        server: &RedisServer,
        id: u32,
        finished: &AtomicBool,
    ) -> Result<(), Error> {
        let key = locker.redis_key(&format!("order:{id}"))?;
        set_foreign(server, &key, "a");
        finished.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Ports `test_context_manager_reacquiring_lock_no_longer_owned_raises_error` to the attribute.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_attribute_reports_a_loss_found_only_at_the_release() {
        // The body finishes, but the lock it ran under was taken over meanwhile.
        let server = RedisServer::start();
        let a = locker(&server).await;
        let finished = Arc::new(AtomicBool::new(false));
        let r = taken_over_inside(&a, &server, 7, &finished).await;
        assert!(finished.load(Ordering::SeqCst), "the body ran to its end");
        assert_lost(r, "order:7");
        let key = a.redis_key("order:7").unwrap();
        assert_value(&server, &key, "a");
    }
}
