//! Issue 9.7: a contender appended a waiter mark to a value it does not own (an operator's
//! `SET lock:{x} bar`), for good. Contenders must leave foreign values byte for byte.

use std::time::{Duration, Instant};

use lockattr::Error;
use lockattr_tests::RedisServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contenders_never_write_to_a_value_lockattr_did_not_write() {
    let server = RedisServer::start();
    let a = locker(&server).await;
    let b = locker(&server).await;
    let foreign = [
        "bar".to_owned(),
        // Looks like a token, but is not one of ours (upper case, too long, a bad suffix).
        GHOST.to_uppercase(),
        format!("{GHOST}0"),
        format!("{GHOST}!garbage"),
    ];
    for v in &foreign {
        let _: () = redis::cmd("SET")
            .arg("lock:{x}")
            .arg(v)
            .query(&mut server.conn())
            .unwrap();
        // Waiting contenders of two lockers, and a single attempt.
        let (ra, rb) = tokio::join!(
            a.lock("x").wait(Duration::from_millis(400)).into_future(),
            b.lock("x").wait(Duration::from_millis(400)).into_future(),
        );
        assert!(matches!(ra, Err(Error::Timeout { .. })), "{v}: {ra:?}");
        assert!(matches!(rb, Err(Error::Timeout { .. })), "{v}: {rb:?}");
        assert!(matches!(a.try_lock("x").await, Err(Error::Timeout { .. })));
        assert_eq!(
            raw(&server, "lock:{x}").as_deref(),
            Some(v.as_str()),
            "left byte for byte"
        );
        assert_eq!(pttl(&server, "lock:{x}"), -1, "{v}: no TTL was added");
        // Neither a forced unlock nor any release touches it.
        assert!(!a.force_unlock("x").await.unwrap());
        assert_eq!(raw(&server, "lock:{x}").as_deref(), Some(v.as_str()));
    }
    // A foreign value with a TTL: the contender gets the lock once it expires, without having
    // written to it before.
    let _: () = redis::cmd("SET")
        .arg("lock:{y}")
        .arg("bar")
        .arg("PX")
        .arg(400)
        .query(&mut server.conn())
        .unwrap();
    let started = Instant::now();
    let waiter = tokio::spawn({
        let a = a.clone();
        async move { a.lock("y").wait(Duration::from_secs(5)).await }
    });
    while started.elapsed() < Duration::from_millis(300) {
        assert_eq!(raw(&server, "lock:{y}").as_deref(), Some("bar"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let g = waiter
        .await
        .unwrap()
        .expect("taken after the foreign value expired");
    assert!(started.elapsed() >= Duration::from_millis(390));
    g.release().await.unwrap();
}

use std::future::IntoFuture as _;
