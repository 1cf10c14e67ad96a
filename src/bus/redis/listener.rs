//! The Redis engine's pub/sub side: one subscriber connection on the current master,
//! subscribed to exactly the watched channels, handing each announced message to the
//! hub. It reconnects forever, and moves to the new master after a failover (see
//! `sentinel`); after every reconnect it checks each channel's history against the last
//! message it handed out and re-announces the tail, so subscribers fill holes from
//! history or get an explicit gap.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::IntGauge;
use redis::Client;
use tokio::sync::{mpsc, watch};

use super::super::Hub;
use super::super::control::Command;
use super::super::redis_script::{self, COMMAND_TIMEOUT, Scripts, log_key};
use super::Watch;
use super::sentinel::Primary;
use super::topics::Topics;
use crate::error::Result;
use crate::protocol::{Channel, Message};
use crate::sync::Unpoisoned;

/// The pub/sub side: owns the subscriber connection, keeps it subscribed to exactly the
/// watched channels, and reconnects forever.
pub(super) struct Listener {
    pub(super) master: watch::Receiver<Option<Client>>,
    pub(super) scripts: Arc<Scripts>,
    /// The last message handed out per watched channel, checked after a reconnect.
    pub(super) last: HashMap<Channel, Arc<Message>>,
    pub(super) hub: Arc<Hub>,
    pub(super) topics: Topics,
    pub(super) prefix: String,
    pub(super) watched: Arc<Mutex<HashMap<Channel, watch::Sender<bool>>>>,
    pub(super) up: Arc<AtomicBool>,
    pub(super) gauge: IntGauge,
    pub(super) connection: Primary,
}

impl Listener {
    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Watch>) {
        let control = self.topics.control();
        let mut backoff = Duration::from_millis(50);
        let mut reconnecting = false;
        loop {
            let client = self.master.borrow_and_update().clone();
            // Before the sentinels first name a master nothing was missed.
            let known = client.is_some();
            let connected = async {
                match client {
                    Some(client) => Ok(client.get_async_pubsub().await),
                    None => Err(()),
                }
            };
            let pubsub = match tokio::time::timeout(COMMAND_TIMEOUT, connected).await {
                Ok(Ok(Ok(pubsub))) => pubsub,
                _ => {
                    self.set_up(false);
                    // Keep taking commands so that the wanted set is right on reconnect.
                    let sleep = tokio::time::sleep(backoff);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            // A master named: try it now.
                            _ = self.master.changed() => break,
                            // The watched map is the source of truth on reconnect;
                            // queued commands only need draining.
                            command = commands.recv() => if command.is_none() { return },
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    reconnecting |= known;
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
            let mut moved = false;
            loop {
                tokio::select! {
                    // A failover: the old master's announcements end, or lie (it may
                    // take publishes that its successor never sees).
                    _ = self.master.changed() => {
                        moved = true;
                        break;
                    }
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
                            Some(message) => self.deliver(Arc::new(message)),
                            None => tracing::warn!(channel = message.get_channel_name(), "malformed message on redis pub/sub"),
                        }
                        // A wide channel's walk goes on on other workers after `deliver`
                        // returns; reading on while the node's backlog is over its bound
                        // would only queue more.
                        self.hub.backlog().wait().await;
                    }
                }
            }
            self.set_up(false);
            if moved {
                tracing::info!("redis master changed; resubscribing on the new one");
            } else {
                tracing::warn!("redis pub/sub connection lost; reconnecting");
            }
        }
    }

    /// Brings Redis in line with one watch change. The watched map is the truth: an
    /// unsubscribe for a channel watched again meanwhile is skipped.
    async fn apply(
        &mut self,
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
                if !self.is_wanted(&channel) {
                    self.last.remove(&channel);
                }
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

    /// Hands `message` to the hub and remembers it as its channel's newest.
    fn deliver(&mut self, message: Arc<Message>) {
        let newer = match self.last.get(&message.channel) {
            Some(known) => known.epoch != message.epoch || known.offset < message.offset,
            None => true,
        };
        if newer {
            self.last.insert(message.channel.clone(), message.clone());
        }
        self.hub.deliver(&message);
    }

    /// After a reconnect: checks each channel's history against the last message handed
    /// out (a promoted replica that lacks it starts a new epoch, see `VERIFY`), then
    /// announces the last retained message, so that subscribers who missed messages
    /// while the connection was down notice the hole and fill it.
    async fn replay_tails(&mut self, channels: &[Channel]) {
        for channel in channels {
            let tail: Result<Option<Vec<u8>>> = match self.last.get(channel).cloned() {
                Some(last) => {
                    let invocation = self.scripts.verify(&last);
                    redis_script::invoke(&invocation, &mut self.connection).await
                }
                None => {
                    let mut read = redis::cmd("LINDEX");
                    read.arg(log_key(&self.prefix, channel)).arg(-1);
                    match tokio::time::timeout(
                        COMMAND_TIMEOUT,
                        read.query_async(&mut self.connection),
                    )
                    .await
                    {
                        Ok(result) => result.map_err(redis_script::unavailable),
                        Err(_) => Err(crate::error::Error::EngineUnavailable(
                            "LINDEX timed out".into(),
                        )),
                    }
                }
            };
            match tail {
                Ok(Some(json)) => {
                    if let Some(message) = Message::from_stored(Bytes::from(json)) {
                        self.deliver(Arc::new(message));
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%channel, %err, "could not check the history after a reconnect")
                }
            }
        }
    }
}
