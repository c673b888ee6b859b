//! Command line of `party-demo`: the demo's options, and `serve`, which runs one service
//! process (the demo starts its processes by re-running its own binary that way).

use std::time::Duration;

use clap::{Parser, Subcommand};

use super::redis::DEFAULT_REDIS_URL;
use crate::party::service_cli::ServiceOptions;

/// `party-demo`'s command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "party-demo",
    about = "The party scenario with and without #[distributed_lock]: starts service processes \
        sharing one database, creates a party, fires concurrent join requests at all of them, \
        once without the lock and once with it, and reports how many got in",
    after_help = "Exit status: 0 the locked run stayed within capacity; 1 it overbooked or \
        failed; 2 no Redis, or bad usage.",
    args_conflicts_with_subcommands = true
)]
pub struct DemoCli {
    /// Something other than the demo itself.
    #[command(subcommand)]
    pub command: Option<DemoCommand>,
    /// The demo's options.
    #[command(flatten)]
    pub options: DemoOptions,
}

/// `party-demo <COMMAND>`.
#[derive(Debug, Clone, Subcommand)]
pub enum DemoCommand {
    /// Run one party service process (what the demo starts its processes with; the same as
    /// the `party-service` binary)
    Serve(ServiceOptions),
}

/// The demo's options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DemoOptions {
    /// Party capacity
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = non_negative)]
    pub capacity: i64,
    /// Join requests per run, spread over the processes
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = at_least_one)]
    pub requests: usize,
    /// Service processes
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = at_least_one)]
    pub processes: usize,
    /// Simulated service work between the capacity check and the insert, in milliseconds, to
    /// widen the race window (0: none; the race fires anyway)
    #[arg(long = "think-ms", value_name = "MS", default_value = "0", value_parser = millis)]
    pub think: Duration,
    /// Redis for the locks; if it does not answer and redis-server is on PATH, a throwaway
    /// one is started
    #[arg(long, value_name = "URL", env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Take the locks on a Redis Cluster instead, given by the URLs of some of its nodes
    /// (comma-separated; one reachable node is enough); --redis-url is then not used
    #[arg(long, value_name = "URL,URL,..", value_delimiter = ',', num_args = 1)]
    pub redis_cluster: Vec<String>,
    /// postgres://... to use PostgreSQL [default: a temporary SQLite file]
    #[arg(long, value_name = "URL", env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

impl DemoCli {
    /// Parses the process's arguments (exiting with status 2 on bad usage, 0 after `--help`).
    /// An empty `REDIS_URL` or `DATABASE_URL` counts as unset.
    pub fn from_env() -> DemoCli {
        let mut cli = DemoCli::parse();
        let o = &mut cli.options;
        if o.redis_url.is_empty() {
            DEFAULT_REDIS_URL.clone_into(&mut o.redis_url);
        }
        o.database_url = o.database_url.take().filter(|url| !url.is_empty());
        o.redis_cluster.retain(|url| !url.is_empty());
        cli
    }
}

impl DemoOptions {
    /// The Redis Cluster's seed URLs, if the demo runs on one.
    pub fn cluster(&self) -> Option<&[String]> {
        (!self.redis_cluster.is_empty()).then_some(self.redis_cluster.as_slice())
    }
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("takes a whole number of at least 1, not `{value}`")),
    }
}

fn non_negative(value: &str) -> Result<i64, String> {
    match value.parse() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(format!("takes a whole number of at least 0, not `{value}`")),
    }
}

/// Milliseconds as a [`Duration`].
///
/// # Errors
/// When `value` is not a whole number of milliseconds.
pub fn millis(value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("takes whole milliseconds, not `{value}`"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<DemoCli, clap::Error> {
        DemoCli::try_parse_from(std::iter::once("party-demo").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        DemoCli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_seed_scenario() {
        let o = parse(&[]).expect("no options parse").options;
        assert_eq!((o.capacity, o.requests, o.processes), (8, 200, 2));
        assert_eq!(o.think, Duration::ZERO);
        if std::env::var_os("REDIS_URL").is_none() {
            assert_eq!(o.redis_url, "redis://127.0.0.1:6379");
        }
    }

    #[test]
    fn options_override_the_defaults() {
        let cli = parse(&[
            "--capacity",
            "5",
            "--requests=60",
            "--processes",
            "3",
            "--think-ms",
            "4",
            "--redis-url",
            "redis://10.0.0.1:7000",
        ])
        .expect("parses");
        let o = cli.options;
        assert_eq!((o.capacity, o.requests, o.processes), (5, 60, 3));
        assert_eq!(o.think, Duration::from_millis(4));
        assert_eq!(o.redis_url, "redis://10.0.0.1:7000");
        assert!(cli.command.is_none());
        assert_eq!(
            o.cluster(),
            None,
            "one server unless --redis-cluster is given"
        );
    }

    #[test]
    fn a_cluster_is_given_by_its_seed_urls() {
        let o = parse(&[
            "--redis-cluster",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        ])
        .expect("parses")
        .options;
        let seeds = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"].map(String::from);
        assert_eq!(o.cluster(), Some(&seeds[..]));
        let o = parse(&["--redis-cluster=redis://127.0.0.1:7000"])
            .expect("parses")
            .options;
        assert_eq!(o.cluster().map(<[String]>::len), Some(1));
        assert!(
            parse(&["--redis-cluster"]).is_err(),
            "needs at least one URL"
        );
    }

    #[test]
    fn serve_is_the_service_command_line() {
        let cli = parse(&["serve", "--bind", "127.0.0.1:0", "--think-ms", "2"]).expect("parses");
        let Some(DemoCommand::Serve(s)) = cli.command else {
            panic!("not `serve`: {cli:?}")
        };
        assert_eq!(s.bind.port(), 0);
        assert_eq!(s.think, Duration::from_millis(2));
        // The demo's options do not mix with a subcommand.
        assert!(parse(&["--capacity", "3", "serve"]).is_err());
    }

    #[test]
    fn bad_arguments_are_named() {
        let err = parse(&["--processes", "0"]).unwrap_err().to_string();
        assert!(
            err.contains("--processes") && err.contains("at least 1"),
            "{err}"
        );
        let err = parse(&["--capacity"]).unwrap_err().to_string();
        assert!(err.contains("--capacity"), "{err}");
        let err = parse(&["--timeout", "3"]).unwrap_err().to_string();
        assert!(err.contains("--timeout"), "{err}");
        let err = parse(&["--think-ms", "lots"]).unwrap_err().to_string();
        assert!(err.contains("lots"), "{err}");
    }
}
