//! Finding a Redis for the demo, or starting a throwaway one.

use std::path::PathBuf;
use std::time::Duration;

use lockattr_tests::RedisServer;

/// The Redis the demo uses when `REDIS_URL` is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// How long a Redis has to answer `PING` before the demo looks elsewhere.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the demo's Redis comes from.
#[derive(Debug)]
pub enum RedisSource {
    /// A Redis that was already running.
    Existing {
        /// Its URL.
        url: String,
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
    /// The URL to connect to.
    pub fn url(&self) -> String {
        match self {
            RedisSource::Existing { url } => url.clone(),
            RedisSource::Throwaway { server, .. } => server.url(),
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
                url: url.to_owned(),
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

/// Deletes every key under `namespace:` (the demo's locks and fencing counters), so repeated
/// runs leave nothing behind in a shared Redis. Returns how many keys went.
///
/// # Errors
/// Redis errors.
pub async fn delete_namespace(url: &str, namespace: &str) -> redis::RedisResult<usize> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
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
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let n: usize = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
            deleted += n;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(deleted)
}
