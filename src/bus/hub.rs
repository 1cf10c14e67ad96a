//! Live fan-out to this node's subscribers.
//!
//! Engines push each message in once; the hub hands the same `Arc<Message>` to every local
//! subscriber's bounded queue, or writes it to an idle subscriber's socket express (see
//! [`super::express`]). It never blocks and never waits on a reader: a full queue cuts
//! that subscriber off (`slow_consumer`) and leaves everyone else untouched.

use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

use super::Map;
use super::backlog::Backlog;
use super::inbox::Subscriber;
use super::presence::Roster;
use super::users::Users;
use super::walk::{Fanout, Turn, Walker};
use crate::protocol::{Channel, Message};
use crate::sync::UnpoisonedRw;

/// Shards spread the channel map over several locks so that publishers on different
/// channels rarely contend.
const SHARDS: usize = 32;

/// Part of the channel map.
type Shard = RwLock<Map<Channel, Arc<Fanout>>>;

/// The per-node registry of live subscribers, by channel.
pub struct Hub {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard]>,
    /// Walks each channel's messages over its subscribers; shared with the walks split
    /// over other workers.
    walker: Arc<Walker>,
    /// This node's clients in channels that keep presence.
    roster: Roster,
    /// This node's streams by user, for the server API's commands.
    users: Users,
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
    /// are queued (0: never); see [`Backlog`]. Made inside a runtime with several
    /// workers, it splits a wide channel's walk over them.
    pub fn with_publish_backlog(limit: u64) -> Self {
        Hub {
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            walker: Arc::new(Walker::new(limit)),
            roster: Roster::default(),
            users: Users::default(),
        }
    }

    fn shard(&self, channel: &Channel) -> &Shard {
        let index = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[index]
    }

    /// Hands `message` to every local subscriber of its channel: written express to the
    /// idle ones while the channel's messages are far enough apart, queued otherwise.
    ///
    /// Engines must call this in offset order per channel. Returns how many subscribers
    /// this call handed the message (and any it walked for other publishers); a walk
    /// going on elsewhere, or parts of it split over other workers, are not counted.
    pub fn deliver(&self, message: &Arc<Message>) -> usize {
        match self.enqueue(message) {
            Some(turn) => self.walk(turn),
            None => 0,
        }
    }

    /// Queues `message` for its channel's walk, in offset order: an engine calls this
    /// while it holds whatever orders its offsets, then lets go of that and walks the
    /// turn, if it got one, with [`Hub::walk`]. [`Hub::deliver`] does both.
    pub fn enqueue(&self, message: &Arc<Message>) -> Option<Turn> {
        let fanout = self
            .shard(&message.channel)
            .reading()
            .get(&message.channel)?
            .clone();
        self.walker.enqueue(fanout, message)
    }

    /// Walks a channel's queued messages (see [`Hub::enqueue`]). Returns how many
    /// subscribers this call handed a message.
    pub fn walk(&self, turn: Turn) -> usize {
        self.walker.walk(turn)
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
        let first = shard
            .entry(channel.clone())
            .or_default()
            .insert(id, subscriber);
        let name = shard
            .get_key_value(channel)
            .map_or_else(|| channel.clone(), |(name, _)| name.clone());
        (first, name)
    }

    /// Removes a subscriber from `channel`; returns true when the channel has none left.
    pub(super) fn unregister(&self, channel: &Channel, id: u64) -> bool {
        let mut shard = self.shard(channel).writing();
        let Some(fanout) = shard.get(channel) else {
            return false;
        };
        if fanout.remove(id) {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Wakes every local subscriber that waits for a message.
    pub fn wake_all(&self) {
        for shard in self.shards.iter() {
            let shard = shard.reading();
            for fanout in shard.values() {
                fanout.for_each(Subscriber::wake);
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
        self.walker.backlog()
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
        hub.shard(&chat).reading()[&chat].set_write_ns(60_000_000_000);
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

    /// Notes the thread each write was made on, and holds a thread's first write until
    /// two threads have written (for at most two seconds): parts walked one after the
    /// other on one thread would end up with one.
    struct Meet(Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>);

    impl crate::bus::Express for Meet {
        fn write(
            &self,
            _: &Message,
            _: Option<crate::bus::CursorAfter<'_>>,
        ) -> crate::bus::Written {
            let me = std::thread::current().id();
            let first = {
                let mut seen = self.0.lock().unwrap();
                let first = !seen.contains(&me);
                seen.push(me);
                first
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while first && std::time::Instant::now() < deadline {
                let mut seen = self.0.lock().unwrap().clone();
                seen.sort_unstable_by_key(|id| format!("{id:?}"));
                seen.dedup();
                if seen.len() > 1 {
                    break;
                }
                std::thread::yield_now();
            }
            crate::bus::Written::All
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wide_walk_is_split_over_the_workers() {
        let hub = Arc::new(Hub::new());
        let chat = Channel::parse("chat").unwrap();
        let (first, before) = first_of(&chat);
        let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let inboxes: Vec<Inbox> = (0..1024)
            .map(|id| {
                let inbox = Inbox::new(8, None);
                inbox.set_express(Arc::new(Meet(threads.clone())));
                hub.register(&chat, id, inbox.subscriber());
                assert!(inbox.arm_at(&chat, &before));
                inbox
            })
            .collect();
        // Published from a worker, as a request or an engine's listener would.
        let publisher = hub.clone();
        let handed = tokio::spawn(async move { publisher.deliver(&first) })
            .await
            .unwrap();
        assert_eq!(handed, 0, "every part is left to the workers");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while threads.lock().unwrap().len() < inboxes.len() {
            assert!(std::time::Instant::now() < deadline, "every part walked");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut seen = threads.lock().unwrap().clone();
        seen.sort_unstable_by_key(|id| format!("{id:?}"));
        seen.dedup();
        assert_eq!(seen.len(), 2, "both workers wrote");
        assert!(inboxes.iter().all(|inbox| inbox.try_pop().is_none()));
        assert_eq!(hub.backlog().queued(), 0, "nothing queued stays counted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_walk_queues_each_subscribers_messages_in_offset_order() {
        const MESSAGES: u64 = 300;
        let mut hub = Hub::new();
        Arc::get_mut(&mut hub.walker).unwrap().split_every_walk();
        let hub = Arc::new(hub);
        let chat = Channel::parse("chat").unwrap();
        let inboxes: Vec<Inbox> = (0..1024)
            .map(|id| {
                let inbox = Inbox::new(MESSAGES as usize, None);
                hub.register(&chat, id, inbox.subscriber());
                inbox
            })
            .collect();
        // Two publishers in turn, as an engine's lock would order them.
        let order = Arc::new(std::sync::Mutex::new(0u64));
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let (hub, chat, order) = (hub.clone(), chat.clone(), order.clone());
                std::thread::spawn(move || {
                    loop {
                        let turn = {
                            let mut offset = order.lock().unwrap();
                            if *offset == MESSAGES {
                                return;
                            }
                            *offset += 1;
                            hub.enqueue(&message(&chat, *offset))
                        };
                        if let Some(turn) = turn {
                            hub.walk(turn);
                        }
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.join().unwrap();
        }
        for (at, inbox) in inboxes.iter().enumerate() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            for offset in 1..=MESSAGES {
                let popped = loop {
                    if let Some(message) = inbox.try_pop() {
                        break message;
                    }
                    assert!(std::time::Instant::now() < deadline, "inbox {at}: {offset}");
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                };
                assert_eq!(popped.offset, offset, "inbox {at}");
            }
        }
    }

    /// Panics at its first write, as a transport's bug would.
    struct PanicOnce(std::sync::atomic::AtomicBool);

    impl crate::bus::Express for PanicOnce {
        fn write(
            &self,
            _: &Message,
            _: Option<crate::bus::CursorAfter<'_>>,
        ) -> crate::bus::Written {
            if !self.0.swap(true, std::sync::atomic::Ordering::Relaxed) {
                panic!("a transport's bug");
            }
            crate::bus::Written::All
        }
    }

    /// Subscribers of `chat`, armed before its first message; the first one's writes
    /// panic once.
    fn with_a_panicking_subscriber(hub: &Hub, chat: &Channel, count: u64) -> Vec<Inbox> {
        let (_, before) = first_of(chat);
        (0..count)
            .map(|id| {
                let inbox = Inbox::new(8, None);
                if id == 0 {
                    let once = PanicOnce(std::sync::atomic::AtomicBool::new(false));
                    inbox.set_express(Arc::new(once));
                } else {
                    inbox.set_express(Arc::new(Accept));
                }
                hub.register(chat, id, inbox.subscriber());
                assert!(inbox.arm_at(chat, &before));
                inbox
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_walk_that_panics_leaves_the_channel_to_the_next_publish() {
        let hub = Arc::new(Hub::new());
        let chat = Channel::parse("chat").unwrap();
        let inboxes = with_a_panicking_subscriber(&hub, &chat, 2);
        let (first, _) = first_of(&chat);
        let publisher = hub.clone();
        let walked = tokio::spawn(async move { publisher.deliver(&first) }).await;
        assert!(walked.unwrap_err().is_panic());
        // Queued for the subscriber whose write panicked, written to the other.
        assert_eq!(hub.deliver(&message(&chat, 2)), 2);
        assert_eq!(inboxes[0].try_pop().map(|m| m.offset), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_walk_whose_part_panics_leaves_the_channel_to_the_next_publish() {
        let hub = Arc::new(Hub::new());
        let chat = Channel::parse("chat").unwrap();
        let inboxes = with_a_panicking_subscriber(&hub, &chat, 1024);
        let (first, _) = first_of(&chat);
        let second = message(&chat, 2);
        let publisher = hub.clone();
        tokio::spawn(async move { publisher.deliver(&first) })
            .await
            .unwrap();
        // The part without the panic wrote the first message; the second goes out once
        // a publish finds the turn given up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let last = inboxes.last().unwrap();
        let mut moved = Vec::new();
        while !moved.contains(&(None, second.position())) {
            assert!(std::time::Instant::now() < deadline, "moved {moved:?}");
            let (publisher, second) = (hub.clone(), second.clone());
            tokio::spawn(async move { publisher.deliver(&second) })
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            moved.extend(last.moved());
        }
    }
}
