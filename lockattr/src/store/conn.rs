//! The command connection to Redis and the one bounded way every call goes through it.
//!
//! One Redis server is reached through redis-rs's `ConnectionManager` (it reconnects by
//! itself); a Redis Cluster through its async cluster connection, which routes every command
//! by its key (`EVALSHA` by its one key, the fast path's `SET`+`TIME` pipeline by the `SET`'s
//! key, `TIME` having none), follows `MOVED`/`ASK` and topology changes, and sends `SCRIPT LOAD`
//! to every node. Nothing above this module knows which one it is.
//!
//! Every call has a deadline (`until`): the caller's budget for the whole operation, so that an
//! acquire that retries after a broken connection still fails within one operation timeout. A
//! deadline that passes is reported as [`Error::OperationTimeout`], lockattr's own kind, never
//! as a disguised I/O error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::time::Instant;

use super::sentinel::SentinelConn;
use crate::scripts::{Call, Scripts};
use crate::Error;

/// A type-erased future (see `Conn::query`'s Sentinel path).
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The connection commands go through.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: Inner,
    op_timeout: Duration,
}

#[derive(Clone)]
enum Inner {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects to one Redis server (it reconnects by itself after the connection broke).
    pub(crate) async fn standalone(
        client: redis::Client,
        op_timeout: Duration,
    ) -> Result<Conn, Error> {
        // No response timeout inside redis-rs: `bounded` puts the caller's deadline around every
        // call already (reconnect waits included), and a second timer per command costs
        // measurable time on the uncontended path.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let until = Instant::now() + op_timeout;
        let inner = bounded(
            "connect",
            until,
            op_timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await?;
        Ok(Conn {
            inner: Inner::Standalone(inner),
            op_timeout,
        })
    }

    /// Connects to a Redis Cluster through `client`'s seed nodes.
    pub(crate) async fn cluster(
        client: &ClusterClient,
        op_timeout: Duration,
    ) -> Result<Conn, Error> {
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(op_timeout)
            .set_response_timeout(op_timeout);
        let until = Instant::now() + op_timeout;
        let inner = bounded(
            "connect",
            until,
            op_timeout,
            client.get_async_connection_with_config(config),
        )
        .await?;
        Ok(Conn {
            inner: Inner::Cluster(inner),
            op_timeout,
        })
    }

    /// The master a Sentinel deployment names, followed across failovers.
    pub(crate) fn sentinel(conn: Arc<SentinelConn>, op_timeout: Duration) -> Conn {
        Conn {
            inner: Inner::Sentinel(conn),
            op_timeout,
        }
    }

    /// A deadline one operation timeout from now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.op_timeout
    }

    /// Sends one command.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        cmd: &redis::Cmd,
        until: Instant,
    ) -> Result<T, Error> {
        match &self.inner {
            Inner::Standalone(c) => {
                let mut conn = c.clone();
                bounded(what, until, self.op_timeout, cmd.query_async(&mut conn)).await
            }
            Inner::Cluster(c) => {
                let mut conn = c.clone();
                bounded(what, until, self.op_timeout, cmd.query_async(&mut conn)).await
            }
            // Boxed: the failover-following path nests deeper, and every future that awaits a
            // lock call (the user's too) would otherwise carry its layout.
            Inner::Sentinel(s) => {
                let run: BoxFuture<'_, Result<T, Error>> =
                    Box::pin(s.run(what, until, |mut conn| async move {
                        cmd.query_async(&mut conn).await
                    }));
                run.await
            }
        }
    }

    /// Sends a pipeline.
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        pipe: &redis::Pipeline,
        until: Instant,
    ) -> Result<T, Error> {
        match &self.inner {
            Inner::Standalone(c) => {
                let mut conn = c.clone();
                bounded(what, until, self.op_timeout, pipe.query_async(&mut conn)).await
            }
            Inner::Cluster(c) => {
                let mut conn = c.clone();
                bounded(what, until, self.op_timeout, pipe.query_async(&mut conn)).await
            }
            Inner::Sentinel(s) => {
                let run: BoxFuture<'_, Result<T, Error>> =
                    Box::pin(s.run(what, until, |mut conn| async move {
                        pipe.query_async(&mut conn).await
                    }));
                run.await
            }
        }
    }

    /// Runs a script call; a script Redis does not know (after a restart, a `SCRIPT FLUSH`, or
    /// on a freshly promoted master) is loaded and the call sent once more.
    pub(crate) async fn eval<T: redis::FromRedisValue + Send>(
        &self,
        what: &'static str,
        call: &Call,
        until: Instant,
    ) -> Result<T, Error> {
        match self.query(what, &call.cmd, until).await {
            Err(Error::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Boxed: rare, and every release's future would otherwise carry it.
                let reload: BoxFuture<'_, Result<T, Error>> =
                    Box::pin(self.load_and_eval(what, call, until));
                reload.await
            }
            other => other,
        }
    }

    /// Loads `call`'s script and sends `call` again (see [`eval`](Self::eval)).
    async fn load_and_eval<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        call: &Call,
        until: Instant,
    ) -> Result<T, Error> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(call.script.code());
        self.query::<String>(what, &load, until).await?;
        self.query(what, &call.cmd, until).await
    }

    /// Loads every script, so first uses skip the `NOSCRIPT` round trip. Best effort: scripts
    /// are reloaded on demand anyway (on Cluster, `SCRIPT LOAD` goes to every node).
    pub(crate) async fn load(&self, scripts: &Scripts) {
        for script in scripts.all() {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(script.code());
            let _ = self
                .query::<redis::Value>("load scripts", &load, self.deadline())
                .await;
        }
    }

    /// The Redis version the server (or a cluster node) reports, as `(major, minor)`, if it
    /// says (`INFO server`; a user without the right to run it gets `None`).
    pub(crate) async fn server_version(&self) -> Option<(u32, u32)> {
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let text: String = self.query("info", &info, self.deadline()).await.ok()?;
        parse_version(&text)
    }
}

/// `redis_version:7.0.15` in an `INFO` reply, as `(7, 0)`.
fn parse_version(info: &str) -> Option<(u32, u32)> {
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?;
    let mut parts = line.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Runs `request` until `until`; past it the result is [`Error::OperationTimeout`].
pub(crate) async fn bounded<T>(
    what: &'static str,
    until: Instant,
    op_timeout: Duration,
    request: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(until, request).await {
        Ok(r) => r.map_err(Error::Redis),
        Err(_) => Err(Error::OperationTimeout {
            operation: what,
            after: op_timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(super::parse_version(info), Some((7, 0)));
        assert_eq!(super::parse_version("nothing"), None);
    }
}
