use lockattr::distributed_lock;

// The generated locals are hygienic: the body cannot see (or clobber) them.
#[distributed_lock(key = "party:<id>")]
async fn peek(id: i64) -> Result<(), lockattr::Error> {
    let _ = id;
    let _ = __lockattr_key;
    let _ = __lockattr_options;
    Ok(())
}

fn main() {}
