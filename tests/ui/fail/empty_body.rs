use lockattr::distributed_lock;

// An empty body is reported as the body's `()`, as without the attribute, not at generated code.
#[distributed_lock(key = "k")]
async fn empty() -> Result<u32, lockattr::Error> {}

fn main() {}
