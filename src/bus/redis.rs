//! The Redis engine: many gateway nodes, one bus, no sticky sessions.
//!
//! The data layout and the scripts are `redis_script`'s, shared with the cluster
//! engine; live messages are announced on `P:live:C` (or on shard channels). Besides:
//! - `P:control`, the pub/sub channel of the server API's commands, which every node
//!   follows (see [`super::control`]).
//! - `P:{C}:presence`, a sorted set of the clients present in `C` on every node (see
//!   `presence`): a dead node's vanish within [`PRESENCE_TTL`].
//!
//! Each
//! node subscribes only to the channels its own clients follow and hands every announced
//! message to its hub once, whatever its number of local subscribers.
//!
//! When the keys vanish (eviction, flush, expiry of an idle channel) the next touch makes
//! a new epoch, so readers get an explicit gap, never a silent loss. While Redis is down,
//! publishes and history reads fail with `engine_unavailable`; streams stay open. After
//! the pub/sub connection comes back the node resubscribes and re-announces each
//! channel's last retained message to its hub: subscribers that missed messages see a
//! hole and fill it from history, so nothing Redis still holds is lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::{Histogram, IntGauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};
use tokio::sync::{mpsc, watch};

pub(super) mod kept;
pub(super) mod presence;
pub(super) mod topics;

pub use presence::{PRESENCE_HEARTBEAT, PRESENCE_TTL};
use topics::Topics;

use super::control::Command;
use super::redis_script::{self, COMMAND_TIMEOUT, Scripts, log_key, unavailable};
use super::{Engine, History, Hub, Present, Reply, RetentionPolicy, later};
use crate::error::{Error, Result};
use crate::protocol::{Channel, Message, Position, Publication};
use crate::sync::Unpoisoned;

/// Settings of the Redis engine.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// History retention per channel.
    pub retention: RetentionPolicy,
    /// 0: each node subscribes to the channels its clients follow. N > 0: every message
    /// goes out on one of N shard channels and every node subscribes to all of them.
    pub shards: u32,
}

/// Engine health and latency, exported by the gateway's metrics.
#[derive(Clone)]
pub struct EngineMetrics {
    /// 1 while the engine answers, 0 while it does not.
    pub up: IntGauge,
    /// Round trip of one publish.
    pub publish_seconds: Histogram,
    /// Round trip of one history read.
    pub history_seconds: Histogram,
}

/// The Redis engine.
pub struct RedisEngine {
    settings: RedisSettings,
    topics: Topics,
    connection: ConnectionManager,
    scripts: Scripts,
    watched: Arc<Mutex<HashMap<Channel, watch::Sender<bool>>>>,
    commands: mpsc::UnboundedSender<Watch>,
    up: Arc<AtomicBool>,
    metrics: EngineMetrics,
    /// This node's presence changes, written in order by [`presence::keep`].
    presence: mpsc::UnboundedSender<presence::Change>,
}

enum Watch {
    Subscribe(Channel),
    Unsubscribe(Channel),
}

impl RedisEngine {
    /// Connects lazily (the gateway starts even while Redis is down) and starts the
    /// pub/sub listener that feeds `hub`.
    pub fn new(
        hub: Arc<Hub>,
        settings: RedisSettings,
        metrics: EngineMetrics,
    ) -> Result<Arc<Self>> {
        let client = Client::open(settings.url.as_str())
            .map_err(|e| Error::EngineUnavailable(format!("bad redis_url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let (changes, changed) = mpsc::unbounded_channel();
        let topics = Topics {
            prefix: settings.prefix.clone(),
            shards: settings.shards,
        };
        let engine = Arc::new(RedisEngine {
            topics: topics.clone(),
            scripts: Scripts::new(
                &settings.prefix,
                settings.retention.clone(),
                "PUBLISH",
                false,
            ),
            settings,
            connection,
            watched: Arc::default(),
            commands,
            up: Arc::new(AtomicBool::new(false)),
            metrics,
            presence: changes,
        });
        tokio::spawn(presence::keep(
            engine.settings.prefix.clone(),
            hub.clone(),
            engine.connection.clone(),
            changed,
        ));
        let listener = Listener {
            client,
            hub,
            topics,
            prefix: engine.settings.prefix.clone(),
            watched: engine.watched.clone(),
            up: engine.up.clone(),
            gauge: engine.metrics.up.clone(),
            connection: engine.connection.clone(),
        };
        tokio::spawn(listener.run(receiver));
        Ok(engine)
    }

    fn record(&self, ok: bool) {
        self.up.store(ok, Ordering::Relaxed);
        self.metrics.up.set(i64::from(ok));
    }

    /// Runs a script with the command timeout, recording whether Redis answered and, when
    /// it did, the round trip.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        round_trip: &Histogram,
    ) -> Result<T> {
        let started = Instant::now();
        let mut connection = self.connection.clone();
        let result = redis_script::invoke(invocation, &mut connection).await;
        self.record(result.is_ok());
        if result.is_ok() {
            round_trip.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn publish_now(
        &self,
        channel: &Channel,
        publication: Publication,
    ) -> Result<Arc<Message>> {
        let invocation = self
            .scripts
            .publish(channel, &publication, self.topics.of(channel));
        let json = self
            .invoke(&invocation, &self.metrics.publish_seconds)
            .await?;
        redis_script::published(json)
    }

    async fn history_now(
        &self,
        channel: &Channel,
        from: Option<&Position>,
        limit: usize,
    ) -> Result<History> {
        let invocation = self.scripts.history(channel, from, limit);
        let raw = self
            .invoke(&invocation, &self.metrics.history_seconds)
            .await?;
        redis_script::history(channel, raw)
    }

    async fn watch_now(&self, channel: &Channel) -> Result<()> {
        let mut ready = {
            let mut watched = self.watched.locked();
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
                "could not subscribe to the channel in redis".into(),
            )),
        }
    }
}

impl Engine for RedisEngine {
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
        let removed = self.watched.locked().remove(channel).is_some();
        if removed {
            let _ = self.commands.send(Watch::Unsubscribe(channel.clone()));
        }
    }

    fn claim_once<'a>(&'a self, key: &'a str, ttl: Duration) -> Reply<'a, bool> {
        let prefix = &self.settings.prefix;
        later(kept::claim_once(self.connection.clone(), prefix, key, ttl))
    }

    fn keep<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Reply<'a, ()> {
        let prefix = &self.settings.prefix;
        later(kept::keep(self.connection.clone(), prefix, key, value, ttl))
    }

    fn kept<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Bytes>> {
        later(kept::kept(
            self.connection.clone(),
            &self.settings.prefix,
            key,
        ))
    }

    fn rekeep<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Reply<'a, bool> {
        let prefix = &self.settings.prefix;
        later(kept::rekeep(
            self.connection.clone(),
            prefix,
            key,
            value,
            ttl,
        ))
    }

    fn prolong<'a>(&'a self, key: &'a str, ttl: Duration) -> Reply<'a, bool> {
        let prefix = &self.settings.prefix;
        later(kept::prolong(self.connection.clone(), prefix, key, ttl))
    }

    fn presence<'a>(&'a self, channel: &'a Channel, here: Vec<Present>) -> Reply<'a, Vec<Present>> {
        let connection = self.connection.clone();
        later(presence::read(
            &self.settings.prefix,
            connection,
            channel,
            here,
        ))
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
                    "presence not written to redis".into(),
                )),
            }
        })
    }

    fn command<'a>(&'a self, command: &'a Command) -> Reply<'a, ()> {
        let topic = self.topics.control();
        later(topics::announce(self.connection.clone(), topic, command))
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// The pub/sub side: owns the subscriber connection, keeps it subscribed to exactly the
/// watched channels, and reconnects forever.
struct Listener {
    client: Client,
    hub: Arc<Hub>,
    topics: Topics,
    prefix: String,
    watched: Arc<Mutex<HashMap<Channel, watch::Sender<bool>>>>,
    up: Arc<AtomicBool>,
    gauge: IntGauge,
    connection: ConnectionManager,
}

impl Listener {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Watch>) {
        let control = self.topics.control();
        let mut backoff = Duration::from_millis(50);
        let mut reconnecting = false;
        loop {
            let pubsub =
                match tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub()).await {
                    Ok(Ok(pubsub)) => pubsub,
                    _ => {
                        self.set_up(false);
                        // Keep taking commands so that the wanted set is right on reconnect.
                        let sleep = tokio::time::sleep(backoff);
                        tokio::pin!(sleep);
                        loop {
                            tokio::select! {
                                _ = &mut sleep => break,
                                // The watched map is the source of truth on reconnect;
                                // queued commands only need draining.
                                command = commands.recv() => if command.is_none() { return },
                            }
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        reconnecting = true;
                        continue;
                    }
                };
            let (mut sink, mut stream) = pubsub.split();
            let wanted: Vec<Channel> = self.wanted();
            let mut subscribed: HashSet<Channel> = wanted.iter().cloned().collect();
            let names: Vec<String> = if self.topics.sharded() {
                self.topics.fixed()
            } else {
                wanted
                    .iter()
                    .map(|c| self.topics.of(c))
                    .chain(self.topics.fixed())
                    .collect()
            };
            if !names.is_empty() && sink.subscribe(&names).await.is_err() {
                continue;
            }
            self.mark_ready(&wanted);
            self.set_up(true);
            backoff = Duration::from_millis(50);
            if reconnecting {
                self.replay_tails(&wanted).await;
                tracing::info!(channels = wanted.len(), "redis pub/sub resubscribed");
            }
            reconnecting = true;
            loop {
                tokio::select! {
                    command = commands.recv() => {
                        let Some(command) = command else { return };
                        if self.apply(&mut sink, &mut subscribed, command).await.is_err() {
                            break;
                        }
                    }
                    message = stream.next() => {
                        let Some(message) = message else { break };
                        if message.get_channel_name() == control {
                            match serde_json::from_slice::<Command>(message.get_payload_bytes()) {
                                Ok(command) => self.hub.users().apply(&command),
                                Err(_) => tracing::warn!("malformed command on redis pub/sub"),
                            }
                            continue;
                        }
                        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                        match Message::from_stored(payload) {
                            Some(message) => {
                                self.hub.deliver(&Arc::new(message));
                            }
                            None => tracing::warn!(channel = message.get_channel_name(), "malformed message on redis pub/sub"),
                        }
                    }
                }
            }
            self.set_up(false);
            tracing::warn!("redis pub/sub connection lost; reconnecting");
        }
    }

    /// Brings Redis in line with one watch change. The watched map is the truth: an
    /// unsubscribe for a channel watched again meanwhile is skipped.
    async fn apply(
        &self,
        sink: &mut redis::aio::PubSubSink,
        subscribed: &mut HashSet<Channel>,
        command: Watch,
    ) -> redis::RedisResult<()> {
        // With shards the connection already follows every shard: nothing changes in
        // Redis, but a subscriber still waits for its watch to be applied.
        let sharded = self.topics.sharded();
        match command {
            Watch::Subscribe(channel) => {
                if !sharded && !subscribed.contains(&channel) {
                    sink.subscribe(self.topics.of(&channel)).await?;
                    subscribed.insert(channel.clone());
                }
                self.mark_ready(std::slice::from_ref(&channel));
            }
            Watch::Unsubscribe(channel) => {
                if !sharded && !self.is_wanted(&channel) && subscribed.remove(&channel) {
                    sink.unsubscribe(self.topics.of(&channel)).await?;
                }
            }
        }
        Ok(())
    }

    fn wanted(&self) -> Vec<Channel> {
        self.watched.locked().keys().cloned().collect()
    }

    fn is_wanted(&self, channel: &Channel) -> bool {
        self.watched.locked().contains_key(channel)
    }

    fn mark_ready(&self, channels: &[Channel]) {
        let watched = self.watched.locked();
        for channel in channels {
            if let Some(ready) = watched.get(channel) {
                ready.send_replace(true);
            }
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.gauge.set(i64::from(up));
    }

    /// Announces each channel's last retained message to the hub, so that subscribers who
    /// missed messages while the connection was down notice the hole and fill it.
    async fn replay_tails(&self, channels: &[Channel]) {
        let mut connection = self.connection.clone();
        for channel in channels {
            let key = log_key(&self.prefix, channel);
            let last: redis::RedisResult<Value> = redis::cmd("LINDEX")
                .arg(key)
                .arg(-1)
                .query_async(&mut connection)
                .await;
            if let Ok(Value::BulkString(json)) = last {
                if let Some(message) = Message::from_stored(Bytes::from(json)) {
                    self.hub.deliver(&Arc::new(message));
                }
            }
        }
    }
}
