//! One pub/sub connection per `Locker` (shared by its clones), and one reference-counted
//! subscription per contended lock.
//!
//! A process subscribes to a lock's release channel only while one of its tasks contends for
//! that lock in Redis (the local queue keeps that to one task per key), so a busy key costs one
//! `SUBSCRIBE` per contention episode, not one per waiter. The connection is opened on first use
//! and reopened after a disconnect; every subscriber is woken when it comes back, because a
//! release published while it was down was lost.
//!
//! All `SUBSCRIBE`/`UNSUBSCRIBE` commands go through one task, in order, so an unsubscribe for a
//! channel that was re-subscribed in the meantime is never sent after the new subscribe.
//!
//! The connection speaks RESP3, and announcements are delivered by a push callback that redis-rs
//! calls on its connection task as the message is read: it wakes the waiting contender directly.
//! (With RESP2 pub/sub, redis-rs forwards each message through a channel to a stream, and a
//! reader task of ours would have to pass it on: two task hand-offs on the path from a release
//! in another process to the next attempt, measured in `lockbench`'s cross-process handoff.)
//! RESP3 needs Redis 6 or newer; against an older Redis the connection fails and waiters fall
//! back to their timers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot, Notify};

#[derive(Debug, Default)]
struct Channels {
    map: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    refs: usize,
    notify: Arc<Notify>,
    /// The latest announcement not yet looked at (see [`Announcement`]).
    last: Option<Announcement>,
}

/// What a release announced (see `scripts` for the grant protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// The lock was released and is free.
    Released,
    /// The lock was granted to the waiter registered with this token, with this fencing token.
    Granted { token: String, fence: u64 },
}

#[derive(Debug)]
enum Cmd {
    Subscribe(String, oneshot::Sender<bool>),
    Unsubscribe(String),
    Disconnected(u64),
}

/// The pub/sub side of a `Locker`.
#[derive(Debug)]
pub(crate) struct Hub {
    channels: Arc<Mutex<Channels>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    op_timeout: Duration,
}

/// Interest in one release channel; dropping it unsubscribes when nobody else listens.
#[derive(Debug)]
pub(crate) struct Subscription {
    channels: Arc<Mutex<Channels>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    channel: String,
    notify: Arc<Notify>,
    /// Whether Redis confirmed the subscription; if not, waiters poll on a short timer.
    pub(crate) confirmed: bool,
}

fn lock(m: &Mutex<Channels>) -> std::sync::MutexGuard<'_, Channels> {
    // The map stays consistent even if a holder panicked: every update is a single insert or
    // remove.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// Starts the hub's task on the current runtime. The task ends when the hub is dropped.
    pub(crate) fn start(client: redis::Client, op_timeout: Duration) -> Hub {
        let channels = Arc::new(Mutex::new(Channels::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = HubTask {
            client: resp3(&client),
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
            op_timeout,
        }
    }

    /// Subscribes to `channel` and waits until Redis confirmed it (bounded by the operation
    /// timeout). Only after this returns may the caller retry its acquire: a release published
    /// before the confirmation is not delivered, the retry covers it.
    pub(crate) async fn subscribe(&self, channel: &str) -> Subscription {
        let notify = {
            let mut ch = lock(&self.channels);
            let entry = ch.map.entry(channel.to_owned()).or_insert_with(|| Entry {
                refs: 0,
                notify: Arc::new(Notify::new()),
                last: None,
            });
            entry.refs += 1;
            entry.notify.clone()
        };
        let mut sub = Subscription {
            channels: self.channels.clone(),
            cmds: self.cmds.clone(),
            channel: channel.to_owned(),
            notify,
            confirmed: false,
        };
        let (tx, rx) = oneshot::channel();
        if self
            .cmds
            .send(Cmd::Subscribe(channel.to_owned(), tx))
            .is_ok()
        {
            // The task bounds its own Redis calls; this timeout only guards a stuck task.
            if let Ok(Ok(ok)) = tokio::time::timeout(self.op_timeout * 2, rx).await {
                sub.confirmed = ok;
            }
        }
        sub
    }
}

impl Subscription {
    /// Resolves on the next release announced on the channel (or a stored announcement that
    /// arrived since the last call), and when the pub/sub connection was re-established.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The latest announcement since the last call, if any arrived.
    pub(crate) fn take_announcement(&self) -> Option<Announcement> {
        lock(&self.channels)
            .map
            .get_mut(&self.channel)
            .and_then(|e| e.last.take())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut ch = lock(&self.channels);
            match ch.map.get_mut(&self.channel) {
                Some(e) if e.refs > 1 => {
                    e.refs -= 1;
                    false
                }
                Some(_) => {
                    ch.map.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self
                .cmds
                .send(Cmd::Unsubscribe(std::mem::take(&mut self.channel)));
        }
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
    channels: Arc<Mutex<Channels>>,
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
                    let still_wanted = lock(&self.channels).map.contains_key(&channel);
                    if !still_wanted {
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
                        self.drop_connection();
                        self.wake_all();
                        if !lock(&self.channels).map.is_empty() && self.connect().await {
                            // Releases published while we were away were lost.
                            self.wake_all();
                        }
                    }
                }
            }
        }
        self.drop_connection();
    }

    fn drop_connection(&mut self) {
        // The last handle gone, redis-rs stops the connection's task.
        self.conn = None;
    }

    fn wake_all(&self) {
        for e in lock(&self.channels).map.values() {
            e.notify.notify_one();
        }
    }

    async fn subscribe(&mut self, channel: &str) -> bool {
        if !lock(&self.channels).map.contains_key(channel) {
            return false; // the subscriber gave up already
        }
        match self.conn.as_mut() {
            // `connect` subscribes every channel in the map, this one included.
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
                PushKind::Message => {
                    if let [redis::Value::BulkString(name), redis::Value::BulkString(payload), ..] =
                        push.data.as_slice()
                    {
                        let name = String::from_utf8_lossy(name);
                        if let Some(e) = lock(&channels).map.get_mut(name.as_ref()) {
                            e.last = Some(match crate::scripts::parse_announcement(payload) {
                                Some((token, fence)) => Announcement::Granted { token, fence },
                                None => Announcement::Released,
                            });
                            e.notify.notify_one();
                        }
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
            tracing::debug!("lockattr: pub/sub connection failed; waiters fall back to timers");
            self.schedule_reconnect(Duration::from_millis(500));
            return false;
        };
        let wanted: Vec<String> = lock(&self.channels).map.keys().cloned().collect();
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
