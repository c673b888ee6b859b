use lockattr::distributed_lock;

#[distributed_lock(key = "a", wait = "5sec", lease = "100")]
async fn units() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock(key = "b", wait = "1d", lease = "10us")]
async fn unsupported_units() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
