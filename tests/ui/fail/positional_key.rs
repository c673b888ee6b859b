use lockattr::distributed_lock;

#[distributed_lock("party:<id>")]
async fn positional(id: u32) -> Result<(), lockattr::Error> {
    let _ = id;
    Ok(())
}

fn main() {}
