//! What a lock leaves in Redis: the lock key while it is held, nothing after; keys escaped.

use std::time::Duration;

use lockattr::{Error, Locker};
use lockattr_tests::RedisServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_one_key_with_a_ttl_and_nothing_is_left_after_release() {
    let server = RedisServer::start();
    let locker = locker(&server).await;
    let guard = locker.lock("party:42").await.unwrap();
    assert_eq!(guard.key(), "party:42");
    assert!(guard.is_held());
    assert_eq!(lock_keys(&server), vec!["lock:{party:42}".to_owned()]);
    let v = raw(&server, "lock:{party:42}").unwrap();
    assert_eq!(
        v.len(),
        32,
        "the uncontended fast path writes the bare token: {v}"
    );
    assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
    let ttl = pttl(&server, "lock:{party:42}");
    assert!(
        ttl > 25_000 && ttl <= 30_000,
        "default lease 30 s, pttl {ttl}"
    );
    guard.release().await.unwrap();
    assert!(server.keys().is_empty(), "{:?}", server.keys());
    assert_eq!(locker.redis_key("party:42").unwrap(), "lock:{party:42}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_lockattr_writes_has_a_ttl_and_is_gone_after_use() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    // Uncontended, contended across lockers (marks, registrations, grants) and handed over
    // inside a process: at every moment every key has a TTL.
    let watcher = {
        let url = server.url();
        tokio::spawn(async move {
            let mut conn = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let mut seen = 0;
            for _ in 0..200 {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("*")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                for k in keys {
                    let ttl: i64 = redis::cmd("PTTL")
                        .arg(&k)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    assert!(ttl != -1, "{k} has no TTL");
                    seen += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    let mut tasks = Vec::new();
    for i in 0..12 {
        let locker = if i % 3 == 0 { b.clone() } else { a.clone() };
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                let key = if n % 2 == 0 {
                    "shared".to_owned()
                } else {
                    format!("own:{i}:{n}")
                };
                let g = locker.lock(key).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = watcher.await.unwrap();
    assert!(seen > 0, "the watcher saw keys while locks were held");
    assert!(
        eventually(Duration::from_secs(2), || server.keys().is_empty()).await,
        "nothing is left: {:?}",
        server.keys()
    );
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
