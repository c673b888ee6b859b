use lockattr::distributed_lock;

#[distributed_lock(key = "a", timeout = "5s", ttl = "10s")]
async fn redisson_names() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock(
    key = "b",
    lease_time = "10s",
    wait_time = "1s",
    lese = "1s",
    fairness = true
)]
async fn more_names() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
