//! Loss: declared by the lease clock at the deadline whatever is in flight, reported when only
//! the release finds it, and never blocking the holder's own process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockattr::{distributed_lock, Error, Locker};
use lockattr_tests::proxy::{Direction, Proxy};
use lockattr_tests::RedisServer;

use crate::support::*;

/// Records when the future it lives in stopped: finished or dropped (cancelled).
struct Exit(Arc<Mutex<Option<Instant>>>);

impl Drop for Exit {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

/// Takes `key` with `b` as soon as it is free; returns when it did.
async fn take_when_free(b: &Locker, key: &str, limit: Duration) -> Instant {
    let started = Instant::now();
    loop {
        if let Ok(g) = b.try_lock(key).await {
            let at = Instant::now();
            drop(g);
            return at;
        }
        assert!(started.elapsed() < limit, "`{key}` was never free");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Issue 9.1: with a renewal in flight, nothing fired at the lease deadline; the body ran on
/// until the renewal's reply or the operation timeout (1.6 s with two holders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_cannot_keep_the_body_running_past_the_deadline() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = Locker::builder(proxy.url())
        .operation_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let b = locker(&server).await;
    let lease = Duration::from_millis(1000);
    let exit = Arc::new(Mutex::new(None));
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let sent = Instant::now();
    let body = tokio::spawn({
        let (a, exit) = (a.clone(), exit.clone());
        async move {
            a.lock("stall")
                .lease(lease)
                .run(async move {
                    let _exit = Exit(exit);
                    let _ = entered_tx.send(());
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
        }
    });
    entered.await.unwrap();
    // The link stalls: the renewal (due after a third of the lease) is sent and never answered.
    proxy.stall(Direction::Both);
    let other_entered = take_when_free(&b, "stall", Duration::from_secs(5)).await;
    let r = body.await.unwrap();
    assert!(matches!(r, Err(Error::Lost { .. })), "{r:?}");
    let exit = exit.lock().unwrap().expect("the body stopped");
    assert!(
        exit < other_entered,
        "the body stopped {:?} after another process entered",
        exit - other_entered
    );
    assert!(
        exit - sent < lease,
        "the body stopped {:?} after the acquire was sent; the lease is {lease:?}",
        exit - sent
    );
    proxy.clear();
}

/// Issue 9.1: `lost()`, `is_held()` and the deadline agree, at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_is_held_agree_at_the_deadline() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = Locker::builder(proxy.url())
        .operation_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let lease = Duration::from_millis(600);
    let sent = Instant::now();
    let g = a.lock("agree").lease(lease).await.unwrap();
    proxy.stall(Direction::Replies);
    let mut checks = 0u32;
    let lost = g.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            biased;
            () = &mut lost => break,
            () = tokio::time::sleep(Duration::from_millis(5)) => {
                if !g.is_held() {
                    // The moment `is_held` turns false, `lost()` resolves too.
                    let now = tokio::time::timeout(Duration::from_millis(1), &mut lost).await;
                    assert!(now.is_ok(), "is_held turned false before lost() resolved");
                    break;
                }
                checks += 1;
            }
        }
    }
    let at = sent.elapsed();
    assert!(!g.is_held(), "lost() resolved while is_held() is true");
    assert!(checks > 10);
    assert!(
        at < lease,
        "declared {at:?} after the acquire was sent, lease {lease:?}"
    );
    assert!(
        at >= lease - Duration::from_millis(100),
        "declared early: {at:?}"
    );
    proxy.clear();
    assert!(matches!(g.release().await, Err(Error::Lost { .. })));
}

/// Issue 9.1: Redis paused longer than the lease: the body makes no step after the lease ran
/// out (22 writes did before the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_cannot_keep_the_body_running_past_the_deadline() {
    let server = RedisServer::start();
    let a = Locker::builder(server.url())
        .operation_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    let lease = Duration::from_millis(1000);
    let last_step = Arc::new(Mutex::new(None::<Instant>));
    let steps = Arc::new(AtomicU64::new(0));
    let sent = Instant::now();
    let body = tokio::spawn({
        let (a, last_step, steps) = (a.clone(), last_step.clone(), steps.clone());
        async move {
            a.lock("paused")
                .lease(lease)
                .run(async move {
                    loop {
                        *last_step.lock().unwrap() = Some(Instant::now());
                        steps.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
        }
    });
    assert!(eventually(Duration::from_secs(2), || steps.load(Ordering::SeqCst) > 0).await);
    server.pause();
    let r = tokio::time::timeout(Duration::from_secs(5), body).await;
    server.resume();
    let r = r
        .expect("the body is stopped while Redis is paused")
        .unwrap();
    assert!(matches!(r, Err(Error::Lost { .. })), "{r:?}");
    let last = last_step.lock().unwrap().unwrap();
    assert!(
        last - sent < lease,
        "a body step started {:?} after the acquire was sent",
        last - sent
    );
}

/// Issue 9.5: the key was taken over during a short body and only the release noticed; the
/// call returned `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_found_at_release_fails_run() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let r = a
        .lock("taken")
        .run(async {
            // An operator deletes the key, another process takes it.
            let _: () = redis::cmd("DEL")
                .arg("lock:{taken}")
                .query(&mut server.conn())
                .unwrap();
            let g = b.try_lock("taken").await.unwrap();
            std::mem::forget(g); // it keeps the lock (until its lease)
            "the body's value"
        })
        .await;
    assert!(
        matches!(r, Err(Error::Lost { ref key }) if key == "taken"),
        "{r:?}"
    );
    assert!(
        value(&server, "lock:{taken}").is_some(),
        "the other holder's lock is untouched"
    );
}

#[distributed_lock(key = "attr:<id>", locker = locker, lease = "5s")]
async fn takes_over(locker: &Locker, server: &RedisServer, id: u32) -> Result<u32, Error> {
    let _: () = redis::cmd("DEL")
        .arg(format!("lock:{{attr:{id}}}"))
        .query(&mut server.conn())
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("lock:{{attr:{id}}}"))
        .arg(GHOST)
        .arg("PX")
        .arg(5000)
        .query(&mut server.conn())
        .unwrap();
    Ok(id)
}

/// Issue 9.5, through the attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_found_at_release_fails_the_annotated_function() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let r = takes_over(&a, &server, 7).await;
    assert!(
        matches!(r, Err(Error::Lost { ref key }) if key == "attr:7"),
        "{r:?}"
    );
    assert_eq!(raw(&server, "lock:{attr:7}").as_deref(), Some(GHOST));
}

/// Issue 9.6: a lost guard that was not dropped yet kept its place in the local queue: other
/// tasks of the same locker timed out while other processes took the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_guard_gives_up_its_place_in_the_local_queue() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    // A fixed lease runs out.
    let expired = a
        .lock("q")
        .lease(Duration::from_millis(200))
        .renew(false)
        .await
        .unwrap();
    let started = Instant::now();
    let next = a
        .lock("q")
        .wait(Duration::from_secs(3))
        .await
        .expect("the next local task gets the lock");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!expired.is_held());
    assert!(next.is_held());
    assert!(matches!(expired.release().await, Err(Error::Lost { .. })));
    next.release().await.unwrap();

    // Renewal finds the key gone.
    let gone = a.lock("r").lease(Duration::from_millis(300)).await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg("lock:{r}")
        .query(&mut server.conn())
        .unwrap();
    let started = Instant::now();
    let next = a
        .lock("r")
        .wait(Duration::from_secs(3))
        .await
        .expect("the next local task gets the lock");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!gone.is_held());
    drop(gone);
    assert!(next.is_held());
    next.release().await.unwrap();
}
