use lockattr::distributed_lock;

#[distributed_lock(key = "k")]
const fn constant() -> Result<u8, lockattr::Error> {
    Ok(1)
}

fn main() {
    let _ = constant();
}
