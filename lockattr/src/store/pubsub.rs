//! The Redis side of release announcements: one pub/sub connection per `Locker` (shared by its
//! clones), opened on first use and reopened after a disconnect; every listener is woken when
//! it comes back, because a release published while it was down was lost.
//!
//! On Redis Cluster the connection is a cluster connection: with Redis 7 or newer the channels
//! are *sharded* (`SSUBSCRIBE`, and the scripts announce with `SPUBLISH`), so an announcement
//! stays in its lock's shard instead of being broadcast to every node; redis-rs resubscribes
//! after reconnects and topology changes. A push does not say which node's connection dropped,
//! so every listener is woken when any does.
//!
//! All `SUBSCRIBE`/`UNSUBSCRIBE` commands go through one task, in order, so an unsubscribe for a
//! channel that was re-subscribed in the meantime is never sent after the new subscribe.
//!
//! The connection speaks RESP3, and announcements are delivered by a push callback that redis-rs
//! calls on its connection task as the message is read: it wakes the waiting contender directly
//! (with RESP2 pub/sub every message would pass through a stream and a reader task of ours: two
//! task hand-offs on the path from a release in another process to the next attempt). RESP3
//! needs Redis 6 or newer; against an older Redis the connection fails and waiters fall back to
//! their timers.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::channels::{Channels, Subscription, SubscriptionCmd};
use super::sentinel::SentinelConn;
use crate::protocol::Announcement;
use crate::Error;

/// Redis refused the command for lack of an ACL right: retrying or reconnecting cannot help.
fn is_refusal(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
}

#[derive(Debug)]
enum Cmd {
    /// Answered with whether Redis confirmed the subscription, or why it refused it.
    Subscribe(String, oneshot::Sender<Result<bool, redis::RedisError>>),
    Unsubscribe(String),
    Disconnected(u64),
}

/// The pub/sub side of a Redis store.
#[derive(Debug)]
pub(crate) struct Hub {
    channels: Arc<Channels>,
    cmds: mpsc::UnboundedSender<Cmd>,
    /// Forwards the last listener's departure to the hub's task.
    unsub: mpsc::UnboundedSender<SubscriptionCmd>,
    op_timeout: Duration,
}

impl Hub {
    /// Starts the hub of one Redis server (its task runs on the current runtime and ends when
    /// the hub is dropped).
    pub(crate) fn standalone(client: &redis::Client, op_timeout: Duration) -> Hub {
        Hub::start(Target::Standalone(Box::new(resp3(client))), op_timeout)
    }

    /// Starts the hub of a Sentinel-managed master: it follows the master `conn` uses.
    pub(crate) fn sentinel(conn: Arc<SentinelConn>, op_timeout: Duration) -> Hub {
        Hub::start(Target::Sentinel(conn), op_timeout)
    }

    /// Starts the hub of a Redis Cluster; `sharded` for Redis 7 or newer (sharded channels).
    pub(crate) fn cluster(client: ClusterClient, sharded: bool, op_timeout: Duration) -> Hub {
        Hub::start(
            Target::Cluster {
                client: Box::new(client),
                sharded,
            },
            op_timeout,
        )
    }

    fn start(target: Target, op_timeout: Duration) -> Hub {
        let channels = Arc::new(Channels::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (unsub, mut unsub_rx) = mpsc::unbounded_channel::<SubscriptionCmd>();
        let forward = tx.downgrade();
        tokio::spawn(async move {
            while let Some(SubscriptionCmd::Unsubscribe(channel)) = unsub_rx.recv().await {
                let Some(tx) = forward.upgrade() else { return };
                let _ = tx.send(Cmd::Unsubscribe(channel));
            }
        });
        let task = HubTask {
            target,
            channels: channels.clone(),
            cmds: tx.downgrade(),
            op_timeout,
            conn: None,
            generation: 0,
            retry_scheduled: false,
        };
        tokio::spawn(task.run(rx));
        Hub {
            channels,
            cmds: tx,
            unsub,
            op_timeout,
        }
    }

    /// Subscribes to `channel` and waits until Redis confirmed it (bounded by the operation
    /// timeout). Only after this returns may the caller retry its acquire: a release published
    /// before the confirmation is not delivered, the retry covers it. A subscription that could
    /// not be confirmed (Redis unreachable) comes back unconfirmed, and its waiter polls; one
    /// that Redis refused (an ACL user without the right to the lock's channel) is an error.
    pub(crate) async fn subscribe(&self, channel: String) -> Result<Subscription, Error> {
        let mut sub = Subscription::new(self.channels.clone(), Some(self.unsub.clone()), channel);
        let (tx, rx) = oneshot::channel();
        let name = sub.channel().to_owned();
        if self.cmds.send(Cmd::Subscribe(name, tx)).is_ok() {
            // The task bounds its own Redis calls; this timeout only guards a stuck task.
            match tokio::time::timeout(self.op_timeout * 2, rx).await {
                Ok(Ok(Ok(confirmed))) => sub.confirmed = confirmed,
                Ok(Ok(Err(refused))) => return Err(Error::Redis(refused)),
                _ => {}
            }
        }
        Ok(sub)
    }
}

/// Resolves when the Sentinel master in use changed (never for other deployments).
async fn switched(epoch: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match epoch {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *epoch = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The same server and settings as `client`, speaking RESP3 (pushes on a normal connection).
fn resp3(client: &redis::Client) -> redis::Client {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    // Opening from a valid `ConnectionInfo` only re-checks it; it cannot fail differently from
    // the first time.
    redis::Client::open(info.set_redis_settings(settings)).unwrap_or_else(|_| client.clone())
}

/// What the hub connects to.
enum Target {
    Standalone(Box<redis::Client>),
    Cluster {
        client: Box<ClusterClient>,
        sharded: bool,
    },
    /// Whatever master the Sentinel connection uses now.
    Sentinel(Arc<SentinelConn>),
}

/// The hub's open connection.
enum PubSubConn {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl PubSubConn {
    async fn subscribe(&mut self, channels: &[String], sharded: bool) -> redis::RedisResult<()> {
        match self {
            PubSubConn::Standalone(c) => c.subscribe(channels).await,
            PubSubConn::Cluster(c) if sharded => c.ssubscribe(channels).await,
            PubSubConn::Cluster(c) => c.subscribe(channels).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str, sharded: bool) -> redis::RedisResult<()> {
        match self {
            PubSubConn::Standalone(c) => c.unsubscribe(channel).await,
            PubSubConn::Cluster(c) if sharded => c.sunsubscribe(channel).await,
            PubSubConn::Cluster(c) => c.unsubscribe(channel).await,
        }
    }
}

struct HubTask {
    target: Target,
    channels: Arc<Channels>,
    cmds: mpsc::WeakUnboundedSender<Cmd>,
    op_timeout: Duration,
    conn: Option<PubSubConn>,
    generation: u64,
    retry_scheduled: bool,
}

impl HubTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        // A Sentinel master that is dropped (demoted, dead, switched) is followed like a
        // disconnect.
        let mut epoch = match &self.target {
            Target::Sentinel(s) => Some(s.epoch()),
            _ => None,
        };
        loop {
            let cmd = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
                () = switched(&mut epoch) => Cmd::Disconnected(self.generation),
            };
            match cmd {
                Cmd::Subscribe(channel, reply) => {
                    let ok = self.subscribe(&channel).await;
                    let _ = reply.send(ok);
                }
                Cmd::Unsubscribe(channel) => {
                    if !self.channels.is_wanted(&channel) {
                        let sharded = self.sharded();
                        if let Some(conn) = self.conn.as_mut() {
                            let _ = tokio::time::timeout(
                                self.op_timeout,
                                conn.unsubscribe(&channel, sharded),
                            )
                            .await;
                        }
                    }
                }
                // A cluster connection reconnects and resubscribes by itself; a message sent
                // while a node's connection was down may be lost, so every listener looks.
                Cmd::Disconnected(_) if matches!(self.target, Target::Cluster { .. }) => {
                    self.channels.wake_all();
                }
                Cmd::Disconnected(generation) => {
                    if generation == self.generation {
                        self.retry_scheduled = false;
                        // The last handle gone, redis-rs stops the connection's task.
                        self.conn = None;
                        self.channels.wake_all();
                        if !self.channels.wanted().is_empty()
                            && matches!(self.connect().await, Ok(true))
                        {
                            // Releases published while we were away were lost.
                            self.channels.wake_all();
                        }
                    }
                }
            }
        }
    }

    /// The client to open the next pub/sub connection with.
    async fn standalone_client(&self) -> Option<redis::Client> {
        match &self.target {
            Target::Standalone(client) => Some((**client).clone()),
            Target::Sentinel(s) => {
                let current = s.current(Instant::now() + self.op_timeout).await.ok()?;
                Some(resp3(&current.client))
            }
            Target::Cluster { .. } => None,
        }
    }

    fn sharded(&self) -> bool {
        matches!(self.target, Target::Cluster { sharded: true, .. })
    }

    async fn subscribe(&mut self, channel: &str) -> Result<bool, redis::RedisError> {
        if !self.channels.is_wanted(channel) {
            return Ok(false); // the subscriber gave up already
        }
        let sharded = self.sharded();
        match self.conn.as_mut() {
            // `connect` subscribes every wanted channel, this one included.
            None => self.connect().await,
            Some(conn) => {
                let channels = [channel.to_owned()];
                match tokio::time::timeout(self.op_timeout, conn.subscribe(&channels, sharded))
                    .await
                {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(e)) if is_refusal(&e) => Err(e),
                    _ => {
                        self.schedule_reconnect(Duration::ZERO);
                        Ok(false)
                    }
                }
            }
        }
    }

    /// Opens a pub/sub connection and subscribes every channel that has listeners: `Ok(true)`
    /// when Redis confirmed, `Ok(false)` when it could not be reached (a reconnect is
    /// scheduled), `Err` when Redis refused the subscription.
    async fn connect(&mut self) -> Result<bool, redis::RedisError> {
        self.generation += 1;
        let generation = self.generation;
        let channels = self.channels.clone();
        let cmds = self.cmds.clone();
        // Runs on redis-rs's connection task for every push; it must not block.
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    if let [redis::Value::BulkString(name), redis::Value::BulkString(payload), ..] =
                        push.data.as_slice()
                    {
                        let name = String::from_utf8_lossy(name);
                        channels.deliver(&name, Announcement::parse(payload));
                    }
                }
                PushKind::Disconnection => {
                    if let Some(cmds) = cmds.upgrade() {
                        let _ = cmds.send(Cmd::Disconnected(generation));
                    }
                }
                _ => {}
            }
            Ok(())
        };
        let opened = match &self.target {
            Target::Standalone(_) | Target::Sentinel(_) => {
                let Some(client) = self.standalone_client().await else {
                    self.schedule_reconnect(Duration::from_millis(500));
                    return Ok(false);
                };
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.op_timeout))
                    .set_response_timeout(Some(self.op_timeout))
                    .set_push_sender(on_push);
                tokio::time::timeout(
                    self.op_timeout,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map(|r| r.map(PubSubConn::Standalone))
            }
            Target::Cluster { client, .. } => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(self.op_timeout)
                    .set_response_timeout(self.op_timeout)
                    .set_push_sender(on_push);
                tokio::time::timeout(
                    self.op_timeout,
                    client.get_async_connection_with_config(config),
                )
                .await
                .map(|r| r.map(PubSubConn::Cluster))
            }
        };
        let mut conn = match opened {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) if is_refusal(&e) => return Err(e),
            _ => {
                tracing::debug!(target: "lockattr", "pub/sub connection failed; waiters fall back to timers");
                self.schedule_reconnect(Duration::from_millis(500));
                return Ok(false);
            }
        };
        let wanted = self.channels.wanted();
        if !wanted.is_empty() {
            match tokio::time::timeout(self.op_timeout, conn.subscribe(&wanted, self.sharded()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) if is_refusal(&e) => {
                    self.conn = Some(conn);
                    return Err(e);
                }
                _ => {
                    self.schedule_reconnect(Duration::from_millis(500));
                    return Ok(false);
                }
            }
        }
        self.conn = Some(conn);
        Ok(true)
    }

    /// Asks the task to reconnect after `delay`, while anyone still listens.
    fn schedule_reconnect(&mut self, delay: Duration) {
        if self.retry_scheduled {
            return;
        }
        self.retry_scheduled = true;
        let generation = self.generation;
        let cmds = self.cmds.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // With nobody listening any more the task only drops the dead connection; the next
            // subscribe opens a new one.
            if let Some(cmds) = cmds.upgrade() {
                let _ = cmds.send(Cmd::Disconnected(generation));
            }
        });
    }
}
