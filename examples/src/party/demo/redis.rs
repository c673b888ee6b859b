//! Finding a Redis for the demo, or starting a throwaway one; the Redis a service locks on.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lockattr_tests::RedisServer;

/// The Redis the demo uses when `REDIS_URL` is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The Redis deployment the locks live on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server (`redis://host:port`).
    Server(String),
    /// A Redis Cluster, given by the URLs of some of its nodes (the others are discovered).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// A [`lockattr::Locker`] builder for this deployment: [`lockattr::Locker::builder`] or
    /// [`lockattr::Locker::cluster`].
    pub fn locker(&self) -> lockattr::LockerBuilder {
        match self {
            RedisTarget::Server(url) => lockattr::Locker::builder(url.clone()),
            RedisTarget::Cluster(seeds) => lockattr::Locker::cluster(seeds.clone()),
        }
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Server(url) => f.write_str(url),
            RedisTarget::Cluster(seeds) => write!(f, "the Redis Cluster at {}", seeds.join(",")),
        }
    }
}

/// How long a Redis has to answer `PING` before the demo looks elsewhere.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the demo's Redis comes from.
#[derive(Debug)]
pub enum RedisSource {
    /// A Redis (or Redis Cluster) that was already running.
    Existing {
        /// Where it is.
        target: RedisTarget,
    },
    /// A private `redis-server` the demo started; it stops when this is dropped.
    Throwaway {
        /// The server.
        server: RedisServer,
        /// Why the Redis at the requested URL was not used.
        probe_error: String,
    },
}

impl RedisSource {
    /// What to connect to.
    pub fn target(&self) -> RedisTarget {
        match self {
            RedisSource::Existing { target } => target.clone(),
            RedisSource::Throwaway { server, .. } => RedisTarget::Server(server.url()),
        }
    }
}

/// Why no Redis could be had; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Redis answered at {url} ({reason}), and {start}.\n\
     Start one (Docker: `docker run --rm -p 6379:6379 redis:7`; Debian/Ubuntu: \
     `sudo apt-get install redis-server`; macOS: `brew install redis && redis-server`), \
     or point REDIS_URL at one, and run the demo again"
)]
pub struct NoRedis {
    /// The URL probed.
    pub url: String,
    /// Why the probe failed.
    pub reason: String,
    /// Why no throwaway server was started.
    pub start: String,
}

/// Sends `PING` to `url`, giving up after a second.
///
/// # Errors
/// A description of what failed.
pub async fn ping(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
    let probe = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

/// Sends `PING` to a cluster through a cluster connection to `seeds` (which reads the
/// cluster's topology first), giving up after a second.
///
/// # Errors
/// A description of what failed.
pub async fn ping_cluster(seeds: &[String]) -> Result<(), String> {
    let client = redis::cluster::ClusterClient::new(seeds.to_vec())
        .map_err(|e| format!("bad Redis Cluster URLs: {e}"))?;
    let probe = async {
        let mut conn = client.get_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

/// The `redis-server` binary, if there is one: `$LOCKATTR_REDIS_SERVER`, else `PATH`.
pub fn redis_server_on_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOCKATTR_REDIS_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// Uses the Redis at `url` if it answers; otherwise starts a throwaway `redis-server` on a
/// free loopback port if one is installed.
///
/// # Errors
/// [`NoRedis`] when neither works.
pub async fn find_or_start(url: &str) -> Result<RedisSource, NoRedis> {
    let reason = match ping(url).await {
        Ok(()) => {
            return Ok(RedisSource::Existing {
                target: RedisTarget::Server(url.to_owned()),
            })
        }
        Err(reason) => reason,
    };
    let no_redis = |start: String| NoRedis {
        url: url.to_owned(),
        reason: reason.clone(),
        start,
    };
    if redis_server_on_path().is_none() {
        return Err(no_redis("`redis-server` is not on PATH".to_owned()));
    }
    // `RedisServer::start` blocks (it waits for PING) and panics when the server will not
    // come up; keep both off the async runtime. If the demo is cancelled meanwhile, the server
    // is dropped, hence stopped, when the blocking task finishes.
    match tokio::task::spawn_blocking(RedisServer::start).await {
        Ok(server) => Ok(RedisSource::Throwaway {
            server,
            probe_error: reason.clone(),
        }),
        Err(e) => {
            let detail = if e.is_panic() {
                let payload = e.into_panic();
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "it panicked".to_owned())
            } else {
                e.to_string()
            };
            Err(no_redis(format!("starting redis-server failed: {detail}")))
        }
    }
}

/// Deletes every key under `namespace:` (locks a service still held when it was stopped), so
/// repeated runs leave nothing behind in a shared Redis. On a cluster every master is
/// scanned. Returns how many keys went.
///
/// # Errors
/// Redis errors.
pub async fn delete_namespace(target: &RedisTarget, namespace: &str) -> redis::RedisResult<usize> {
    match target {
        RedisTarget::Server(url) => {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            delete_on_node(&mut conn, namespace).await
        }
        RedisTarget::Cluster(seeds) => {
            let client = redis::cluster::ClusterClient::new(seeds.clone())?;
            let mut cluster = client.get_async_connection().await?;
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut cluster)
                .await?;
            let mut deleted = 0;
            for addr in master_addresses(&nodes) {
                let mut conn = redis::Client::open(format!("redis://{addr}"))?
                    .get_multiplexed_async_connection()
                    .await?;
                deleted += delete_on_node(&mut conn, namespace).await?;
            }
            Ok(deleted)
        }
    }
}

/// `host:port` of every master that serves slots, from `CLUSTER NODES` output
/// (`<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <state> <slots>..`).
fn master_addresses(cluster_nodes: &str) -> Vec<String> {
    cluster_nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serves_slots = fields.len() > 8;
            (serves_slots && flags.split(',').any(|f| f == "master"))
                .then(|| fields[1].split('@').next().map(str::to_owned))?
        })
        .collect()
}

/// Deletes the keys under `namespace:` on one node.
async fn delete_on_node(
    conn: &mut redis::aio::MultiplexedConnection,
    namespace: &str,
) -> redis::RedisResult<usize> {
    let pattern = format!("{namespace}:*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    // SCAN visits the keyspace in a bounded number of steps; the cap only guards against a
    // misbehaving server.
    for _ in 0..100_000 {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            // One by one: on a cluster the keys of different locks are in different slots.
            for key in &keys {
                let n: usize = redis::cmd("DEL").arg(key).query_async(conn).await?;
                deleted += n;
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(deleted)
}
