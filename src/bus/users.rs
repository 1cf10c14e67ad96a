//! This node's streams by user and users' recent server commands (see
//! [`super::control`]): where a command that reached the node goes.

use std::sync::Arc;
use std::time::Instant;

use super::Map;
use super::control::{Command, Member, Op, RECENT};
use super::inbox::Subscriber;
use crate::protocol::{Channel, Position};
use crate::sync::Unpoisoned;
use std::sync::Mutex;

/// Most users whose recent commands a node remembers; beyond it a command is applied to
/// the streams here but not remembered for polls.
const MAX_RECENT: usize = 100_000;

/// What a user's polling clients have yet to learn.
#[derive(Default)]
struct Recent {
    at: Option<Instant>,
    subscribed: Vec<(Channel, Option<Position>)>,
    unsubscribed: Vec<Channel>,
    disconnected: bool,
}

/// What a poll of a user must apply: see [`Users::recent`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Channels to follow from where the command started them (else from now on),
    /// whatever the rules say.
    pub subscribed: Vec<(Channel, Option<Position>)>,
    /// Channels to drop.
    pub unsubscribed: Vec<Channel>,
    /// The user was disconnected: refuse the poll (`disconnected`).
    pub disconnected: bool,
}

/// One user's streams on this node, by subscription id. Most users have one, kept
/// inline: an idle connection should not pay for a vector of one.
enum Streams {
    One(u64, Subscriber),
    Many(Vec<(u64, Subscriber)>),
}

impl Streams {
    fn push(&mut self, id: u64, subscriber: Subscriber) {
        match self {
            Streams::One(first, only) => {
                *self = Streams::Many(vec![(*first, only.clone()), (id, subscriber)]);
            }
            Streams::Many(all) => all.push((id, subscriber)),
        }
    }

    /// Forgets stream `id`; true when none is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Streams::One(at, _) => *at == id,
            Streams::Many(all) => {
                all.retain(|(at, _)| *at != id);
                all.is_empty()
            }
        }
    }

    fn subscribers(&self) -> Vec<Subscriber> {
        match self {
            Streams::One(_, subscriber) => vec![subscriber.clone()],
            Streams::Many(all) => all.iter().map(|(_, s)| s.clone()).collect(),
        }
    }
}

/// This node's streaming sessions by user, and users' recent commands.
#[derive(Default)]
pub struct Users {
    /// Keyed by the user's name as its sessions share it, so a key costs no copy.
    streams: Mutex<Map<Arc<str>, Streams>>,
    recent: Mutex<Map<String, Recent>>,
}

impl Users {
    /// Registers subscription `id`, a stream of `member`, under its user.
    pub(super) fn register(&self, id: u64, member: &Member, subscriber: Subscriber) {
        if let Some(user) = &member.present.user {
            let mut streams = self.streams.locked();
            match streams.get_mut(&**user) {
                Some(theirs) => theirs.push(id, subscriber),
                None => {
                    streams.insert(user.clone(), Streams::One(id, subscriber));
                }
            }
        }
    }

    /// Forgets subscription `id`.
    pub(super) fn unregister(&self, id: u64, member: &Member) {
        let Some(user) = &member.present.user else {
            return;
        };
        let mut streams = self.streams.locked();
        if streams
            .get_mut(&**user)
            .is_some_and(|theirs| theirs.remove(id))
        {
            streams.remove(&**user);
        }
    }

    /// Applies a command that reached this node: queued on each of the user's streams
    /// here, and remembered for its polling clients.
    pub fn apply(&self, command: &Command) {
        self.remember(command);
        let subscribers: Vec<Subscriber> = {
            let streams = self.streams.locked();
            streams
                .get(command.user.as_str())
                .map(Streams::subscribers)
                .unwrap_or_default()
        };
        for subscriber in subscribers {
            if let Some(member) = subscriber.client() {
                member.queue(command);
                subscriber.command_waiting();
            }
        }
    }

    fn remember(&self, command: &Command) {
        let now = Instant::now();
        let mut recent = self.recent.locked();
        recent.retain(|_, r| r.at.is_some_and(|at| now.duration_since(at) < RECENT));
        if recent.len() >= MAX_RECENT && !recent.contains_key(&command.user) {
            tracing::warn!("too many users with recent server commands; one not remembered");
            return;
        }
        let entry = recent.entry(command.user.clone()).or_default();
        entry.at = Some(now);
        match (command.op, &command.channel()) {
            (Op::Subscribe, Some(channel)) => {
                entry.unsubscribed.retain(|c| c != channel);
                if !entry.subscribed.iter().any(|(c, _)| c == channel) {
                    entry
                        .subscribed
                        .push((channel.clone(), command.start(channel)));
                }
            }
            (Op::Unsubscribe, Some(channel)) => {
                entry.subscribed.retain(|(c, _)| c != channel);
                if !entry.unsubscribed.contains(channel) {
                    entry.unsubscribed.push(channel.clone());
                }
            }
            (Op::Disconnect, _) => entry.disconnected = true,
            _ => {}
        }
    }

    /// What `user`'s polls must apply: the commands of the last [`RECENT`].
    pub fn recent(&self, user: &str) -> Pending {
        let recent = self.recent.locked();
        match recent.get(user) {
            Some(r) if r.at.is_some_and(|at| at.elapsed() < RECENT) => Pending {
                subscribed: r.subscribed.clone(),
                unsubscribed: r.unsubscribed.clone(),
                disconnected: r.disconnected,
            },
            _ => Pending::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_learn_recent_commands() {
        let users = Users::default();
        let room = Channel::parse("room:1").unwrap();
        let command = |op| Command {
            op,
            user: "alice".into(),
            channel: Some(room.to_string()),
            start: None,
        };
        users.apply(&command(Op::Subscribe));
        assert_eq!(users.recent("alice").subscribed, vec![(room.clone(), None)]);
        users.apply(&command(Op::Unsubscribe));
        let pending = users.recent("alice");
        assert!(pending.subscribed.is_empty() && pending.unsubscribed == vec![room.clone()]);
        users.apply(&command(Op::Disconnect));
        assert!(users.recent("alice").disconnected);
        assert_eq!(users.recent("bob"), Pending::default());
    }
}
