//! A live subscription: retained history first, then live messages, with no duplicate and
//! no gap at the seam between them.
//!
//! The trick is ordering: a subscription registers with the hub *before* it reads history,
//! so every message published after the read is already queued. Live messages at or below
//! the position reached are dropped as duplicates; a live message beyond the next expected
//! offset (a missed notification, a changed epoch) makes the subscription re-read history
//! from its position, which fills the hole or reports an explicit gap. The same code serves
//! every engine.

use std::sync::Arc;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

mod client;
mod pending;

use super::control::Control;
use super::inbox::{ExpressSwitch, Inbox};
use super::{Bus, Express};
use crate::error::Result;
use crate::protocol::{Channel, Cursor, Fit, Gap, Message, Position};

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub enum Event {
    /// The next message of a channel.
    Message(Arc<Message>),
    /// History was lost; the channel continues from `gap.first`.
    Gap(Gap),
    /// A server command was applied (`POST /subscribe`, `/unsubscribe`, `/disconnect`):
    /// the transport tells its client.
    Control(Control),
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

/// One followed channel.
struct Followed {
    channel: Channel,
    /// The position read up to: history already queued counts, so live duplicates are
    /// recognised.
    read: Position,
    /// The position of the last event handed out: what a cursor reports.
    delivered: Position,
}

/// A subscriber's view of the bus over any number of channels.
pub struct Subscription {
    bus: Bus,
    id: u64,
    inbox: Inbox,
    /// In subscription order, for stable cursors. A vector, not a map: it holds at most
    /// `limits.max_channels` entries, usually one, and is searched on every delivery,
    /// where a linear scan beats hashing the channel name.
    channels: Vec<Followed>,
    pending: pending::Pending,
    /// A live message taken off the queue whose hole is being filled; kept here so that
    /// `next` stays cancel-safe across the history read.
    stash: Option<Arc<Message>>,
    /// Messages taken off the queue since the node's backlog was last told: it is told
    /// once per batch a transport takes, not once per message.
    taken: u32,
}

impl Subscription {
    pub(super) fn new(bus: Bus, id: u64, queue_len: usize, cut: Option<CancellationToken>) -> Self {
        Subscription {
            bus,
            id,
            inbox: Inbox::new(queue_len, cut),
            channels: Vec::new(),
            pending: Default::default(),
            stash: None,
            taken: 0,
        }
    }

    /// Tells the node's backlog what was taken since it was last told.
    fn settle_taken(&mut self) {
        if self.taken > 0 {
            self.bus.hub().backlog().take(self.taken as usize);
            self.taken = 0;
        }
    }

    /// Number of channels followed.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether no channel is followed.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Whether `channel` is followed.
    pub fn follows(&self, channel: &Channel) -> bool {
        self.find(channel).is_some()
    }

    fn find(&self, channel: &Channel) -> Option<&Followed> {
        self.channels.iter().find(|f| f.channel == *channel)
    }

    fn find_mut(&mut self, channel: &Channel) -> Option<&mut Followed> {
        self.channels.iter_mut().find(|f| f.channel == *channel)
    }

    /// Follows the channels of `cursor`, each from its position (or from now on), and
    /// queues their retained history. Returns where delivery starts for each channel.
    /// Channels already followed keep their position.
    pub async fn add(&mut self, cursor: &Cursor) -> Result<Cursor> {
        self.settle();
        let mut started = Cursor {
            entries: Vec::with_capacity(cursor.entries.len()),
        };
        // Exactly: a subscription, usually of one channel, may be held for hours.
        self.channels.reserve_exact(cursor.entries.len());
        for (channel, from) in &cursor.entries {
            if let Some(followed) = self.find(channel) {
                started
                    .entries
                    .push((channel.clone(), Some(followed.read.clone())));
                continue;
            }
            let subscriber = self.inbox.subscriber();
            // Register before reading history: see the module comment.
            let (_, name) = self.bus.hub().register(channel, self.id, subscriber);
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
                    // Until the first event is handed out, a cursor repeats what was asked
                    // for: resuming with it reports a pending gap again, never skips it.
                    let asked = from.clone().unwrap_or_else(|| start.clone());
                    // The epoch `end` shares with the engine where they are the same, not
                    // the copy parsed from the client's cursor: 32 bytes of every
                    // resuming subscription (a long poll's, nearly always).
                    let asked = if asked.epoch == end.epoch {
                        Position {
                            epoch: end.epoch.clone(),
                            offset: asked.offset,
                        }
                    } else {
                        asked
                    };
                    self.channels.push(Followed {
                        channel: name,
                        read: end,
                        delivered: asked,
                    });
                    started.entries.push((channel.clone(), Some(start)));
                    if let Some(present) = self.streaming() {
                        self.bus.joined(channel, present).await;
                    }
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
        self.settle();
        for channel in channels {
            if let Some(index) = self.channels.iter().position(|f| f.channel == *channel) {
                self.channels.remove(index);
                self.unfollow(channel);
            }
        }
        let channels = &self.channels;
        let follows = |c: &Channel| channels.iter().any(|f| f.channel == *c);
        self.pending.retain(|event| match event {
            Event::Message(m) => follows(&m.channel),
            Event::Gap(g) => follows(&g.channel),
            Event::Control(_) => true,
        });
    }

    /// Stops following a channel it followed: it may leave the channel's presence.
    fn unfollow(&self, channel: &Channel) {
        if let Some(present) = self.streaming() {
            self.bus.left(channel, present);
        }
        self.release(channel);
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
                .channels
                .iter()
                .map(|f| (f.channel.clone(), Some(f.delivered.clone())))
                .collect(),
        }
    }

    /// Whether a poll's `channels=` (if given) and `cursor=` text stand exactly where this
    /// subscription is: the channels in order, each at the position last handed out (the
    /// cursor [`Subscription::put_cursor`] writes), and the subscription not cut off.
    /// Compared as text, so that a poll that resumes with its last answer's cursor parses
    /// no cursor at all.
    pub fn resumed_by(&self, channels: Option<&str>, cursor: &str) -> bool {
        if self.inbox.is_cut() || self.stash.is_some() {
            return false;
        }
        if let Some(list) = channels
            && !crate::protocol::split_ascii(list, b',').eq(self.channels().map(Channel::as_str))
        {
            return false;
        }
        let mut digits = itoa::Buffer::new();
        let mut rest = cursor.as_bytes();
        for (i, followed) in self.channels.iter().enumerate() {
            let position = &followed.delivered;
            let parts: [&[u8]; 6] = [
                if i == 0 { b"" } else { b"," },
                followed.channel.as_str().as_bytes(),
                b"@",
                position.epoch.as_str().as_bytes(),
                b":",
                digits.format(position.offset).as_bytes(),
            ];
            for part in parts {
                match rest.strip_prefix(part) {
                    Some(tail) => rest = tail,
                    None => return false,
                }
            }
        }
        rest.is_empty()
    }

    /// The channels followed, in subscription order.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.iter().map(|f| &f.channel)
    }

    /// Whether this subscription follows one channel: its cursor after a message is then
    /// the message's own position, so a transport can give every such subscriber the one
    /// encoding the message keeps.
    pub fn follows_one_channel(&self) -> bool {
        self.channels.len() == 1
    }

    /// Appends the current cursor, in [`Cursor`]'s text form, without building one and
    /// without the formatting machinery: SSE stamps every delivery with it.
    pub fn put_cursor(&self, out: &mut BytesMut) {
        let entries = self
            .channels
            .iter()
            .map(|f| (&f.channel, Some(&f.delivered)));
        crate::protocol::put_cursor(out, entries);
    }

    /// The most bytes [`Subscription::put_cursor`] appends.
    pub fn cursor_len_max(&self) -> usize {
        crate::protocol::cursor_len_max(self.channels.iter().map(|f| (&f.channel, &f.delivered)))
    }

    /// Lets the hub write this subscriber's live messages express through `sink` while
    /// the subscription is armed (see [`Express`]); the switch disarms it from
    /// within a wait.
    ///
    /// Positions that express writes move are taken in when the subscription places its
    /// next live message, and by `add`, `remove` and `arm`; [`Subscription::cursor`] does
    /// not see them before.
    pub fn set_express(&self, sink: Arc<dyn Express>) -> ExpressSwitch {
        self.inbox.set_express(sink)
    }

    /// Arms express delivery, if this subscription can take it now: a channel followed
    /// (several only if the sink allows it), nothing pending or waiting, not cut off. The
    /// transport must write nothing to its socket until it has disarmed the lane again.
    pub fn arm(&mut self) -> bool {
        self.settle();
        let idle = self.pending.is_empty() && self.stash.is_none() && !self.inbox.is_cut();
        // The lane keeps the positions read, and a transport may stamp the whole cursor,
        // made of the positions handed out, on what it writes: they must be the same.
        // They differ only until a channel's first event, while its cursor repeats what
        // was asked for (see `add`).
        let exact = || self.channels.iter().all(|f| f.read == f.delivered);
        idle && (self.channels.len() == 1 || exact())
            && self
                .inbox
                .arm(self.channels.iter().map(|f| (&f.channel, &f.read)))
    }

    /// Bytes of the message just handed out that the hub already wrote express before
    /// the socket filled; the transport writes the rest. 0 nearly always.
    pub fn take_written(&mut self) -> usize {
        self.inbox.take_written()
    }

    /// Takes in the positions express writes moved the followed channels to. Every change
    /// to the channel list settles first, so a moved position always finds its channel.
    fn settle(&mut self) {
        let channels = &mut self.channels;
        self.inbox.take_moved(|channel, read| {
            let followed = match (channel, channels.as_mut_slice()) {
                (None, [only]) => only,
                (Some(channel), channels) => {
                    match channels.iter_mut().find(|f| f.channel == *channel) {
                        Some(followed) => followed,
                        None => return,
                    }
                }
                (None, _) => return,
            };
            // Only a channel that moved: one that did not may still hand out the cursor
            // it was asked for (see `add`).
            if followed.read.offset != read.offset {
                followed.read = read.clone();
                followed.delivered = read.clone();
            }
        });
    }

    /// Resolves when the bus has cut this subscriber off; lets a transport abandon a
    /// write that a stalled client is blocking. Only a subscription made with
    /// [`Bus::subscribe_with_cut`] resolves; any other learns of a cut from `next`.
    pub async fn cut_off(&self) -> Closed {
        match self.inbox.cut_token() {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
        Closed::SlowConsumer
    }

    /// The next event, waiting for one. Cancel-safe.
    pub async fn next(&mut self) -> Result<Event, Closed> {
        // One loop, skips included: every parked connection keeps this future.
        loop {
            if let Some(event) = self.pending.pop_front() {
                let event = self.hand_out(event);
                if self.skipped(&event) {
                    continue;
                }
                return Ok(event);
            }
            if self.inbox.is_cut() {
                return Err(Closed::SlowConsumer);
            }
            if self.stash.is_none() {
                // What the last batch took, before waiting for the next.
                self.settle_taken();
                // No wait on `cut` here: the hub cuts a subscriber only when its queue
                // is full, so this receive is ready whenever a cut happens, and the
                // check above catches it. Waiting on the token as well would register
                // and drop a waiter on it for every message.
                match self.inbox.pop().await {
                    Some(message) => match self.take(message) {
                        Some(event) if self.skipped(&event) => continue,
                        Some(event) => return Ok(event),
                        None if self.stash.is_none() => continue,
                        // A hole before the message, which is stashed.
                        None => {}
                    },
                    None if self.inbox.take_command() => {}
                    None => continue,
                }
            }
            // Boxed: holes and commands are rare, and an idle subscriber's task would
            // otherwise keep room for a history read for as long as it waits.
            if !Box::pin(self.slow_path()).await {
                return Err(Closed::EngineUnavailable);
            }
        }
    }

    /// What `next` awaits rarely, behind one box so that its future keeps room for one
    /// pointer: filling the hole before the stashed message, or, without one, applying
    /// the server's commands. False when the engine could not be read.
    async fn slow_path(&mut self) -> bool {
        let Some(message) = self.stash.clone() else {
            self.apply_commands().await;
            return true;
        };
        if !self.fill(&message).await {
            return false;
        }
        self.stash = None;
        self.pending_accept(message);
        true
    }

    /// The next event if one is ready without waiting; `None` otherwise.
    pub fn try_next(&mut self) -> Option<Result<Event, Closed>> {
        loop {
            match self.try_next_unskipped()? {
                Ok(event) if self.skipped(&event) => continue,
                other => return Some(other),
            }
        }
    }

    /// The next ready event, skipped or not.
    fn try_next_unskipped(&mut self) -> Option<Result<Event, Closed>> {
        loop {
            // A server command's event comes from `next` alone, first of what a
            // transport writes, so that a disconnect ends it before anything else.
            if matches!(self.pending.front(), Some(Event::Control(_))) {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(self.hand_out(event)));
            }
            if self.inbox.is_cut() {
                return Some(Err(Closed::SlowConsumer));
            }
            if self.stash.is_some() {
                // A hole needs a history read; only `next` may await it.
                return None;
            }
            let Some(message) = self.inbox.try_pop() else {
                self.settle_taken();
                return None;
            };
            if let Some(event) = self.take(message) {
                return Some(Ok(event));
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
            Event::Control(_) => return event,
        };
        if let Some(followed) = self.channels.iter_mut().find(|f| f.channel == *channel) {
            followed.delivered = position;
        }
        event
    }

    /// Places a message taken off the queue, counting it for the backlog.
    fn take(&mut self, message: Arc<Message>) -> Option<Event> {
        self.taken += 1;
        self.accept(message)
    }

    /// Places a live message: returns it, handed out, when it is the next one; drops a
    /// duplicate; stashes it when there is a hole before it. One search of the channel
    /// list, where placing and handing out took three.
    fn accept(&mut self, message: Arc<Message>) -> Option<Event> {
        self.settle();
        let followed = self
            .channels
            .iter_mut()
            .find(|f| f.channel == message.channel)?;
        match followed.read.fit(&message) {
            Fit::Duplicate => None,
            Fit::Next => {
                let position = message.position();
                followed.read = position.clone();
                followed.delivered = position;
                Some(Event::Message(message))
            }
            Fit::Hole => {
                self.stash = Some(message);
                None
            }
        }
    }

    fn fit(&self, message: &Message) -> Option<Fit> {
        Some(self.find(&message.channel)?.read.fit(message))
    }

    fn advance(&mut self, message: &Message) {
        if let Some(followed) = self.find_mut(&message.channel) {
            followed.read = message.position();
        }
    }

    /// Re-reads the channel's history from our position, queueing what it finds.
    /// Returns false when the engine could not be read.
    async fn fill(&mut self, message: &Message) -> bool {
        let Some(from) = self.find(&message.channel).map(|f| f.read.clone()) else {
            return true;
        };
        let mut events = Vec::new();
        let read = self
            .bus
            .read_into(&message.channel, Some(&from), &mut events);
        let Ok((_, end)) = read.await else {
            return false;
        };
        if let Some(followed) = self.find_mut(&message.channel) {
            followed.read = end;
        }
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
        // Closed first, so that no push lands after what it held is counted.
        self.taken += self.inbox.close() as u32;
        self.settle_taken();
        for followed in &self.channels {
            self.unfollow(&followed.channel);
        }
        self.release_member();
    }
}
