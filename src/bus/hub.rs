//! Live fan-out to this node's subscribers.
//!
//! Engines push each message in once; the hub hands the same `Arc<Message>` to every local
//! subscriber's bounded queue. It never blocks and never waits on a reader: a full queue
//! cuts that subscriber off (`slow_consumer`) and leaves everyone else untouched.

use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

use super::Map;
use super::inbox::{Pushed, Subscriber};
use crate::protocol::{Channel, Message};

/// Shards spread the channel map over several locks so that publishers on different
/// channels rarely contend.
const SHARDS: usize = 32;

type Subscribers = Map<u64, Subscriber>;

/// The per-node registry of live subscribers, by channel.
pub struct Hub {
    hasher: foldhash::fast::RandomState,
    shards: Box<[RwLock<Map<Channel, Subscribers>>]>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Hub {
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }

    fn shard(&self, channel: &Channel) -> &RwLock<Map<Channel, Subscribers>> {
        let index = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[index]
    }

    /// Hands `message` to every local subscriber of its channel.
    ///
    /// Engines must call this in offset order per channel. Returns how many subscribers
    /// were handed the message.
    pub fn deliver(&self, message: &Arc<Message>) -> usize {
        // std RwLock, not tokio's: never held across an await, and try_send never blocks.
        let shard = self
            .shard(&message.channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = shard.get(&message.channel) else {
            return 0;
        };
        let mut delivered = 0;
        for subscriber in subscribers.values() {
            match subscriber.push(message.clone()) {
                Pushed::Queued => delivered += 1,
                Pushed::Full => subscriber.cut_off(),
                // The subscriber is being dropped; its Drop unregisters it.
                Pushed::Closed => {}
            }
        }
        delivered
    }

    /// Registers a subscriber on `channel`; returns true when it is the channel's first.
    pub(super) fn register(&self, channel: &Channel, id: u64, subscriber: Subscriber) -> bool {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let subscribers = shard.entry(channel.clone()).or_default();
        subscribers.insert(id, subscriber);
        subscribers.len() == 1
    }

    /// Removes a subscriber from `channel`; returns true when the channel has none left.
    pub(super) fn unregister(&self, channel: &Channel, id: u64) -> bool {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = shard.get_mut(channel) else {
            return false;
        };
        subscribers.remove(&id);
        if subscribers.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Wakes every local subscriber that waits for a message.
    pub fn wake_all(&self) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for subscriber in shard.values().flat_map(|s| s.values()) {
                subscriber.wake();
            }
        }
    }

    /// Whether any local subscriber follows `channel`.
    pub fn has_subscribers(&self, channel: &Channel) -> bool {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.contains_key(channel)
    }

    /// Number of channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::inbox::Inbox;
    use crate::protocol::Epoch;
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

    #[test]
    fn full_queue_cuts_only_that_subscriber() {
        let hub = Hub::new();
        let chat = Channel::parse("chat").unwrap();
        let slow_inbox = Inbox::new(1, Some(CancellationToken::new()));
        let fast_inbox = Inbox::new(8, None);
        let slow = slow_inbox.subscriber();
        let fast = fast_inbox.subscriber();
        assert!(hub.register(&chat, 1, slow.clone()));
        assert!(!hub.register(&chat, 2, fast.clone()));
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
}
