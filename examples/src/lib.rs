//! Runnable examples for `lockattr`.
//!
//! - [`party`]: the party service, the project's main demo. Two service processes, one
//!   database, 200 concurrent joins for a party of capacity 8: overbooked without the lock,
//!   exactly full with `#[distributed_lock]` around the join. Run it with
//!   `cargo run --release -p lockattr-examples --bin party-demo`.

pub mod party;
