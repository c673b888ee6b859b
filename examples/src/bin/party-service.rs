//! `party-service`: one process of the party service (see `lockattr_examples::party::http`).
//!
//! ```text
//! party-service [--bind 127.0.0.1:8080] [--database-url URL] [--redis-url URL]
//!               [--lock-namespace NS] [--think-ms MS] [--exit-on-stdin-eof]
//! ```
//!
//! `DATABASE_URL` and `REDIS_URL` are read when the options are absent. The same service runs
//! as `party-demo serve`, which is how the demo starts its processes; this binary is the entry
//! point for running it by hand.

use std::process::ExitCode;

use clap::Parser as _;
use lockattr_examples::party::service_cli::{run, ServiceOptions};

#[tokio::main]
async fn main() -> ExitCode {
    run("party-service", ServiceOptions::parse()).await
}
