use lockattr::distributed_lock;

#[distributed_lock(key = "a", wait = "1.5s", lease = "-1s")]
async fn numbers() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock(key = "b", wait = "", lease = "30s1m")]
async fn shapes() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
