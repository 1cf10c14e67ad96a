//! The server API's commands on a user's sessions (`POST /subscribe`, `/unsubscribe`,
//! `/disconnect`), carried by the engine to every node ([`super::Engine::command`]).
//!
//! On each node a streaming session of a user (WebSocket, SSE) is a [`Member`] in
//! [`Users`](super::users::Users): a command is queued on it and its subscription wakes, applies it and hands
//! the transport an [`Event::Control`](super::Event::Control) to tell the client. A
//! polling client holds nothing between requests: every node remembers the user's recent
//! commands for [`RECENT`], and its next poll, on whichever node, applies them.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Present;
use crate::protocol::{Channel, Cursor, Position};
use crate::sync::Unpoisoned;

/// How long every node remembers a user's commands for its polling clients' next poll,
/// and refuses a disconnected user's requests.
pub const RECENT: Duration = Duration::from_secs(60);

/// What a command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Subscribes the user's sessions to `channel`.
    Subscribe,
    /// Unsubscribes them from `channel`.
    Unsubscribe,
    /// Ends them.
    Disconnect,
}

/// One command, as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// What it does.
    pub op: Op,
    /// Whose sessions.
    pub user: String,
    /// The channel of a subscribe or an unsubscribe (a valid name: checked where the
    /// command is made, and again where it is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Where a subscribe starts: the channel's position when the backend asked, as a
    /// cursor of that one channel, so that what it publishes right after reaches the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

impl Command {
    /// Its channel, if it names a valid one.
    pub fn channel(&self) -> Option<Channel> {
        self.channel.as_deref().and_then(|c| Channel::parse(c).ok())
    }

    /// Where a subscribe to `channel` starts, if the command says.
    pub fn start(&self, channel: &Channel) -> Option<Position> {
        let cursor = Cursor::parse(self.start.as_deref()?, 1).ok()?;
        let (named, position) = cursor.entries.into_iter().next()?;
        (named == *channel).then_some(position).flatten()
    }
}

/// What a subscription tells its transport once it applied a command.
#[derive(Clone, Debug)]
pub enum Control {
    /// Now follows these channels, from these positions.
    Subscribed(Cursor),
    /// No longer follows this channel.
    Unsubscribed(Channel),
    /// The session is ended by the server: the transport closes it (`disconnected`).
    Disconnected,
}

/// A streaming session of a user, as commands reach it.
pub struct Member {
    /// Who it is.
    pub present: Present,
    /// Whether following a channel makes the client present in it (a stream); a polling
    /// client is made present by each poll instead ([`super::Bus::polled`]).
    pub streams: bool,
    queued: Mutex<Vec<Command>>,
}

impl Member {
    pub(super) fn new(present: Present, streams: bool) -> Self {
        Member {
            present,
            streams,
            queued: Mutex::default(),
        }
    }

    /// Queues a command for the subscription to apply.
    pub(super) fn queue(&self, command: &Command) {
        self.queued.locked().push(command.clone());
    }

    /// The commands queued since the last take.
    pub(super) fn take(&self) -> Vec<Command> {
        std::mem::take(&mut *self.queued.locked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_travel_as_json() {
        let command = Command {
            op: Op::Subscribe,
            user: "alice".into(),
            channel: Some("room:1".into()),
            start: None,
        };
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(
            json,
            r#"{"op":"subscribe","user":"alice","channel":"room:1"}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
        assert!(serde_json::from_str::<Command>(r#"{"op":"x","user":"a"}"#).is_err());
    }
}
