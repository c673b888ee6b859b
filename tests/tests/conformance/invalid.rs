//! What is refused, and how: keys (`Error::InvalidKey`), leases and settings
//! (`Error::InvalidConfig`), on every operation that takes them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lockattr::{Error, MAX_KEY_LEN};

use crate::backend::{Backend, Settings};
use crate::support::assert_free;

#[track_caller]
fn assert_invalid_key<T: std::fmt::Debug>(r: &Result<T, Error>, what: &str) {
    assert!(
        matches!(r, Err(Error::InvalidKey { reason, .. }) if !reason.is_empty()),
        "{what}: expected InvalidKey, got {r:?}"
    );
}

#[track_caller]
fn assert_invalid_config<T: std::fmt::Debug>(r: &Result<T, Error>, what: &str) {
    assert!(
        matches!(r, Err(Error::InvalidConfig { reason }) if !reason.is_empty()),
        "{what}: expected InvalidConfig, got {r:?}"
    );
}

pub async fn invalid_keys_are_refused(b: &impl Backend) {
    let a = b.locker().await;
    // Empty; too long as written; short enough as written but too long once escaped (each
    // `{` is written `%7B`).
    let long = "k".repeat(MAX_KEY_LEN + 1);
    let braces = "{".repeat(MAX_KEY_LEN / 3 + 1);
    for key in ["", long.as_str(), braces.as_str()] {
        let what = format!("a key of {} bytes", key.len());
        assert_invalid_key(&a.lock(key).await, &what);
        assert_invalid_key(&a.try_lock(key).await, &what);
        let ran = AtomicBool::new(false);
        let r = a
            .lock(key)
            .run(async { ran.store(true, Ordering::SeqCst) })
            .await;
        assert_invalid_key(&r, &what);
        assert!(!ran.load(Ordering::SeqCst), "{what}: the body ran");
        assert_invalid_key(&a.inspect(key).await, &what);
        assert_invalid_key(&a.force_unlock(key).await, &what);
        assert_invalid_key(&a.redis_key(key), &what);
    }
    // The longest key is fine, and so is one that needs escaping.
    let longest = "k".repeat(MAX_KEY_LEN);
    for key in [longest.as_str(), "{tag}:%:\n"] {
        a.lock(key).await.unwrap().release().await.unwrap();
        assert_free(&a, key).await;
    }
}

pub async fn invalid_leases_and_settings_are_refused(b: &impl Backend) {
    let a = b.locker().await;
    let year = Duration::from_secs(366 * 24 * 3600);
    for lease in [
        Duration::ZERO,
        Duration::from_micros(999),
        year + Duration::from_secs(1),
    ] {
        let what = format!("lease {lease:?}");
        let r = a.lock("lease").lease(lease).await;
        assert_invalid_config(&r, &what);
        if let Err(Error::InvalidConfig { reason }) = &r {
            assert!(reason.contains("between 1 ms and 366 days"), "{reason}");
        }
        let r = a.lock("lease").lease(lease).run(async {}).await;
        assert_invalid_config(&r, &what);
    }
    // The bounds themselves are accepted (a 1 ms lease may well run out before the reply
    // arrives, which makes the single attempt a timeout on Redis).
    for (key, lease) in [("shortest", Duration::from_millis(1)), ("longest", year)] {
        let r = a
            .lock(key)
            .lease(lease)
            .renew(false)
            .wait(Duration::ZERO)
            .await;
        assert!(
            !matches!(r, Err(Error::InvalidConfig { .. })),
            "lease {lease:?}: {r:?}"
        );
    }
    let g = a.lock("lease").wait(Duration::from_secs(2)).await.unwrap();
    assert_invalid_config(&g.extend(Duration::ZERO).await, "extend to zero");
    assert_invalid_config(&g.extend(Duration::MAX).await, "extend to Duration::MAX");
    assert!(g.is_held(), "a refused extension changes nothing");
    g.release().await.unwrap();
    // A locker with settings out of range is not built.
    let bad = [
        (
            "a zero default lease",
            Settings {
                lease: Duration::ZERO,
                ..Settings::default()
            },
        ),
        (
            "a huge default lease",
            Settings {
                lease: Duration::MAX,
                ..Settings::default()
            },
        ),
        (
            "an empty namespace",
            Settings {
                namespace: "",
                ..Settings::default()
            },
        ),
        (
            "a brace in the namespace",
            Settings {
                namespace: "app{",
                ..Settings::default()
            },
        ),
    ];
    for (what, settings) in bad {
        assert_invalid_config(&b.build(settings).await, what);
    }
    assert_free(&a, "lease").await;
}
