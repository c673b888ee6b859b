use lockattr::distributed_lock;

pub struct Party {
    pub id: i64,
}

#[distributed_lock(key = "party:<party.idd>")]
async fn typo_in_field(party: Party) -> Result<(), lockattr::Error> {
    let _ = party.id;
    Ok(())
}

fn main() {}
