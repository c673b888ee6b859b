use lockattr::distributed_lock;

// A `?` in the body is checked against the declared return type, as without the attribute.
#[distributed_lock(key = "k")]
async fn wrong_error() -> Result<u32, lockattr::Error> {
    let n: u32 = "x".parse()?;
    Ok(n)
}

#[distributed_lock(key = "k")]
async fn wrong_ok_type() -> Result<u32, lockattr::Error> {
    Ok("not a number")
}

fn main() {}
