use lockattr::distributed_lock;

#[distributed_lock(key = "k")]
struct Party;

fn main() {}
