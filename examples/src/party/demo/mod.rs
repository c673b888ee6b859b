//! The demo driver: the seed scenario, end to end, with and without the lock.
//!
//! [`run_demo`] is the `party-demo` binary: it finds Redis (or starts a throwaway one, or uses
//! the Redis Cluster given with `--redis-cluster`), then
//! [`run_scenario`] starts the service processes on free ports over one database, creates a
//! party, fires the joins at all processes at once, reads the party back, and does it again
//! with the lock. The integration test calls [`run_scenario`] directly.
//!
//! Everything the driver starts (service processes, a throwaway Redis, the SQLite file's
//! directory) is owned by a value whose `Drop` stops or removes it, so a normal exit, an error,
//! a panic and Ctrl-C (which drops the driver's future) all clean up.

pub mod client;
pub mod options;
pub mod processes;
pub mod redis;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::task::JoinSet;

use self::client::HttpClient;
use self::options::DemoOptions;
use self::processes::{ServiceArgs, ServiceCommand, ServiceProcess};
use self::redis::{RedisSource, RedisTarget};
use self::report::{format_duration, ModeReport, Outcome};
use super::db::Db;
use super::http::{NewParticipant, NewParty};
use super::service::{Party, PartyView};

/// The driver gives up on a join after this long (the lock's wait is 100 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Prints a progress line on stderr (the report goes to stdout).
pub fn progress(message: impl std::fmt::Display) {
    eprintln!("party-demo: {message}");
}

/// One run of the scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The party's capacity.
    pub capacity: i64,
    /// Join requests per mode, spread round-robin over the processes.
    pub requests: usize,
    /// How many service processes.
    pub processes: usize,
    /// Simulated work between the check and the insert.
    pub think: Duration,
    /// What runs one service process (`party-demo serve`, or the `party-service` binary).
    pub service: ServiceCommand,
    /// The Redis for the locks: one server or a cluster.
    pub redis: RedisTarget,
    /// `postgres://...`; `None` for a SQLite file in `work_dir`.
    pub database_url: Option<String>,
    /// Lock namespace, unique to this run so that runs sharing a Redis do not interfere.
    pub lock_namespace: String,
    /// Where the SQLite file and the service logs go.
    pub work_dir: PathBuf,
}

/// Both modes' results.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// `"SQLite"` or `"PostgreSQL"`.
    pub database: &'static str,
    /// The joins without the lock.
    pub unlocked: ModeReport,
    /// The joins under `#[distributed_lock]`.
    pub locked: ModeReport,
}

/// Runs the scenario: starts `processes` services over one database, then for each mode
/// (without the lock, then with it) creates a party and fires `requests` concurrent joins.
///
/// # Errors
/// When a service cannot be started or the party cannot be created or read back. Failed joins
/// are not errors: they are counted in the report.
pub async fn run_scenario(scenario: &Scenario) -> anyhow::Result<ScenarioReport> {
    if scenario.processes == 0 || scenario.requests == 0 {
        bail!("need at least one process and one request");
    }
    let database_url = match &scenario.database_url {
        Some(url) => url.clone(),
        None => sqlite_url(&scenario.work_dir.join("party.db")),
    };
    // The driver creates the schema before the services start, so they find it in place.
    let db = Db::connect(&database_url)
        .await
        .with_context(|| format!("open the database {database_url}"))?;
    db.ensure_schema().await.context("create the schema")?;
    progress(format_args!(
        "database: {} ({})",
        db.kind(),
        redact(&database_url)
    ));

    let args = ServiceArgs {
        database_url,
        redis: scenario.redis.clone(),
        lock_namespace: scenario.lock_namespace.clone(),
        think: scenario.think,
    };
    let mut services = Vec::with_capacity(scenario.processes);
    for index in 0..scenario.processes {
        let log = scenario.work_dir.join(format!("party-service-{index}.log"));
        let service = ServiceProcess::start(&scenario.service, index, &args, log).await?;
        progress(format_args!(
            "service {index} (pid {}) listening on {}",
            service.pid(),
            service.base_url()
        ));
        services.push(service);
    }
    let client = HttpClient::new();
    for service in &services {
        wait_healthy(&client, service).await?;
    }

    let mut parties = Vec::new();
    let result = async {
        let unlocked = run_mode(scenario, &services, &client, false, &mut parties).await?;
        let locked = run_mode(scenario, &services, &client, true, &mut parties).await?;
        Ok(ScenarioReport {
            database: db.kind(),
            unlocked,
            locked,
        })
    }
    .await;
    if result.is_err() {
        for service in &services {
            progress(format_args!(
                "service {} log ({}) ends with:\n{}",
                service.index(),
                service.log_path().display(),
                service.log_tail(10)
            ));
        }
    }
    // Stop the services before the database goes away.
    drop(services);
    if matches!(db, Db::Postgres(_)) {
        // A shared PostgreSQL keeps the rows; remove the demo's own.
        for id in parties {
            if let Err(e) = db.delete_party(id).await {
                progress(format_args!("could not delete party {id}: {e}"));
            }
        }
    }
    db.close().await;
    result
}

async fn wait_healthy(client: &HttpClient, service: &ServiceProcess) -> anyhow::Result<()> {
    let url = format!("{}/health", service.base_url());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get(&url).await {
            Ok(r) if r.status.is_success() => return Ok(()),
            Ok(r) if Instant::now() >= deadline => {
                bail!(
                    "service {} answers {} on /health",
                    service.index(),
                    r.status
                )
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("service {} is not healthy", service.index())))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn run_mode(
    scenario: &Scenario,
    services: &[ServiceProcess],
    client: &HttpClient,
    locked: bool,
    parties: &mut Vec<i64>,
) -> anyhow::Result<ModeReport> {
    let label = if locked { "with lock" } else { "without lock" };
    let first = &services[0];
    let response = client
        .post_json(
            &format!("{}/parties", first.base_url()),
            &NewParty {
                name: format!("demo party ({label})"),
                capacity: scenario.capacity,
            },
        )
        .await?;
    if response.status != hyper::StatusCode::CREATED {
        bail!(
            "creating the party failed: {} {}",
            response.status,
            response.text()
        );
    }
    let party: Party = response.json()?;
    parties.push(party.id);
    progress(format_args!(
        "{label}: party {} (capacity {}); firing {} joins at {} process{} at once",
        party.id,
        party.capacity,
        scenario.requests,
        services.len(),
        if services.len() == 1 { "" } else { "es" }
    ));

    let query = if locked { "" } else { "?lock=false" };
    let start = Instant::now();
    let mut requests = JoinSet::new();
    for i in 0..scenario.requests {
        let url = format!(
            "{}/parties/{}/participants{query}",
            services[i % services.len()].base_url(),
            party.id
        );
        let client = client.clone();
        requests.spawn(async move {
            let body = NewParticipant {
                name: format!("guest-{i}"),
            };
            let sent = Instant::now();
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.post_json(&url, &body)).await;
            let latency = sent.elapsed();
            let outcome = match answer {
                Err(_) => {
                    Outcome::NoAnswer(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
                }
                Ok(Err(e)) => Outcome::NoAnswer(format!("{e:#}")),
                Ok(Ok(r)) => match r.status.as_u16() {
                    201 => Outcome::Accepted,
                    409 => Outcome::Full,
                    503 => Outcome::LockUnavailable,
                    other => Outcome::OtherStatus(other, r.text()),
                },
            };
            (outcome, latency)
        });
    }

    // Collect the answers, with a progress line every second for long runs.
    let mut outcomes = Vec::with_capacity(scenario.requests);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            joined = requests.join_next() => match joined {
                Some(Ok(outcome)) => outcomes.push(outcome),
                Some(Err(e)) => outcomes.push((Outcome::NoAnswer(format!("request task failed: {e}")), Duration::ZERO)),
                None => break,
            },
            _ = ticker.tick() => progress(format_args!(
                "{label}: {}/{} answered after {}",
                outcomes.len(),
                scenario.requests,
                format_duration(start.elapsed())
            )),
        }
    }
    let wall = start.elapsed();

    // Read the party back through the service: the database has the last word on members.
    let response = client
        .get(&format!(
            "{}/parties/{}",
            services[services.len() - 1].base_url(),
            party.id
        ))
        .await?;
    if !response.status.is_success() {
        bail!(
            "reading party {} back failed: {} {}",
            party.id,
            response.status,
            response.text()
        );
    }
    let view: PartyView = response.json()?;
    let report = ModeReport::new(
        party.id,
        locked,
        view.capacity,
        view.members,
        &outcomes,
        wall,
    );
    progress(format_args!(
        "{label}: all {} answered in {}; the party has {} members",
        report.requests,
        format_duration(wall),
        view.members
    ));
    if let Some(problem) = &report.first_problem {
        progress(format_args!("{label}: first unexpected answer: {problem}"));
    }
    if i64::try_from(report.accepted).ok() != Some(view.members) {
        progress(format_args!(
            "{label}: note: {} joins were accepted but the party has {} members",
            report.accepted, view.members
        ));
    }
    Ok(report)
}

/// `sqlite://<path>?mode=rwc`.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// The URL without a password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A lock namespace no other run uses: `party-demo-<pid>-<time>-<n>`.
pub fn unique_namespace() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "party-demo-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory removed (with everything in it) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    ///
    /// # Errors
    /// I/O errors.
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        let unique = unique_namespace();
        let suffix = unique.strip_prefix("party-demo-").unwrap_or(&unique);
        let path = std::env::temp_dir().join(format!("{tag}-{suffix}"));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The `party-demo` binary, after argument parsing. Exit codes: 0 the locked run kept the
/// party at (or under) its capacity; 1 it overbooked, or a locked join got no answer or an
/// unexpected error, or the scenario failed (also when the running executable, which the
/// demo re-runs as `serve` for its service processes, cannot be located); 2 no Redis.
pub async fn run_demo(options: DemoOptions) -> ExitCode {
    let redis = match options.cluster() {
        Some(seeds) => {
            let target = RedisTarget::Cluster(seeds.to_vec());
            progress(format_args!("using {target}"));
            // A cluster is the user's own: no throwaway one is started in its place.
            if let Err(reason) = redis::ping_cluster(seeds).await {
                eprintln!(
                    "party-demo: no Redis Cluster answered at {} ({reason}); start one or pass \
                     the URLs of its nodes, and run the demo again",
                    seeds.join(",")
                );
                return ExitCode::from(2);
            }
            RedisSource::Existing { target }
        }
        None => {
            let redis_url = options.redis_url.clone();
            progress(format_args!("looking for Redis at {redis_url}"));
            match redis::find_or_start(&redis_url).await {
                Ok(redis) => redis,
                Err(e) => {
                    eprintln!("party-demo: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    if let RedisSource::Throwaway {
        server,
        probe_error,
    } = &redis
    {
        progress(format_args!(
            "no Redis answered at {} ({probe_error}); started a throwaway redis-server \
             on 127.0.0.1:{} (stopped when the demo ends)",
            options.redis_url,
            server.port()
        ));
    }
    let service = match ServiceCommand::current_exe_serve() {
        Ok(service) => service,
        Err(e) => {
            eprintln!("party-demo: {e:#}");
            return ExitCode::from(1);
        }
    };
    let work_dir = match TempDir::new("party-demo") {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("party-demo: cannot create a temporary directory: {e}");
            return ExitCode::from(1);
        }
    };
    let scenario = Scenario {
        capacity: options.capacity,
        requests: options.requests,
        processes: options.processes,
        think: options.think,
        service,
        redis: redis.target(),
        database_url: options.database_url.clone(),
        lock_namespace: unique_namespace(),
        work_dir: work_dir.path().to_owned(),
    };
    let outcome = run_scenario(&scenario).await;
    if matches!(redis, RedisSource::Existing { .. }) {
        // Leave a shared Redis as it was: the run's lock keys and fencing counters go.
        if let Err(e) = redis::delete_namespace(&scenario.redis, &scenario.lock_namespace).await {
            progress(format_args!(
                "could not delete the lock keys {}:*: {e}",
                scenario.lock_namespace
            ));
        }
    }
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("party-demo: the scenario failed: {e:#}");
            return ExitCode::from(1);
        }
    };
    print_report(&scenario, &report);
    let locked = &report.locked;
    if locked.overbooked() {
        println!(
            "FAILED: the locked run overbooked the party ({}/{})",
            locked.members, locked.capacity
        );
        return ExitCode::from(1);
    }
    if locked.no_answer > 0 || locked.other_status > 0 {
        println!(
            "FAILED: {} locked joins got no answer or an unexpected error",
            locked.no_answer + locked.other_status
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn print_report(scenario: &Scenario, report: &ScenarioReport) {
    let think = if scenario.think.is_zero() {
        "no artificial delay".to_owned()
    } else {
        format!("{} of simulated work", format_duration(scenario.think))
    };
    let deployment = match &scenario.redis {
        RedisTarget::Server(_) => "",
        RedisTarget::Cluster(_) => ", locks on a Redis Cluster",
    };
    println!(
        "party of capacity {}, {} concurrent joins over {} service process{} ({}{deployment}), \
         {think} between check and insert",
        scenario.capacity,
        scenario.requests,
        scenario.processes,
        if scenario.processes == 1 { "" } else { "es" },
        report.database,
    );
    println!("{}", report.unlocked.line());
    println!("{}", report.locked.line());
    let (unlocked, locked) = (&report.unlocked, &report.locked);
    if unlocked.overbooked() && !locked.overbooked() {
        println!(
            "the race admitted {} too many without the lock; #[distributed_lock] kept the party at \
             its capacity",
            unlocked.members - unlocked.capacity
        );
    } else if !unlocked.overbooked() && !locked.overbooked() {
        println!(
            "the race did not fire without the lock this time (try more requests or \
             --think-ms); the locked run stayed within capacity"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_database_urls_hide_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/parties"),
            "postgres://app:***@db.example:5432/parties"
        );
        assert_eq!(
            redact("postgres://app@127.0.0.1/test"),
            "postgres://app@127.0.0.1/test"
        );
        assert_eq!(
            redact("sqlite:///tmp/x/party.db?mode=rwc"),
            "sqlite:///tmp/x/party.db?mode=rwc"
        );
    }
}
