use lockattr::distributed_lock;

#[distributed_lock(key = "party:<self.id>")]
async fn free(id: i64) -> Result<(), lockattr::Error> {
    let _ = id;
    Ok(())
}

fn main() {}
