//! `party-demo`: the party scenario with and without `#[distributed_lock]`, in one command.
//!
//! ```text
//! cargo run --release -p lockattr-examples --bin party-demo [-- --capacity 8 --requests 200 --processes 2]
//! ```
//!
//! See [`lockattr_examples::party::demo`] and `--help`. `party-demo serve [OPTIONS]` runs one
//! service process instead (the demo starts its processes that way, by re-running itself).

use std::process::ExitCode;

use lockattr_examples::party::demo::options::{Command, DemoOptions, USAGE};
use lockattr_examples::party::demo::{progress, run_demo};
use lockattr_examples::party::service_cli;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("serve") {
        args.next();
        return service_cli::main("party-demo serve", args).await;
    }
    let options = match DemoOptions::parse(args, |name| std::env::var(name).ok()) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("party-demo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C drops the demo's future, and with it every process and file it owns (their `Drop`
    // stops or removes them) before `main` returns.
    tokio::select! {
        code = run_demo(options) => code,
        _ = tokio::signal::ctrl_c() => {
            progress("interrupted; stopped the processes it started");
            ExitCode::from(130)
        }
    }
}
