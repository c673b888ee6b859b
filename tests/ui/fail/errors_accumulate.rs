use lockattr::distributed_lock;

// Every problem is reported in one build, and callers see no secondary errors.
#[distributed_lock(key = "party:<party>:<<x>", wait = "5x", lease = "0s", ttl = "1s")]
fn everything_wrong(party_id: i64) -> Result<i64, lockattr::Error> {
    Ok(party_id)
}

fn main() {
    let _: Result<i64, lockattr::Error> = everything_wrong(1);
}
