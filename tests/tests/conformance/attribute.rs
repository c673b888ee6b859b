//! `#[distributed_lock]` with `locker = ..`: the same attribute over either backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockattr::{distributed_lock, Error, Locker};

use crate::backend::Backend;
use crate::support::{assert_free, assert_freed_within, info};

/// An application's error type, with the lock's errors converted into it.
#[derive(Debug)]
enum AppError {
    Lock(Error),
    SoldOut,
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Lock(e)
    }
}

/// A service that keeps its locker, as applications do.
struct Seats {
    locker: Locker,
}

impl Seats {
    /// Books `seat`; the fencing token of the booking, or `SoldOut` from the body itself.
    #[distributed_lock(key = "seat:<seat>", locker = self.locker, wait = "300ms", lease = "5s")]
    async fn book(&self, seat: u32, ran: &AtomicBool) -> Result<u64, AppError> {
        ran.store(true, Ordering::SeqCst);
        if seat == 0 {
            return Err(AppError::SoldOut);
        }
        Ok(lockattr::fencing_token().await.expect("inside the lock"))
    }

    /// Books `seat` twice from inside its own lock: the nested call re-enters.
    #[distributed_lock(key = "seat:<seat>", locker = self.locker, wait = "0s")]
    async fn book_twice(&self, seat: u32) -> Result<(u64, u64), AppError> {
        let ran = AtomicBool::new(false);
        let inner = self.book(seat, &ran).await?;
        Ok((lockattr::fencing_token().await.unwrap(), inner))
    }
}

/// Runs for 5 s under a fixed 300 ms lease.
#[distributed_lock(key = "job:<id>", locker = locker, lease = "300ms", renew = false)]
async fn overrun(locker: &Locker, id: u32, finished: &AtomicBool) -> Result<(), AppError> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    finished.store(true, Ordering::SeqCst);
    Ok(())
}

pub async fn the_attribute_locks_and_converts_errors(b: &impl Backend) {
    let seats = Seats {
        locker: b.locker().await,
    };
    let other = b.locker().await;
    let ran = AtomicBool::new(false);
    let token = seats.book(7, &ran).await.expect("booked");
    assert!(ran.load(Ordering::SeqCst) && token > 0);
    assert_free(&other, "seat:7").await;
    // The body's own error comes back as it is, and the lock is released on that path too.
    let r = seats.book(0, &ran).await;
    assert!(matches!(r, Err(AppError::SoldOut)), "{r:?}");
    assert_free(&other, "seat:0").await;
    let (outer, inner) = seats.book_twice(8).await.expect("re-entry");
    assert_eq!(
        outer, inner,
        "the nested call runs under the outer acquisition"
    );
    assert_free(&other, "seat:8").await;
}

pub async fn the_attribute_times_out_before_the_body(b: &impl Backend) {
    let seats = Seats {
        locker: b.locker().await,
    };
    let other = b.locker().await;
    let holder = other.lock("seat:7").await.unwrap();
    let ran = AtomicBool::new(false);
    let started = Instant::now();
    let r = seats.book(7, &ran).await;
    match r {
        Err(AppError::Lock(Error::Timeout { ref key, waited })) => {
            assert_eq!(key, "seat:7");
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
        }
        other => panic!("expected a Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!ran.load(Ordering::SeqCst), "the body did not run");
    assert!(holder.is_held());
    assert_eq!(
        info(&other, "seat:7").await.map(|i| i.local_waiters),
        Some(0)
    );
    holder.release().await.unwrap();
    assert_free(&seats.locker, "seat:7").await;
}

pub async fn the_attribute_reports_a_loss(b: &impl Backend) {
    let (a, other) = (b.locker().await, b.locker().await);
    let finished = AtomicBool::new(false);
    let started = Instant::now();
    let r = overrun(&a, 1, &finished).await;
    assert!(
        matches!(r, Err(AppError::Lock(Error::Lost { ref key })) if key == "job:1"),
        "{r:?}"
    );
    assert!(!finished.load(Ordering::SeqCst), "the body was cancelled");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1300),
        "cancelled only after {took:?}"
    );
    assert_freed_within(&other, "job:1", Duration::from_secs(2)).await;
}
