use lockattr::distributed_lock;

#[distributed_lock(key = "party:<id>")]
fn blocking(id: i64) -> Result<i64, lockattr::Error> {
    Ok(id)
}

fn main() {
    // The function is still emitted unchanged: this call reports nothing more.
    let _ = blocking(1);
}
