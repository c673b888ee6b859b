use lockattr::distributed_lock;

#[distributed_lock(key = "party:<party_id")]
async fn unclosed(party_id: i64) -> Result<(), lockattr::Error> {
    let _ = party_id;
    Ok(())
}

#[distributed_lock(key = "a<b<c>")]
async fn nested(c: i64) -> Result<(), lockattr::Error> {
    let _ = c;
    Ok(())
}

fn main() {}
