//! The history worker's own connection to Redis (counters, write logs, the broken lock): one
//! server or a cluster behind one type, so the critical section reads the same on both.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Connect and response timeouts: long enough for a loaded machine and for a node paused by
/// the chaos (well under a second), short enough that nothing hangs.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one redis-server or to a Redis Cluster.
///
/// On a cluster every command goes to the master of its key's slot; a `MULTI`/`EXEC`
/// pipeline goes to the slot of its keys, which must share one hash tag.
#[derive(Clone)]
pub enum Direct {
    /// One server.
    Server(MultiplexedConnection),
    /// A cluster (redirections and topology changes are followed by redis-rs).
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direct::Server(_) => "Direct::Server",
            Direct::Cluster(_) => "Direct::Cluster",
        })
    }
}

impl Direct {
    /// Connects to the server at `url`.
    ///
    /// # Errors
    /// When it cannot be reached within the timeout.
    pub async fn server(url: &str) -> Result<Direct, String> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let conn = redis::Client::open(url)
            .map_err(|e| e.to_string())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("connect to {url}: {e}"))?;
        Ok(Direct::Server(conn))
    }

    /// Connects to the cluster that `seeds` belong to.
    ///
    /// # Errors
    /// When no seed can be reached within the timeout.
    pub async fn cluster(seeds: &[String]) -> Result<Direct, String> {
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        let conn = redis::cluster::ClusterClient::new(seeds.to_vec())
            .map_err(|e| e.to_string())?
            .get_async_connection_with_config(config)
            .await
            .map_err(|e| format!("connect to the cluster at {seeds:?}: {e}"))?;
        Ok(Direct::Cluster(conn))
    }
}

impl ConnectionLike for Direct {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Direct::Server(c) => c.req_packed_command(cmd),
            Direct::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Direct::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Direct::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Direct::Server(c) => c.get_db(),
            Direct::Cluster(c) => c.get_db(),
        }
    }
}
