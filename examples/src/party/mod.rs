//! The party service: the failure this project exists for, end to end.
//!
//! A party has a capacity. Joining it is a check-then-act: read how many participants the party
//! has, and insert one more if there is room. Two service processes serving concurrent join
//! requests interleave those two statements, and the party ends up overbooked. A thread mutex
//! cannot help (the processes share nothing but the database); a Redis lock around the join can:
//!
//! ```ignore
//! #[distributed_lock(key = "party:<party_id>", wait = "100s", lease = "2s")]
//! pub async fn participate(&self, party_id: i64, name: String) -> Result<Participant, AppError> {
//!     self.participate_unlocked(party_id, name).await
//! }
//! ```
//!
//! The pieces:
//!
//! - [`db`]: storage, SQLite through `sqlx` by default (a file, WAL mode, shared by the
//!   processes) or PostgreSQL when the database URL starts with `postgres://`.
//! - [`service`]: [`PartyService`], whose `participate` is the annotated
//!   join and `participate_unlocked` the same check-then-insert without the lock.
//! - [`error`]: [`AppError`] and its HTTP mapping (404 no such party, 409 full,
//!   503 when the lock could not be had or was lost).
//! - [`http`]: the axum routes and [`serve`](http::serve), the service process.
//! - [`service_cli`]: the service's command line, run by `party-demo serve` (how the demo
//!   starts its processes) and by the `party-service` binary.
//! - [`demo`]: the driver behind the `party-demo` binary and the integration test: finds or
//!   starts Redis, starts the service processes, fires the joins and reports.
//!
//! The lock uses the process-wide default locker: [`http::serve`] builds a
//! [`lockattr::Locker`] and installs it with [`lockattr::set_default`] before it accepts
//! requests, so the attribute needs no `locker = ...` argument.

pub mod db;
pub mod demo;
pub mod error;
pub mod http;
pub mod service;
pub mod service_cli;

pub use error::AppError;
pub use service::{Participant, Party, PartyService, PartyView};
