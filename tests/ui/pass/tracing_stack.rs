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

// Under `#[async_trait]`, in both orders. With the span on top, `#[tracing::instrument]`
// rewrites what `#[async_trait]` made of the method before `#[distributed_lock]` sees it.
#[async_trait::async_trait]
pub trait Traced {
    async fn lock_then_span(&self, id: u64) -> Result<u64, lockattr::Error>;
    async fn span_then_lock(&self, id: u64) -> Result<u64, lockattr::Error>;
    async fn span_with_err_then_lock(&self, id: u64) -> Result<u64, lockattr::Error>;
}

#[async_trait::async_trait]
impl Traced for Svc {
    #[distributed_lock(key = "trait_outer:<id>")]
    #[tracing::instrument(skip(self))]
    async fn lock_then_span(&self, id: u64) -> Result<u64, lockattr::Error> {
        Ok(id)
    }

    #[tracing::instrument(skip(self))]
    #[distributed_lock(key = "trait_inner:<id>")]
    async fn span_then_lock(&self, id: u64) -> Result<u64, lockattr::Error> {
        Ok(id)
    }

    #[tracing::instrument(skip(self), err)]
    #[distributed_lock(key = "trait_inner_err:<id>")]
    async fn span_with_err_then_lock(&self, id: u64) -> Result<u64, lockattr::Error> {
        Ok(id)
    }
}

fn assert_send<F: std::future::Future + Send>(_: &F) {}

fn main() {
    assert_send(&lock_then_span(1));
    assert_send(&span_then_lock(1, vec![]));
    assert_send(&Svc.method(1));
    assert_send(&Traced::lock_then_span(&Svc, 1));
    assert_send(&Traced::span_then_lock(&Svc, 1));
    assert_send(&Traced::span_with_err_then_lock(&Svc, 1));
}
