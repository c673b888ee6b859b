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

#[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
fn main() {
    // Type-level checks only: building a `Locker` needs Redis.
    if false {
        let service: Service = todo!();
        assert_send(&service.by_ref(1));
        let mut service: Service = todo!();
        assert_send(&service.by_mut());
        let service: Arc<Service> = todo!();
        assert_send(&service.by_arc(1));
        let service: Service = todo!();
        assert_send(&service.by_value());
        assert_send(&Service::associated(1));
        let b: Borrowing<'static> = todo!();
        assert_send(&b.run());
    }
}
