//! The Redis Cluster engine: the Redis engine's data and scripts, spread over the shards
//! of a cluster, with live delivery over sharded pub/sub (Redis 7+).
//!
//! A channel's keys and its shard channel `P:{C}:live` share the hash tag `{C}`, so they
//! live in one slot: the publish script appends and `SPUBLISH`es on the slot's master, and
//! live traffic stays on the shard that owns the channel instead of reaching every node
//! of the cluster as plain `PUBLISH` would. The cluster client follows `MOVED` and `ASK`
//! redirects and refreshes its slot map by itself.
//!
//! Sharded subscriptions are this engine's to keep: a node drops them (with an
//! `sunsubscribe` push) when their slot moves away or its master steps down, a lost
//! connection takes them along, and so does a connection the cluster client closes
//! after a slot refresh, without a word. The listener (see `listener`) subscribes such
//! channels again wherever their slot now lives, proves each subscription with a probe
//! published on the shard channel, and subscribes again when the probe does not come
//! back. After every resubscription it checks the channel's history
//! against the last message it handed out (see `VERIFY` in `redis_script`):
//! if the history lacks writes readers already have, the channel starts a new epoch, so
//! they get an explicit gap rather than a reused offset. (Every script already starts
//! one, keeping the history, on its first touch of a channel after a replica's
//! promotion: see `PROMOTED` there. That closes the race in which a publish reuses an
//! offset, or a reader resumes, before any node checked.) It then re-announces
//! the last retained message, so subscribers notice anything missed meanwhile and fill it
//! from history.
//!
//! A publish is acknowledged once `WAIT` reports it on `min_replicas` replicas, so that
//! the replica promoted after a master dies holds every acknowledged message.
//!
//! The server API's commands travel on `P:control` with plain `PUBLISH`, which a cluster
//! broadcasts to every node, so each gateway node follows it with one plain `SUBSCRIBE`
//! (the cluster client subscribes it again after a reconnect). Presence uses the Redis
//! engine's sorted sets (see [`super::redis`]); their keys carry the channel's hash tag,
//! so each set lives in its channel's slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::Histogram;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{ProtocolVersion, Value};
use tokio::sync::{mpsc, watch};

mod listener;
mod probe;
mod shared;

use listener::Listener;
use shared::{Shared, Watch, control_topic, keep_presence, topic};

use super::control::Command;
use super::redis::{EngineMetrics, kept, presence, topics};
use super::redis_script::{self, COMMAND_TIMEOUT, Scripts, unavailable};
use super::{Engine, History, Hub, Present, Reply, RetentionPolicy, later};
use crate::error::{Error, Result};
use crate::protocol::{Channel, Message, Position, Publication};
use crate::sync::Unpoisoned;

/// Settings of the Redis Cluster engine.
#[derive(Clone, Debug)]
pub struct RedisClusterSettings {
    /// Seed nodes, `redis://host:port` each; the rest of the cluster is discovered.
    pub urls: Vec<String>,
    /// Prefix of every key and shard channel.
    pub prefix: String,
    /// History retention per channel.
    pub retention: RetentionPolicy,
    /// Replicas that must hold a publish before it is acknowledged (0: do not wait).
    pub min_replicas: u32,
}

/// How long a publish waits for its replicas before it fails as `engine_unavailable`.
const REPLICATION_TIMEOUT_MS: u64 = 500;

/// The Redis Cluster engine.
pub struct RedisClusterEngine {
    settings: RedisClusterSettings,
    scripts: Arc<Scripts>,
    connection: watch::Receiver<Option<ClusterConnection>>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Watch>,
    metrics: EngineMetrics,
    /// This node's presence changes, written in order by [`presence::keep`].
    presence: mpsc::UnboundedSender<presence::Change>,
}

impl RedisClusterEngine {
    /// Checks the seed URLs and starts the listener, which connects in the background
    /// (the gateway starts even while the cluster is down) and feeds `hub`.
    pub fn new(
        hub: Arc<Hub>,
        settings: RedisClusterSettings,
        metrics: EngineMetrics,
    ) -> Result<Arc<Self>> {
        let (pushes, push_receiver) = mpsc::unbounded_channel();
        let client = ClusterClientBuilder::new(settings.urls.iter().map(String::as_str))
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(pushes)
            .connection_timeout(COMMAND_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT)
            .retries(3)
            .max_retry_wait(200)
            .build()
            .map_err(|e| Error::EngineUnavailable(format!("bad redis_url: {e}")))?;
        let (connection_sender, connection) = watch::channel(None);
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            watched: Mutex::default(),
            last: Mutex::default(),
            up: AtomicBool::new(false),
            gauge: metrics.up.clone(),
        });
        let scripts = Arc::new(Scripts::new(
            &settings.prefix,
            settings.retention.clone(),
            "SPUBLISH",
            true,
        ));
        let (changes, changed) = mpsc::unbounded_channel();
        tokio::spawn(keep_presence(
            settings.prefix.clone(),
            hub.clone(),
            connection.clone(),
            changed,
        ));
        let listener = Listener::new(hub, scripts.clone(), shared.clone());
        tokio::spawn(listener.run(client, connection_sender, command_receiver, push_receiver));
        Ok(Arc::new(RedisClusterEngine {
            settings,
            scripts,
            connection,
            shared,
            commands,
            metrics,
            presence: changes,
        }))
    }

    fn connection(&self) -> Result<ClusterConnection> {
        self.connection
            .borrow()
            .clone()
            .ok_or_else(|| Error::EngineUnavailable("redis cluster not reached yet".into()))
    }

    /// Records whether the cluster answered and, when it did, the round trip.
    fn record<T>(&self, result: &Result<T>, started: Instant, round_trip: &Histogram) {
        self.shared.set_up(result.is_ok());
        if result.is_ok() {
            round_trip.observe(started.elapsed().as_secs_f64());
        }
    }

    async fn publish_now(
        &self,
        channel: &Channel,
        publication: Publication,
    ) -> Result<Arc<Message>> {
        let started = Instant::now();
        let result = async {
            let mut connection = self.connection()?;
            let invocation =
                self.scripts
                    .publish(channel, &publication, topic(self.scripts.prefix(), channel));
            let json = redis_script::invoke(&invocation, &mut connection).await?;
            self.replicated(&mut connection, channel).await?;
            redis_script::published(json)
        }
        .await;
        self.record(&result, started, &self.metrics.publish_seconds);
        result
    }

    /// Waits until the channel's master has passed everything this node wrote to it to
    /// `min_replicas` replicas. The cluster client keeps one connection per node, so the
    /// `WAIT` follows the publish on the connection that carried it.
    async fn replicated(
        &self,
        connection: &mut ClusterConnection,
        channel: &Channel,
    ) -> Result<()> {
        let wanted = self.settings.min_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let (meta, _) = self.scripts.keys(channel);
        let route = Route::with_slot(Slot::for_key(meta), SlotAddr::Master);
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(REPLICATION_TIMEOUT_MS);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        let reached =
            match tokio::time::timeout(COMMAND_TIMEOUT, connection.route_command(wait, routing))
                .await
            {
                Ok(Ok(Value::Int(reached))) => reached,
                Ok(Ok(_)) => return Err(Error::Internal("WAIT answered a non-integer".into())),
                Ok(Err(err)) => return Err(unavailable(err)),
                Err(_) => return Err(Error::EngineUnavailable("WAIT timed out".into())),
            };
        redis_script::replicated(reached, wanted)
    }

    async fn history_now(
        &self,
        channel: &Channel,
        from: Option<&Position>,
        limit: usize,
    ) -> Result<History> {
        let started = Instant::now();
        let result = async {
            let mut connection = self.connection()?;
            let invocation = self.scripts.history(channel, from, limit);
            let raw = redis_script::invoke(&invocation, &mut connection).await?;
            redis_script::history(channel, raw)
        }
        .await;
        self.record(&result, started, &self.metrics.history_seconds);
        // A reader may take a message from history before its live copy arrives: it
        // counts as seen for the check after a failover.
        if let Some(newest) = result.as_ref().ok().and_then(|h| h.messages.last()) {
            self.shared.saw(newest);
        }
        result
    }

    async fn watch_now(&self, channel: &Channel) -> Result<()> {
        let mut ready = {
            let mut watched = self.shared.watched.locked();
            match watched.get(channel) {
                Some(sender) => sender.subscribe(),
                None => {
                    let (sender, receiver) = watch::channel(false);
                    watched.insert(channel.clone(), sender);
                    let _ = self.commands.send(Watch::Subscribe(channel.clone()));
                    receiver
                }
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, ready.wait_for(|ready| *ready)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::EngineUnavailable(
                "could not subscribe to the channel in the redis cluster".into(),
            )),
        }
    }
}

impl Engine for RedisClusterEngine {
    fn publish(&self, channel: &Channel, publication: Publication) -> Reply<'_, Arc<Message>> {
        let channel = channel.clone();
        later(async move { self.publish_now(&channel, publication).await })
    }

    fn history<'a>(
        &'a self,
        channel: &'a Channel,
        from: Option<&'a Position>,
        limit: usize,
    ) -> Reply<'a, History> {
        later(self.history_now(channel, from, limit))
    }

    fn watch<'a>(&'a self, channel: &'a Channel) -> Reply<'a, ()> {
        later(self.watch_now(channel))
    }

    fn unwatch(&self, channel: &Channel) {
        let removed = self.shared.watched.locked().remove(channel).is_some();
        if removed {
            self.shared.last.locked().remove(channel);
            let _ = self.commands.send(Watch::Unsubscribe(channel.clone()));
        }
    }

    fn claim_once<'a>(&'a self, key: &'a str, ttl: Duration) -> Reply<'a, bool> {
        let prefix = &self.settings.prefix;
        later(async move { kept::claim_once(self.connection()?, prefix, key, ttl).await })
    }

    fn keep<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Reply<'a, ()> {
        let prefix = &self.settings.prefix;
        later(async move { kept::keep(self.connection()?, prefix, key, value, ttl).await })
    }

    fn kept<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Bytes>> {
        later(async move { kept::kept(self.connection()?, &self.settings.prefix, key).await })
    }

    fn rekeep<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Reply<'a, bool> {
        let prefix = &self.settings.prefix;
        later(async move { kept::rekeep(self.connection()?, prefix, key, value, ttl).await })
    }

    fn prolong<'a>(&'a self, key: &'a str, ttl: Duration) -> Reply<'a, bool> {
        let prefix = &self.settings.prefix;
        later(async move { kept::prolong(self.connection()?, prefix, key, ttl).await })
    }

    fn presence<'a>(&'a self, channel: &'a Channel, here: Vec<Present>) -> Reply<'a, Vec<Present>> {
        later(async move {
            let connection = self.connection()?;
            presence::read(&self.settings.prefix, connection, channel, here).await
        })
    }

    fn presence_changed(
        &self,
        channel: &Channel,
        present: &Present,
        joined: bool,
    ) -> Reply<'_, ()> {
        let (change, written) = presence::Change::new(channel, present, joined);
        let _ = self.presence.send(change);
        later(async move {
            match tokio::time::timeout(COMMAND_TIMEOUT, written).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(Error::EngineUnavailable(
                    "presence not written to the redis cluster".into(),
                )),
            }
        })
    }

    fn command<'a>(&'a self, command: &'a Command) -> Reply<'a, ()> {
        later(async move {
            let connection = self.connection()?;
            let topic = control_topic(&self.settings.prefix);
            topics::announce(connection, topic, command).await
        })
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "redis-cluster"
    }
}
