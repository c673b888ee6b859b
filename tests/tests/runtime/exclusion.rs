//! Mutual exclusion across lockers and OS processes, and turns between them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr_tests::RedisServer;
use redis::Commands;

use crate::support::*;

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
