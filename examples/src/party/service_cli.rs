//! The service process's command line, shared by `party-service` and `party-demo serve`.
//!
//! The demo starts its service processes by re-running its own executable with `serve`, so
//! `cargo run --bin party-demo` (which builds that one binary) is all a fresh clone needs. The
//! `party-service` binary is the same entry point under its own name, for running the service
//! by hand.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use super::demo::options::millis;
use super::demo::redis::{RedisTarget, DEFAULT_REDIS_URL};
use super::http::{serve, ServiceConfig};

/// The database a service started by hand uses by default.
const DEFAULT_DATABASE_URL: &str = "sqlite:party.db";

/// The service's options (`party-service --help`, `party-demo serve --help`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "party-service",
    about = "The party HTTP service: POST /parties, POST /parties/{id}/participants[?lock=false], \
        GET /parties/{id}"
)]
pub struct ServiceOptions {
    /// Listen address; port 0 picks a free one (printed on stdout)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// postgres://..., sqlite:... or a SQLite file
    #[arg(
        long,
        value_name = "URL",
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL
    )]
    pub database_url: String,
    /// Redis for the locks
    #[arg(long, value_name = "URL", env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Take the locks on a Redis Cluster instead (comma-separated URLs of some of its nodes);
    /// --redis-url is then not used
    #[arg(long, value_name = "URL,URL,..", value_delimiter = ',', num_args = 1)]
    pub redis_cluster: Vec<String>,
    /// Prefix of the lock keys
    #[arg(long, value_name = "NS", default_value = "lock")]
    pub lock_namespace: String,
    /// Simulated work between the capacity check and the insert, in milliseconds
    #[arg(long = "think-ms", value_name = "MS", default_value = "0", value_parser = millis)]
    pub think: Duration,
    /// Exit when stdin closes (party-demo starts its services so)
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
}

impl ServiceOptions {
    /// The service's configuration; an empty `DATABASE_URL` or `REDIS_URL` counts as unset.
    fn into_config(self) -> ServiceConfig {
        let or = |value: String, default: &str| {
            if value.is_empty() {
                default.to_owned()
            } else {
                value
            }
        };
        let cluster: Vec<String> = self
            .redis_cluster
            .into_iter()
            .filter(|url| !url.is_empty())
            .collect();
        let redis = if cluster.is_empty() {
            RedisTarget::Server(or(self.redis_url, DEFAULT_REDIS_URL))
        } else {
            RedisTarget::Cluster(cluster)
        };
        ServiceConfig {
            bind: self.bind,
            database_url: or(self.database_url, DEFAULT_DATABASE_URL),
            redis,
            lock_namespace: self.lock_namespace,
            think: self.think,
            exit_on_stdin_eof: self.exit_on_stdin_eof,
        }
    }
}

/// Runs the service until SIGINT/SIGTERM (or stdin EOF, with `--exit-on-stdin-eof`).
/// `program` names the process in error messages.
pub async fn run(program: &str, options: ServiceOptions) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // A line when each span ends: a join's `join` span, and inside it lockattr's
        // `lock.acquire` (how long it waited) and `lock.held` (how long it held the lock), with
        // their key, fencing token and outcome. `RUST_LOG=info,lockattr=warn` leaves the lock
        // spans out.
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        // The demo sends the log to a file: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match serve(options.into_config()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        ServiceOptions::command().debug_assert();
    }

    #[test]
    fn options_parse() {
        let o = ServiceOptions::try_parse_from([
            "party-service",
            "--bind",
            "127.0.0.1:0",
            "--lock-namespace",
            "ns",
            "--exit-on-stdin-eof",
        ])
        .expect("parses");
        assert_eq!(o.bind, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(o.lock_namespace, "ns");
        assert!(o.exit_on_stdin_eof);
        assert_eq!(o.think, Duration::ZERO);
        let config = ServiceOptions::try_parse_from([
            "party-service",
            "--redis-cluster",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        ])
        .expect("parses")
        .into_config();
        assert_eq!(
            config.redis,
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".to_owned(),
                "redis://127.0.0.1:7001".to_owned()
            ])
        );
        let err = ServiceOptions::try_parse_from(["party-service", "--bind", "nowhere"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nowhere"), "{err}");
    }
}
