use lockattr::distributed_lock;

#[distributed_lock(key = "")]
async fn empty() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
