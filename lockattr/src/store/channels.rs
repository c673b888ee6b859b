//! The release channels this process listens to: one reference-counted entry per contended
//! lock, shared by the Redis pub/sub hub (which fills it from pushes) and the in-memory store
//! (which fills it directly).
//!
//! A process listens to a lock's channel only while one of its tasks contends for that lock in
//! the store (the local queue keeps that to one task per key), so a busy key costs one
//! subscription per contention episode, not one per waiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use crate::protocol::Announcement;
use crate::sync::lock;

/// Every channel with listeners, by name.
#[derive(Debug, Default)]
pub(crate) struct Channels {
    map: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    refs: usize,
    notify: Arc<Notify>,
    /// The latest announcement not yet looked at.
    last: Option<Announcement>,
}

impl Channels {
    /// Registers a listener for `channel`; the caller wraps it in a [`Subscription`].
    pub(crate) fn listen(self: &Arc<Self>, channel: &str) -> Arc<Notify> {
        let mut map = lock(&self.map);
        let entry = map.entry(channel.to_owned()).or_insert_with(|| Entry {
            refs: 0,
            notify: Arc::new(Notify::new()),
            last: None,
        });
        entry.refs += 1;
        entry.notify.clone()
    }

    /// Removes one listener; `true` when it was the last one for the channel.
    fn unlisten(&self, channel: &str) -> bool {
        let mut map = lock(&self.map);
        match map.get_mut(channel) {
            Some(e) if e.refs > 1 => {
                e.refs -= 1;
                false
            }
            Some(_) => {
                map.remove(channel);
                true
            }
            None => false,
        }
    }

    /// Whether anyone listens to `channel`.
    pub(crate) fn is_wanted(&self, channel: &str) -> bool {
        lock(&self.map).contains_key(channel)
    }

    /// Every channel with listeners.
    pub(crate) fn wanted(&self) -> Vec<String> {
        lock(&self.map).keys().cloned().collect()
    }

    /// Delivers an announcement: it is kept for the listener and the listener is woken.
    /// Returns whether anyone listened.
    pub(crate) fn deliver(&self, channel: &str, announcement: Announcement) -> bool {
        if let Some(e) = lock(&self.map).get_mut(channel) {
            e.last = Some(announcement);
            e.notify.notify_one();
            true
        } else {
            false
        }
    }

    /// Wakes every listener (the connection that carries announcements was lost, so an
    /// announcement may have been missed).
    pub(crate) fn wake_all(&self) {
        for e in lock(&self.map).values() {
            e.notify.notify_one();
        }
    }

    fn take(&self, channel: &str) -> Option<Announcement> {
        lock(&self.map).get_mut(channel).and_then(|e| e.last.take())
    }
}

/// A request to the task that manages the store's subscriptions.
#[derive(Debug)]
pub(crate) enum SubscriptionCmd {
    /// Nobody listens to this channel any more.
    Unsubscribe(String),
}

/// Interest in one release channel; dropping it unsubscribes when nobody else listens.
#[derive(Debug)]
pub(crate) struct Subscription {
    channels: Arc<Channels>,
    /// Where to say that the last listener left (the Redis hub); `None` in memory.
    cmds: Option<mpsc::UnboundedSender<SubscriptionCmd>>,
    channel: String,
    notify: Arc<Notify>,
    /// Whether the store confirmed the subscription; if not, waiters poll on a short timer.
    pub(crate) confirmed: bool,
}

impl Subscription {
    pub(crate) fn new(
        channels: Arc<Channels>,
        cmds: Option<mpsc::UnboundedSender<SubscriptionCmd>>,
        channel: String,
    ) -> Self {
        let notify = channels.listen(&channel);
        Subscription {
            channels,
            cmds,
            channel,
            notify,
            confirmed: false,
        }
    }

    /// Resolves on the next announcement on the channel (or one that arrived since the last
    /// call), and when the connection carrying announcements was re-established.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The channel's name.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The latest announcement since the last call, if any arrived.
    pub(crate) fn take_announcement(&self) -> Option<Announcement> {
        self.channels.take(&self.channel)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.channels.unlisten(&self.channel) {
            if let Some(cmds) = &self.cmds {
                let _ = cmds.send(SubscriptionCmd::Unsubscribe(std::mem::take(
                    &mut self.channel,
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn announcements_reach_the_listener_and_refs_count() {
        let channels = Arc::new(Channels::default());
        let a = Subscription::new(channels.clone(), None, "c".into());
        let b = Subscription::new(channels.clone(), None, "c".into());
        assert!(channels.deliver("c", Announcement::Released));
        a.notified().await; // the stored permit
        assert_eq!(a.take_announcement(), Some(Announcement::Released));
        assert_eq!(b.take_announcement(), None, "taken once");
        drop(a);
        assert!(channels.is_wanted("c"));
        drop(b);
        assert!(!channels.is_wanted("c"));
        assert!(!channels.deliver("c", Announcement::Released));
    }
}
