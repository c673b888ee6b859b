//! Stacking with `#[tracing::instrument]`, in both orders.

#![deny(warnings)]

use lockattr::distributed_lock;

// Lock first, then the span: the span covers the wait for the lock.
#[distributed_lock(key = "outer:<id>")]
#[tracing::instrument(err)]
pub async fn lock_then_span(id: u64) -> Result<u64, lockattr::Error> {
    tracing::info!("inside");
    Ok(id)
}

// Span first, then the lock: the span starts once the lock is held.
#[tracing::instrument(skip(payload), fields(len = payload.len()))]
#[distributed_lock(key = "inner:<id>", lease = "10s")]
pub async fn span_then_lock(id: u64, payload: Vec<u8>) -> anyhow::Result<usize> {
    Ok(payload.len() + usize::try_from(id)?)
}

pub struct Svc;

impl Svc {
    #[tracing::instrument(skip(self))]
    #[distributed_lock(key = "svc:<id>")]
    pub async fn method(&self, id: u64) -> Result<(), lockattr::Error> {
        let _ = id;
        Ok(())
    }
}

fn assert_send<F: std::future::Future + Send>(_: &F) {}

fn main() {
    assert_send(&lock_then_span(1));
    assert_send(&span_then_lock(1, vec![]));
    assert_send(&Svc.method(1));
}
