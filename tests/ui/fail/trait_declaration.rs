use lockattr::distributed_lock;

trait Parties {
    #[distributed_lock(key = "party:<id>")]
    async fn join(&self, id: i64) -> Result<(), lockattr::Error>;
}

fn main() {}
