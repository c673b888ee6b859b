use lockattr::distributed_lock;

#[distributed_lock(key = "party:<id>")]
async fn returns_a_number(id: i64) -> i64 {
    id
}

#[distributed_lock(key = "opt:<id>")]
async fn returns_an_option(id: i64) -> Option<i64> {
    Some(id)
}

fn main() {}
