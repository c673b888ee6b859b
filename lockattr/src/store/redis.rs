//! The lock protocol on Redis: each operation is one command, pipeline or script call through
//! the bounded connection layer (`conn`), with announcements through the pub/sub hub.
//!
//! **Replica acknowledgement.** With `wait_for_replicas(n, timeout)`, every write by which a
//! lock changes hands or keeps its lease (the fast path's `SET`, the acquire script, a handover,
//! a renewal) is pipelined with `WAIT n timeout` on the same connection: Redis answers the two
//! together, so a reconnect in between cannot pass for an acknowledgement (the pipeline fails
//! as a whole). A write that fewer than `n` replicas acknowledged is reported as
//! [`Error::NotReplicated`]: the caller undoes an acquisition (the token is withdrawn like any
//! attempt whose outcome it cannot use) and does not move the lease clock for a renewal. Direct
//! grants are off then (a release cannot wait for the replicas on the waiter's behalf), so a
//! waiter takes the lock with an acquisition of its own. `WAIT` is not consensus: a replica
//! that acknowledged can still lose the write, and a failover can promote one that did not.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::channels::Subscription;
use super::conn::Conn;
use super::pubsub::Hub;
use super::sentinel::SentinelConn;
use super::AttemptKind;
use crate::config::{millis, Config};
use crate::key::RedisNames;
use crate::protocol::{AttemptReply, ReleaseReply};
use crate::scripts::{self, Call, Scripts};
use crate::Error;

/// A type-erased future (the attempts off the fast path).
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A Redis deployment, as the lock state machine sees it.
#[derive(Debug)]
pub(crate) struct RedisStore {
    conn: Conn,
    scripts: &'static Scripts,
    hub: Hub,
    /// `wait_for_replicas`: how many replicas, and how long Redis waits for them.
    replicas: Option<(usize, Duration)>,
}

impl RedisStore {
    /// Connects to one Redis server and loads the scripts.
    pub(crate) async fn standalone(client: redis::Client, config: &Config) -> Result<Self, Error> {
        let conn = Conn::standalone(client.clone(), config.op_timeout).await?;
        let scripts = Scripts::publishing();
        conn.load(scripts).await;
        let hub = Hub::standalone(&client, config.op_timeout);
        Ok(RedisStore::new(conn, scripts, hub, config))
    }

    /// Connects to a Redis Cluster and loads the scripts on every node. Releases are announced
    /// on sharded channels when the cluster runs Redis 7 or newer (or does not say).
    pub(crate) async fn cluster(
        client: redis::cluster::ClusterClient,
        config: &Config,
    ) -> Result<Self, Error> {
        let conn = Conn::cluster(&client, config.op_timeout).await?;
        let sharded = conn.server_version().await.is_none_or(|v| v >= (7, 0));
        let scripts = if sharded {
            Scripts::sharded()
        } else {
            Scripts::publishing()
        };
        conn.load(scripts).await;
        let hub = Hub::cluster(client, sharded, config.op_timeout);
        Ok(RedisStore::new(conn, scripts, hub, config))
    }

    /// Connects to the master that the sentinels name `master`, followed across failovers.
    pub(crate) async fn sentinel(
        master: String,
        client: redis::sentinel::SentinelClient,
        config: &Config,
    ) -> Result<Self, Error> {
        let sentinel: Arc<SentinelConn> =
            SentinelConn::connect(master, client, config.op_timeout).await?;
        let conn = Conn::sentinel(sentinel.clone(), config.op_timeout);
        let scripts = Scripts::publishing();
        conn.load(scripts).await;
        let hub = Hub::sentinel(sentinel, config.op_timeout);
        Ok(RedisStore::new(conn, scripts, hub, config))
    }

    fn new(conn: Conn, scripts: &'static Scripts, hub: Hub, config: &Config) -> Self {
        RedisStore {
            conn,
            scripts,
            hub,
            replicas: config.replicas,
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.conn.deadline()
    }

    /// `WAIT n timeout_ms` for `wait_for_replicas`.
    fn wait_cmd(&self) -> Option<(redis::Cmd, usize, Duration)> {
        let (n, timeout) = self.replicas?;
        let mut wait = redis::cmd("WAIT");
        wait.arg(n).arg(millis(timeout));
        Some((wait, n, timeout))
    }

    /// `call`, then `WAIT` on the same connection; the script's reply and how many replicas
    /// acknowledged. A script Redis does not know is loaded and the pair sent again.
    async fn eval_and_wait(
        &self,
        what: &'static str,
        call: &Call,
        wait: redis::Cmd,
        until: Instant,
    ) -> Result<(Value, usize), Error> {
        let mut pipe = redis::pipe();
        pipe.add_command(call.cmd.clone()).add_command(wait);
        match self.conn.query_pipe(what, &pipe, until).await {
            Err(Error::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(call.script.code());
                self.conn.query::<String>(what, &load, until).await?;
                self.conn.query_pipe(what, &pipe, until).await
            }
            other => other,
        }
    }

    /// The error for a write that `acknowledged` of `required` replicas acknowledged.
    async fn not_replicated(
        &self,
        names: &RedisNames,
        required: usize,
        acknowledged: usize,
        timeout: Duration,
    ) -> Error {
        let mut info = redis::cmd("INFO");
        info.arg("replication");
        let replicas = match self
            .conn
            .query::<String>("info", &info, self.deadline())
            .await
        {
            Ok(text) => {
                let listed: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("slave") && l.contains(':'))
                    .map(str::trim)
                    .collect();
                if listed.is_empty() {
                    "none connected".to_owned()
                } else {
                    listed.join("; ")
                }
            }
            Err(e) => format!("unknown ({e})"),
        };
        Error::NotReplicated {
            key: names.lock().to_owned(),
            required,
            acknowledged,
            timeout,
            replicas,
        }
    }

    pub(crate) async fn attempt(
        &self,
        names: &RedisNames,
        token: &str,
        lease: Duration,
        kind: AttemptKind<'_>,
        until: Instant,
    ) -> Result<AttemptReply, Error> {
        if let (AttemptKind::Plain { fenced: false }, None) = (kind, self.replicas) {
            // The uncontended fast path, kept apart: every other attempt runs in a boxed future
            // of its own, so that the future of every acquisition (boxed once per call) stays
            // small.
            let set = scripts::try_plain(names, token, lease);
            let reply: Value = self.conn.query("acquire", &set, until).await?;
            return scripts::decode_plain(&reply).map_err(Error::Redis);
        }
        let slow: BoxFuture<'_, Result<AttemptReply, Error>> =
            Box::pin(self.attempt_slow(names, token, lease, kind, until));
        slow.await
    }

    /// [`attempt`](Self::attempt) with a script, or acknowledged by replicas.
    async fn attempt_slow(
        &self,
        names: &RedisNames,
        token: &str,
        lease: Duration,
        kind: AttemptKind<'_>,
        until: Instant,
    ) -> Result<AttemptReply, Error> {
        let (reply, acked) = match kind {
            AttemptKind::Plain { fenced } => {
                // With the token (`TIME` after the `SET`), or with `wait_for_replicas` (`WAIT`
                // last), or both, in one pipeline; `attempt` sends the bare `SET` itself.
                let mut pipe = redis::Pipeline::with_capacity(3);
                pipe.add_command(scripts::try_plain(names, token, lease));
                if fenced {
                    pipe.add_command(scripts::time());
                }
                let Some((wait, ..)) = self.wait_cmd() else {
                    let (set, time): (Value, Value) =
                        self.conn.query_pipe("acquire", &pipe, until).await?;
                    return scripts::decode_plain_fenced(&set, &time).map_err(Error::Redis);
                };
                pipe.add_command(wait);
                if fenced {
                    let (set, time, acked): (Value, Value, usize) =
                        self.conn.query_pipe("acquire", &pipe, until).await?;
                    let reply = scripts::decode_plain_fenced(&set, &time).map_err(Error::Redis)?;
                    (reply, acked)
                } else {
                    let (set, acked): (Value, usize) =
                        self.conn.query_pipe("acquire", &pipe, until).await?;
                    (scripts::decode_plain(&set).map_err(Error::Redis)?, acked)
                }
            }
            AttemptKind::Scripted {
                registered,
                grant_lease,
            } => {
                let call = self
                    .scripts
                    .acquire(names, token, lease, registered, grant_lease);
                match self.wait_cmd() {
                    None => {
                        let reply: Value = self.conn.eval("acquire", &call, until).await?;
                        return scripts::decode_acquire(&reply).map_err(Error::Redis);
                    }
                    Some((wait, ..)) => {
                        let (reply, acked) =
                            self.eval_and_wait("acquire", &call, wait, until).await?;
                        (
                            scripts::decode_acquire(&reply).map_err(Error::Redis)?,
                            acked,
                        )
                    }
                }
            }
        };
        if let (AttemptReply::Taken { .. } | AttemptReply::Granted { .. }, Some((n, timeout))) =
            (reply, self.replicas)
        {
            if acked < n {
                // Undo it before answering, so the caller's error means the lock is free
                // (a compare-and-delete of the token that holds it, on the master).
                let holder = match (reply, kind) {
                    (
                        AttemptReply::Granted { .. },
                        AttemptKind::Scripted {
                            registered: Some(r),
                            ..
                        },
                    ) => r,
                    _ => token,
                };
                let _ = self.withdraw(names, holder, self.deadline()).await;
                return Err(self.not_replicated(names, n, acked, timeout).await);
            }
        }
        Ok(reply)
    }

    pub(crate) async fn release(
        &self,
        names: &RedisNames,
        token: &str,
        until: Instant,
    ) -> Result<ReleaseReply, Error> {
        let call = self.scripts.release(names, token);
        let reply: i64 = self.conn.eval("release", &call, until).await?;
        Ok(scripts::decode_release(reply))
    }

    pub(crate) async fn renew(
        &self,
        names: &RedisNames,
        token: &str,
        fence: Option<u64>,
        lease: Duration,
        until: Instant,
    ) -> Result<bool, Error> {
        let call = self.scripts.renew(names, token, fence, lease);
        let Some((wait, n, timeout)) = self.wait_cmd() else {
            let reply: i64 = self.conn.eval("renew", &call, until).await?;
            return Ok(reply == 1);
        };
        let (reply, acked) = self.eval_and_wait("renew", &call, wait, until).await?;
        let renewed = matches!(reply, Value::Int(1));
        if renewed && acked < n {
            return Err(self.not_replicated(names, n, acked, timeout).await);
        }
        Ok(renewed)
    }

    pub(crate) async fn handoff(
        &self,
        names: &RedisNames,
        old_token: &str,
        old_fence: Option<u64>,
        new_token: &str,
        lease: Duration,
        until: Instant,
    ) -> Result<Option<u64>, Error> {
        let call = self
            .scripts
            .handoff(names, old_token, old_fence, new_token, lease);
        let Some((wait, n, timeout)) = self.wait_cmd() else {
            let reply: Value = self.conn.eval("handoff", &call, until).await?;
            return Ok(scripts::decode_fence(&reply));
        };
        let (reply, acked) = self.eval_and_wait("handoff", &call, wait, until).await?;
        let fence = scripts::decode_fence(&reply);
        if fence.is_some() && acked < n {
            return Err(self.not_replicated(names, n, acked, timeout).await);
        }
        Ok(fence)
    }

    /// See [`Store::fence`](super::Store::fence). Not waited for by replicas: the token is
    /// written into the value only to raise the floor for later scripts, and a later holder's
    /// token comes from a later `TIME` even without it.
    pub(crate) async fn fence(
        &self,
        names: &RedisNames,
        token: &str,
        until: Instant,
    ) -> Result<Option<u64>, Error> {
        let call = self.scripts.fence(names, token);
        let reply: Value = self.conn.eval("fencing token", &call, until).await?;
        match reply {
            Value::Int(0) => Ok(None),
            other => scripts::decode_fence(&other)
                .map(Some)
                .ok_or_else(|| Error::Redis(scripts::unexpected("fence", &other))),
        }
    }

    pub(crate) async fn withdraw(
        &self,
        names: &RedisNames,
        token: &str,
        until: Instant,
    ) -> Result<(), Error> {
        let call = self.scripts.withdraw(names, token);
        self.conn
            .eval::<i64>("withdraw", &call, until)
            .await
            .map(drop)
    }

    pub(crate) async fn inspect(
        &self,
        names: &RedisNames,
        until: Instant,
    ) -> Result<Option<(String, Option<u64>)>, Error> {
        let call = self.scripts.inspect(names);
        let reply: Value = self.conn.eval("inspect", &call, until).await?;
        scripts::decode_inspect(&reply).map_err(Error::Redis)
    }

    pub(crate) async fn force_unlock(
        &self,
        names: &RedisNames,
        until: Instant,
    ) -> Result<i64, Error> {
        let call = self.scripts.force_unlock(names);
        self.conn.eval("force unlock", &call, until).await
    }

    pub(crate) async fn subscribe(&self, channel: String) -> Result<Subscription, Error> {
        self.hub.subscribe(channel).await
    }
}
