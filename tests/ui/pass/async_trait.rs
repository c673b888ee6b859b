//! `#[async_trait]` impls: the method has already been rewritten by `async_trait` when
//! `#[distributed_lock]` sees it. Receivers, pattern arguments and `locker = self..` work.

#![deny(warnings)]

use std::sync::Arc;

use async_trait::async_trait;
use lockattr::{distributed_lock, Locker};

pub struct Pair(pub i64, pub i64);

#[async_trait]
pub trait Parties {
    async fn join(&self, party_id: i64, name: &str) -> Result<String, lockattr::Error>;
    async fn pair(&self, pair: Pair) -> Result<i64, lockattr::Error>;
    async fn mutate(&mut self, n: u8) -> anyhow::Result<u8>;
    async fn shared(self: Arc<Self>) -> Result<(), lockattr::Error>;
}

pub struct Service {
    locker: Locker,
    shard: u8,
}

#[async_trait]
impl Parties for Service {
    #[distributed_lock(key = "party:<party_id>:<self.shard>", locker = self.locker)]
    async fn join(&self, party_id: i64, name: &str) -> Result<String, lockattr::Error> {
        if party_id < 0 {
            return Ok(String::new());
        }
        Ok(format!("{name}@{}", self.shard))
    }

    #[distributed_lock(key = "pair:<a>:<b>")]
    async fn pair(&self, Pair(a, b): Pair) -> Result<i64, lockattr::Error> {
        Ok(a + b)
    }

    #[distributed_lock(key = "mutate:<n>", locker = self.locker.clone())]
    async fn mutate(&mut self, n: u8) -> anyhow::Result<u8> {
        self.shard = self
            .shard
            .checked_add(n)
            .ok_or_else(|| anyhow::anyhow!("overflow"))?;
        Ok(self.shard)
    }

    #[distributed_lock(key = "shared:<self.shard>", locker = self.locker)]
    async fn shared(self: Arc<Self>) -> Result<(), lockattr::Error> {
        Ok(())
    }
}

fn main() {}
