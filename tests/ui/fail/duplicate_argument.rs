use lockattr::distributed_lock;

#[distributed_lock(key = "a", wait = "1s", wait = "2s", key = "b")]
async fn twice() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
