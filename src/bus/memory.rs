//! The embedded engine: one process, histories in memory.
//!
//! Each channel has a log (epoch, head offset, retained messages) behind its own mutex.
//! Publishing assigns the offset, appends and queues the message for the hub's walk while
//! holding that mutex, which is what keeps live delivery in offset order under racing
//! publishers; the walk itself comes after the mutex is let go.
//! Idle channels are swept so that memory follows the live working set.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use super::Retention;
use super::control::Command;
use super::{Engine, History, Hub, Map, Reply, RetentionPolicy, Turn, now, now_ms};
use crate::protocol::{Channel, Epoch, Gap, Message, Position, Publication};
use crate::sync::Unpoisoned;

/// The in-memory engine.
pub struct MemoryEngine {
    hub: Arc<Hub>,
    retention: RetentionPolicy,
    // std Mutex: held only for map lookups, never across an await.
    channels: Mutex<Map<Channel, Arc<Mutex<Log>>>>,
    /// Keys claimed once, with their expiry; swept when the map has doubled since the
    /// last sweep (every Socket.IO socket's end claims one), so a claim costs O(1)
    /// amortised.
    claimed: Mutex<(HashMap<String, Instant>, usize)>,
    /// Values kept ([`Engine::keep`]), with their expiry; swept when the map has doubled
    /// since the last sweep, so a write costs O(1) amortised.
    kept: Mutex<(HashMap<String, Kept>, usize)>,
}

/// A kept value and when it expires.
type Kept = (Bytes, Instant);

struct Log {
    retention: Retention,
    epoch: Epoch,
    head: u64,
    messages: VecDeque<(Instant, Arc<Message>)>,
    touched: Instant,
}

impl Log {
    fn new(retention: Retention) -> Self {
        Log {
            retention,
            epoch: Epoch::random(),
            head: 0,
            messages: VecDeque::new(),
            touched: Instant::now(),
        }
    }

    fn trim(&mut self, now: Instant) {
        while self.messages.len() > self.retention.max_messages {
            self.messages.pop_front();
        }
        while let Some((at, _)) = self.messages.front() {
            if now.duration_since(*at) <= self.retention.max_age {
                break;
            }
            self.messages.pop_front();
        }
    }

    /// The first retained offset, or the next one to be published when none is retained.
    fn first(&self) -> u64 {
        self.messages
            .front()
            .map_or(self.head + 1, |(_, m)| m.offset)
    }

    /// Up to `limit` messages after `from`, or an explicit gap when `from` is not retained.
    fn read(&self, channel: &Channel, from: Option<&Position>, limit: usize) -> History {
        let mut history = History {
            epoch: self.epoch.clone(),
            head: self.head,
            gap: None,
            messages: Vec::new(),
        };
        let Some(from) = from else {
            return history;
        };
        let first = self.first();
        let same = from.epoch == self.epoch;
        let after = if same && from.offset + 1 >= first && from.offset <= self.head {
            from.offset
        } else {
            // A cursor past the head (forged) gets a gap at the head, not what it holds.
            let after = if same && from.offset > self.head {
                self.head
            } else {
                first - 1
            };
            history.gap = Some(Gap {
                channel: channel.clone(),
                epoch: self.epoch.clone(),
                first: after + 1,
            });
            after
        };
        // Retained offsets are exactly first..=head, so the index is arithmetic.
        let skip = (after + 1 - first) as usize;
        history.messages = self
            .messages
            .iter()
            .skip(skip)
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect();
        history
    }

    /// Appends a publication and queues it for its walk.
    fn append(
        &mut self,
        channel: &Channel,
        publication: &Publication,
        hub: &Hub,
    ) -> (Arc<Message>, Option<Turn>) {
        let now = Instant::now();
        self.head += 1;
        self.touched = now;
        let message = Arc::new(Message::published(
            channel.clone(),
            self.epoch.clone(),
            self.head,
            now_ms(),
            publication,
        ));
        self.messages.push_back((now, message.clone()));
        self.trim(now);
        // Queued under the log lock: this is the ordering guarantee the hub relies on.
        let turn = hub.enqueue(&message);
        (message, turn)
    }
}

impl MemoryEngine {
    /// An engine that delivers into `hub`, with a background sweeper of idle channels.
    pub fn new(hub: Arc<Hub>, retention: impl Into<RetentionPolicy>) -> Arc<Self> {
        let retention = retention.into();
        let engine = Arc::new(MemoryEngine {
            hub,
            retention,
            channels: Mutex::default(),
            claimed: Mutex::new((HashMap::new(), 64)),
            kept: Mutex::new((HashMap::new(), 64)),
        });
        let weak = Arc::downgrade(&engine);
        let every = engine
            .retention
            .default
            .max_age
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(sweep_forever(weak, every));
        engine
    }

    fn log(&self, channel: &Channel) -> Arc<Mutex<Log>> {
        let mut channels = self.channels.locked();
        channels
            .entry(channel.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Log::new(self.retention.for_channel(channel)))))
            .clone()
    }

    /// Drops channels that have no local subscriber, retain nothing, and were not touched
    /// for a whole retention period. Returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        // The map lock is held across the hub check so that a reader cannot fetch a log
        // that is being dropped: it either sees the old log or creates a fresh epoch.
        let mut channels = self.channels.locked();
        let before = channels.len();
        channels.retain(|channel, log| {
            let mut log = log.locked();
            log.trim(now);
            !log.messages.is_empty()
                || now.duration_since(log.touched) <= log.retention.max_age
                || self.hub.has_subscribers(channel)
        });
        before - channels.len()
    }

    /// Number of channels with a live log.
    pub fn channel_count(&self) -> usize {
        self.channels.locked().len()
    }

    fn publish_now(&self, channel: &Channel, publication: &Publication) -> Arc<Message> {
        let log = self.log(channel);
        let (message, turn) = log.locked().append(channel, publication, &self.hub);
        // Walked after the log lock is let go: a publisher racing on this channel, or a
        // history read, waits for the append, not for the walk.
        if let Some(turn) = turn {
            self.hub.walk(turn);
        }
        message
    }

    fn history_now(&self, channel: &Channel, from: Option<&Position>, limit: usize) -> History {
        let log = self.log(channel);
        let mut log = log.locked();
        let now = Instant::now();
        log.trim(now);
        log.touched = now;
        log.read(channel, from, limit)
    }
}

async fn sweep_forever(engine: Weak<MemoryEngine>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.sweep();
    }
}

impl Engine for MemoryEngine {
    fn command<'a>(&'a self, command: &'a Command) -> Reply<'a, ()> {
        self.hub.users().apply(command);
        now(Ok(()))
    }

    fn publish(&self, channel: &Channel, publication: Publication) -> Reply<'_, Arc<Message>> {
        now(Ok(self.publish_now(channel, &publication)))
    }

    fn history<'a>(
        &'a self,
        channel: &'a Channel,
        from: Option<&'a Position>,
        limit: usize,
    ) -> Reply<'a, History> {
        now(Ok(self.history_now(channel, from, limit)))
    }

    fn watch<'a>(&'a self, _channel: &'a Channel) -> Reply<'a, ()> {
        // Every publish on this node reaches the hub directly.
        now(Ok(()))
    }

    fn unwatch(&self, _channel: &Channel) {}

    fn claim_once<'a>(&'a self, key: &'a str, ttl: Duration) -> Reply<'a, bool> {
        let at = Instant::now();
        let mut claimed = self.claimed.locked();
        let (keys, sweep_at) = &mut *claimed;
        if keys.len() >= *sweep_at {
            keys.retain(|_, expires| *expires > at);
            *sweep_at = (keys.len() * 2).max(64);
        }
        let fresh = keys.get(key).is_none_or(|expires| *expires <= at);
        if fresh {
            keys.insert(key.to_owned(), at + ttl);
        }
        now(Ok(fresh))
    }

    fn keep<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Reply<'a, ()> {
        let at = Instant::now();
        let mut kept = self.kept.locked();
        let (values, sweep_at) = &mut *kept;
        if values.len() >= *sweep_at {
            values.retain(|_, (_, expires)| *expires > at);
            *sweep_at = (values.len() * 2).max(64);
        }
        values.insert(key.to_owned(), (value, at + ttl));
        now(Ok(()))
    }

    fn kept<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Bytes>> {
        let kept = self.kept.locked();
        let value = kept
            .0
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(value, _)| value.clone());
        now(Ok(value))
    }

    fn rekeep<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Reply<'a, bool> {
        let at = Instant::now();
        let mut kept = self.kept.locked();
        let live = kept.0.get_mut(key).filter(|(_, expires)| *expires > at);
        let found = live.is_some();
        if let Some(entry) = live {
            *entry = (value, at + ttl);
        }
        now(Ok(found))
    }

    fn prolong<'a>(&'a self, key: &'a str, ttl: Duration) -> Reply<'a, bool> {
        let at = Instant::now();
        let mut kept = self.kept.locked();
        let live = kept.0.get_mut(key).filter(|(_, expires)| *expires > at);
        let found = live.is_some();
        if let Some((_, expires)) = live {
            *expires = at + ttl;
        }
        now(Ok(found))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
