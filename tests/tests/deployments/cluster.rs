//! Redis Cluster (3 masters + 3 replicas): locks in every master's slots, sharded
//! announcements, exclusion across processes, and failovers under holders.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lockattr::{Error, Locker};
use lockattr_tests::cluster::RedisCluster;

use crate::{take_within, wake_up_after_release};

async fn locker(cluster: &RedisCluster) -> Locker {
    Locker::cluster(cluster.seed_urls())
        .operation_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("connect to the cluster")
}

/// Keys whose locks live on each master, one per master.
fn key_per_master(cluster: &RedisCluster, locker: &Locker) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for i in 0..1000 {
        let key = format!("k{i}");
        let master = cluster.master_for_key(&locker.redis_key(&key).unwrap());
        if seen.insert(master) {
            out.push((master, key));
        }
    }
    assert_eq!(out.len(), cluster.masters().len());
    out
}

fn get(cluster: &RedisCluster, port: u16, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut cluster.conn(port))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_live_in_their_slot_on_every_master_and_wake_ups_are_sharded() {
    let cluster = RedisCluster::start(3, 1);
    let a = locker(&cluster).await;
    let b = locker(&cluster).await;
    for (master, key) in key_per_master(&cluster, &a) {
        let redis_key = a.redis_key(&key).unwrap();
        let g = a.lock(&key).await.unwrap();
        assert!(
            get(&cluster, master, &redis_key).is_some(),
            "{key} lives on {master}"
        );
        assert!(matches!(b.try_lock(&key).await, Err(Error::Timeout { .. })));
        let info = b.inspect(&key).await.unwrap().expect("held");
        assert!(info.remaining_lease.is_some());
        g.release().await.unwrap();
        assert!(get(&cluster, master, &redis_key).is_none());

        // A waiter of another locker, woken through the lock's sharded channel.
        cluster.reset_stats();
        let woken = wake_up_after_release(&a, &b, &key).await;
        assert!(
            woken < Duration::from_secs(2),
            "{key}: woken {woken:?} after the release"
        );
        let counts = cluster.command_counts_by_node();
        let total = |name: &str| {
            counts
                .values()
                .map(|c| c.get(name).copied().unwrap_or(0))
                .sum::<u64>()
        };
        assert!(total("ssubscribe") >= 1, "{counts:?}");
        assert!(
            counts[&master].get("spublish").copied().unwrap_or(0) >= 1,
            "{key}: {counts:?}"
        );
        assert_eq!(total("publish"), 0, "no broadcast PUBLISH: {counts:?}");
        assert_eq!(total("subscribe"), 0, "no broadcast SUBSCRIBE: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_across_processes_on_a_cluster() {
    let cluster = RedisCluster::start(3, 1);
    let worker = env!("CARGO_BIN_EXE_lockattr-test-worker");
    let url = format!("cluster:{}", cluster.seed_urls().join(","));
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(worker)
                .args(["increment", &url, "shared", "10", "10"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output().expect("worker output");
        assert!(out.status.success(), "worker failed: {out:?}");
        let line = String::from_utf8_lossy(&out.stdout);
        let parts: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(parts[1], 0, "overlap inside a worker");
        total += parts[0];
    }
    let a = locker(&cluster).await;
    let master = cluster.master_for_key("counter:{shared}");
    let counter: u64 = get(&cluster, master, "counter:{shared}")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        (total, counter),
        (200, 200),
        "every GET-then-SET increment survived"
    );
    assert!(a.inspect("shared").await.unwrap().is_none());
}

/// A holder on the master that fails over: it keeps the lock (its renewals follow the slot to
/// the promoted replica) or reports `Lost`; new acquisitions succeed again within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_under_a_holder_end_in_a_held_or_lost_lock_and_recover() {
    let mut cluster = RedisCluster::start(3, 1);
    let a = locker(&cluster).await;
    let b = locker(&cluster).await;
    let (master, key) = key_per_master(&cluster, &a).remove(0);

    // 1. A coordinated failover (`CLUSTER FAILOVER` on the replica): nothing is lost.
    let g = a.lock(&key).lease(Duration::from_secs(1)).await.unwrap();
    let replica = cluster.replicas_of(master)[0];
    let started = Instant::now();
    cluster.failover(replica);
    let failover_took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await; // renewals go to the new master
    let kept = g.is_held();
    match g.release().await {
        Ok(()) => assert!(kept),
        Err(Error::Lost { .. }) => {}
        Err(e) => panic!("a release after a failover: {e}"),
    }
    let started = Instant::now();
    let next = take_within(&b, &key, Duration::from_secs(10)).await;
    eprintln!(
        "coordinated failover: {failover_took:?}; holder {}; next acquisition after {next:?}",
        if kept {
            "kept the lock"
        } else {
            "lost the lock"
        }
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // 2. The master is killed under a holder: the holder reports `Lost` or keeps the lock (its
    // write reached the replica), and the key can be taken again once the replica is promoted.
    let master = cluster.master_for_key(&a.redis_key(&key).unwrap());
    let g = a.lock(&key).lease(Duration::from_secs(2)).await.unwrap();
    let killed = Instant::now();
    cluster.kill(master);
    let promoted_after = killed.elapsed();
    let lost = tokio::time::timeout(Duration::from_secs(10), g.lost())
        .await
        .is_ok();
    let outcome = g.release().await;
    assert!(
        matches!(
            outcome,
            Ok(()) | Err(Error::Lost { .. } | Error::Redis(_) | Error::OperationTimeout { .. })
        ),
        "{outcome:?}"
    );
    let next = take_within(&b, &key, Duration::from_secs(15)).await;
    eprintln!(
        "killed master: replica promoted after {promoted_after:?}; holder lost: {lost}; \
         release: {outcome:?}; next acquisition {next:?} after the promotion"
    );
}
