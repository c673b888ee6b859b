use lockattr::distributed_lock;

#[distributed_lock(key = "party:<id>")]
async fn returns_unit(id: i64) {
    let _ = id;
}

fn main() {
    let _ = returns_unit(1);
}
