//! `party-demo`: the party scenario with and without `#[distributed_lock]`, in one command.
//!
//! ```text
//! cargo run --release -p lockattr-examples --bin party-demo [-- --capacity 8 --requests 200 --processes 2]
//! ```
//!
//! See [`lockattr_examples::party::demo`] and `--help`. `party-demo serve [OPTIONS]` runs one
//! service process instead (the demo starts its processes that way, by re-running itself).

use std::process::ExitCode;

use lockattr_examples::party::demo::options::{DemoCli, DemoCommand};
use lockattr_examples::party::demo::{progress, run_demo};
use lockattr_examples::party::service_cli;

#[tokio::main]
async fn main() -> ExitCode {
    // Bad usage exits with status 2 (clap's), like "no Redis"; `--help` with 0.
    let cli = DemoCli::from_env();
    if let Some(DemoCommand::Serve(options)) = cli.command {
        return service_cli::run("party-demo serve", options).await;
    }
    // Ctrl-C drops the demo's future, and with it every process and file it owns (their `Drop`
    // stops or removes them) before `main` returns.
    tokio::select! {
        code = run_demo(cli.options) => code,
        _ = tokio::signal::ctrl_c() => {
            progress("interrupted; stopped the processes it started");
            ExitCode::from(130)
        }
    }
}
