//! Sentinel (1 master + 2 replicas + 3 sentinels): the master followed across failovers, and
//! `wait_for_replicas`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockattr::{Error, Locker};
use lockattr_tests::sentinel::RedisSentinel;

use crate::{take_within, wake_up_after_release};

async fn locker(s: &RedisSentinel, replicas: Option<usize>) -> Locker {
    let mut b = Locker::sentinel(s.master_name(), s.sentinel_urls())
        .operation_timeout(Duration::from_secs(3));
    if let Some(n) = replicas {
        b = b.wait_for_replicas(n, Duration::from_millis(500));
    }
    b.build()
        .await
        .expect("resolve the master through the sentinels")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_wake_up_and_release_through_sentinel() {
    let s = RedisSentinel::start();
    let a = locker(&s, None).await;
    let b = locker(&s, None).await;
    let g = a.lock("s").await.unwrap();
    assert!(matches!(b.try_lock("s").await, Err(Error::Timeout { .. })));
    g.release().await.unwrap();
    let woken = wake_up_after_release(&a, &b, "s").await;
    assert!(
        woken < Duration::from_secs(2),
        "woken {woken:?} after the release"
    );
    // With acknowledgement by one replica, too.
    let c = locker(&s, Some(1)).await;
    let d = locker(&s, Some(1)).await;
    let woken = wake_up_after_release(&c, &d, "s").await;
    assert!(
        woken < Duration::from_secs(2),
        "woken {woken:?} after the release"
    );
    assert!(a.inspect("s").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_under_holders_and_waiters_end_cleanly_and_recover() {
    for replicas in [Some(1), None] {
        failovers_under_holders_and_waiters(replicas).await;
    }
}

/// A holder and a waiter through a coordinated failover, then a killed master: the holder
/// keeps the lock or reports `Lost`, the waiter gets it, the key can be taken again at once.
/// Whether both believed they held the lock at the same moment is reported, not asserted:
/// replication is asynchronous, and Sentinel does not stop the old master during a failover
/// (it accepts writes until the sentinels reconfigure it), so a renewal it confirmed after the
/// promotion can leave the holder believing in a lease that the new master does not have.
/// `wait_for_replicas` narrows that (a renewal needs a replica's acknowledgement) but cannot
/// close it: a replica about to follow the new master can still acknowledge it.
async fn failovers_under_holders_and_waiters(replicas: Option<usize>) {
    let mut s = RedisSentinel::start();
    let a = locker(&s, replicas).await;
    let b = locker(&s, replicas).await;
    for kind in ["SENTINEL FAILOVER", "killed master"] {
        s.wait_replicas_in_sync();
        let holder = a
            .lock("f")
            .lease(Duration::from_millis(1500))
            .await
            .unwrap();
        // The holder watches its guard: the last moment it believed it held the lock.
        let watching = tokio::spawn(async move {
            let mut last_held = Instant::now();
            let started = Instant::now();
            while holder.is_held() && started.elapsed() < Duration::from_secs(3) {
                last_held = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let kept = holder.is_held();
            (last_held, kept, holder.release().await)
        });
        // A waiter that keeps asking while the deployment fails over (calls fail with a Redis
        // error while no master answers, and with `NotReplicated` while the promoted master's
        // replicas are still resyncing; see the crate docs).
        let waiter = tokio::spawn({
            let b = b.clone();
            async move {
                let started = Instant::now();
                loop {
                    match b.lock("f").wait(Duration::from_secs(20)).await {
                        Ok(g) => {
                            let entered = Instant::now();
                            drop(g);
                            return (entered, Ok(()));
                        }
                        Err(
                            e @ (Error::Redis(_)
                            | Error::OperationTimeout { .. }
                            | Error::NotReplicated { .. }),
                        ) if started.elapsed() < Duration::from_secs(20) => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return (Instant::now(), Err(e)),
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let new_master = tokio::task::block_in_place(|| {
            if kind == "killed master" {
                s.kill_master()
            } else {
                s.failover()
            }
        });
        let switched = started.elapsed();
        let (last_held, kept, released) = watching.await.unwrap();
        match &released {
            Ok(()) => assert!(kept, "{kind}: released a lock it had lost"),
            Err(Error::Lost { .. } | Error::Redis(_) | Error::OperationTimeout { .. }) => {}
            Err(e) => panic!("{kind}: {e}"),
        }
        let (entered, got) = waiter.await.unwrap();
        assert!(got.is_ok(), "{kind}: the waiter gets the lock: {got:?}");
        let overlap = last_held.saturating_duration_since(entered);
        let next = take_within(&a, "f", Duration::from_secs(15)).await;
        eprintln!(
            "wait_for_replicas {replicas:?}, {kind}: new master {new_master} after {switched:?}; \
             holder {} (release {released:?}); two holders for {overlap:?}; next acquisition \
             took {next:?}",
            if kept { "kept the lock" } else { "lost it" },
        );
        assert!(next < Duration::from_secs(15));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_replicas_acknowledges_or_fails_clearly_and_leaves_the_lock_free() {
    let mut s = RedisSentinel::start();
    s.wait_replicas_in_sync();
    let acked = locker(&s, Some(1)).await;
    let plain = locker(&s, None).await;
    let g = acked.lock("w").await.expect("acknowledged by a replica");
    g.extend(Duration::from_secs(10))
        .await
        .expect("the renewal is acknowledged too");
    let first = g.fencing_token().await.unwrap();
    g.release().await.unwrap();
    // With its token in the acquisition's round trip (`SET`, `TIME`, `WAIT` pipelined).
    let g = acked
        .lock("w")
        .fenced(true)
        .await
        .expect("acknowledged by a replica");
    assert!(g.fencing_token().await.unwrap() > first);
    g.release().await.unwrap();
    // Handed over inside the locker, acknowledged on the way.
    let (x, y) = tokio::join!(
        acked
            .lock("w")
            .run(tokio::time::sleep(Duration::from_millis(50))),
        acked
            .lock("w")
            .run(async { lockattr::fencing_token().await.ok() }),
    );
    x.unwrap();
    assert!(y.unwrap().is_some());

    s.pause_replicas();
    let started = Instant::now();
    let r = acked.lock("w").await;
    let took = started.elapsed();
    s.resume_replicas();
    match r {
        Err(Error::NotReplicated {
            ref key,
            required,
            acknowledged,
            timeout,
            ref replicas,
        }) => {
            assert_eq!((key.as_str(), required, acknowledged), ("w", 1, 0));
            assert_eq!(timeout, Duration::from_millis(500));
            assert!(
                replicas.contains("slave0"),
                "names the replicas: {replicas}"
            );
        }
        other => panic!("expected NotReplicated, got {other:?}"),
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Nothing is held: another locker takes the key at once.
    let g = plain.try_lock("w").await.expect("the lock was left free");
    g.release().await.unwrap();
}

/// Sections taken around a failover: their fencing tokens, in the order they were held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_across_failovers() {
    for replicas in [Some(1), None] {
        let mut s = RedisSentinel::start();
        s.wait_replicas_in_sync();
        let lockers = [locker(&s, replicas).await, locker(&s, replicas).await];
        let sections = Arc::new(Mutex::new(Vec::<(Instant, Instant, u64)>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (locker, sections, stop) = (lockers[i % 2].clone(), sections.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match locker
                        .lock("h")
                        .lease(Duration::from_secs(1))
                        .wait(Duration::from_secs(5))
                        .await
                    {
                        Ok(g) => {
                            let enter = Instant::now();
                            // The token is a round trip of its own for an uncontended lock: a
                            // section that cannot get one (Redis failing over, the lock lost)
                            // writes nothing, like an application's.
                            let Ok(token) = g.fencing_token().await else {
                                errors += 1;
                                let _ = g.release().await;
                                continue;
                            };
                            tokio::time::sleep(Duration::from_millis(3)).await;
                            let held = g.is_held();
                            let exit = Instant::now();
                            if g.release().await.is_ok() && held {
                                sections.lock().unwrap().push((enter, exit, token));
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                errors
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        tokio::task::block_in_place(|| s.failover());
        tokio::time::sleep(Duration::from_millis(800)).await;
        tokio::task::block_in_place(|| s.kill_master());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut errors = 0;
        for t in tasks {
            errors += t.await.unwrap();
        }
        let mut sections = sections.lock().unwrap().clone();
        sections.sort_by_key(|s| s.0);
        let out_of_order = sections.windows(2).filter(|w| w[1].2 <= w[0].2).count();
        let overlaps = sections.windows(2).filter(|w| w[1].0 < w[0].1).count();
        eprintln!(
            "wait_for_replicas {replicas:?}: {} sections released cleanly, {errors} failed \
             attempts; {out_of_order} tokens not above the previous section's, {overlaps} overlaps",
            sections.len()
        );
        assert!(sections.len() > 50, "too few sections: {}", sections.len());
        if replicas.is_some() {
            assert_eq!(
                out_of_order, 0,
                "acknowledged tokens never repeat or go back"
            );
        }
    }
}

/// After a `SENTINEL FAILOVER` the old master stays a master that accepts writes until the
/// sentinels reconfigure it (up to 10 s later), and a lock it grants then is not seen by the new
/// master. The failover leader announces `+switch-master` only once the other replicas follow
/// the new master, the other sentinels as they learn of it: lockers watching every sentinel
/// (and `+promoted-slave`) stop using the old master before the last sentinel takes the new
/// configuration. Asserted: from 200 ms after every sentinel names the new master, for 1.5 s,
/// lockers busy on three keys send the old master no lock command, and they keep locking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockers_leave_the_old_master_before_the_sentinels_reconfigure_it() {
    let deployment = tokio::task::block_in_place(RedisSentinel::start);
    let locker = locker(&deployment, None).await;
    let s = Arc::new(Mutex::new(deployment));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (locker, stop, done) = (locker.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            // Bounded by `stop` and by a count.
            for _ in 0..1_000_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match locker
                    .lock(format!("old-master-{i}"))
                    .lease(Duration::from_secs(1))
                    .wait(Duration::from_secs(3))
                    .await
                {
                    Ok(g) => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        // Lost is expected for a guard taken on the old master.
                        let _ = g.release().await;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // No master answers for a moment during the failover.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (old, new) = {
        let s = s.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = s.lock().unwrap();
            let old = s.master_addr();
            (old, s.failover())
        })
        .await
        .unwrap()
    };
    let before = done.load(std::sync::atomic::Ordering::Relaxed);
    let watched = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut conn = lockattr_tests::connect_bounded(old, Duration::from_secs(2)).unwrap();
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(&mut conn)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap();
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut conn)
            .unwrap();
        (
            lockattr_tests::parse_commandstats(&stats),
            replication.lines().any(|l| l.trim() == "role:master"),
        )
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let after = done.load(std::sync::atomic::Ordering::Relaxed) - before;
    let (counts, still_master) = watched;
    let sent: BTreeMap<&str, u64> = lockattr_tests::LOCK_COMMANDS
        .iter()
        .filter_map(|c| counts.get(*c).map(|n| (*c, *n)))
        .collect();
    eprintln!(
        "failover {old} -> {new}: the old master {} a master 1.7 s later and got {sent:?}; \
         {after} locks taken and released after the failover",
        if still_master {
            "was still"
        } else {
            "was no longer"
        }
    );
    assert!(
        sent.is_empty(),
        "lock commands reached the old master {old} after the failover to {new}: {sent:?}"
    );
    assert!(
        after > 30,
        "lockers kept locking: {after} after the failover"
    );
}

/// Subscribed connections on each sentinel (`CLIENT LIST`).
fn subscribers(s: &RedisSentinel) -> Vec<usize> {
    s.sentinel_urls()
        .iter()
        .map(|url| {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conn = client
                .get_connection_with_timeout(Duration::from_secs(2))
                .unwrap();
            let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
            list.lines()
                .filter(|l| l.split(' ').any(|f| f.starts_with("sub=") && f != "sub=0"))
                .count()
        })
        .collect()
}

/// A `Locker::sentinel` given one sentinel's URL watches every sentinel of the deployment (it
/// finds the others with `SENTINEL SENTINELS`), and its subscriptions end with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sentinel_is_watched_and_the_watch_ends_with_the_locker() {
    let s = tokio::task::block_in_place(RedisSentinel::start);
    assert_eq!(subscribers(&s), vec![0; 3]);
    let first = s.sentinel_urls()[0].clone();
    let locker = Locker::sentinel(s.master_name(), [first])
        .build()
        .await
        .expect("resolve the master through one sentinel");
    // Bounded: the subscriptions are made in the background.
    let mut watched = Vec::new();
    for _ in 0..50 {
        watched = tokio::task::block_in_place(|| subscribers(&s));
        if watched == vec![1; 3] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(watched, vec![1; 3], "one subscription on each sentinel");
    drop(locker);
    let mut left = Vec::new();
    for _ in 0..50 {
        left = tokio::task::block_in_place(|| subscribers(&s));
        if left == vec![0; 3] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left,
        vec![0; 3],
        "no subscription left after the Locker is dropped"
    );
}
