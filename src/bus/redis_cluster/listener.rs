//! The sharded pub/sub side of the cluster engine: keeps this node subscribed to exactly
//! the watched channels, wherever their slots move, proves each resubscription with a
//! probe, and hands live messages to the hub. It owns the subscriptions; it does not
//! publish messages or read history for readers (the engine does).
//!
//! The cluster client cannot be trusted to keep a sharded subscription by itself. When a
//! master is demoted, the node drops the subscriptions of its slots with an
//! `sunsubscribe` push, which also removes them from the client's own record of what to
//! subscribe again. Subscribing again at once goes where the client's slot map still
//! points: often the demoted master, which (as a replica of the slot's new master)
//! accepts and confirms. The client's slot refresh then leaves the demoted node out of
//! its map (it keeps masters only), closes that connection and the subscription with it,
//! and resubscribes only what its record held when it refreshed, which the confirmation
//! may not have reached yet. No push reports that loss. (Seen with the redis crate 1.8
//! and Redis 7.0; see `tests/redis_cluster.rs`.)
//!
//! So every (re)subscription is audited: once confirmed, the listener publishes a probe
//! on the channel's shard channel, routed to the slot's master as a publish is, and
//! waits for it to come back on its own subscription (see [`super::probe`]). A probe
//! that does not come back within [`super::probe::PROBE_TIMEOUT`] means the subscription is gone: the
//! channel is subscribed again and reconciled from history. Every channel is probed
//! again when the client reports a new view of the cluster (it subscribes the control
//! channel again after each slot refresh), since a refresh may close connections.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};

use super::probe::{Probes, Read};
use super::shared::{Shared, Watch, channel_of, control_topic, topic};
use crate::bus::Hub;
use crate::bus::control::Command;
use crate::bus::redis_script::{self, COMMAND_TIMEOUT, Scripts, unavailable};
use crate::error::{Error, Result};
use crate::protocol::{Channel, Message};
use crate::sync::Unpoisoned;

/// Longest pause between attempts to resubscribe a channel the cluster dropped.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Most commands of one kind (subscriptions, probes) sent before their replies are
/// awaited.
const BATCH: usize = 256;

/// Keeps the cluster subscribed to the watched channels; see the module doc.
pub(super) struct Listener {
    hub: Arc<Hub>,
    scripts: Arc<Scripts>,
    shared: Arc<Shared>,
    /// Channels the cluster confirmed at least once since they were watched: a further
    /// confirmation is a resubscription, after which messages may have been missed.
    confirmed: HashSet<Channel>,
    /// Watched channels the cluster does not carry to us right now.
    pending: HashSet<Channel>,
    /// The probes out, one per channel whose subscription is not proven yet.
    probes: Probes,
    /// When each channel's live feed was found broken, until a probe proves it again.
    broken: HashMap<Channel, Instant>,
    /// This listener's own `SSUBSCRIBE`s whose confirming push has not come yet, by
    /// channel. That push is not the client resubscribing on its own, and what a
    /// resubscription of ours needs (a catch-up) follows the command itself: read as the
    /// client's, each cost a history round trip on this task, which every live message
    /// of the node waited behind (a thousand new channels held live delivery up for up to
    /// a second on a busy two-core machine; BENCHMARKS.md).
    echoes: HashMap<Channel, u32>,
}

impl Listener {
    pub(super) fn new(hub: Arc<Hub>, scripts: Arc<Scripts>, shared: Arc<Shared>) -> Self {
        Listener {
            hub,
            scripts,
            shared,
            confirmed: HashSet::new(),
            pending: HashSet::new(),
            probes: Probes::new(),
            broken: HashMap::new(),
            echoes: HashMap::new(),
        }
    }

    /// Connects (retrying until the cluster answers), then follows watch changes and
    /// the cluster's pushes until the engine is dropped.
    pub(super) async fn run(
        mut self,
        client: redis::cluster::ClusterClient,
        connection_sender: watch::Sender<Option<ClusterConnection>>,
        mut commands: mpsc::UnboundedReceiver<Watch>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    ) {
        let mut backoff = Duration::from_millis(50);
        let mut connection = loop {
            let attempt = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_connection());
            if let Ok(Ok(connection)) = attempt.await {
                break connection;
            }
            tracing::debug!("redis cluster not reachable yet; retrying");
            // Watches queue up meanwhile; the watched map says what to subscribe.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        };
        // The cluster client keeps this subscription across reconnects by itself.
        let control = control_topic(self.scripts.prefix());
        while !matches!(
            tokio::time::timeout(COMMAND_TIMEOUT, connection.subscribe(&control)).await,
            Ok(Ok(()))
        ) {
            tracing::debug!("could not subscribe to the control channel; retrying");
            tokio::time::sleep(backoff).await;
        }
        connection_sender.send_replace(Some(connection.clone()));
        self.shared.set_up(true);
        tracing::info!("redis cluster connected");
        self.pending = self.shared.watched.locked().keys().cloned().collect();
        let mut backoff = Duration::ZERO;
        loop {
            if !self.pending.is_empty() {
                self.resubscribe(&mut connection).await;
                backoff = if self.pending.is_empty() {
                    Duration::ZERO
                } else {
                    (backoff * 2).clamp(Duration::from_millis(25), MAX_BACKOFF)
                };
            }
            let now = Instant::now();
            let retry = (!self.pending.is_empty()).then(|| now + backoff);
            let wake = [retry, self.probes.next_due()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    self.apply(&mut connection, command).await;
                    // The rest of a burst (clients joining new channels) too, so that
                    // its subscriptions go out in one batch.
                    while let Ok(command) = commands.try_recv() {
                        self.apply(&mut connection, command).await;
                    }
                }
                push = pushes.recv() => {
                    let Some(push) = push else { return };
                    self.take(&mut connection, push).await;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    // Probes that came back while this task was busy are read first, so
                    // that a slow turn of the loop does not count them as lost.
                    while let Ok(push) = pushes.try_recv() {
                        self.take(&mut connection, push).await;
                    }
                    self.overdue();
                }
            }
        }
    }

    /// Brings the cluster in line with one watch change. The watched map is the truth:
    /// an unsubscribe for a channel watched again meanwhile is skipped.
    async fn apply(&mut self, connection: &mut ClusterConnection, command: Watch) {
        match command {
            Watch::Subscribe(channel) => {
                self.pending.insert(channel);
            }
            Watch::Unsubscribe(channel) => {
                if self.shared.is_wanted(&channel) {
                    return;
                }
                self.confirmed.remove(&channel);
                self.pending.remove(&channel);
                self.probes.cancel(&channel);
                self.broken.remove(&channel);
                self.echoes.remove(&channel);
                let name = topic(self.scripts.prefix(), &channel);
                let unsubscribe = connection.sunsubscribe(name);
                if !matches!(
                    tokio::time::timeout(COMMAND_TIMEOUT, unsubscribe).await,
                    Ok(Ok(()))
                ) {
                    // Harmless: a message of an unwatched channel finds no subscriber.
                    tracing::debug!(%channel, "sunsubscribe failed");
                }
            }
        }
    }

    /// Subscribes every pending channel that is still watched, reconciles the ones
    /// subscribed before from history, and probes each; stops after the first batch with
    /// a failure (the cluster is then still settling; the caller retries later).
    ///
    /// A batch's commands are sent together and their replies awaited together: the
    /// cluster connection pipelines them. One at a time, each new channel held this task,
    /// and every live message of the node waiting behind it, for two round trips.
    async fn resubscribe(&mut self, connection: &mut ClusterConnection) {
        let shared = &self.shared;
        self.pending.retain(|channel| shared.is_wanted(channel));
        let channels: Vec<Channel> = self.pending.iter().cloned().collect();
        for batch in channels.chunks(BATCH) {
            let prefix = self.scripts.prefix();
            for channel in batch {
                // Counted before it is sent: its confirming push may come before the reply.
                *self.echoes.entry(channel.clone()).or_default() += 1;
            }
            let replies =
                join_all(batch.iter().map(|channel| {
                    let mut connection = connection.clone();
                    let name = topic(prefix, channel);
                    async move {
                        tokio::time::timeout(COMMAND_TIMEOUT, connection.ssubscribe(name)).await
                    }
                }))
                .await;
            let (mut refused, mut subscribed) = (false, Vec::with_capacity(batch.len()));
            for (channel, reply) in batch.iter().zip(replies) {
                let error = match reply {
                    Ok(Ok(())) => {
                        self.pending.remove(channel);
                        self.mark_ready(channel);
                        if !self.confirmed.insert(channel.clone())
                            && !self.catch_up(connection, channel).await
                        {
                            self.pending.insert(channel.clone());
                        } else {
                            subscribed.push(channel.clone());
                        }
                        continue;
                    }
                    Ok(Err(err)) => {
                        // Refused: no push confirms it. (One that timed out may still be
                        // confirmed, so its count stays; should that push never come, the
                        // client's next resubscription of the channel is taken for it,
                        // and the catch-up it skips only delays a quiet channel's last
                        // message to its next one, whose hole is filled from history.)
                        self.echo_came(channel);
                        err.to_string()
                    }
                    Err(_) => "timed out".into(),
                };
                tracing::debug!(%channel, error, "ssubscribe failed; retrying");
                refused = true;
            }
            self.probe(connection, &subscribed).await;
            if refused {
                self.shared.set_up(false);
                return;
            }
            // A catch-up or a probe that failed left its channel pending.
            if batch.iter().any(|channel| self.pending.contains(channel)) {
                return;
            }
        }
        self.shared.set_up(true);
    }

    /// Publishes a probe on each channel's shard channel, on the slot's master as a
    /// publish goes, a batch at a time. A channel whose probe the cluster did not take is
    /// pending again (the caller retries).
    async fn probe(&mut self, connection: &mut ClusterConnection, channels: &[Channel]) {
        for batch in channels.chunks(BATCH) {
            let now = Instant::now();
            let prefix = self.scripts.prefix();
            let sends: Vec<_> = batch
                .iter()
                .map(|channel| {
                    let payload = self.probes.send(channel, now);
                    let name = topic(prefix, channel);
                    let route = Route::with_slot(Slot::for_key(&name), SlotAddr::Master);
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    let mut publish = redis::cmd("SPUBLISH");
                    publish.arg(&name).arg(payload);
                    let mut connection = connection.clone();
                    async move {
                        let sent = connection.route_command(publish, routing);
                        tokio::time::timeout(COMMAND_TIMEOUT, sent).await
                    }
                })
                .collect();
            for (channel, sent) in batch.iter().zip(join_all(sends).await) {
                let error = match sent {
                    Ok(Ok(_)) => continue,
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => "timed out".into(),
                };
                tracing::debug!(%channel, error, "probe not published; retrying");
                self.probes.cancel(channel);
                self.pending.insert(channel.clone());
            }
        }
    }

    /// Probes every watched channel not already being subscribed or probed.
    async fn probe_all(&mut self, connection: &mut ClusterConnection) {
        let watched: Vec<Channel> = self
            .shared
            .watched
            .locked()
            .keys()
            .filter(|channel| !self.pending.contains(*channel) && !self.probes.is_out(channel))
            .cloned()
            .collect();
        self.probe(connection, &watched).await;
    }

    /// Subscribes again the channels whose probes did not come back in time.
    fn overdue(&mut self) {
        for channel in self.probes.overdue(Instant::now()) {
            if self.shared.is_wanted(&channel) {
                tracing::info!(%channel, "a probe did not come back: subscribing again");
                self.broken
                    .entry(channel.clone())
                    .or_insert_with(Instant::now);
                self.pending.insert(channel);
            }
        }
    }

    /// Handles one push from the cluster: a live message, a probe, or a change of
    /// subscriptions.
    async fn take(&mut self, connection: &mut ClusterConnection, push: PushInfo) {
        let prefix = self.scripts.prefix();
        let channel = || match push.data.first() {
            Some(Value::BulkString(name)) => channel_of(prefix, name),
            _ => None,
        };
        if push.kind != PushKind::SMessage {
            tracing::debug!(kind = ?push.kind, data = ?push.data, "cluster push");
        }
        match push.kind {
            PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return;
                };
                if let Some(channel) = channel() {
                    match self.probes.read(&channel, payload) {
                        (Read::Message, _) => {}
                        (Read::Returned, took) => {
                            if let Some(since) = self.broken.remove(&channel) {
                                tracing::info!(
                                    %channel,
                                    broken_ms = since.elapsed().as_millis() as u64,
                                    probe_ms = took.unwrap_or_default().as_millis() as u64,
                                    "live feed proven again"
                                );
                            }
                            return;
                        }
                        (Read::Other, _) => return,
                    }
                }
                match Message::from_stored(Bytes::copy_from_slice(payload)) {
                    Some(message) => {
                        let message = Arc::new(message);
                        self.shared.saw(&message);
                        self.hub.deliver(&message);
                    }
                    None => tracing::warn!("malformed message on redis sharded pub/sub"),
                }
                // A wide channel's walk goes on on other workers after `deliver` returns;
                // reading on while the node's backlog is over its bound would only queue
                // more.
                self.hub.backlog().wait().await;
            }
            // A server API command, from any node.
            PushKind::Message => {
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return;
                };
                match serde_json::from_slice::<Command>(payload) {
                    Ok(command) => self.hub.users().apply(&command),
                    Err(_) => tracing::warn!("malformed command on redis pub/sub"),
                }
            }
            // The client subscribed the control channel again: it refreshed its view of
            // the cluster, which may have closed connections and their subscriptions.
            PushKind::Subscribe if channel_is(&push, &control_topic(prefix)) => {
                self.probe_all(connection).await;
            }
            // The cluster dropped a subscription: its slot moved, or its master stepped
            // down. Subscribe again where the slot lives now.
            PushKind::SUnsubscribe => {
                if let Some(channel) = channel().filter(|c| self.shared.is_wanted(c)) {
                    tracing::info!(%channel, "sharded subscription dropped by the cluster");
                    self.broken
                        .entry(channel.clone())
                        .or_insert_with(Instant::now);
                    self.probes.cancel(&channel);
                    self.pending.insert(channel);
                }
            }
            // Our own subscription confirmed, or the client resubscribed on its own
            // (after a reconnect or a new slot map).
            PushKind::SSubscribe => {
                if let Some(channel) = channel().filter(|c| self.shared.is_wanted(c)) {
                    if self.echo_came(&channel) {
                        return;
                    }
                    if !self.confirmed.insert(channel.clone())
                        && !self.catch_up(connection, &channel).await
                    {
                        self.pending.insert(channel);
                    }
                }
            }
            // A node's connection broke: its subscriptions may be gone for good if its
            // master died. Subscribe everything again; a live subscription just confirms.
            PushKind::Disconnection => {
                tracing::warn!("a redis cluster connection was lost; resubscribing");
                self.shared.set_up(false);
                let watched = self.shared.watched.locked();
                let now = Instant::now();
                for channel in watched.keys() {
                    self.broken.entry(channel.clone()).or_insert(now);
                    self.pending.insert(channel.clone());
                }
            }
            _ => {}
        }
    }

    /// Counts one of our own subscriptions of `channel` as confirmed; false when none
    /// was waiting for it.
    fn echo_came(&mut self, channel: &Channel) -> bool {
        let Some(count) = self.echoes.get_mut(channel) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.echoes.remove(channel);
        }
        true
    }

    fn mark_ready(&self, channel: &Channel) {
        if let Some(ready) = self.shared.watched.locked().get(channel) {
            ready.send_replace(true);
        }
    }

    /// After a resubscription: checks the history against the last message seen (a
    /// fork starts a new epoch) and re-announces the last retained message, so that
    /// subscribers who missed messages see a hole and fill it. False when the cluster
    /// could not be read; the caller tries again.
    async fn catch_up(&self, connection: &mut ClusterConnection, channel: &Channel) -> bool {
        let last = self.shared.last.locked().get(channel).cloned();
        let tail: Result<Option<Vec<u8>>> = match &last {
            Some(last) => {
                let invocation = self.scripts.verify(last);
                redis_script::invoke(&invocation, connection).await
            }
            None => {
                let (_, log) = self.scripts.keys(channel);
                let mut read = redis::cmd("LINDEX");
                read.arg(log).arg(-1);
                match tokio::time::timeout(COMMAND_TIMEOUT, read.query_async(connection)).await {
                    Ok(result) => result.map_err(unavailable),
                    Err(_) => Err(Error::EngineUnavailable("LINDEX timed out".into())),
                }
            }
        };
        match tail {
            Ok(Some(json)) => {
                if let Some(message) = Message::from_stored(Bytes::from(json)) {
                    let message = Arc::new(message);
                    self.shared.saw(&message);
                    self.hub.deliver(&message);
                }
                true
            }
            Ok(None) => true,
            Err(err) => {
                tracing::debug!(%channel, %err, "could not check history after a resubscription");
                false
            }
        }
    }
}

/// Whether a subscription push is about the pub/sub channel `name`.
fn channel_is(push: &PushInfo, name: &str) -> bool {
    matches!(push.data.first(), Some(Value::BulkString(got)) if got == name.as_bytes())
}
