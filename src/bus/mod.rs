//! The message bus: the one boundary between transports and engines.
//!
//! Transports see only [`Bus`] and [`Subscription`]; they never touch an engine. Engines
//! implement [`Engine`] (offsets, epochs, history, and live delivery into the [`Hub`]);
//! they never see HTTP. The hub and the subscription's history/live seam are shared by
//! every engine, so the hardest part of the product has one tested implementation.

mod backlog;
pub mod control;
mod express;
mod hub;
mod inbox;
pub mod memory;
pub mod presence;
pub mod redis;
pub mod redis_cluster;
mod redis_script;
mod subscription;
#[cfg(test)]
mod tests;
pub mod users;
mod walk;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either, Ready, ready};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::protocol::{Channel, Cursor, Epoch, Gap, Message, Position, Publication};

pub use backlog::Backlog;
pub use express::{CursorAfter, Express, Written};
pub use hub::Hub;
pub use inbox::ExpressSwitch;
pub use presence::{PresencePolicy, Present};
pub use walk::Turn;

/// What an [`Engine`] call returns: its answer at once, as the embedded engine always
/// has it, with no allocation; or a boxed future, for an engine that waits on a network.
/// A long poll calls the engine twice per request.
pub type Reply<'a, T> = Either<Ready<Result<T>>, BoxFuture<'a, Result<T>>>;

/// An engine's answer, known now.
pub fn now<'a, T>(answer: Result<T>) -> Reply<'a, T> {
    Either::Left(ready(answer))
}

/// An engine's answer, once `future` resolves.
pub fn later<'a, T>(future: impl Future<Output = Result<T>> + Send + 'a) -> Reply<'a, T> {
    Either::Right(Box::pin(future))
}

/// The bus's maps, keyed by channel or subscriber id, are read on every subscribe,
/// unsubscribe and history read. foldhash (hashbrown's own default) hashes a channel name
/// in a few dozen instructions where std's SipHash takes a few hundred, and its per-map
/// random seed keeps hostile channel names from being chosen to collide.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use subscription::{Closed, Event, Subscription};

/// What an engine must provide. Offsets and epochs are the engine's to assign.
///
/// Live delivery: an engine calls [`Hub::deliver`] for every message, in offset order per
/// channel, on every node that [`Engine::watch`]es the channel.
pub trait Engine: Send + Sync + 'static {
    /// Appends the publication to the channel's history, delivers it live, and returns it.
    /// An engine that stores bytes keeps [`Message::stored_prefix`]'s form, so that the
    /// sender and the excluded client travel to every node and into history.
    fn publish(&self, channel: &Channel, publication: Publication) -> Reply<'_, Arc<Message>>;

    /// Reads up to `limit` retained messages after `from`; with `from` = `None`, only the
    /// current epoch and head ("from now on").
    fn history<'a>(
        &'a self,
        channel: &'a Channel,
        from: Option<&'a Position>,
        limit: usize,
    ) -> Reply<'a, History>;

    /// Makes sure live messages of `channel` reach this node's hub; resolves once they do.
    fn watch<'a>(&'a self, channel: &'a Channel) -> Reply<'a, ()>;

    /// Tells the engine this node no longer has local subscribers on `channel`.
    fn unwatch(&self, channel: &Channel);

    /// Records `key` for `ttl` unless it is already recorded; true when this call
    /// recorded it. Makes connect tickets single-use across every node of the engine.
    fn claim_once<'a>(&'a self, key: &'a str, ttl: std::time::Duration) -> Reply<'a, bool>;

    /// Keeps `value` under `key` for `ttl`, replacing what was kept there, where every
    /// node of the engine reads it: the state of a Socket.IO polling session, which any
    /// node may serve. The default keeps nothing and says so.
    fn keep<'a>(&'a self, key: &'a str, value: Bytes, ttl: std::time::Duration) -> Reply<'a, ()> {
        let _ = (key, value, ttl);
        now(Err(crate::error::Error::EngineUnavailable(
            "this engine keeps no values".into(),
        )))
    }

    /// What [`Engine::keep`] kept under `key`, unless it expired.
    fn kept<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Bytes>> {
        let _ = key;
        now(Ok(None))
    }

    /// Replaces what [`Engine::keep`] kept under `key`, for `ttl` from now, only while
    /// something is kept there: false, and nothing kept, once it expired. A Socket.IO
    /// session's state written at the end of a poll does not bring an expired one back.
    fn rekeep<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: std::time::Duration,
    ) -> Reply<'a, bool> {
        let _ = (key, value, ttl);
        now(Ok(false))
    }

    /// Makes what [`Engine::keep`] kept under `key` expire `ttl` from now, unchanged;
    /// false when nothing is kept there. A value another request may rewrite meanwhile
    /// (a Socket.IO socket) is kept alive without being written back stale.
    fn prolong<'a>(&'a self, key: &'a str, ttl: std::time::Duration) -> Reply<'a, bool> {
        let _ = (key, ttl);
        now(Ok(false))
    }

    /// Everyone present in `channel` on every node, given `here`, this node's. The
    /// embedded engine is one node: `here` is everyone.
    fn presence<'a>(&'a self, channel: &'a Channel, here: Vec<Present>) -> Reply<'a, Vec<Present>> {
        let _ = channel;
        now(Ok(here))
    }

    /// Carries a server command to every node, this one included, which applies it
    /// ([`users::Users::apply`]) to the user's sessions there.
    fn command<'a>(&'a self, command: &'a control::Command) -> Reply<'a, ()>;

    /// Tells the other nodes that `present` came to (`joined`) or left `channel` here;
    /// resolves once they can see it.
    fn presence_changed(
        &self,
        channel: &Channel,
        present: &Present,
        joined: bool,
    ) -> Reply<'_, ()> {
        let _ = (channel, present, joined);
        now(Ok(()))
    }

    /// Whether the engine currently answers (always, for an embedded one).
    fn is_up(&self) -> bool {
        true
    }

    /// The engine's name, for health reports.
    fn name(&self) -> &'static str;
}

/// The answer to a history read.
#[derive(Debug)]
pub struct History {
    /// The channel's current epoch.
    pub epoch: Epoch,
    /// The last offset published in this epoch (0 when none).
    pub head: u64,
    /// Set when the requested position is no longer retained; `messages` then start at
    /// `gap.first`.
    pub gap: Option<Gap>,
    /// Retained messages after the requested position, oldest first.
    pub messages: Vec<Arc<Message>>,
}

/// How long and how much history a channel keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per channel.
    pub max_messages: usize,
    /// How long a message is kept.
    pub max_age: std::time::Duration,
}

/// Retention per channel: a default, overridden per namespace.
#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    /// For channels outside every overriding namespace.
    pub default: Retention,
    /// By namespace (the part of a channel name before the first `:`).
    pub namespaces: std::collections::BTreeMap<String, Retention>,
}

impl RetentionPolicy {
    /// The same retention for every channel.
    pub fn uniform(retention: Retention) -> Self {
        RetentionPolicy {
            default: retention,
            namespaces: Default::default(),
        }
    }

    /// The retention of `channel`.
    pub fn for_channel(&self, channel: &Channel) -> Retention {
        channel
            .namespace()
            .and_then(|namespace| self.namespaces.get(namespace))
            .copied()
            .unwrap_or(self.default)
    }

    /// The largest history any channel keeps: the most one history read must return.
    pub fn max_messages(&self) -> usize {
        self.namespaces
            .values()
            .map(|r| r.max_messages)
            .fold(self.default.max_messages, usize::max)
    }
}

impl From<Retention> for RetentionPolicy {
    fn from(retention: Retention) -> Self {
        RetentionPolicy::uniform(retention)
    }
}

/// Bus-wide settings.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// Messages queued per subscriber before it is cut off.
    pub subscriber_queue: usize,
    /// Most messages one history read returns.
    pub history_limit: usize,
    /// Which channels keep presence and announce joins and leaves.
    pub presence: PresencePolicy,
}

/// The bus handle that transports hold: cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn Engine>,
    hub: Arc<Hub>,
    config: BusConfig,
    next_subscriber: AtomicU64,
}

impl Bus {
    /// Joins an engine and the hub it delivers into.
    pub fn new(engine: Arc<dyn Engine>, hub: Arc<Hub>, config: BusConfig) -> Self {
        Bus {
            inner: Arc::new(Inner {
                engine,
                hub,
                config,
                next_subscriber: AtomicU64::new(1),
            }),
        }
    }

    /// Publishes compact JSON `data` to `channel`, as a backend does.
    pub async fn publish(&self, channel: &Channel, data: Bytes) -> Result<Arc<Message>> {
        self.publish_as(channel, Publication::data(data)).await
    }

    /// Publishes a publication: with a sender, or leaving a client out.
    pub async fn publish_as(
        &self,
        channel: &Channel,
        publication: Publication,
    ) -> Result<Arc<Message>> {
        self.inner.engine.publish(channel, publication).await
    }

    /// An empty live subscription; add channels with [`Subscription::add`].
    pub fn subscribe(&self) -> Subscription {
        self.subscription(None)
    }

    /// Like [`Bus::subscribe`], but cutting the subscriber off (a full queue) cancels
    /// `cut`, so a transport can tie it to the connection that must be dropped.
    pub fn subscribe_with_cut(&self, cut: CancellationToken) -> Subscription {
        self.subscription(Some(cut))
    }

    fn subscription(&self, cut: Option<CancellationToken>) -> Subscription {
        let id = self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed);
        Subscription::new(self.clone(), id, self.inner.config.subscriber_queue, cut)
    }

    /// Records `key` once for `ttl` across all nodes; false when it was already recorded.
    pub async fn claim_once(&self, key: &str, ttl: std::time::Duration) -> Result<bool> {
        self.inner.engine.claim_once(key, ttl).await
    }

    /// Keeps `value` under `key` for `ttl` on every node ([`Engine::keep`]).
    pub async fn keep(&self, key: &str, value: Bytes, ttl: std::time::Duration) -> Result<()> {
        self.inner.engine.keep(key, value, ttl).await
    }

    /// What [`Bus::keep`] kept under `key`, unless it expired.
    pub async fn kept(&self, key: &str) -> Result<Option<Bytes>> {
        self.inner.engine.kept(key).await
    }

    /// Replaces what is kept under `key` only while it is ([`Engine::rekeep`]).
    pub async fn rekeep(&self, key: &str, value: Bytes, ttl: std::time::Duration) -> Result<bool> {
        self.inner.engine.rekeep(key, value, ttl).await
    }

    /// Makes what is kept under `key` expire `ttl` from now ([`Engine::prolong`]).
    pub async fn prolong(&self, key: &str, ttl: std::time::Duration) -> Result<bool> {
        self.inner.engine.prolong(key, ttl).await
    }

    /// The engine's name and whether it currently answers.
    pub fn engine_health(&self) -> (&'static str, bool) {
        (self.inner.engine.name(), self.inner.engine.is_up())
    }

    /// Wakes every subscription on this node that waits for a message, so that its
    /// owner looks again at what else it waits for (a long poll checks for shutdown this
    /// way rather than holding a wait on the shutdown token for each parked poll).
    pub fn wake_all(&self) {
        self.inner.hub.wake_all();
    }

    /// Carries a server command to the user's sessions on every node.
    pub async fn command(&self, command: &control::Command) -> Result<()> {
        self.inner.engine.command(command).await
    }

    /// What a poll of `user` must apply of the server's recent commands.
    pub fn recent_commands(&self, user: &str) -> users::Pending {
        self.inner.hub.users().recent(user)
    }

    fn users(&self) -> &users::Users {
        self.inner.hub.users()
    }

    /// Who is present in `channel`, on every node.
    pub async fn presence(&self, channel: &Channel) -> Result<Vec<Present>> {
        let here = self.inner.hub.roster().list(channel);
        self.inner.engine.presence(channel, here).await
    }

    /// Whether some channel keeps presence: else nothing of presence runs or costs.
    pub fn keeps_presence(&self) -> bool {
        self.inner.config.presence.any()
    }

    /// Whether `channel` keeps presence.
    pub fn tracks_presence(&self, channel: &Channel) -> bool {
        self.inner.config.presence.tracks(channel)
    }

    /// Makes a polling client present in the channels of `cursor` that keep presence,
    /// for [`presence::POLL_PRESENCE`] from now.
    pub async fn polled(&self, cursor: &Cursor, present: &Present) {
        let until = std::time::Instant::now() + presence::POLL_PRESENCE;
        for (channel, _) in &cursor.entries {
            if self.tracks_presence(channel) {
                let new = self.inner.hub.roster().join(channel, present, Some(until));
                if new {
                    self.changed(channel, present, true).await;
                }
            }
        }
    }

    /// A stream of `present` now follows `channel`.
    async fn joined(&self, channel: &Channel, present: &Present) {
        if self.tracks_presence(channel) && self.inner.hub.roster().join(channel, present, None) {
            self.changed(channel, present, true).await;
        }
    }

    /// A stream of `present` no longer follows `channel`; announced in the background, as
    /// a subscription's end cannot wait.
    fn left(&self, channel: &Channel, present: &Present) {
        if self.tracks_presence(channel) && self.inner.hub.roster().leave(channel, &present.client)
        {
            let (bus, channel, present) = (self.clone(), channel.clone(), present.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { bus.changed(&channel, &present, false).await });
            }
        }
    }

    /// Polling clients that stopped polling leave; run every few seconds while some
    /// channel keeps presence.
    pub async fn expire_presence(&self) {
        for (channel, present) in self.inner.hub.roster().expire(std::time::Instant::now()) {
            self.changed(&channel, &present, false).await;
        }
    }

    /// Tells the engine and, where the namespace asks, the channel's subscribers.
    async fn changed(&self, channel: &Channel, present: &Present, joined: bool) {
        if let Err(err) = self
            .inner
            .engine
            .presence_changed(channel, present, joined)
            .await
        {
            tracing::debug!(%channel, %err, "presence change not shared; the heartbeat retries");
        }
        if self.inner.config.presence.announces(channel) {
            let publication = presence::announcement(present, joined);
            if let Err(err) = self.publish_as(channel, publication).await {
                tracing::warn!(%channel, %err, "presence event not published");
            }
        }
    }

    /// Deliveries queued on this node and not yet taken; a backend's publish waits on it.
    pub fn backlog(&self) -> &Backlog {
        self.inner.hub.backlog()
    }

    /// Channels with at least one subscriber on this node.
    pub fn active_channels(&self) -> usize {
        self.inner.hub.channel_count()
    }

    /// A one-shot read for polling clients: everything after each position in `cursor`,
    /// without registering for live messages. Returns the events and the advanced cursor;
    /// a message that excludes `client` is left out, the cursor moving past it all the same.
    pub async fn catch_up(
        &self,
        cursor: &Cursor,
        client: Option<&str>,
    ) -> Result<(Vec<Event>, Cursor)> {
        let mut events = Vec::new();
        let mut next = Cursor {
            entries: Vec::with_capacity(cursor.entries.len()),
        };
        for (channel, from) in &cursor.entries {
            let (_, end) = self.read_into(channel, from.as_ref(), &mut events).await?;
            next.entries.push((channel.clone(), Some(end)));
        }
        if let Some(client) = client {
            events.retain(|event| !matches!(event, Event::Message(m) if m.excludes(client)));
        }
        Ok((events, next))
    }

    /// Reads history after `from` into `events`; returns the position delivery starts
    /// from (after any gap) and the position reached.
    async fn read_into(
        &self,
        channel: &Channel,
        from: Option<&Position>,
        events: &mut Vec<Event>,
    ) -> Result<(Position, Position)> {
        let limit = self.inner.config.history_limit;
        let mut from = from.cloned();
        let mut start = None;
        loop {
            let history = self
                .inner
                .engine
                .history(channel, from.as_ref(), limit)
                .await?;
            // The engine's epoch where the reader's is the same, not the copy parsed from
            // its cursor: the subscription keeps this position for as long as it lives.
            let mut position = match &from {
                Some(from) if from.epoch == history.epoch => Position {
                    epoch: history.epoch.clone(),
                    offset: from.offset,
                },
                Some(from) => from.clone(),
                None => Position {
                    epoch: history.epoch.clone(),
                    offset: history.head,
                },
            };
            if let Some(gap) = history.gap {
                position = gap.position();
                events.push(Event::Gap(gap));
            }
            start.get_or_insert_with(|| position.clone());
            let complete = history.messages.len() < limit;
            for message in history.messages {
                position = message.position();
                events.push(Event::Message(message));
            }
            // A read that stopped at the end of an earlier epoch (a Redis promotion's fork)
            // goes on into the current one.
            if (complete && position.epoch == history.epoch) || position.offset >= history.head {
                let start = start.unwrap_or_else(|| position.clone());
                return Ok((start, position));
            }
            from = Some(position);
        }
    }

    fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn engine(&self) -> &dyn Engine {
        &*self.inner.engine
    }
}

/// Milliseconds since the unix epoch, the `ts` of a message.
#[inline] // On every delivery; a call across codegen units otherwise.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
