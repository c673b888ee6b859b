use lockattr::distributed_lock;

// A zero wait is fine (one attempt); a zero lease is not.
#[distributed_lock(key = "a", wait = "0s", lease = "0ms")]
async fn zero() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
