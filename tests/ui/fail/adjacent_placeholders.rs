use lockattr::distributed_lock;

// `(a, b) = (1, 23)` and `(12, 3)` would both render `p:123`: two resources, one lock.
#[distributed_lock(key = "p:<a><b>")]
async fn adjacent(a: u32, b: u32) -> Result<(), lockattr::Error> {
    let _ = (a, b);
    Ok(())
}

fn main() {}
