//! `async fn` in trait impls (native), including traits that require `Send` futures, and a
//! default method in the trait itself.

#![deny(warnings)]

use std::future::Future;

use lockattr::distributed_lock;

trait Parties {
    async fn join(&self, party_id: i64) -> Result<u32, lockattr::Error>;

    #[distributed_lock(key = "default:<party_id>")]
    async fn leave(&self, party_id: i64) -> Result<(), lockattr::Error> {
        let _ = party_id;
        Ok(())
    }
}

/// A trait whose futures must be `Send` (what `tokio::spawn` and most servers need).
trait SendParties: Sync {
    fn join(&self, party_id: i64) -> impl Future<Output = Result<u32, lockattr::Error>> + Send;
}

pub struct Service {
    size: u32,
}

impl Parties for Service {
    #[distributed_lock(key = "party:<party_id>")]
    async fn join(&self, party_id: i64) -> Result<u32, lockattr::Error> {
        let _ = party_id;
        Ok(self.size)
    }
}

impl SendParties for Service {
    #[distributed_lock(key = "party:<party_id>", wait = "1s")]
    async fn join(&self, party_id: i64) -> Result<u32, lockattr::Error> {
        let _ = party_id;
        Ok(self.size + 1)
    }
}

fn spawnable<S: SendParties + Send + Sync + 'static>(service: std::sync::Arc<S>) {
    // Only type-checked: the future is `Send + 'static`, as `tokio::spawn` requires.
    fn assert_spawnable<F: Future + Send + 'static>(_: F) {}
    assert_spawnable(async move { service.join(1).await });
}

fn main() {
    let service = std::sync::Arc::new(Service { size: 1 });
    spawnable(service.clone());
    let _ = Parties::join(&*service, 1);
    let _ = Parties::leave(&*service, 1);
}
