//! Methods: `&self`, `&mut self`, `self: Arc<Self>`, `self` by value, `<self.field>`, and
//! `locker = ..` reading a field of `self` (plain, behind `Arc`, behind a reference).

#![deny(warnings)]

use std::sync::Arc;

use lockattr::{distributed_lock, Locker};

pub struct Service {
    locker: Locker,
    shared: Arc<Locker>,
    shard: u16,
    count: u64,
}

pub struct Borrowing<'a> {
    locker: &'a Locker,
    name: &'a str,
}

impl Service {
    #[distributed_lock(key = "party:<party_id>", locker = self.locker)]
    pub async fn by_ref(&self, party_id: i64) -> Result<u64, lockattr::Error> {
        Ok(self.count + party_id.unsigned_abs())
    }

    #[distributed_lock(key = "count:<self.shard>", locker = self.shared)]
    pub async fn by_mut(&mut self) -> Result<u64, lockattr::Error> {
        self.count += 1;
        Ok(self.count)
    }

    #[distributed_lock(key = "arc:<self.shard>:<n>", locker = self.locker)]
    pub async fn by_arc(self: Arc<Self>, n: u8) -> Result<Arc<Self>, lockattr::Error> {
        let _ = n;
        Ok(self)
    }

    #[distributed_lock(key = "owned:<self.shard>", locker = &self.locker)]
    pub async fn by_value(self) -> Result<Self, lockattr::Error> {
        Ok(self)
    }

    /// An associated function without `self`, using the process default locker.
    #[distributed_lock(key = "assoc:<id>")]
    pub async fn associated(id: u32) -> Result<u32, lockattr::Error> {
        Ok(id)
    }
}

impl<'a> Borrowing<'a> {
    #[distributed_lock(key = "borrowed:<self.name>", locker = self.locker)]
    pub async fn run(&self) -> Result<&'a str, lockattr::Error> {
        Ok(self.name)
    }
}

fn assert_send<F: std::future::Future + Send>(_: &F) {}

/// Type-level checks only: building a `Locker` needs Redis, so this is compiled, never run.
#[allow(dead_code)]
fn futures_are_send(
    by_ref: &Service,
    by_mut: &mut Service,
    by_arc: Arc<Service>,
    by_value: Service,
    borrowing: &Borrowing<'static>,
) {
    assert_send(&by_ref.by_ref(1));
    assert_send(&by_mut.by_mut());
    assert_send(&by_arc.by_arc(1));
    assert_send(&by_value.by_value());
    assert_send(&Service::associated(1));
    assert_send(&borrowing.run());
}

fn main() {}
