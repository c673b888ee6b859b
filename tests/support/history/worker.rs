//! One worker process of a history test (`lockattr-test-worker history ...`).
//!
//! The process builds its `Locker`s and a connection for the counters ([`Target`]): on one
//! redis-server the lockers go through the URLs they are given (normally a fault-injecting
//! proxy) and the counters through a direct connection (never through the proxy, so chaos
//! cannot make a write ambiguous); on a Redis Cluster the lockers are `Locker::cluster` and the
//! counters use a cluster connection, both to the nodes themselves; on a Sentinel deployment
//! the lockers are `Locker::sentinel` (optionally with `wait_for_replicas`) and the counters use
//! a connection to the current master that follows failovers ([`super::conn::SentinelMaster`]).
//! Then it runs `lockers × tasks` tasks. Each task loops, for a bounded time and count: pick a
//! key at random, run a critical section under the lock ([`LockMode::Lockattr`]:
//! `locker.lock(key).lease(..).wait(..).run(..)`), record it.
//!
//! [`LockMode::Broken`] replaces the lock by a deliberately wrong one (`SET key token PX` without
//! `NX`, tokens from a non-atomic read-then-write, release by plain `DEL`), so that a test can
//! prove the checker notices a lock that does not exclude.
//!
//! The binary prints `ready` when connected, waits for a line on stdin (the test starts all
//! workers at once that way), runs, writes its records to the output file, prints `done <n>`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Direct;
use super::{
    counter_key, format_section, writes_key, Outcome, Section, WorkerOutput, WorkerTally, Write,
    HEADER,
};
use crate::clock::monotonic_ns;
use crate::rng::Rng;

/// Which lock the worker's sections run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// The real one: `Locker::lock(..).run(..)`.
    Lockattr,
    /// A lock that does not exclude (see the module docs).
    Broken,
}

/// Where a worker's locks and counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One redis-server.
    Server {
        /// Redis URLs for the lockers; locker `i` uses `lock_urls[i % len]` (normally a
        /// fault-injecting proxy per worker).
        lock_urls: Vec<String>,
        /// URL for the counters and write logs (not subject to chaos).
        direct_url: String,
    },
    /// A Redis Cluster: every locker is `Locker::cluster(seeds)` and the counters go through a
    /// cluster connection. A counter shares its lock's hash tag ([`counter_key`]), so it lives
    /// on the lock's master: faults on that node hit the lock and the write alike, as they
    /// would in a service.
    Cluster {
        /// Seed node URLs (`redis://host:port`).
        seeds: Vec<String>,
    },
    /// A Sentinel deployment: every locker is `Locker::sentinel(master_name, sentinels)`, with
    /// `wait_for_replicas(n, timeout)` when asked, and the counters go to the master that the
    /// sentinels name, followed across failovers ([`Direct::sentinel`]).
    Sentinel {
        /// The monitored master's name.
        master_name: String,
        /// Sentinel URLs (`redis://host:port`).
        sentinels: Vec<String>,
        /// `LockerBuilder::wait_for_replicas(replicas, timeout)`, or not.
        wait_for_replicas: Option<(usize, Duration)>,
    },
}

/// Everything a worker needs; passed on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// This worker's number (part of every section id).
    pub process: u32,
    /// Where the locks and counters live.
    pub target: Target,
    /// The lock keys (no tabs, commas, spaces or braces).
    pub keys: Vec<String>,
    /// Separately built `Locker`s in this process.
    pub lockers: u32,
    /// Tasks per locker.
    pub tasks: u32,
    /// How long each task keeps taking locks.
    pub duration: Duration,
    /// At most this many sections per task.
    pub count: u64,
    /// The lease of every lock.
    pub lease: Duration,
    /// How long a lock call may wait.
    pub wait: Duration,
    /// Time spent inside a section between reading the counter and writing it: uniform in
    /// `[hold_min, hold_max]`.
    pub hold_min: Duration,
    /// See `hold_min`.
    pub hold_max: Duration,
    /// Per mille of sections that hold long instead: uniform in `[hold_max, long_hold_max]`
    /// (long enough that the lease must be renewed under the section).
    pub long_hold_permille: u32,
    /// See `long_hold_permille`.
    pub long_hold_max: Duration,
    /// The lock under test.
    pub mode: LockMode,
    /// Seed of the task's random choices.
    pub seed: u64,
    /// Where to write the records.
    pub out: PathBuf,
}

impl WorkerConfig {
    /// The worker's command line after the binary name (starts with `history`).
    pub fn to_args(&self) -> Vec<String> {
        let ms = |d: Duration| d.as_millis().to_string();
        let us = |d: Duration| d.as_micros().to_string();
        let mut args = vec!["history".to_owned()];
        let mut push = |name: &str, value: String| {
            args.push(format!("--{name}"));
            args.push(value);
        };
        push("process", self.process.to_string());
        match &self.target {
            Target::Server {
                lock_urls,
                direct_url,
            } => {
                push("lock-urls", lock_urls.join(","));
                push("direct-url", direct_url.clone());
            }
            Target::Cluster { seeds } => push("cluster", seeds.join(",")),
            Target::Sentinel {
                master_name,
                sentinels,
                wait_for_replicas,
            } => {
                push("sentinels", sentinels.join(","));
                push("master-name", master_name.clone());
                if let Some((n, timeout)) = wait_for_replicas {
                    push("wait-for-replicas", format!("{n}:{}", ms(*timeout)));
                }
            }
        }
        push("keys", self.keys.join(","));
        push("lockers", self.lockers.to_string());
        push("tasks", self.tasks.to_string());
        push("duration-ms", ms(self.duration));
        push("count", self.count.to_string());
        push("lease-ms", ms(self.lease));
        push("wait-ms", ms(self.wait));
        push(
            "hold-us",
            format!("{}-{}", us(self.hold_min), us(self.hold_max)),
        );
        push(
            "long-hold",
            format!("{}:{}", self.long_hold_permille, us(self.long_hold_max)),
        );
        push(
            "mode",
            match self.mode {
                LockMode::Lockattr => "lockattr",
                LockMode::Broken => "broken",
            }
            .to_owned(),
        );
        push("seed", self.seed.to_string());
        push("out", self.out.display().to_string());
        args
    }

    /// Parses what [`to_args`](Self::to_args) wrote (without the leading `history`).
    ///
    /// # Errors
    /// A missing, unknown or malformed option.
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let mut map = std::collections::HashMap::new();
        let mut it = args.iter();
        while let Some(name) = it.next() {
            let name = name
                .strip_prefix("--")
                .ok_or_else(|| format!("expected an option, got {name:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        let get = |name: &str| -> Result<&String, String> {
            map.get(name).ok_or_else(|| format!("missing --{name}"))
        };
        let num = |name: &str| -> Result<u64, String> {
            get(name)?.parse().map_err(|e| format!("--{name}: {e}"))
        };
        let small = |name: &str| -> Result<u32, String> {
            u32::try_from(num(name)?).map_err(|e| format!("--{name}: {e}"))
        };
        let list = |name: &str| -> Result<Vec<String>, String> {
            Ok(get(name)?.split(',').map(str::to_owned).collect())
        };
        let (lo, hi) = get("hold-us")?
            .split_once('-')
            .ok_or("--hold-us is <min>-<max>")?;
        let us = |v: &str| -> Result<Duration, String> {
            v.parse()
                .map(Duration::from_micros)
                .map_err(|e| format!("--hold-us: {e}"))
        };
        let (permille, long_max) = get("long-hold")?
            .split_once(':')
            .ok_or("--long-hold is <per mille>:<max us>")?;
        let (target, target_options) = if map.contains_key("cluster") {
            let seeds = list("cluster")?;
            (Target::Cluster { seeds }, 1)
        } else if map.contains_key("sentinels") {
            let wait_for_replicas = match map.get("wait-for-replicas") {
                None => None,
                Some(v) => {
                    let (n, timeout) = v
                        .split_once(':')
                        .ok_or("--wait-for-replicas is <replicas>:<timeout ms>")?;
                    let n = n.parse().map_err(|e| format!("--wait-for-replicas: {e}"))?;
                    let timeout = timeout
                        .parse()
                        .map(Duration::from_millis)
                        .map_err(|e| format!("--wait-for-replicas: {e}"))?;
                    Some((n, timeout))
                }
            };
            let options = 2 + usize::from(wait_for_replicas.is_some());
            let target = Target::Sentinel {
                master_name: get("master-name")?.clone(),
                sentinels: list("sentinels")?,
                wait_for_replicas,
            };
            (target, options)
        } else {
            let target = Target::Server {
                lock_urls: list("lock-urls")?,
                direct_url: get("direct-url")?.clone(),
            };
            (target, 2)
        };
        let config = WorkerConfig {
            process: small("process")?,
            target,
            keys: list("keys")?,
            lockers: small("lockers")?.max(1),
            tasks: small("tasks")?.max(1),
            duration: Duration::from_millis(num("duration-ms")?),
            count: num("count")?,
            lease: Duration::from_millis(num("lease-ms")?),
            wait: Duration::from_millis(num("wait-ms")?),
            hold_min: us(lo)?,
            hold_max: us(hi)?,
            long_hold_permille: permille.parse().map_err(|e| format!("--long-hold: {e}"))?,
            long_hold_max: us(long_max)?,
            mode: match get("mode")?.as_str() {
                "lockattr" => LockMode::Lockattr,
                "broken" => LockMode::Broken,
                other => return Err(format!("unknown --mode {other}")),
            },
            seed: num("seed")?,
            out: PathBuf::from(get("out")?),
        };
        if map.len() != 13 + target_options {
            return Err(format!("unknown options among {:?}", map.keys()));
        }
        Ok(config)
    }
}

/// The lock side of one locker: a real `Locker`, or a plain connection for the broken lock.
#[derive(Clone)]
enum LockSide {
    Lockattr(lockattr::Locker),
    Broken(Direct),
}

/// A connected worker, ready to [`run`](Self::run).
pub struct Worker {
    config: WorkerConfig,
    lockers: Vec<LockSide>,
    direct: Direct,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Builds the lockers and the direct connection.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn connect(config: WorkerConfig) -> Result<Worker, String> {
        let direct = match &config.target {
            Target::Server { direct_url, .. } => Direct::server(direct_url).await?,
            Target::Cluster { seeds } => Direct::cluster(seeds).await?,
            Target::Sentinel {
                master_name,
                sentinels,
                ..
            } => Direct::sentinel(master_name, sentinels).await?,
        };
        let mut lockers = Vec::new();
        for i in 0..config.lockers as usize {
            let (builder, direct) = match &config.target {
                Target::Server { lock_urls, .. } => {
                    let url = &lock_urls[i % lock_urls.len()];
                    let direct = match config.mode {
                        LockMode::Lockattr => None,
                        LockMode::Broken => Some(Direct::server(url).await?),
                    };
                    (lockattr::Locker::builder(url.clone()), direct)
                }
                Target::Cluster { seeds } => {
                    let direct = match config.mode {
                        LockMode::Lockattr => None,
                        LockMode::Broken => Some(Direct::cluster(seeds).await?),
                    };
                    (lockattr::Locker::cluster(seeds.clone()), direct)
                }
                Target::Sentinel {
                    master_name,
                    sentinels,
                    wait_for_replicas,
                } => {
                    let direct = match config.mode {
                        LockMode::Lockattr => None,
                        LockMode::Broken => Some(Direct::sentinel(master_name, sentinels).await?),
                    };
                    let mut builder = lockattr::Locker::sentinel(master_name, sentinels.clone());
                    if let Some((n, timeout)) = *wait_for_replicas {
                        builder = builder.wait_for_replicas(n, timeout);
                    }
                    (builder, direct)
                }
            };
            lockers.push(match direct {
                Some(conn) => LockSide::Broken(conn),
                None => LockSide::Lockattr(
                    builder
                        .default_wait(config.wait)
                        .build()
                        .await
                        .map_err(|e| format!("build a Locker for {:?}: {e}", config.target))?,
                ),
            });
        }
        Ok(Worker {
            config,
            lockers,
            direct,
        })
    }

    /// Runs every task to its end and returns the records. On a Sentinel deployment, prints
    /// on stderr how the counter connection followed the master (`counter connection: ..`).
    pub async fn run(self) -> WorkerOutput {
        let config = Arc::new(self.config);
        let mut handles = Vec::new();
        let mut seeds = Rng::new(config.seed ^ u64::from(config.process) << 40);
        for (l, side) in self.lockers.iter().enumerate() {
            for t in 0..config.tasks {
                let task = Task {
                    config: config.clone(),
                    side: side.clone(),
                    direct: self.direct.clone(),
                    locker: u32::try_from(l).expect("few lockers"),
                    task: t,
                    rng: Rng::new(seeds.next_u64()),
                };
                handles.push(tokio::spawn(task.run()));
            }
        }
        let direct = self.direct.clone();
        let mut out = WorkerOutput::default();
        for h in handles {
            match h.await {
                Ok((sections, tally)) => {
                    out.sections.extend(sections);
                    out.tally.merge(&tally);
                }
                Err(e) => {
                    *out.tally
                        .errors
                        .entry(format!("task panicked: {e}"))
                        .or_default() += 1;
                }
            }
        }
        if let Some(stats) = direct.following() {
            eprintln!("counter connection: {stats}");
        }
        out
    }
}

/// Writes a worker's records in the format [`super::parse_output`] reads.
///
/// # Errors
/// I/O errors.
pub fn write_output(path: &std::path::Path, out: &WorkerOutput) -> std::io::Result<()> {
    let mut text = String::with_capacity(out.sections.len() * 100 + 100);
    text.push_str(HEADER);
    text.push('\n');
    for s in &out.sections {
        text.push_str(&format_section(s));
        text.push('\n');
    }
    text.push_str(&out.tally.format());
    std::fs::write(path, text)
}

struct Task {
    config: Arc<WorkerConfig>,
    side: LockSide,
    direct: Direct,
    locker: u32,
    task: u32,
    rng: Rng,
}

/// Where a section's body leaves its record; the body's drop guard fills it.
type Slot = Arc<Mutex<Option<Section>>>;

/// Records a section: enter time at creation, exit time when dropped, i.e. when the body
/// ends *or is cancelled* (the runtime drops a body whose lock was lost).
struct Recorder {
    section: Option<Section>,
    slot: Slot,
}

impl Recorder {
    fn set_write(&mut self, write: Write) {
        if let Some(s) = self.section.as_mut() {
            s.write = write;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let exit_ns = monotonic_ns();
        if let Some(mut s) = self.section.take() {
            s.exit_ns = exit_ns;
            *self
                .slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(s);
        }
    }
}

/// How the lock call around one section ended, before the record is finished.
enum Call {
    Done(Result<(), String>),
    Lost,
    Timeout,
    Error(String),
}

impl Task {
    async fn run(mut self) -> (Vec<Section>, WorkerTally) {
        let mut sections = Vec::new();
        let mut tally = WorkerTally::default();
        let deadline = Instant::now() + self.config.duration;
        // Generous: a call waits at most `wait`, then its release is bounded by the locker's
        // operation timeout; anything beyond this is a hang, recorded as a failure.
        let call_limit = self.config.wait + self.config.lease + Duration::from_secs(10);
        let mut n: u64 = 0;
        while n < self.config.count && Instant::now() < deadline {
            n += 1;
            tally.attempts += 1;
            let key =
                self.config.keys[self.rng.range(0..self.config.keys.len() as u64) as usize].clone();
            let c = &self.config;
            let hold = if self.rng.range(0..1000) < u64::from(c.long_hold_permille) {
                self.rng.duration(c.hold_max, c.long_hold_max)
            } else {
                self.rng.duration(c.hold_min, c.hold_max)
            };
            let id = format!(
                "p{}.l{}.t{}.{n}",
                self.config.process, self.locker, self.task
            );
            let slot: Slot = Arc::default();
            let call = tokio::time::timeout(call_limit, self.call(&key, id, hold, slot.clone()))
                .await
                .unwrap_or_else(|_| Call::Error(format!("lock call hung for {call_limit:?}")));
            let entered = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            match (entered, call) {
                (Some(mut s), call) => {
                    s.outcome = match call {
                        Call::Done(Ok(())) => Outcome::Ok,
                        Call::Done(Err(e)) | Call::Error(e) => Outcome::Failed(e),
                        Call::Lost => Outcome::Lost,
                        Call::Timeout => Outcome::Failed("timeout after entering".to_owned()),
                    };
                    sections.push(s);
                }
                (None, Call::Timeout) => tally.timeouts += 1,
                (None, Call::Error(e) | Call::Done(Err(e))) => {
                    *tally.errors.entry(shorten(&e)).or_default() += 1;
                }
                (None, Call::Lost | Call::Done(Ok(()))) => {
                    *tally
                        .errors
                        .entry("call ended without entering".to_owned())
                        .or_default() += 1;
                }
            }
        }
        (sections, tally)
    }

    async fn call(&self, key: &str, id: String, hold: Duration, slot: Slot) -> Call {
        let c = &self.config;
        match &self.side {
            LockSide::Lockattr(locker) => {
                let body = self.body(key, id, None, hold, slot);
                match locker.lock(key).lease(c.lease).wait(c.wait).run(body).await {
                    Ok(done) => Call::Done(done),
                    Err(e) if e.is_lost() => Call::Lost,
                    Err(e) if e.is_timeout() => Call::Timeout,
                    Err(e) => Call::Error(e.to_string()),
                }
            }
            LockSide::Broken(conn) => match self.broken(conn.clone(), key, id, hold, slot).await {
                Ok(done) => Call::Done(done),
                Err(e) => Call::Error(e.to_string()),
            },
        }
    }

    /// The deliberately wrong lock: "acquires" by overwriting, numbers tokens racily, releases
    /// whatever is there.
    async fn broken(
        &self,
        mut conn: Direct,
        key: &str,
        id: String,
        hold: Duration,
        slot: Slot,
    ) -> redis::RedisResult<Result<(), String>> {
        let fence = format!("hist:{{{key}}}:broken-fence");
        let lock = format!("hist:{{{key}}}:broken-lock");
        let last: Option<u64> = redis::cmd("GET").arg(&fence).query_async(&mut conn).await?;
        let token = last.unwrap_or(0) + 1;
        let () = redis::cmd("SET")
            .arg(&fence)
            .arg(token)
            .query_async(&mut conn)
            .await?;
        let () = redis::cmd("SET")
            .arg(&lock)
            .arg(&id)
            .arg("PX")
            .arg(self.config.lease.as_millis().max(1).to_string())
            .query_async(&mut conn)
            .await?;
        let out = self.body(key, id, Some(token), hold, slot).await;
        let _: i64 = redis::cmd("DEL").arg(&lock).query_async(&mut conn).await?;
        Ok(out)
    }

    /// The critical section: read the counter, hold, write counter + 1 and log the write
    /// atomically. `token`: the broken lock's; `None` reads lockattr's.
    async fn body(
        &self,
        key: &str,
        id: String,
        token: Option<u64>,
        hold: Duration,
        slot: Slot,
    ) -> Result<(), String> {
        let enter_ns = monotonic_ns();
        // lockattr's token is issued when first asked for (a fast-path lock has none before):
        // a section that cannot get one does not write, like an application's.
        let token = match token {
            Some(t) => Some(t),
            None => match lockattr::fencing_token().await {
                Ok(t) => Some(t),
                Err(e) => return Err(format!("fencing token: {e}")),
            },
        };
        let mut rec = Recorder {
            section: Some(Section {
                id: id.clone(),
                key: key.to_owned(),
                token,
                enter_ns,
                exit_ns: enter_ns,
                process: self.config.process,
                locker: self.locker,
                task: self.task,
                write: Write::None,
                outcome: Outcome::Ok,
            }),
            slot,
        };
        let mut conn = self.direct.clone();
        let counter = counter_key(key);
        let value: Option<u64> = redis::cmd("GET")
            .arg(&counter)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("GET counter: {e}"))?;
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        rec.set_write(Write::InFlight);
        let () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&counter)
            .arg(value.unwrap_or(0) + 1)
            .ignore()
            .cmd("RPUSH")
            .arg(writes_key(key))
            .arg(&id)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("write counter: {e}"))?;
        rec.set_write(Write::Done);
        Ok(())
    }
}

fn shorten(message: &str) -> String {
    const MAX: usize = 160;
    let mut end = message.len().min(MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    super::one_line(&message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_args() {
        let mut config = WorkerConfig {
            process: 2,
            target: Target::Server {
                lock_urls: vec!["redis://127.0.0.1:1".into(), "redis://127.0.0.1:2".into()],
                direct_url: "redis://127.0.0.1:3".into(),
            },
            keys: vec!["a".into(), "b".into()],
            lockers: 2,
            tasks: 3,
            duration: Duration::from_millis(1500),
            count: 99,
            lease: Duration::from_millis(500),
            wait: Duration::from_secs(5),
            hold_min: Duration::from_micros(10),
            hold_max: Duration::from_micros(2000),
            long_hold_permille: 30,
            long_hold_max: Duration::from_millis(400),
            mode: LockMode::Broken,
            seed: 7,
            out: PathBuf::from("/tmp/x"),
        };
        let args = config.to_args();
        assert_eq!(args[0], "history");
        assert_eq!(WorkerConfig::from_args(&args[1..]), Ok(config.clone()));
        assert!(WorkerConfig::from_args(&["--process".to_owned()]).is_err());

        config.target = Target::Cluster {
            seeds: vec!["redis://127.0.0.1:4".into(), "redis://127.0.0.1:5".into()],
        };
        let args = config.to_args();
        assert!(!args.contains(&"--direct-url".to_owned()), "{args:?}");
        assert_eq!(WorkerConfig::from_args(&args[1..]), Ok(config.clone()));
        for wait_for_replicas in [None, Some((1, Duration::from_millis(500)))] {
            let mut sentinel = config.clone();
            sentinel.target = Target::Sentinel {
                master_name: "lockattr".into(),
                sentinels: vec!["redis://127.0.0.1:6".into(), "redis://127.0.0.1:7".into()],
                wait_for_replicas,
            };
            let args = sentinel.to_args();
            assert_eq!(WorkerConfig::from_args(&args[1..]), Ok(sentinel));
        }
        // A cluster worker has no proxy URLs: mixing both is refused.
        let mut mixed = args[1..].to_vec();
        mixed.extend(["--direct-url".to_owned(), "redis://127.0.0.1:3".to_owned()]);
        assert!(WorkerConfig::from_args(&mixed).is_err());
    }
}
