use lockattr::distributed_lock;

#[distributed_lock(key = "party:<>")]
async fn empty_placeholder(party_id: i64) -> Result<(), lockattr::Error> {
    let _ = party_id;
    Ok(())
}

#[distributed_lock(key = "party:<party id>")]
async fn not_an_identifier(party_id: i64) -> Result<(), lockattr::Error> {
    let _ = party_id;
    Ok(())
}

fn main() {}
