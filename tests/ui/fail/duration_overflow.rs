use lockattr::distributed_lock;

#[distributed_lock(key = "a", wait = "99999999999999999999s", lease = "5124095576030432h")]
async fn huge() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
