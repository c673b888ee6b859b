use lockattr::distributed_lock;

#[distributed_lock(wait = "1s")]
async fn no_key() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock]
async fn no_arguments() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
