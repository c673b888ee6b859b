use lockattr::distributed_lock;

// Typos of names from other libraries get the same suggestion as the names themselves.
#[distributed_lock(key = "a", tiemout = "5s", tll = "10s", expirey = "1s", watchdgo = false)]
async fn misspelled() -> Result<(), lockattr::Error> {
    Ok(())
}

fn main() {}
