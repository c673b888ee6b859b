//! The Redis side of release announcements: one pub/sub connection per `Locker` (shared by its
//! clones), opened on first use and reopened after a disconnect; every listener is woken when
//! it comes back, because a release published while it was down was lost.
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
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot};

use super::channels::{Channels, Subscription, SubscriptionCmd};
use crate::protocol::Announcement;

#[derive(Debug)]
enum Cmd {
    Subscribe(String, oneshot::Sender<bool>),
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
    /// Starts the hub's task on the current runtime. The task ends when the hub is dropped.
    pub(crate) fn start(client: &redis::Client, op_timeout: Duration) -> Hub {
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
            client: resp3(client),
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
    /// before the confirmation is not delivered, the retry covers it.
    pub(crate) async fn subscribe(&self, channel: String) -> Subscription {
        let mut sub = Subscription::new(self.channels.clone(), Some(self.unsub.clone()), channel);
        let (tx, rx) = oneshot::channel();
        let name = sub.channel().to_owned();
        if self.cmds.send(Cmd::Subscribe(name, tx)).is_ok() {
            // The task bounds its own Redis calls; this timeout only guards a stuck task.
            if let Ok(Ok(ok)) = tokio::time::timeout(self.op_timeout * 2, rx).await {
                sub.confirmed = ok;
            }
        }
        sub
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

struct HubTask {
    client: redis::Client,
    channels: Arc<Channels>,
    cmds: mpsc::WeakUnboundedSender<Cmd>,
    op_timeout: Duration,
    conn: Option<MultiplexedConnection>,
    generation: u64,
    retry_scheduled: bool,
}

impl HubTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Subscribe(channel, reply) => {
                    let ok = self.subscribe(&channel).await;
                    let _ = reply.send(ok);
                }
                Cmd::Unsubscribe(channel) => {
                    if !self.channels.is_wanted(&channel) {
                        if let Some(conn) = self.conn.as_mut() {
                            let _ =
                                tokio::time::timeout(self.op_timeout, conn.unsubscribe(&channel))
                                    .await;
                        }
                    }
                }
                Cmd::Disconnected(generation) => {
                    if generation == self.generation {
                        self.retry_scheduled = false;
                        // The last handle gone, redis-rs stops the connection's task.
                        self.conn = None;
                        self.channels.wake_all();
                        if !self.channels.wanted().is_empty() && self.connect().await {
                            // Releases published while we were away were lost.
                            self.channels.wake_all();
                        }
                    }
                }
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) -> bool {
        if !self.channels.is_wanted(channel) {
            return false; // the subscriber gave up already
        }
        match self.conn.as_mut() {
            // `connect` subscribes every wanted channel, this one included.
            None => self.connect().await,
            Some(conn) => {
                match tokio::time::timeout(self.op_timeout, conn.subscribe(channel)).await {
                    Ok(Ok(())) => true,
                    _ => {
                        self.schedule_reconnect(Duration::ZERO);
                        false
                    }
                }
            }
        }
    }

    /// Opens a pub/sub connection and subscribes every channel that has listeners.
    async fn connect(&mut self) -> bool {
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
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_push_sender(on_push);
        let opened = tokio::time::timeout(
            self.op_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        let Ok(Ok(mut conn)) = opened else {
            tracing::debug!(target: "lockattr", "pub/sub connection failed; waiters fall back to timers");
            self.schedule_reconnect(Duration::from_millis(500));
            return false;
        };
        let wanted = self.channels.wanted();
        if !wanted.is_empty() {
            let ok = matches!(
                tokio::time::timeout(self.op_timeout, conn.subscribe(&wanted)).await,
                Ok(Ok(()))
            );
            if !ok {
                self.schedule_reconnect(Duration::from_millis(500));
                return false;
            }
        }
        self.conn = Some(conn);
        true
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
