//! The service process's command line, shared by `party-service` and `party-demo serve`.
//!
//! The demo starts its service processes by re-running its own executable with `serve`, so
//! `cargo run --bin party-demo` (which builds that one binary) is all a fresh clone needs. The
//! `party-service` binary is the same entry point under its own name, for running the service
//! by hand.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use super::http::{serve, ServiceConfig};

/// `party-service --help` (also `party-demo serve --help`).
pub const USAGE: &str = "\
party-service: the party HTTP service (POST /parties, POST /parties/{id}/participants[?lock=false], GET /parties/{id})

OPTIONS:
    --bind <ADDR>            listen address [default: 127.0.0.1:8080]; port 0 picks a free one
    --database-url <URL>     postgres://..., sqlite:... or a SQLite file [default: $DATABASE_URL, else sqlite:party.db]
    --redis-url <URL>        Redis for the locks [default: $REDIS_URL, else redis://127.0.0.1:6379]
    --lock-namespace <NS>    prefix of the lock keys [default: lock]
    --think-ms <MS>          simulated work between the capacity check and the insert [default: 0]
    --exit-on-stdin-eof      exit when stdin closes (used by party-demo)
    -h, --help               this text
";

fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<ServiceConfig>, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
    let mut config = ServiceConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
        database_url: env("DATABASE_URL").unwrap_or_else(|| "sqlite:party.db".to_owned()),
        redis_url: env("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
        lock_namespace: "lock".to_owned(),
        think: Duration::ZERO,
        exit_on_stdin_eof: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("`{arg}` needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--bind" => {
                let v = value()?;
                config.bind = v
                    .parse()
                    .map_err(|_| format!("bad `--bind` address `{v}`"))?;
            }
            "--database-url" => config.database_url = value()?,
            "--redis-url" => config.redis_url = value()?,
            "--lock-namespace" => config.lock_namespace = value()?,
            "--think-ms" => {
                let v = value()?;
                let ms = v
                    .parse()
                    .map_err(|_| format!("`--think-ms` takes milliseconds, not `{v}`"))?;
                config.think = Duration::from_millis(ms);
            }
            "--exit-on-stdin-eof" => config.exit_on_stdin_eof = true,
            _ => return Err(format!("unknown argument `{arg}`")),
        }
    }
    Ok(Some(config))
}

/// Runs the service with `args` (the options, without the program name or `serve`) until
/// SIGINT/SIGTERM. `program` names the process in error messages.
pub async fn main(program: &str, args: impl Iterator<Item = String>) -> ExitCode {
    let config = match parse(args) {
        Ok(Some(config)) => config,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{program}: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // The demo sends the log to a file: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
