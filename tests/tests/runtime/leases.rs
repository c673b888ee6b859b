//! Leases: renewal, fixed leases, extension, range checks, and a dead holder's lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr::{Error, Locker};
use lockattr_tests::RedisServer;

use crate::support::*;

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
    let owner = raw(&server, "lock:{k}").unwrap();
    assert!(matches!(
        first.extend(Duration::from_secs(10)).await,
        Err(Error::Lost { .. })
    ));
    assert!(matches!(first.release().await, Err(Error::Lost { .. })));
    let still = raw(&server, "lock:{k}").unwrap();
    assert_eq!(owner, still, "the second holder's lock is untouched");
    assert!(second.is_held());
    assert!(second.fencing_token().await.unwrap() > 1);
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
    let ttl = pttl(&server, "lock:{ext}");
    assert!(ttl > 3000, "pttl {ttl}");
    g.release().await.unwrap();
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
