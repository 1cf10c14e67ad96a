//! Probes: marked payloads this node publishes on a channel's shard channel to prove
//! that its sharded subscription carries the channel's live traffic right now.
//!
//! A confirmation of `SSUBSCRIBE` only says that some connection subscribed. The cluster
//! client may close that connection a moment later (a demoted master leaves its slot map,
//! and its connection goes with every subscription on it) without a push to say so; a
//! probe that comes back is the proof that a message published on the channel's master
//! reaches this node. This module only keeps the books; the listener sends and reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::Channel;

/// What every probe's payload starts with. A stored message always holds a `{` (its
/// JSON), a probe never does, so neither is taken for the other.
const MARK: &str = "cascade-probe:";

/// How long a probe may take to come back before the subscription counts as lost.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The probes this node has out, one at most per channel.
pub(super) struct Probes {
    /// This node's mark among the gateway nodes that share the channel, so that it
    /// ignores their probes.
    node: String,
    /// The number of the next probe.
    next: u64,
    /// Each channel's outstanding probe: its number and when it is overdue.
    waiting: HashMap<Channel, (u64, Instant)>,
}

/// What a payload read on a shard channel is.
#[derive(Debug, PartialEq)]
pub(super) enum Read {
    /// Not a probe: a message.
    Message,
    /// This node's outstanding probe of the channel came back.
    Returned,
    /// A probe to ignore: another node's, or an earlier one of this node's.
    Other,
}

impl Probes {
    /// Books for a node marked by a fresh random token.
    pub(super) fn new() -> Self {
        let node = (0..12)
            .map(|_| fastrand::alphanumeric())
            .collect::<String>();
        Probes {
            node,
            next: 0,
            waiting: HashMap::new(),
        }
    }

    /// The payload of a new probe of `channel`, due back by `now + PROBE_TIMEOUT`; it
    /// replaces any probe of the channel still out.
    pub(super) fn send(&mut self, channel: &Channel, now: Instant) -> String {
        self.next += 1;
        self.waiting
            .insert(channel.clone(), (self.next, now + PROBE_TIMEOUT));
        format!("{MARK}{}:{}", self.node, self.next)
    }

    /// Forgets the probe of `channel` (it was never sent, or the channel is unwatched).
    pub(super) fn cancel(&mut self, channel: &Channel) {
        self.waiting.remove(channel);
    }

    /// Sorts a payload read on `channel`'s shard channel, and closes the channel's probe
    /// when it is the one that came back. How long it took, when it did.
    pub(super) fn read(&mut self, channel: &Channel, payload: &[u8]) -> (Read, Option<Duration>) {
        let Some(rest) = payload.strip_prefix(MARK.as_bytes()) else {
            return (Read::Message, None);
        };
        if payload.contains(&b'{') {
            return (Read::Message, None);
        }
        let ours = std::str::from_utf8(rest)
            .ok()
            .and_then(|rest| rest.split_once(':'))
            .filter(|(node, _)| *node == self.node)
            .and_then(|(_, number)| number.parse::<u64>().ok());
        match (ours, self.waiting.get(channel)) {
            (Some(number), Some(&(waited, due))) if number == waited => {
                self.waiting.remove(channel);
                let sent = due - PROBE_TIMEOUT;
                (Read::Returned, Some(sent.elapsed()))
            }
            _ => (Read::Other, None),
        }
    }

    /// When the earliest outstanding probe is overdue, if any is out.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|&(_, due)| due).min()
    }

    /// Takes the channels whose probes are overdue at `now`.
    pub(super) fn overdue(&mut self, now: Instant) -> Vec<Channel> {
        let late: Vec<Channel> = self
            .waiting
            .iter()
            .filter(|(_, (_, due))| *due <= now)
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in &late {
            self.waiting.remove(channel);
        }
        late
    }

    /// Whether a probe of `channel` is out.
    pub(super) fn is_out(&self, channel: &Channel) -> bool {
        self.waiting.contains_key(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    #[test]
    fn only_the_outstanding_probe_of_this_node_returns() {
        let mut probes = Probes::new();
        let chat = channel("chat");
        let now = Instant::now();
        let first = probes.send(&chat, now);
        let second = probes.send(&chat, now);
        assert_eq!(probes.read(&chat, first.as_bytes()).0, Read::Other);
        assert!(probes.is_out(&chat));
        let mut other = Probes::new();
        let theirs = other.send(&chat, now);
        assert_eq!(probes.read(&chat, theirs.as_bytes()).0, Read::Other);
        assert_eq!(
            probes.read(&channel("news"), second.as_bytes()).0,
            Read::Other
        );
        let (read, took) = probes.read(&chat, second.as_bytes());
        assert_eq!(read, Read::Returned);
        assert!(took.is_some());
        assert!(!probes.is_out(&chat));
        // Once closed, the same probe read again is ignored.
        assert_eq!(probes.read(&chat, second.as_bytes()).0, Read::Other);
    }

    #[test]
    fn stored_messages_are_not_probes() {
        let mut probes = Probes::new();
        let chat = channel("chat");
        let probe = probes.send(&chat, Instant::now());
        assert_eq!(
            probes.read(&chat, br#"{"channel":"chat","offset":1}"#).0,
            Read::Message
        );
        // A message excluding a client whose id looks like a probe is still a message.
        let excluded = format!("{probe}{{\"channel\":\"chat\"}}");
        assert_eq!(probes.read(&chat, excluded.as_bytes()).0, Read::Message);
        assert!(probes.is_out(&chat));
    }

    #[test]
    fn overdue_probes_are_taken_once() {
        let mut probes = Probes::new();
        let (chat, news) = (channel("chat"), channel("news"));
        let start = Instant::now();
        probes.send(&chat, start);
        probes.send(&news, start + Duration::from_millis(500));
        assert_eq!(probes.next_due(), Some(start + PROBE_TIMEOUT));
        assert!(probes.overdue(start).is_empty());
        assert_eq!(probes.overdue(start + PROBE_TIMEOUT), vec![chat.clone()]);
        assert!(probes.overdue(start + PROBE_TIMEOUT).is_empty());
        probes.cancel(&news);
        assert_eq!(probes.next_due(), None);
    }
}
