//! The Redis engine: many gateway nodes, one bus, no sticky sessions.
//!
//! The data layout and the scripts are `redis_script`'s, shared with the cluster
//! engine; live messages are announced on `P:live:C` (or on shard channels). Besides:
//! - `P:control`, the pub/sub channel of the server API's commands, which every node
//!   follows (see [`super::control`]).
//! - `P:{C}:presence`, a sorted set of the clients present in `C` on every node (see
//!   `presence`): a dead node's vanish within [`PRESENCE_TTL`].
//!
//! The master is one fixed server (`redis://`), or the one that Sentinel names
//! (`redis+sentinel://`), followed across failovers (see `sentinel`). Behind Sentinel a
//! publish is acknowledged once `WAIT` reports it on `min_replicas` replicas, and the
//! scripts start a new epoch on their first touch of a channel after a promotion (see
//! `PROMOTED` in `redis_script`), so a failover never reuses an offset a reader holds.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, IntGauge};
use tokio::sync::{mpsc, watch};

pub(super) mod kept;
mod listener;
pub(super) mod presence;
mod sentinel;
pub(super) mod topics;

use listener::Listener;
use sentinel::Primary;

pub use presence::{PRESENCE_HEARTBEAT, PRESENCE_TTL};
use topics::Topics;

use super::control::Command;
use super::redis_script::{self, COMMAND_TIMEOUT, Scripts, unavailable};
use super::{Engine, History, Hub, Present, Reply, RetentionPolicy, later};
use crate::error::{Error, Result};
use crate::protocol::{Channel, Message, Position, Publication};
use crate::sync::Unpoisoned;

/// Settings of the Redis engine.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://host:port/db`, or `redis+sentinel://host:port,host:port/master/db`.
    pub url: String,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// History retention per channel.
    pub retention: RetentionPolicy,
    /// 0: each node subscribes to the channels its clients follow. N > 0: every message
    /// goes out on one of N shard channels and every node subscribes to all of them.
    pub shards: u32,
    /// Behind Sentinel: replicas that must hold a publish before it is acknowledged (0:
    /// do not wait). Ignored for a fixed server, which may well have no replica.
    pub min_replicas: u32,
}

/// How long a publish waits for its replicas before it fails as `engine_unavailable`.
const REPLICATION_TIMEOUT_MS: u64 = 500;

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
    connection: Primary,
    scripts: Arc<Scripts>,
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
        let connection = Primary::open(&settings.url)?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let (changes, changed) = mpsc::unbounded_channel();
        let topics = Topics {
            prefix: settings.prefix.clone(),
            shards: settings.shards,
        };
        let engine = Arc::new(RedisEngine {
            topics: topics.clone(),
            scripts: Arc::new(Scripts::new(
                &settings.prefix,
                settings.retention.clone(),
                "PUBLISH",
                connection.followed(),
            )),
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
            master: engine.connection.master(),
            scripts: engine.scripts.clone(),
            last: HashMap::new(),
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
        self.replicated().await?;
        redis_script::published(json)
    }

    /// Behind Sentinel, waits until the master has passed everything this node wrote to
    /// `min_replicas` replicas, so that the replica promoted after the master dies holds
    /// every acknowledged message. The connection manager multiplexes one connection, so
    /// the `WAIT` follows the publish on it; should the manager reconnect in between,
    /// the `WAIT` counts from the new connection's start and may pass early: the window
    /// is one lost connection wide, and the epoch check after a promotion still turns
    /// any loss into a gap.
    async fn replicated(&self) -> Result<()> {
        let wanted = self.settings.min_replicas;
        if wanted == 0 || !self.connection.followed() {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(REPLICATION_TIMEOUT_MS);
        let mut connection = self.connection.clone();
        let reached: i64 =
            match tokio::time::timeout(COMMAND_TIMEOUT, wait.query_async(&mut connection)).await {
                Ok(Ok(reached)) => reached,
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
