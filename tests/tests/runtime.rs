//! The runtime against real redis-server processes: exclusion, token safety, leases,
//! cancellation, waiting without spinning, faults and keys.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr::{Error, Locker};
use lockattr_tests::RedisServer;
use redis::Commands;

async fn locker(server: &RedisServer) -> Locker {
    Locker::builder(server.url())
        .default_wait(Duration::from_secs(20))
        .operation_timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("connect to test redis")
}

/// Polls `cond` every 10 ms for at most `limit`; returns whether it became true.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

fn lock_keys(server: &RedisServer) -> Vec<String> {
    server
        .keys()
        .into_iter()
        .filter(|k| !k.ends_with(":fence") && !k.starts_with("counter:"))
        .collect()
}

/// Commands of the test itself and of connection setup (`HELLO`, `CLIENT SETINFO`), which are not
/// what a lock costs per acquisition.
fn is_setup_command(name: &str) -> bool {
    name.starts_with("config") || name.starts_with("client") || name == "info" || name == "hello"
}

fn subscribers(server: &RedisServer, channel: &str) -> i64 {
    let v: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut server.conn())
        .expect("PUBSUB NUMSUB");
    v.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_release_and_redis_layout() {
    let server = RedisServer::start();
    let locker = locker(&server).await;
    let guard = locker.lock("party:42").await.unwrap();
    assert_eq!(guard.key(), "party:42");
    assert!(guard.is_held());
    let token: String = server.conn().get("lock:{party:42}").unwrap();
    assert_eq!(token.len(), 32, "a 128-bit hex token, got {token}");
    let fence: u64 = server.conn().get("lock:{party:42}:fence").unwrap();
    assert_eq!(fence, guard.fencing_token());
    let ttl: i64 = server.conn().pttl("lock:{party:42}").unwrap();
    assert!(
        ttl > 25_000 && ttl <= 30_000,
        "default lease 30 s, pttl {ttl}"
    );
    guard.release().await.unwrap();
    assert!(lock_keys(&server).is_empty());
    assert_eq!(locker.redis_key("party:42").unwrap(), "lock:{party:42}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_across_lockers_and_processes() {
    let server = RedisServer::start();
    let worker = env!("CARGO_BIN_EXE_lockattr-test-worker");
    // Two other OS processes with 20 tasks x 5 iterations each...
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(worker)
                .args(["increment", &server.url(), "shared", "20", "5"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    // ...and three Lockers (separate connections) in this process with 40 tasks x 5.
    let lockers = [
        locker(&server).await,
        locker(&server).await,
        locker(&server).await,
    ];
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let locker = lockers[i % 3].clone();
        let client = server.client();
        let (inside, overlaps) = (inside.clone(), overlaps.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            for _ in 0..5 {
                let guard = locker.lock("shared").await.unwrap();
                if inside.swap(true, Ordering::SeqCst) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let v: Option<u64> = redis::AsyncCommands::get(&mut conn, "counter:shared")
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
                let _: () =
                    redis::AsyncCommands::set(&mut conn, "counter:shared", v.unwrap_or(0) + 1)
                        .await
                        .unwrap();
                inside.store(false, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut child_acquisitions = 0;
    for child in children {
        let out = child.wait_with_output().expect("worker output");
        assert!(out.status.success(), "worker failed: {out:?}");
        let line = String::from_utf8_lossy(&out.stdout);
        let parts: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(parts.len(), 2, "worker said {line:?}");
        assert_eq!(parts[1], 0, "overlap seen inside a worker process");
        child_acquisitions += parts[0];
    }
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "overlap seen in this process"
    );
    let total: u64 = server.conn().get("counter:shared").unwrap();
    assert_eq!(child_acquisitions, 200);
    assert_eq!(
        total,
        200 + 200,
        "every GET-then-SET increment survived: no two holders were ever inside together"
    );
    assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let locker = if i % 2 == 0 { a.clone() } else { b.clone() };
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let g = locker.lock("fenced").await.unwrap();
                tokens.lock().unwrap().push(g.fencing_token());
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

/// Redis's clock in microseconds.
fn redis_time_us(server: &RedisServer) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    secs * 1_000_000 + micros
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_when_the_counter_is_gone() {
    let mut server = RedisServer::start();
    let locker = Locker::builder(server.url())
        .fence_ttl(Duration::from_secs(60))
        .operation_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let before = redis_time_us(&server);
    let g = locker.lock("f").await.unwrap();
    let first = g.fencing_token();
    g.release().await.unwrap();
    // A new counter starts from Redis's clock and carries the TTL from its creation only.
    assert!(
        first >= before,
        "first token {first} from the clock (>= {before})"
    );
    let ttl: i64 = server.conn().pttl("lock:{f}:fence").unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "counter pttl {ttl}");
    let g = locker.lock("f").await.unwrap();
    assert_eq!(
        g.fencing_token(),
        first + 1,
        "later acquisitions count by one"
    );
    let second = g.fencing_token();
    g.release().await.unwrap();

    // The counter expires (simulated by deleting it): the next token is still larger.
    let _: () = server.conn().del("lock:{f}:fence").unwrap();
    let g = locker.lock("f").await.unwrap();
    let third = g.fencing_token();
    g.release().await.unwrap();
    assert!(third > second, "{third} after {second}");

    // Redis restarts without persistence and forgets everything: still larger.
    server.restart();
    let mut after_restart = None;
    for _ in 0..50 {
        match locker.lock("f").await {
            Ok(g) => {
                after_restart = Some(g.fencing_token());
                g.release().await.unwrap();
                break;
            }
            // The first calls after the restart may meet the broken connection.
            Err(Error::Redis(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let after_restart = after_restart.expect("lock after the restart");
    assert!(after_restart > third, "{after_restart} after {third}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_created_by_a_failed_attempt_is_started_from_the_clock() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let g = a.lock("stray").await.unwrap();
    let first = g.fencing_token();
    // The counter vanishes while the lock is held, and a failed attempt of another process
    // increments nothing into a fresh counter without a TTL.
    let _: () = server.conn().del("lock:{stray}:fence").unwrap();
    assert!(matches!(
        b.try_lock("stray").await,
        Err(Error::Timeout { .. })
    ));
    let stray: u64 = server.conn().get("lock:{stray}:fence").unwrap();
    assert!(stray < 10, "the failed attempt's increment: {stray}");
    g.release().await.unwrap();
    let g = b.lock("stray").await.unwrap();
    assert!(
        g.fencing_token() > first,
        "{} after {first}",
        g.fencing_token()
    );
    let ttl: i64 = server.conn().pttl("lock:{stray}:fence").unwrap();
    assert!(ttl > 0, "the restarted counter has a TTL again, pttl {ttl}");
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_granted_after_its_lease_could_run_out_is_not_handed_out() {
    let server = RedisServer::start();
    let locker = Locker::builder(server.url())
        .default_lease(Duration::from_millis(100))
        .operation_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    server.reset_stats();
    server.pause();
    let acquire = tokio::spawn({
        let locker = locker.clone();
        async move {
            let g = locker.lock("late").renew(false).await.unwrap();
            (g.is_held(), g.fencing_token(), g.release().await)
        }
    });
    // The first attempt is answered 300 ms after it was sent, three leases later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();
    let (held, _, released) = tokio::time::timeout(Duration::from_secs(10), acquire)
        .await
        .expect("the acquire finishes")
        .unwrap();
    assert!(held, "the guard handed out is within its lease");
    released.unwrap();
    let sets = server.command_counts().get("set").copied().unwrap_or(0);
    assert!(
        sets >= 2,
        "the late grant was thrown away and the lock taken again ({sets} SETs)"
    );
    assert!(eventually(Duration::from_secs(2), || lock_keys(&server).is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_release_that_someone_waits_for_is_published() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    server.reset_stats();
    for _ in 0..5 {
        a.lock("quiet").await.unwrap().release().await.unwrap();
    }
    let counts = server.command_counts();
    assert_eq!(
        counts.get("publish"),
        None,
        "uncontended releases publish nothing: {counts:?}"
    );

    // A waiter of another locker marks the lock, and the release announces itself.
    let g = a.lock("quiet").await.unwrap();
    let token: String = server.conn().get("lock:{quiet}").unwrap();
    let waiter = tokio::spawn(async move { b.lock("quiet").await.unwrap().release().await });
    assert!(
        eventually(Duration::from_secs(5), || {
            server
                .conn()
                .get::<_, String>("lock:{quiet}")
                .is_ok_and(|v| v.starts_with(&format!("{token}!")) && v.len() > 33)
        })
        .await,
        "the waiter marks the holder's token and registers"
    );
    assert!(
        eventually(Duration::from_secs(5), || subscribers(
            &server,
            "lock:{quiet}:released"
        ) == 1)
        .await
    );
    // Renewal and extension accept the marked token.
    g.extend(Duration::from_secs(20)).await.unwrap();
    server.reset_stats();
    let released = Instant::now();
    g.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was woken")
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "woken by pub/sub, not by the TTL"
    );
    // The release granted the lock to the registered waiter directly: the waiter sent no
    // acquire of its own (the one SET is the grant inside the release script).
    let counts = server.command_counts();
    assert_eq!(counts.get("set"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("incr"), Some(&1), "{counts:?}");
}

/// The lock's value in Redis (owner token, then any waiter mark or registration).
fn lock_value(server: &RedisServer, key: &str) -> Option<String> {
    server.conn().get::<_, Option<String>>(key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_withdraws_its_registration() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let g = a.lock("w").await.unwrap();
    let r = b.lock("w").wait(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        eventually(Duration::from_secs(2), || {
            lock_value(&server, "lock:{w}").is_some_and(|v| v.len() == 33)
        })
        .await,
        "only the mark is left: {:?}",
        lock_value(&server, "lock:{w}")
    );
    g.release().await.unwrap();
    // Nothing was granted to the waiter that left: the lock is free at once.
    assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
    a.try_lock("w").await.unwrap().release().await.unwrap();
}

/// Registers a waiter that does not exist (token `GHOST`) on the held lock `key`, as if it had
/// registered at `at_ms` (Redis time) for a grant of `lease_ms`.
fn register_ghost(server: &RedisServer, key: &str, lease_ms: u64, at_ms: u64) {
    let owner = lock_value(server, key).expect("the lock is held");
    let value = format!("{owner}!{GHOST}:{lease_ms}:{at_ms}");
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("KEEPTTL")
        .query(&mut server.conn())
        .unwrap();
}

const GHOST: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_to_dead_or_stale_registrations_are_bounded() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let now_ms = redis_time_us(&server) / 1000;

    // A stale registration (older than half its lease) is not granted: the release frees the
    // lock.
    let g = a.lock("stale").await.unwrap();
    register_ghost(&server, "lock:{stale}", 1000, now_ms - 5_000);
    g.release().await.unwrap();
    assert_eq!(lock_value(&server, "lock:{stale}"), None);

    // A fresh registration, but the fencing counter is gone: the release does not start the
    // counter itself; it releases plainly and the waiter's own acquire starts it.
    let g = a.lock("nofence").await.unwrap();
    register_ghost(&server, "lock:{nofence}", 1000, now_ms);
    let _: () = server.conn().del("lock:{nofence}:fence").unwrap();
    g.release().await.unwrap();
    assert_eq!(lock_value(&server, "lock:{nofence}"), None);

    // A fresh registration of a process that died is granted, and blocks the lock only for the
    // dead waiter's lease (here 400 ms).
    let g = a.lock("dead").await.unwrap();
    register_ghost(&server, "lock:{dead}", 400, now_ms);
    let first = g.fencing_token();
    g.release().await.unwrap();
    assert_eq!(
        lock_value(&server, "lock:{dead}"),
        Some(format!("{GHOST}!"))
    );
    let started = Instant::now();
    let g = a.lock("dead").wait(Duration::from_secs(5)).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "waited {waited:?} for a 400 ms grant"
    );
    assert!(
        g.fencing_token() > first + 1,
        "the grant used a fencing token too"
    );
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_lock_starts_short_and_is_renewed_to_the_full_lease() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await; // default lease 30 s
    let holder = a.lock("short").await.unwrap();
    let (took, hold_on) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(tokio::sync::Notify::new()),
    );
    let waiter = tokio::spawn({
        let (took, hold_on) = (took.clone(), hold_on.clone());
        async move {
            let g = b.lock("short").await.unwrap();
            took.store(true, Ordering::SeqCst);
            hold_on.notified().await;
            g.release().await
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || {
            lock_value(&server, "lock:{short}").is_some_and(|v| v.len() > 65)
        })
        .await,
        "the waiter registers"
    );
    holder.release().await.unwrap();
    assert!(eventually(Duration::from_secs(5), || took.load(Ordering::SeqCst)).await);
    // The grant carried at most 2 s; the new holder renews to its 30 s at once.
    assert!(
        eventually(Duration::from_secs(2), || {
            server.conn().pttl::<_, i64>("lock:{short}").unwrap() > 20_000
        })
        .await,
        "pttl {}",
        server.conn().pttl::<_, i64>("lock:{short}").unwrap()
    );
    hold_on.notify_one();
    waiter.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_announcement_was_lost_is_found_by_the_next_attempt() {
    let server = RedisServer::start();
    let a = Locker::builder(server.url())
        .default_lease(Duration::from_millis(600))
        .operation_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let b = locker(&server).await;
    let holder = a.lock("lost").await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.lock("lost").wait(Duration::from_secs(10)).await.unwrap();
        (g.fencing_token(), g.is_held(), g.release().await)
    });
    // Wait for the waiter's registration, then grant the lock to it behind its back: no
    // announcement, as if the pub/sub message had been lost.
    let mut registered = None;
    for _ in 0..200 {
        if let Some(v) = lock_value(&server, "lock:{lost}").filter(|v| v.len() > 65) {
            registered = Some(v[33..65].to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let w = registered.expect("the waiter registers");
    std::mem::forget(holder); // its renewal will find the lock taken; that is the point
    let _: () = redis::cmd("SET")
        .arg("lock:{lost}")
        .arg(format!("{w}!"))
        .arg("PX")
        .arg(30_000)
        .query(&mut server.conn())
        .unwrap();
    // The waiter's fallback timer (the old holder's TTL, under 600 ms) fires, and its attempt
    // finds the lock granted to its registration.
    let (fence, held, released) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter takes its grant")
        .unwrap();
    assert!(fence > 0 && held);
    released.unwrap();
    assert_eq!(lock_value(&server, "lock:{lost}"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_guard_cannot_release_or_extend_the_next_holders_lock() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let first = a
        .lock("k")
        .lease(Duration::from_millis(100))
        .renew(false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), first.lost())
        .await
        .expect("a fixed lease runs out and the guard reports it");
    assert!(!first.is_held());
    let second = b.lock("k").wait(Duration::from_secs(2)).await.unwrap();
    let owner: String = server.conn().get("lock:{k}").unwrap();
    assert!(matches!(
        first.extend(Duration::from_secs(10)).await,
        Err(Error::Lost { .. })
    ));
    assert!(matches!(first.release().await, Err(Error::Lost { .. })));
    let still: String = server.conn().get("lock:{k}").unwrap();
    assert_eq!(owner, still, "the second holder's lock is untouched");
    assert!(second.is_held());
    assert!(second.fencing_token() > 1);
    second.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_long_body_protected() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let lease = Duration::from_millis(500);
    let out = a
        .lock("long")
        .lease(lease)
        .run(async {
            // 5x the lease; every 100 ms another locker tries and must fail.
            for _ in 0..25 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(matches!(
                    b.try_lock("long").await,
                    Err(Error::Timeout { .. })
                ));
            }
            "finished"
        })
        .await
        .unwrap();
    assert_eq!(out, "finished");
    assert!(lock_keys(&server).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_lease_loss_cancels_the_body() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let reached_end = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let r = a
        .lock("fixed")
        .lease(Duration::from_millis(200))
        .renew(false)
        .run({
            let reached_end = reached_end.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                reached_end.store(true, Ordering::SeqCst);
            }
        })
        .await;
    assert!(
        matches!(r, Err(Error::Lost { ref key }) if key == "fixed"),
        "{r:?}"
    );
    assert!(
        !reached_end.load(Ordering::SeqCst),
        "the body was cancelled"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_process_frees_the_lock_within_the_lease() {
    let server = RedisServer::start();
    let worker = env!("CARGO_BIN_EXE_lockattr-test-worker");
    let mut child = std::process::Command::new(worker)
        .args(["hold", &server.url(), "victim", "1000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("held"), "{line}");
    // The holder renews: well past its lease it still holds the lock.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = locker(&server).await;
    assert!(a.try_lock("victim").await.is_err());
    child.kill().unwrap(); // SIGKILL: no release, no renewal
    child.wait().unwrap();
    let killed = Instant::now();
    let g = a
        .lock("victim")
        .wait(Duration::from_secs(5))
        .await
        .expect("the lock frees itself once the dead holder's lease runs out");
    let waited = killed.elapsed();
    // Within the 1 s lease, plus slack for a loaded machine; far below the 5 s wait.
    assert!(waited <= Duration::from_millis(2000), "waited {waited:?}");
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_guard_releases_promptly() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let g = a
        .lock("dropped")
        .lease(Duration::from_secs(30))
        .await
        .unwrap();
    drop(g);
    assert!(
        eventually(Duration::from_secs(1), || lock_keys(&server).is_empty()).await,
        "released in the background, not after the 30 s lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquire_futures_leave_nothing_behind() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    // 1. Dropped while the lock is free: every point of the acquire, including just after the
    //    SET went out (the race where Redis grants the lock to a future that is gone).
    for micros in [0u64, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000] {
        let _ =
            tokio::time::timeout(Duration::from_micros(micros), a.lock("c1").into_future()).await;
    }
    assert!(
        eventually(Duration::from_secs(2), || lock_keys(&server).is_empty()).await,
        "left behind: {:?}",
        server.keys()
    );
    // 2. Dropped while waiting (queued locally and contending in Redis).
    let holder = b.lock("c2").await.unwrap();
    for micros in [0u64, 100, 1000, 5000, 20_000] {
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_micros(micros),
                        a.lock("c2").into_future(),
                    )
                    .await;
                })
            })
            .collect();
        for w in waiters {
            w.await.unwrap();
        }
    }
    assert!(
        eventually(Duration::from_secs(2), || subscribers(
            &server,
            "lock:{c2}:released"
        ) == 0)
        .await,
        "the subscription is dropped when nobody waits"
    );
    // The waiters that went away withdraw their registration in the background; a release
    // before that would grant the lock to one of them (and the withdrawal would then free it).
    assert!(
        eventually(Duration::from_secs(2), || {
            server
                .conn()
                .get::<_, String>("lock:{c2}")
                .is_ok_and(|v| v.len() <= 33)
        })
        .await,
        "registration withdrawn: {:?}",
        server.conn().get::<_, String>("lock:{c2}")
    );
    holder.release().await.unwrap();
    // Nothing local is left either: a try_lock goes straight to Redis and wins.
    let g = a.try_lock("c2").await.expect("no stale local queue entry");
    g.release().await.unwrap();
    assert!(lock_keys(&server).is_empty(), "{:?}", server.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_does_not_spin() {
    let server = RedisServer::start();
    let holder_locker = locker(&server).await;
    let waiters_locker = locker(&server).await;
    let holder = holder_locker.lock("hot").await.unwrap();
    server.reset_stats();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let l = waiters_locker.clone();
        tasks.push(tokio::spawn(async move {
            let g = l.lock("hot").await.unwrap();
            g.release().await.unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during_wait: u64 = server
        .command_counts()
        .iter()
        .filter(|(name, _)| !is_setup_command(name))
        .map(|(_, n)| n)
        .sum();
    // One contender: the plain first attempt (SET, INCR), the scripted attempt that marks the
    // holder and registers (EVALSHA, SET, GET, TIME, SET, PTTL), SUBSCRIBE, a retry after the
    // subscription (EVALSHA, SET, GET, TIME, PTTL). Nothing for the other 49 tasks.
    assert!(
        during_wait <= 14,
        "50 tasks waiting 500 ms cost {during_wait} commands: {:?}",
        server.command_counts()
    );
    server.reset_stats();
    holder.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("all waiters get the lock")
            .unwrap();
    }
    let after: u64 = server
        .command_counts()
        .iter()
        .filter(|(name, _)| !is_setup_command(name))
        .map(|(_, n)| n)
        .sum();
    let per_acquisition = after as f64 / 50.0;
    assert!(
        per_acquisition <= 6.0,
        "{per_acquisition:.1} commands per acquisition: {:?}",
        server.command_counts()
    );
    assert!(lock_keys(&server).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_of_another_process_at_once() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let g = a.lock("wake").lease(Duration::from_secs(30)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.lock("wake").await.unwrap();
        let at = Instant::now();
        g.release().await.unwrap();
        at
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    g.release().await.unwrap();
    let acquired = waiter.await.unwrap();
    // Pub/sub, not the 30 s TTL fallback.
    assert!(acquired.duration_since(released) < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_zero_is_one_attempt_and_timeouts_say_so() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let g = a.lock("busy").await.unwrap();
    server.reset_stats();
    match b.try_lock("busy").await {
        Err(Error::Timeout { key, waited }) => {
            assert_eq!(key, "busy");
            assert!(waited < Duration::from_millis(500));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    // A single attempt: one `SET NX PX` (pipelined with the counter's `INCR`), no script.
    let counts = server.command_counts();
    assert_eq!(counts.get("set"), Some(&1), "a single attempt: {counts:?}");
    assert_eq!(counts.get("evalsha"), None, "a single attempt: {counts:?}");
    // Same process: refused locally without a round trip.
    assert!(matches!(
        a.try_lock("busy").await,
        Err(Error::Timeout { .. })
    ));
    let started = Instant::now();
    let r = b.lock("busy").wait(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(Error::Timeout { .. })));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(2));
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_a_holder_is_detected_as_loss() {
    let mut server = RedisServer::start();
    let a = locker(&server).await;
    let g = a
        .lock("restart")
        .lease(Duration::from_millis(600))
        .await
        .unwrap();
    server.restart(); // same port, empty data: the lock is gone
    tokio::time::timeout(Duration::from_secs(3), g.lost())
        .await
        .expect("renewal notices that the lock vanished");
    assert!(matches!(g.release().await, Err(Error::Lost { .. })));
    // The connection recovered by itself.
    let g2 = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match a.lock("restart").await {
                Ok(g) => break g,
                Err(Error::Redis(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("reconnects after the restart");
    g2.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_acquire_fails_promptly_with_a_redis_error() {
    let mut server = RedisServer::start();
    let a = locker(&server).await;
    server.kill();
    let started = Instant::now();
    let r = a.lock("down").wait(Duration::from_secs(30)).await;
    assert!(matches!(r, Err(Error::Redis(_))), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the operation timeout, took {:?}",
        started.elapsed()
    );
    // A paused (unresponsive) server is bounded too.
    let paused = RedisServer::start();
    let p = locker(&paused).await;
    paused.pause();
    let started = Instant::now();
    let r = p.lock("down").await;
    paused.resume();
    assert!(matches!(r, Err(Error::Redis(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // And connecting to nothing fails promptly.
    let started = Instant::now();
    let r = Locker::builder(format!("redis://127.0.0.1:{}", lockattr_tests::free_port()))
        .operation_timeout(Duration::from_millis(500))
        .build()
        .await;
    assert!(matches!(r, Err(Error::Redis(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_escaped_and_bounded() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    for (key, redis_key) in [
        ("a:b", "lock:{a:b}"),
        ("x}y{z", "lock:{x%7Dy%7Bz}"),
        ("line\nbreak", "lock:{line%0Abreak}"),
        ("100%", "lock:{100%25}"),
    ] {
        let g = a.lock(key).await.unwrap();
        assert_eq!(lock_keys(&server), vec![redis_key.to_owned()]);
        assert_eq!(g.key(), key);
        g.release().await.unwrap();
    }
    // Distinct keys stay distinct even when one looks like the other's escaped form.
    let g1 = a.lock("{").await.unwrap();
    let g2 = a.try_lock("%7B").await.expect("a different lock");
    g1.release().await.unwrap();
    g2.release().await.unwrap();
    for bad in [String::new(), "k".repeat(lockattr::MAX_KEY_LEN + 1)] {
        match a.lock(bad).await {
            Err(Error::InvalidKey { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("expected InvalidKey, got {other:?}"),
        }
    }
    assert!(lock_keys(&server).is_empty());
    assert!(matches!(
        Locker::builder(server.url()).namespace("a{b").build().await,
        Err(Error::InvalidConfig { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_moves_the_lease() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let g = a
        .lock("ext")
        .lease(Duration::from_millis(300))
        .renew(false)
        .await
        .unwrap();
    g.extend(Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(g.is_held(), "extended past the original lease");
    let ttl: i64 = server.conn().pttl("lock:{ext}").unwrap();
    assert!(ttl > 3000, "pttl {ttl}");
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reentrant_run_and_fencing_token_in_context() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    assert_eq!(lockattr::fencing_token(), None);
    let (outer, inner) = a
        .lock("re")
        .run(async {
            let outer = lockattr::fencing_token().unwrap();
            let inner = a
                .lock("re")
                .wait(Duration::ZERO)
                .run(async { lockattr::fencing_token().unwrap() })
                .await
                .expect("re-entry does not deadlock or time out");
            (outer, inner)
        })
        .await
        .unwrap();
    assert_eq!(outer, inner);
    assert!(lock_keys(&server).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_both_get_turns_under_contention() {
    // Two Lockers behave like two processes: each hands the lock between its own tasks a
    // bounded number of times, then releases it in Redis, and a release that woke the other
    // process lets it go first.
    let server = RedisServer::start();
    let lockers = [locker(&server).await, locker(&server).await];
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let locker = lockers[i % 2].clone();
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while start.elapsed() < Duration::from_millis(1500) && n < 10_000 {
                let g = locker
                    .lock("fair")
                    .wait(Duration::from_secs(5))
                    .await
                    .expect("nobody starves for 5 s");
                counts[i % 2].fetch_add(1, Ordering::Relaxed);
                g.release().await.unwrap();
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (a, b) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    let share = a.min(b) as f64 / (a + b) as f64;
    assert!(a + b > 100, "only {} acquisitions", a + b);
    assert!(share > 0.2, "unfair split {a}/{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_locks_carry_the_fencing_token_redis_issued() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (a, seen, url) = (a.clone(), seen.clone(), server.url());
        tasks.push(tokio::spawn(async move {
            let mut conn = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for _ in 0..10 {
                let g = a.lock("chain").await.unwrap();
                // `extend` goes over the locker's own connection, so Redis runs it after the
                // handover that switched the lock to this guard's token; it succeeds only if
                // that token owns the key. After it, the counter has this acquisition's value.
                g.extend(Duration::from_secs(5)).await.unwrap();
                let fence: u64 = redis::AsyncCommands::get(&mut conn, "lock:{chain}:fence")
                    .await
                    .unwrap();
                assert!(g.is_held());
                seen.lock().unwrap().push((g.fencing_token(), fence));
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
            token, in_redis,
            "the guard's token is the one Redis counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handing_over_a_vanished_lock_tells_the_new_holder_it_is_lost() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let first = a.lock("gone").await.unwrap();
    let a2 = a.clone();
    let next = tokio::spawn(async move { a2.lock("gone").await });
    tokio::time::sleep(Duration::from_millis(100)).await; // the second task is queued
    let _: () = server.conn().del("lock:{gone}").unwrap(); // removed behind our back
    let released = first.release().await;
    assert!(matches!(released, Err(Error::Lost { .. })), "{released:?}");
    // The waiter may have been handed the lock early; if so it learns at once that Redis
    // refused the handover. Either way it must not believe it holds a lock nobody has.
    match next.await.unwrap() {
        Ok(g) => {
            tokio::time::timeout(Duration::from_secs(2), g.lost())
                .await
                .expect("the new holder is told the handover failed");
            assert!(!g.is_held());
            assert!(matches!(g.release().await, Err(Error::Lost { .. })));
        }
        Err(e) => panic!("unexpected {e}"),
    }
    let g = a.try_lock("gone").await.expect("the key is free again");
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_and_wake_ups_survive_cut_connections() {
    // Everything the locker says to Redis goes through a proxy that cuts every connection.
    let server = RedisServer::start();
    let proxy = lockattr_tests::proxy::Proxy::start(server.addr()).await;
    let via_proxy = Locker::builder(proxy.url())
        .operation_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let direct = locker(&server).await;

    // 1. A holder whose connection is cut keeps renewing once it has reconnected.
    let g = via_proxy
        .lock("cut")
        .lease(Duration::from_millis(900))
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.cut_all();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(g.is_held(), "renewal resumed after the reconnects");
    assert!(
        matches!(direct.try_lock("cut").await, Err(Error::Timeout { .. })),
        "the lock is still held in Redis, well past its 900 ms lease"
    );
    g.release().await.unwrap();

    // 2. A waiter whose pub/sub connection was cut is still woken by a release.
    let holder = direct.lock("wake-cut").await.unwrap();
    let waiter = {
        let via_proxy = via_proxy.clone();
        tokio::spawn(async move {
            let g = via_proxy
                .lock("wake-cut")
                .wait(Duration::from_secs(10))
                .await
                .unwrap();
            let at = Instant::now();
            g.release().await.unwrap();
            at
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut_all();
    tokio::time::sleep(Duration::from_millis(700)).await; // reconnect and resubscribe
    let released = Instant::now();
    holder.release().await.unwrap();
    let acquired = waiter.await.unwrap();
    // Pub/sub (or, at worst, the short poll used while pub/sub is down), not the 30 s lease.
    assert!(
        acquired.duration_since(released) < Duration::from_secs(2),
        "woken {:?} after the release",
        acquired.duration_since(released)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_out_of_range_are_refused_with_a_clear_error() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    for lease in [
        Duration::ZERO,
        Duration::from_secs(400 * 24 * 3600),
        Duration::MAX,
    ] {
        match a.lock("range").lease(lease).await {
            Err(Error::InvalidConfig { reason }) => {
                assert!(reason.contains("between 1 ms and 366 days"), "{reason}");
            }
            other => panic!("lease {lease:?}: expected InvalidConfig, got {other:?}"),
        }
    }
    let g = a.lock("range").await.unwrap();
    assert!(matches!(
        g.extend(Duration::MAX).await,
        Err(Error::InvalidConfig { .. })
    ));
    g.release().await.unwrap();
    assert!(lock_keys(&server).is_empty());
    assert!(matches!(
        Locker::builder(server.url())
            .default_lease(Duration::MAX)
            .build()
            .await,
        Err(Error::InvalidConfig { .. })
    ));
}
