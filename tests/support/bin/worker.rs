//! A separate OS process for the multi-process tests.
//!
//! `lockattr-test-worker increment <url> <key> <tasks> <iterations>`: `tasks` tasks each take
//! the lock `iterations` times and do a non-atomic GET-then-SET increment of `counter:<key>`
//! with an overlap check inside the critical section; prints `done <acquisitions> <overlaps>`.
//! A `<url>` of the form `cluster:<url>,<url>,...` means a Redis Cluster with those seed nodes
//! (the counter is then `counter:{<key>}`, in the lock's slot).
//!
//! `lockattr-test-worker hold <url> <key> <lease_ms>`: takes the lock with renewal on, prints
//! `held <fencing token>`, then sleeps until killed (at most 60 s).
//!
//! `lockattr-test-worker history --process <n> --lock-urls <url,..> --direct-url <url> ...`
//! (one server) or `... --cluster <seed url,..> ...` (a Redis Cluster): one process of a history
//! test (see `lockattr_tests::history::worker` for the options, built by
//! `WorkerConfig::to_args`). Prints `ready` once connected, waits for a line on stdin (at most
//! 60 s), runs, writes its records to `--out`, prints `done <sections>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> &str {
        args.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("missing argument {i}; see the worker's docs"))
    };
    let num = |i: usize| -> u64 { arg(i).parse().expect("a number") };
    match arg(1) {
        "increment" => increment(arg(2), arg(3), num(4), num(5)).await,
        "hold" => hold(arg(2), arg(3), num(4)).await,
        "history" => history(&args[2..]).await,
        other => panic!("unknown worker mode {other}"),
    }
}

/// The connection for the counter: one server or a cluster.
#[derive(Clone)]
enum Counter {
    One(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Counter {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        match self {
            Counter::One(c) => cmd.query_async(c).await.expect("counter command"),
            Counter::Cluster(c) => cmd.query_async(c).await.expect("counter command"),
        }
    }
}

async fn increment(url: &str, key: &str, tasks: u64, iterations: u64) {
    let (builder, conn, counter) = match url.strip_prefix("cluster:") {
        Some(nodes) => {
            let nodes: Vec<&str> = nodes.split(',').collect();
            let client = redis::cluster::ClusterClient::new(nodes.clone()).expect("urls");
            let conn = client.get_async_connection().await.expect("connect");
            (
                lockattr::Locker::cluster(nodes),
                Counter::Cluster(conn),
                format!("counter:{{{key}}}"),
            )
        }
        None => {
            let conn = redis::Client::open(url)
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            (
                lockattr::Locker::builder(url),
                Counter::One(conn),
                format!("counter:{key}"),
            )
        }
    };
    let locker = builder
        .default_wait(Duration::from_secs(60))
        .build()
        .await
        .expect("connect");
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicU64::new(0));
    let acquisitions = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (locker, mut conn, counter) = (locker.clone(), conn.clone(), counter.clone());
        let (inside, overlaps, acquisitions) =
            (inside.clone(), overlaps.clone(), acquisitions.clone());
        let key = key.to_owned();
        handles.push(tokio::spawn(async move {
            for _ in 0..iterations {
                let guard = locker.lock(&key).await.expect("lock");
                if inside.swap(true, Ordering::SeqCst) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let v: Option<u64> = conn.query(redis::cmd("GET").arg(&counter)).await;
                tokio::task::yield_now().await;
                let _: () = conn
                    .query(redis::cmd("SET").arg(&counter).arg(v.unwrap_or(0) + 1))
                    .await;
                acquisitions.fetch_add(1, Ordering::SeqCst);
                inside.store(false, Ordering::SeqCst);
                guard.release().await.expect("release");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    println!(
        "done {} {}",
        acquisitions.load(Ordering::SeqCst),
        overlaps.load(Ordering::SeqCst)
    );
}

async fn hold(url: &str, key: &str, lease_ms: u64) {
    let locker = lockattr::Locker::connect(url).await.expect("connect");
    let guard = locker
        .lock(key)
        .lease(Duration::from_millis(lease_ms))
        .await
        .expect("lock");
    println!(
        "held {}",
        guard.fencing_token().await.expect("fencing token")
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(guard);
}

async fn history(args: &[String]) {
    use lockattr_tests::history::worker::{write_output, Worker, WorkerConfig};
    use tokio::io::AsyncBufReadExt;

    let config = WorkerConfig::from_args(args).unwrap_or_else(|e| panic!("history worker: {e}"));
    let out_path = config.out.clone();
    let worker = Worker::connect(config)
        .await
        .unwrap_or_else(|e| panic!("history worker: {e}"));
    println!("ready");
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    match tokio::time::timeout(Duration::from_secs(60), stdin.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("history worker: read stdin: {e}"),
        Err(_) => panic!("history worker: no start signal within 60 s"),
    }
    let output = worker.run().await;
    write_output(&out_path, &output)
        .unwrap_or_else(|e| panic!("history worker: write {}: {e}", out_path.display()));
    println!("done {}", output.sections.len());
}
