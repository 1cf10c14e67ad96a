//! A live subscription: retained history first, then live messages, with no duplicate and
//! no gap at the seam between them.
//!
//! The trick is ordering: a subscription registers with the hub *before* it reads history,
//! so every message published after the read is already queued. Live messages at or below
//! the position reached are dropped as duplicates; a live message beyond the next expected
//! offset (a missed notification, a changed epoch) makes the subscription re-read history
//! from its position, which fills the hole or reports an explicit gap. The same code serves
//! every engine.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Bus;
use super::hub::Subscriber;
use crate::error::Result;
use crate::protocol::{Channel, Cursor, Gap, Message, Position};

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub enum Event {
    /// The next message of a channel.
    Message(Arc<Message>),
    /// History was lost; the channel continues from `gap.first`.
    Gap(Gap),
}

/// Why a subscription ended on the bus side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The subscriber's queue overflowed; it may resume from its cursor.
    SlowConsumer,
    /// The engine could not be read to fill a hole; the client should resume later.
    EngineUnavailable,
}

impl Closed {
    /// The reason code sent to the client.
    pub fn code(self) -> &'static str {
        match self {
            Closed::SlowConsumer => "slow_consumer",
            Closed::EngineUnavailable => "engine_unavailable",
        }
    }
}

/// How a live message relates to the position the subscriber holds.
enum Fit {
    Next,
    Duplicate,
    Hole,
}

/// A subscriber's view of the bus over any number of channels.
pub struct Subscription {
    bus: Bus,
    id: u64,
    queue_tx: mpsc::Sender<Arc<Message>>,
    queue: mpsc::Receiver<Arc<Message>>,
    cut: CancellationToken,
    /// Channels in subscription order, for stable cursors.
    order: Vec<Channel>,
    /// The position read up to per channel: history already queued counts, so live
    /// duplicates are recognised.
    positions: HashMap<Channel, Position>,
    /// The position of the last event handed out per channel: what a cursor reports.
    delivered: HashMap<Channel, Position>,
    pending: VecDeque<Event>,
    /// A live message taken off the queue whose hole is being filled; kept here so that
    /// `next` stays cancel-safe across the history read.
    stash: Option<Arc<Message>>,
}

impl Subscription {
    pub(super) fn new(bus: Bus, id: u64, queue_len: usize, cut: CancellationToken) -> Self {
        let (queue_tx, queue) = mpsc::channel(queue_len);
        Subscription {
            bus,
            id,
            queue_tx,
            queue,
            cut,
            order: Vec::new(),
            positions: HashMap::new(),
            delivered: HashMap::new(),
            pending: VecDeque::new(),
            stash: None,
        }
    }

    /// Number of channels followed.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no channel is followed.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether `channel` is followed.
    pub fn follows(&self, channel: &Channel) -> bool {
        self.positions.contains_key(channel)
    }

    /// Follows the channels of `cursor`, each from its position (or from now on), and
    /// queues their retained history. Returns where delivery starts for each channel.
    /// Channels already followed keep their position.
    pub async fn add(&mut self, cursor: &Cursor) -> Result<Cursor> {
        let mut started = Cursor::default();
        for (channel, from) in &cursor.entries {
            if let Some(position) = self.positions.get(channel) {
                started
                    .entries
                    .push((channel.clone(), Some(position.clone())));
                continue;
            }
            let subscriber = Subscriber {
                queue: self.queue_tx.clone(),
                cut: self.cut.clone(),
            };
            // Register before reading history: see the module comment.
            self.bus.hub().register(channel, self.id, subscriber);
            let read = async {
                self.bus.engine().watch(channel).await?;
                let mut events = Vec::new();
                let positions = self
                    .bus
                    .read_into(channel, from.as_ref(), &mut events)
                    .await?;
                Ok::<_, crate::error::Error>((positions, events))
            };
            match read.await {
                Ok(((start, end), events)) => {
                    self.pending.extend(events);
                    self.order.push(channel.clone());
                    self.positions.insert(channel.clone(), end);
                    // Until the first event is handed out, a cursor repeats what was asked
                    // for: resuming with it reports a pending gap again, never skips it.
                    let asked = from.clone().unwrap_or_else(|| start.clone());
                    self.delivered.insert(channel.clone(), asked);
                    started.entries.push((channel.clone(), Some(start)));
                }
                Err(err) => {
                    self.release(channel);
                    return Err(err);
                }
            }
        }
        Ok(started)
    }

    /// Stops following `channels`; unknown ones are ignored.
    pub fn remove(&mut self, channels: &[Channel]) {
        for channel in channels {
            if self.positions.remove(channel).is_some() {
                self.delivered.remove(channel);
                self.order.retain(|c| c != channel);
                self.release(channel);
            }
        }
        self.pending.retain(|event| match event {
            Event::Message(m) => self.positions.contains_key(&m.channel),
            Event::Gap(g) => self.positions.contains_key(&g.channel),
        });
    }

    fn release(&self, channel: &Channel) {
        if self.bus.hub().unregister(channel, self.id) {
            self.bus.engine().unwatch(channel);
        }
    }

    /// The cursor that resumes exactly after the last event handed out.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            entries: self
                .order
                .iter()
                .map(|c| (c.clone(), self.delivered.get(c).cloned()))
                .collect(),
        }
    }

    /// Writes the current cursor without building an intermediate [`Cursor`]; transports
    /// that stamp every delivery with a cursor (SSE ids) call this per message.
    pub fn write_cursor(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        for (i, channel) in self.order.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            match self.delivered.get(channel) {
                Some(p) => write!(out, "{channel}@{}:{}", p.epoch, p.offset)?,
                None => write!(out, "{channel}")?,
            }
        }
        Ok(())
    }

    /// Resolves when the bus has cut this subscriber off; lets a transport abandon a
    /// write that a stalled client is blocking.
    pub async fn cut_off(&self) -> Closed {
        self.cut.cancelled().await;
        Closed::SlowConsumer
    }

    /// The next event, waiting for one. Cancel-safe.
    pub async fn next(&mut self) -> Result<Event, Closed> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(self.hand_out(event));
            }
            if self.cut.is_cancelled() {
                return Err(Closed::SlowConsumer);
            }
            let message = match self.stash.take() {
                Some(message) => message,
                None => {
                    tokio::select! {
                        biased;
                        _ = self.cut.cancelled() => return Err(Closed::SlowConsumer),
                        received = self.queue.recv() => match received {
                            Some(message) => message,
                            // Unreachable while we hold `queue_tx`; treat as a cut.
                            None => return Err(Closed::SlowConsumer),
                        },
                    }
                }
            };
            if let Some(event) = self.accept(message) {
                return Ok(self.hand_out(event));
            }
            if let Some(message) = self.stash.clone() {
                if !self.fill(&message).await {
                    return Err(Closed::EngineUnavailable);
                }
                self.stash = None;
                self.pending_accept(message);
            }
        }
    }

    /// The next event if one is ready without waiting; `None` otherwise.
    pub fn try_next(&mut self) -> Option<Result<Event, Closed>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(self.hand_out(event)));
            }
            if self.cut.is_cancelled() {
                return Some(Err(Closed::SlowConsumer));
            }
            if self.stash.is_some() {
                // A hole needs a history read; only `next` may await it.
                return None;
            }
            let message = self.queue.try_recv().ok()?;
            if let Some(event) = self.accept(message) {
                return Some(Ok(self.hand_out(event)));
            }
            if self.stash.is_some() {
                return None;
            }
        }
    }

    /// Records what the subscriber now has, for cursors.
    fn hand_out(&mut self, event: Event) -> Event {
        let (channel, position) = match &event {
            Event::Message(m) => (&m.channel, m.position()),
            Event::Gap(g) => (&g.channel, g.position()),
        };
        if let Some(delivered) = self.delivered.get_mut(channel) {
            *delivered = position;
        }
        event
    }

    /// Places a live message: returns it when it is the next one, drops a duplicate, or
    /// stashes it when there is a hole before it.
    fn accept(&mut self, message: Arc<Message>) -> Option<Event> {
        match self.fit(&message) {
            None | Some(Fit::Duplicate) => None,
            Some(Fit::Next) => {
                self.advance(&message);
                Some(Event::Message(message))
            }
            Some(Fit::Hole) => {
                self.stash = Some(message);
                None
            }
        }
    }

    fn fit(&self, message: &Message) -> Option<Fit> {
        let position = self.positions.get(&message.channel)?;
        Some(if position.epoch != message.epoch {
            Fit::Hole
        } else if message.offset <= position.offset {
            Fit::Duplicate
        } else if message.offset == position.offset + 1 {
            Fit::Next
        } else {
            Fit::Hole
        })
    }

    fn advance(&mut self, message: &Message) {
        if let Some(position) = self.positions.get_mut(&message.channel) {
            *position = message.position();
        }
    }

    /// Re-reads the channel's history from our position, queueing what it finds.
    /// Returns false when the engine could not be read.
    async fn fill(&mut self, message: &Message) -> bool {
        let Some(from) = self.positions.get(&message.channel).cloned() else {
            return true;
        };
        let mut events = Vec::new();
        let read = self
            .bus
            .read_into(&message.channel, Some(&from), &mut events);
        let Ok((_, end)) = read.await else {
            return false;
        };
        self.positions.insert(message.channel.clone(), end);
        self.pending.extend(events);
        true
    }

    /// After a fill, the stashed message is either covered (a duplicate) or still beyond
    /// the history we could read; in that case report the hole rather than loop on it.
    fn pending_accept(&mut self, message: Arc<Message>) {
        match self.fit(&message) {
            None | Some(Fit::Duplicate) => {}
            Some(Fit::Next) => {
                self.advance(&message);
                self.pending.push_back(Event::Message(message));
            }
            Some(Fit::Hole) => {
                self.pending.push_back(Event::Gap(Gap {
                    channel: message.channel.clone(),
                    epoch: message.epoch.clone(),
                    first: message.offset,
                }));
                self.advance(&message);
                self.pending.push_back(Event::Message(message));
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for channel in &self.order {
            self.release(channel);
        }
    }
}
