//! The lock protocol on Redis: each operation is one command, pipeline or script call through
//! the bounded connection layer (`conn`), with announcements through the pub/sub hub.

use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::channels::Subscription;
use super::conn::Conn;
use super::pubsub::Hub;
use super::AttemptKind;
use crate::key::RedisNames;
use crate::protocol::{AttemptReply, ReleaseReply};
use crate::scripts::{self, Scripts};
use crate::Error;

/// A Redis deployment, as the lock state machine sees it.
#[derive(Debug)]
pub(crate) struct RedisStore {
    conn: Conn,
    scripts: &'static Scripts,
    hub: Hub,
}

impl RedisStore {
    /// Connects to one Redis server and loads the scripts.
    pub(crate) async fn standalone(
        client: redis::Client,
        op_timeout: Duration,
    ) -> Result<Self, Error> {
        let conn = Conn::standalone(client.clone(), op_timeout).await?;
        let scripts = Scripts::publishing();
        conn.load(scripts).await;
        let hub = Hub::standalone(&client, op_timeout);
        Ok(RedisStore { conn, scripts, hub })
    }

    /// Connects to a Redis Cluster and loads the scripts on every node. Releases are announced
    /// on sharded channels when the cluster runs Redis 7 or newer (or does not say).
    pub(crate) async fn cluster(
        client: redis::cluster::ClusterClient,
        op_timeout: Duration,
    ) -> Result<Self, Error> {
        let conn = Conn::cluster(&client, op_timeout).await?;
        let sharded = conn.server_version().await.is_none_or(|v| v >= (7, 0));
        let scripts = if sharded {
            Scripts::sharded()
        } else {
            Scripts::publishing()
        };
        conn.load(scripts).await;
        let hub = Hub::cluster(client, sharded, op_timeout);
        Ok(RedisStore { conn, scripts, hub })
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.conn.deadline()
    }

    pub(crate) async fn attempt(
        &self,
        names: &RedisNames,
        token: &str,
        lease: Duration,
        kind: AttemptKind<'_>,
        until: Instant,
    ) -> Result<AttemptReply, Error> {
        match kind {
            AttemptKind::Plain => {
                let pipe = scripts::try_plain(names, token, lease);
                let (taken, time): (Value, (u64, u64)) =
                    self.conn.query_pipe("acquire", &pipe, until).await?;
                Ok(scripts::decode_plain(&taken, time))
            }
            AttemptKind::Scripted {
                registered,
                grant_lease,
            } => {
                let call = self
                    .scripts
                    .acquire(names, token, lease, registered, grant_lease);
                let reply: Value = self.conn.eval("acquire", &call, until).await?;
                scripts::decode_acquire(&reply).map_err(Error::Redis)
            }
        }
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
        fence: u64,
        lease: Duration,
        until: Instant,
    ) -> Result<bool, Error> {
        let call = self.scripts.renew(names, token, fence, lease);
        let reply: i64 = self.conn.eval("renew", &call, until).await?;
        Ok(reply == 1)
    }

    pub(crate) async fn handoff(
        &self,
        names: &RedisNames,
        old_token: &str,
        old_fence: u64,
        new_token: &str,
        lease: Duration,
        until: Instant,
    ) -> Result<Option<u64>, Error> {
        let call = self
            .scripts
            .handoff(names, old_token, old_fence, new_token, lease);
        let fence: u64 = self.conn.eval("handoff", &call, until).await?;
        Ok((fence > 0).then_some(fence))
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
