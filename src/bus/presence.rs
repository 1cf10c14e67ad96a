//! Presence: which client sessions are in a channel, for namespaces that enable it.
//!
//! Each node keeps its own clients in a [`Roster`] (held by the hub, which both engines
//! share). A streaming client (WebSocket, SSE) is present from its subscribe to its
//! unsubscribe or its end; a polling client holds no connection between requests, so each
//! poll makes it present for [`POLL_PRESENCE`] more. The engine makes the view the same
//! on every node ([`super::Engine::presence`]): the memory engine is one node; the Redis
//! engine keeps every node's entries with an expiry that the node's heartbeat refreshes.
//!
//! Where a namespace asks for them, a join and a leave are messages of the channel
//! itself (`"presence":"join"` and `"from"` naming who), so they reach its subscribers in
//! order with its other messages on every transport, and stay in its history.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Map;
use crate::protocol::{Channel, Publication};
use crate::session::ClientId;
use crate::sync::Unpoisoned;

/// How long a poll keeps its client present: a long poll's longest hold and a client's
/// pause between polls fit well within it.
pub const POLL_PRESENCE: Duration = Duration::from_secs(60);

/// One client session in a channel, as `GET /presence` lists it.
///
/// Cloned into every channel it is present in; a clone allocates nothing (the user is
/// shared, the id inline, the transport a name of the program's own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Present {
    /// Its user, if it has one.
    pub user: Option<Arc<str>>,
    /// Its client session id.
    pub client: ClientId,
    /// The transport it is on (`websocket`, `sse`, `longpoll`, `poll`).
    pub transport: Cow<'static, str>,
}

/// Which namespaces keep presence, and which of them announce joins and leaves.
#[derive(Clone, Debug, Default)]
pub struct PresencePolicy {
    /// For channels outside every namespace: (tracked, join/leave events).
    pub default: (bool, bool),
    /// By namespace.
    pub namespaces: BTreeMap<String, (bool, bool)>,
}

impl PresencePolicy {
    fn of(&self, channel: &Channel) -> (bool, bool) {
        channel
            .namespace()
            .and_then(|namespace| self.namespaces.get(namespace))
            .copied()
            .unwrap_or(self.default)
    }

    /// Whether `channel` keeps presence.
    pub fn tracks(&self, channel: &Channel) -> bool {
        self.of(channel).0
    }

    /// Whether `channel` announces joins and leaves.
    pub fn announces(&self, channel: &Channel) -> bool {
        let (tracked, events) = self.of(channel);
        tracked && events
    }

    /// Whether any channel keeps presence (else nothing of it runs).
    pub fn any(&self) -> bool {
        self.default.0 || self.namespaces.values().any(|(tracked, _)| *tracked)
    }
}

/// A client's place in one channel on this node.
struct Seat {
    present: Present,
    /// Its streaming subscriptions to the channel.
    streams: u32,
    /// Until when its polls keep it present.
    polled_until: Option<Instant>,
}

/// This node's clients, by channel.
#[derive(Default)]
pub struct Roster {
    channels: Mutex<Map<Channel, Vec<Seat>>>,
}

impl Roster {
    /// Makes `present` present in `channel`, by a stream (`poll` = `None`) or for a poll's
    /// while; true when it was not present before.
    pub fn join(&self, channel: &Channel, present: &Present, poll: Option<Instant>) -> bool {
        let mut channels = self.channels.locked();
        let seats = channels.entry(channel.clone()).or_default();
        let seat = match seats
            .iter_mut()
            .find(|s| s.present.client == present.client)
        {
            Some(seat) => seat,
            None => {
                seats.push(Seat {
                    present: present.clone(),
                    streams: 0,
                    polled_until: None,
                });
                seats.last_mut().expect("just pushed")
            }
        };
        let new = seat.streams == 0 && seat.polled_until.is_none();
        match poll {
            None => seat.streams += 1,
            Some(until) => seat.polled_until = Some(until),
        }
        new
    }

    /// Ends one stream of `client` in `channel`; true when it is no longer present.
    pub fn leave(&self, channel: &Channel, client: &ClientId) -> bool {
        let mut channels = self.channels.locked();
        let Some(seats) = channels.get_mut(channel) else {
            return false;
        };
        let Some(at) = seats.iter().position(|s| s.present.client == *client) else {
            return false;
        };
        let seat = &mut seats[at];
        seat.streams = seat.streams.saturating_sub(1);
        if seat.streams > 0 || seat.polled_until.is_some() {
            return false;
        }
        seats.swap_remove(at);
        if seats.is_empty() {
            channels.remove(channel);
        }
        true
    }

    /// Removes the polling clients whose while has passed; returns who left where.
    pub fn expire(&self, now: Instant) -> Vec<(Channel, Present)> {
        let mut gone = Vec::new();
        let mut channels = self.channels.locked();
        channels.retain(|channel, seats| {
            seats.retain_mut(|seat| {
                if seat.polled_until.is_some_and(|until| until <= now) {
                    seat.polled_until = None;
                    if seat.streams == 0 {
                        gone.push((channel.clone(), seat.present.clone()));
                        return false;
                    }
                }
                true
            });
            !seats.is_empty()
        });
        gone
    }

    /// Who is present in `channel` on this node.
    pub fn list(&self, channel: &Channel) -> Vec<Present> {
        let channels = self.channels.locked();
        channels.get(channel).map_or_else(Vec::new, |seats| {
            seats.iter().map(|s| s.present.clone()).collect()
        })
    }

    /// Every channel's clients on this node, for an engine's heartbeat.
    pub fn snapshot(&self) -> Vec<(Channel, Vec<Present>)> {
        let channels = self.channels.locked();
        channels
            .iter()
            .map(|(channel, seats)| {
                let present = seats.iter().map(|s| s.present.clone()).collect();
                (channel.clone(), present)
            })
            .collect()
    }
}

/// The message that tells a channel's subscribers `present` joined (`join`) or left.
pub fn announcement(present: &Present, join: bool) -> Publication {
    let event = if join { "join" } else { "leave" };
    let mut publication = Publication::data(Bytes::from_static(b"null"))
        .from(present.user.as_deref(), Some(present.client.as_str()));
    let mut head = format!(",\"presence\":\"{event}\"").into_bytes();
    head.extend_from_slice(&publication.head);
    publication.head = Bytes::from(head);
    publication
}

/// Everyone in `here` and `there`, each client once.
pub fn merge(mut here: Vec<Present>, there: Vec<Present>) -> Vec<Present> {
    for present in there {
        if !here.iter().any(|p| p.client == present.client) {
            here.push(present);
        }
    }
    here
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of id `client` padded to an id's length with `A`s.
    fn present(client: &str) -> Present {
        Present {
            user: Some(Arc::from("alice")),
            client: ClientId::parse(&format!("{client:A<22}")).unwrap(),
            transport: "websocket".into(),
        }
    }

    #[test]
    fn streams_count_and_polls_expire() {
        let roster = Roster::default();
        let room = Channel::parse("room:1").unwrap();
        assert!(roster.join(&room, &present("a"), None));
        assert!(!roster.join(&room, &present("a"), None));
        let now = Instant::now();
        assert!(roster.join(&room, &present("b"), Some(now + POLL_PRESENCE)));
        assert_eq!(roster.list(&room).len(), 2);
        assert!(!roster.leave(&room, &present("a").client));
        assert!(roster.leave(&room, &present("a").client));
        assert!(roster.expire(now).is_empty());
        let gone = roster.expire(now + POLL_PRESENCE);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.client, present("b").client);
        assert!(roster.list(&room).is_empty());
        assert!(roster.snapshot().is_empty());
    }

    #[test]
    fn an_announcement_names_who_and_what() {
        let publication = announcement(&present("a"), true);
        assert_eq!(
            &publication.head[..],
            br#","presence":"join","from":{"user":"alice","client":"aAAAAAAAAAAAAAAAAAAAAA"}"#
        );
    }
}
