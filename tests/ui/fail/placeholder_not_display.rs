use lockattr::distributed_lock;

pub struct PartyId(pub i64);

pub struct Request {
    pub ids: Vec<u32>,
}

#[distributed_lock(key = "party:<party_id>")]
async fn no_display(party_id: PartyId) -> Result<(), lockattr::Error> {
    let _ = party_id.0;
    Ok(())
}

#[distributed_lock(key = "req:<req.ids>")]
async fn field_without_display(req: Request) -> Result<(), lockattr::Error> {
    let _ = req;
    Ok(())
}

fn main() {}
