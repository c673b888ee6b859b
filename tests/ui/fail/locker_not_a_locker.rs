use lockattr::distributed_lock;

pub struct Service {
    url: String,
}

impl Service {
    #[distributed_lock(key = "k", locker = self.url)]
    async fn wrong_locker(&self) -> Result<(), lockattr::Error> {
        Ok(())
    }
}

fn main() {}
