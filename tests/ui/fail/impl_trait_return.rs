use lockattr::distributed_lock;

#[distributed_lock(key = "k")]
async fn opaque() -> impl std::fmt::Debug {
    1
}

fn main() {}
