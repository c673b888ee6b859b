use lockattr::distributed_lock;

const WAIT_SECS: u64 = 5;

#[distributed_lock(key = "k", wait = WAIT_SECS)]
async fn not_a_duration() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
