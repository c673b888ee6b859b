use axum::extract::Path;
use lockattr::distributed_lock;

pub struct Service;

impl Service {
    // Every bad placeholder is reported, each with the arguments and a suggestion.
    #[distributed_lock(key = "party:<party>:<nmae>:<shard>")]
    pub async fn participate(&self, party_id: i64, name: String) -> Result<(), lockattr::Error> {
        let _ = (party_id, name);
        Ok(())
    }
}

#[distributed_lock(key = "user:<id>")]
async fn handler(Path(user_id): Path<u64>) -> Result<(), lockattr::Error> {
    let _ = user_id;
    Ok(())
}

#[distributed_lock(key = "local:<x>")]
async fn no_arguments() -> Result<(), lockattr::Error> {
    let x = 1;
    let _ = x;
    Ok(())
}

fn main() {}
