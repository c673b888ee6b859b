//! Command-line options of `party-demo`.

use std::time::Duration;

use super::redis::DEFAULT_REDIS_URL;

/// The default pause between the capacity check and the insert, in milliseconds.
pub const DEFAULT_THINK_MS: u64 = 0;

/// `party-demo --help`.
pub const USAGE: &str = "\
party-demo: the party scenario with and without #[distributed_lock]

Starts service processes sharing one database, creates a party, fires concurrent join
requests at all of them, once without the lock and once with it, and reports how many got in.

USAGE:
    cargo run --release -p lockattr-examples --bin party-demo -- [OPTIONS]

OPTIONS:
    --capacity <N>       party capacity [default: 8]
    --requests <N>       join requests per run, spread over the processes [default: 200]
    --processes <N>      service processes [default: 2]
    --think-ms <MS>      simulated service work between the capacity check and the insert,
                         to widen the race window [default: 0, none: the race fires anyway]
    --redis-url <URL>    Redis for the locks [default: $REDIS_URL, else redis://127.0.0.1:6379];
                         if it does not answer and redis-server is on PATH, a throwaway one is
                         started
    --database-url <URL> postgres://... to use PostgreSQL [default: $DATABASE_URL, else a
                         temporary SQLite file]
    -h, --help           this text

EXIT STATUS:
    0 the locked run stayed within capacity; 1 it overbooked or failed; 2 no Redis or bad usage
";

/// Parsed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// Party capacity.
    pub capacity: i64,
    /// Join requests per run.
    pub requests: usize,
    /// Service processes.
    pub processes: usize,
    /// Pause between check and insert.
    pub think: Duration,
    /// Redis URL.
    pub redis_url: String,
    /// `Some` to use PostgreSQL (or a given SQLite file).
    pub database_url: Option<String>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the demo.
    Run(DemoOptions),
    /// Print [`USAGE`].
    Help,
}

impl DemoOptions {
    /// Parses the arguments (without the program name). `env` looks up `REDIS_URL` and
    /// `DATABASE_URL`, which the options override.
    ///
    /// # Errors
    /// A message naming the bad argument.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Command, String> {
        let mut options = DemoOptions {
            capacity: 8,
            requests: 200,
            processes: 2,
            think: Duration::from_millis(DEFAULT_THINK_MS),
            redis_url: env("REDIS_URL")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()),
            database_url: env("DATABASE_URL").filter(|s| !s.is_empty()),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Command::Help);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => {
                    (name.to_owned(), Some(value.to_owned()))
                }
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("`{name}` needs a value"))
            };
            match name.as_str() {
                "--capacity" => options.capacity = number(&name, &value()?, 0)?,
                "--requests" => options.requests = number(&name, &value()?, 1)?,
                "--processes" => options.processes = number(&name, &value()?, 1)?,
                "--think-ms" => options.think = Duration::from_millis(number(&name, &value()?, 0)?),
                "--redis-url" => options.redis_url = value()?,
                "--database-url" => options.database_url = Some(value()?),
                _ => {
                    return Err(format!(
                        "unknown argument `{arg}`; expected one of `--capacity`, `--requests`, \
                         `--processes`, `--think-ms`, `--redis-url`, `--database-url`, `--help`"
                    ))
                }
            }
        }
        Ok(Command::Run(options))
    }
}

fn number<T>(name: &str, value: &str, min: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match value.parse::<T>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "`{name}` takes a whole number of at least {min}, not `{value}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        DemoOptions::parse(args.iter().map(|s| (*s).to_owned()), |_| None)
    }

    #[test]
    fn defaults_are_the_seed_scenario() {
        let Ok(Command::Run(o)) = parse(&[]) else {
            panic!("no options parse")
        };
        assert_eq!((o.capacity, o.requests, o.processes), (8, 200, 2));
        assert_eq!(o.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(o.database_url, None);
    }

    #[test]
    fn options_and_env() {
        let got = DemoOptions::parse(
            [
                "--capacity",
                "5",
                "--requests=60",
                "--processes",
                "3",
                "--think-ms",
                "0",
            ]
            .map(String::from),
            |name| (name == "REDIS_URL").then(|| "redis://10.0.0.1:7000".to_owned()),
        );
        let Ok(Command::Run(o)) = got else {
            panic!("{got:?}")
        };
        assert_eq!((o.capacity, o.requests, o.processes), (5, 60, 3));
        assert_eq!(o.think, Duration::ZERO);
        assert_eq!(o.redis_url, "redis://10.0.0.1:7000");
        assert_eq!(parse(&["--requests", "1", "-h"]), Ok(Command::Help));
    }

    #[test]
    fn bad_arguments_are_named() {
        let err = parse(&["--processes", "0"]).unwrap_err();
        assert!(
            err.contains("`--processes`") && err.contains("at least 1"),
            "{err}"
        );
        let err = parse(&["--capacity"]).unwrap_err();
        assert!(err.contains("needs a value"), "{err}");
        let err = parse(&["--timeout", "3"]).unwrap_err();
        assert!(err.contains("unknown argument `--timeout`"), "{err}");
        assert!(parse(&["--requests", "lots"]).is_err());
    }
}
