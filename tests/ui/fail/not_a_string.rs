use lockattr::distributed_lock;

const KEY: &str = "k";

#[distributed_lock(key = 42)]
async fn integer_key() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock(key = KEY)]
async fn computed_key() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock(key = "k", wait = 5, lease = true, renew = "yes")]
async fn bad_values() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock(key = "k", locker = "redis://127.0.0.1")]
async fn url_as_locker() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
