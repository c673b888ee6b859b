//! The generated future is `Send` whenever the body's is: annotated functions can be spawned.

#![deny(warnings)]

use std::sync::Arc;

use lockattr::distributed_lock;
use tokio::sync::Mutex;

#[distributed_lock(key = "spawn:<id>")]
async fn holds_a_tokio_guard(
    id: u32,
    state: Arc<Mutex<Vec<u32>>>,
) -> Result<usize, lockattr::Error> {
    let mut guard = state.lock().await;
    guard.push(id);
    tokio::task::yield_now().await;
    Ok(guard.len())
}

#[distributed_lock(key = "local")]
async fn not_send_inside() -> Result<u32, lockattr::Error> {
    // A non-`Send` value that is dropped before any `.await` keeps the future `Send`.
    let n = {
        let rc = std::rc::Rc::new(5);
        *rc
    };
    tokio::task::yield_now().await;
    Ok(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let state = Arc::new(Mutex::new(Vec::new()));
    // Spawned but not awaited: with no default locker installed it would return
    // `Err(NotConfigured)`, which is fine, but `main` only needs the types to check.
    let a = tokio::spawn(holds_a_tokio_guard(1, state));
    let b = tokio::spawn(not_send_inside());
    assert!(matches!(
        a.await.unwrap(),
        Err(lockattr::Error::NotConfigured)
    ));
    assert!(matches!(
        b.await.unwrap(),
        Err(lockattr::Error::NotConfigured)
    ));
}
