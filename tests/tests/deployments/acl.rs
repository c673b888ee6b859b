//! A restricted ACL user: the documented minimal rules are enough for everything, and a user
//! without rights gets a prompt, clear error and leaves nothing behind.

use std::time::{Duration, Instant};

use lockattr::{Error, Locker};
use lockattr_tests::RedisServer;

use crate::wake_up_after_release;

/// The rules the crate docs give for the namespace `lock` (keep them in sync with
/// `lockattr/src/lib.rs`, section "Deployments").
pub const MINIMAL: &[&str] = &[
    "~lock:*",
    "&lock:*",
    "+set",
    "+get",
    "+del",
    "+time",
    "+pttl",
    "+pexpire",
    "+publish",
    "+evalsha",
    "+script|load",
    "+subscribe",
    "+unsubscribe",
];

fn is_permission_error(e: &Error) -> bool {
    matches!(e, Error::Redis(r) if r.to_string().contains("NOPERM") || r.to_string().to_lowercase().contains("permission"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_user_does_everything() {
    let server = RedisServer::start();
    let user = server.create_user("locks", "s3cret", MINIMAL);
    let url = server.url_as(&user);
    let a = Locker::builder(&url)
        .build()
        .await
        .expect("connect as the minimal user");
    let b = Locker::builder(&url).build().await.unwrap();
    // Uncontended, fenced, extended, inspected.
    let g = a.lock("acl").lease(Duration::from_secs(5)).await.unwrap();
    let token = g.fencing_token().await.unwrap();
    g.extend(Duration::from_secs(10)).await.unwrap();
    let info = b.inspect("acl").await.unwrap().expect("held");
    assert_eq!(info.fencing_token, Some(token));
    g.release().await.unwrap();
    // Contended across lockers: marked, registered, and woken by pub/sub (the waiter's
    // subscription is there while it waits).
    let g = a.lock("acl").await.unwrap();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            match b.lock("acl").await {
                Ok(g) => Ok(g.fencing_token().await.unwrap()),
                Err(e) => Err(e),
            }
        }
    });
    lockattr_tests::eventually(
        "the minimal user subscribes to the lock's channel",
        Duration::from_secs(5),
        || {
            let n: (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("lock:{acl}:released")
                .query(&mut server.conn())
                .map_err(|e| e.to_string())?;
            if n.1 == 1 {
                Ok(())
            } else {
                Err(format!("{} subscribers", n.1))
            }
        },
    );
    g.release().await.unwrap();
    waiter.await.unwrap().unwrap();
    let woken = wake_up_after_release(&a, &b, "acl").await;
    assert!(
        woken < Duration::from_secs(2),
        "woken {woken:?} after the release"
    );
    // Handed over inside one locker, renewed under a long body.
    let (x, y) = tokio::join!(
        a.lock("acl")
            .lease(Duration::from_millis(600))
            .run(tokio::time::sleep(Duration::from_millis(900))),
        a.lock("acl")
            .run(async { lockattr::fencing_token().await.ok() }),
    );
    x.unwrap();
    assert!(y.unwrap().is_some());
    // An administrative unlock.
    let g = a.lock("acl").await.unwrap();
    assert!(b.force_unlock("acl").await.unwrap());
    assert!(matches!(g.release().await, Err(Error::Lost { .. })));
    assert!(server.keys().is_empty(), "{:?}", server.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_rights_on_the_namespace_gets_a_clear_error_at_once() {
    let server = RedisServer::start();
    // Rights on another namespace only.
    let mut rules: Vec<String> = MINIMAL.iter().map(|r| (*r).to_owned()).collect();
    rules[0] = "~other:*".into();
    rules[1] = "&other:*".into();
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    let user = server.create_user("outsider", "pw", &rules);
    let locker = Locker::builder(server.url_as(&user)).build().await.unwrap();
    let started = Instant::now();
    let r = locker.lock("acl").wait(Duration::from_secs(10)).await;
    let e = r.expect_err("no rights on `lock:*`");
    assert!(
        is_permission_error(&e),
        "the error names the permission problem: {e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        server.keys().is_empty(),
        "nothing left behind: {:?}",
        server.keys()
    );

    // Rights on the keys but not on the channels: the uncontended path works; waiting for a
    // busy lock needs its channel, and says so instead of hanging.
    let mut rules: Vec<&str> = MINIMAL.to_vec();
    rules.retain(|r| !r.starts_with('&'));
    let deaf = server.create_user("deaf", "pw", &rules);
    let deaf = Locker::builder(server.url_as(&deaf)).build().await.unwrap();
    let holder = Locker::connect(server.url()).await.unwrap();
    deaf.lock("ch").await.unwrap().release().await.unwrap();
    let g = holder.lock("ch").await.unwrap();
    let started = Instant::now();
    let e = deaf
        .lock("ch")
        .wait(Duration::from_secs(10))
        .await
        .expect_err("refused");
    assert!(is_permission_error(&e), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    g.release().await.unwrap();
    assert!(
        server.keys().is_empty(),
        "nothing left behind: {:?}",
        server.keys()
    );
}
