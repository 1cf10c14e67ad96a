//! Live fan-out to this node's subscribers.
//!
//! Engines push each message in once; the hub hands the same `Arc<Message>` to every local
//! subscriber's bounded queue, or writes it to an idle subscriber's socket express (see
//! [`super::express`]). It never blocks and never waits on a reader: a full queue cuts
//! that subscriber off (`slow_consumer`) and leaves everyone else untouched.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use super::Map;
use super::backlog::Backlog;
use super::inbox::{Pushed, Subscriber};
use super::presence::Roster;
use super::users::Users;
use crate::protocol::{Channel, Message};
use crate::sync::UnpoisonedRw;

/// Shards spread the channel map over several locks so that publishers on different
/// channels rarely contend.
const SHARDS: usize = 32;

/// Express writes are allowed while they would keep a channel's fan-out busy for at most
/// this share of the time between its messages (1 / `EXPRESS_SHARE`). Beyond it the
/// messages come faster than one write each can serve: queued, they go out in batches.
const EXPRESS_SHARE: u64 = 2;

/// One channel's local subscribers.
#[derive(Default)]
struct Subscribers {
    /// In subscription order, which a walk follows: subscribers that came one after
    /// the other mostly have neighbouring file descriptors and kernel sockets, and a walk
    /// in that order finds more of the kernel's per-socket data in the cache than one in
    /// hash order (about 7 % less system time per express write).
    by_id: BTreeMap<u64, Subscriber>,
    /// When its last fan-out began, in nanoseconds of the hub's clock; 0 before the first.
    last_walk: AtomicU64,
}

/// The per-node registry of live subscribers, by channel.
pub struct Hub {
    hasher: foldhash::fast::RandomState,
    shards: Box<[RwLock<Map<Channel, Subscribers>>]>,
    clock: Instant,
    /// What an express write has cost lately, in nanoseconds (a moving average).
    write_ns: AtomicU64,
    /// This node's clients in channels that keep presence.
    roster: Roster,
    /// This node's streams by user, for the server API's commands.
    users: Users,
    /// Deliveries queued and not yet taken.
    backlog: Backlog,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub whose publishes never wait for its backlog.
    pub fn new() -> Self {
        Self::with_publish_backlog(0)
    }

    /// An empty hub whose backends' publishes wait while more than `limit` deliveries
    /// are queued (0: never); see [`Backlog`].
    pub fn with_publish_backlog(limit: u64) -> Self {
        Hub {
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            clock: Instant::now(),
            write_ns: AtomicU64::new(0),
            roster: Roster::default(),
            users: Users::default(),
            backlog: Backlog::new(limit),
        }
    }

    fn shard(&self, channel: &Channel) -> &RwLock<Map<Channel, Subscribers>> {
        let index = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[index]
    }

    /// Hands `message` to every local subscriber of its channel: written express to the
    /// idle ones while the channel's messages are far enough apart, queued otherwise.
    ///
    /// Engines must call this in offset order per channel. Returns how many subscribers
    /// were handed the message.
    pub fn deliver(&self, message: &Arc<Message>) -> usize {
        // std RwLock, not tokio's: never held across an await, and a push never blocks (an
        // express write does not wait for the socket).
        let shard = self.shard(&message.channel).reading();
        let Some(subscribers) = shard.get(&message.channel) else {
            return 0;
        };
        let start = self.now_ns();
        let last = subscribers.last_walk.swap(start, Ordering::Relaxed);
        let walk = subscribers.by_id.len() as u64 * self.write_ns.load(Ordering::Relaxed);
        // A message that leaves a client out goes through the queues, where each
        // subscription knows whether it is that client (see `Subscription::set_client`).
        let express = (last == 0
            || walk.saturating_mul(EXPRESS_SHARE) <= start.saturating_sub(last))
            && !message.excludes_anyone();
        let (mut delivered, mut written) = (0, 0);
        let mut hand = |subscriber: &Subscriber| match subscriber.push(message, express) {
            Pushed::Queued => delivered += 1,
            Pushed::Written => written += 1,
            Pushed::Full => subscriber.cut_off(),
            // The subscriber is being dropped; its Drop unregisters it.
            Pushed::Closed => {}
        };
        if express && subscribers.by_id.len() > 1 {
            // Express writes are system calls: a walk of them under the shard's lock would
            // hold off every subscribe and unsubscribe on its channels for milliseconds.
            // It walks a copy instead; queued pushes, nanoseconds each, walk the map.
            let copy: Vec<Subscriber> = subscribers.by_id.values().cloned().collect();
            drop(shard);
            // Each write is a system call whose kernel work sweeps the cache, so the next
            // subscriber's inbox and lane were misses of their own, one after the other,
            // on every step: a third of the walk's user time. Their loads start a step or
            // two ahead instead: the inbox two ahead, and the lane, whose address is in
            // the inbox, one ahead.
            for (at, subscriber) in copy.iter().enumerate() {
                if let Some(next) = copy.get(at + 2) {
                    next.prefetch();
                }
                if let Some(next) = copy.get(at + 1) {
                    next.prefetch_lane();
                }
                hand(subscriber);
            }
        } else {
            subscribers.by_id.values().for_each(&mut hand);
        }
        if delivered > 0 {
            self.backlog.add(delivered);
        }
        if written > 0 {
            let each = (self.now_ns() - start) / written as u64;
            let average = self.write_ns.load(Ordering::Relaxed);
            let average = if average == 0 {
                each
            } else {
                (average * 7 + each) / 8
            };
            self.write_ns.store(average, Ordering::Relaxed);
        }
        delivered + written
    }

    /// Nanoseconds since the hub was made; never 0.
    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64 + 1
    }

    /// Registers a subscriber on `channel`; returns true when it is the channel's first,
    /// and the hub's own copy of the channel's name.
    ///
    /// A subscription keeps the name the hub keeps rather than the one its client sent:
    /// one allocation per channel instead of one per subscriber (48 bytes with malloc's).
    pub(super) fn register(
        &self,
        channel: &Channel,
        id: u64,
        subscriber: Subscriber,
    ) -> (bool, Channel) {
        let mut shard = self.shard(channel).writing();
        let subscribers = &mut shard.entry(channel.clone()).or_default().by_id;
        subscribers.insert(id, subscriber);
        let first = subscribers.len() == 1;
        let name = shard
            .get_key_value(channel)
            .map_or_else(|| channel.clone(), |(name, _)| name.clone());
        (first, name)
    }

    /// Removes a subscriber from `channel`; returns true when the channel has none left.
    pub(super) fn unregister(&self, channel: &Channel, id: u64) -> bool {
        let mut shard = self.shard(channel).writing();
        let Some(subscribers) = shard.get_mut(channel) else {
            return false;
        };
        subscribers.by_id.remove(&id);
        if subscribers.by_id.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Wakes every local subscriber that waits for a message.
    pub fn wake_all(&self) {
        for shard in self.shards.iter() {
            let shard = shard.reading();
            for subscriber in shard.values().flat_map(|s| s.by_id.values()) {
                subscriber.wake();
            }
        }
    }

    /// Whether any local subscriber follows `channel`.
    pub fn has_subscribers(&self, channel: &Channel) -> bool {
        let shard = self.shard(channel).reading();
        shard.contains_key(channel)
    }

    /// This node's streams by user, for the server API's commands.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// Deliveries queued on this node and not yet taken.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// This node's clients in channels that keep presence.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Number of channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.reading().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::inbox::Inbox;
    use crate::protocol::{Epoch, Position};
    use tokio_util::sync::CancellationToken;

    fn message(channel: &Channel, offset: u64) -> Arc<Message> {
        Arc::new(Message::new(
            channel.clone(),
            Epoch::parse("e").unwrap(),
            offset,
            0,
            b"null",
        ))
    }

    /// A channel's first message, and the position before it, where an armed subscriber
    /// waits for it.
    fn first_of(channel: &Channel) -> (Arc<Message>, Position) {
        let first = message(channel, 1);
        let before = Position {
            epoch: first.epoch.clone(),
            offset: 0,
        };
        (first, before)
    }

    #[test]
    fn full_queue_cuts_only_that_subscriber() {
        let hub = Hub::new();
        let chat = Channel::parse("chat").unwrap();
        let slow_inbox = Inbox::new(1, Some(CancellationToken::new()));
        let fast_inbox = Inbox::new(8, None);
        let slow = slow_inbox.subscriber();
        let fast = fast_inbox.subscriber();
        assert!(hub.register(&chat, 1, slow.clone()).0);
        assert!(!hub.register(&chat, 2, fast.clone()).0);
        assert_eq!(hub.deliver(&message(&chat, 1)), 2);
        assert_eq!(hub.deliver(&message(&chat, 2)), 1);
        assert!(slow.is_cut());
        assert!(slow_inbox.cut_token().is_some_and(|t| t.is_cancelled()));
        assert!(!fast.is_cut());
        assert_eq!(fast_inbox.try_pop().unwrap().offset, 1);
        assert_eq!(fast_inbox.try_pop().unwrap().offset, 2);
        assert!(!hub.unregister(&chat, 1));
        assert!(hub.unregister(&chat, 2));
        assert!(!hub.has_subscribers(&chat));
        assert_eq!(hub.channel_count(), 0);
    }

    struct Accept;

    impl crate::bus::Express for Accept {
        fn write(
            &self,
            _: &Message,
            _: Option<crate::bus::CursorAfter<'_>>,
        ) -> crate::bus::Written {
            crate::bus::Written::All
        }
    }

    #[test]
    fn messages_closer_than_their_writes_take_are_queued_to_batch() {
        let hub = Hub::new();
        let chat = Channel::parse("chat").unwrap();
        let inbox = Inbox::new(8, None);
        inbox.set_express(Arc::new(Accept));
        hub.register(&chat, 1, inbox.subscriber());
        let (first, before) = first_of(&chat);
        assert!(inbox.arm_at(&chat, &before));
        assert_eq!(hub.deliver(&first), 1);
        assert!(inbox.try_pop().is_none(), "the first message went express");
        // As if a write took a minute: the next message comes sooner than that.
        hub.write_ns.store(60_000_000_000, Ordering::Relaxed);
        assert!(inbox.arm_at(&chat, &first.position()));
        assert_eq!(hub.deliver(&message(&chat, 2)), 1);
        assert_eq!(inbox.try_pop().map(|m| m.offset), Some(2), "queued");
    }

    /// Notes which subscriber each write was for.
    struct Record(u64, Arc<std::sync::Mutex<Vec<u64>>>);

    impl crate::bus::Express for Record {
        fn write(
            &self,
            _: &Message,
            _: Option<crate::bus::CursorAfter<'_>>,
        ) -> crate::bus::Written {
            self.1.lock().unwrap().push(self.0);
            crate::bus::Written::All
        }
    }

    #[test]
    fn an_express_walk_goes_in_subscription_order() {
        let hub = Hub::new();
        let chat = Channel::parse("chat").unwrap();
        let (first, before) = first_of(&chat);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ids = [7, 3, 12, 1, 9];
        let inboxes: Vec<Inbox> = ids
            .iter()
            .map(|&id| {
                let inbox = Inbox::new(8, None);
                inbox.set_express(Arc::new(Record(id, order.clone())));
                hub.register(&chat, id, inbox.subscriber());
                assert!(inbox.arm_at(&chat, &before));
                inbox
            })
            .collect();
        assert_eq!(hub.deliver(&first), ids.len());
        assert_eq!(*order.lock().unwrap(), [1, 3, 7, 9, 12]);
        drop(inboxes);
    }

    #[test]
    fn an_express_walk_writes_to_every_armed_subscriber_and_queues_for_the_rest() {
        let hub = Hub::new();
        let chat = Channel::parse("chat").unwrap();
        let (first, before) = first_of(&chat);
        let inboxes: Vec<Inbox> = (0..3).map(|_| Inbox::new(8, None)).collect();
        for (id, inbox) in inboxes.iter().enumerate() {
            inbox.set_express(Arc::new(Accept));
            hub.register(&chat, id as u64, inbox.subscriber());
        }
        assert!(inboxes[0].arm_at(&chat, &before));
        assert!(inboxes[2].arm_at(&chat, &before));
        assert_eq!(hub.deliver(&first), 3);
        assert!(inboxes[0].try_pop().is_none(), "written");
        assert_eq!(
            inboxes[1].try_pop().map(|m| m.offset),
            Some(1),
            "not armed: queued"
        );
        assert!(inboxes[2].try_pop().is_none(), "written");
        assert_eq!(inboxes[2].moved(), [(None, first.position())]);
    }
}
