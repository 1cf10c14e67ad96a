//! The server API, for backends holding an API key: `POST /subscribe` and
//! `POST /unsubscribe` (`{"user":"alice","channel":"room:1"}`) and `POST /disconnect`
//! (`{"user":"alice"}`) act on every live session of the user, on every node and every
//! transport. The engine carries each command to every node ([`crate::bus::control`]):
//! streams apply it at once; a polling client by its next request, whichever node it
//! reaches, as every node remembers the user's commands for [`RECENT`](crate::bus::control::RECENT).

use http::{Response, StatusCode};
use serde::Deserialize;

use crate::app::App;
use crate::auth::Identity;
use crate::bus::control::{Command, Op};
use crate::error::{Error, Result};
use crate::http::{Body, json};
use crate::protocol::{Channel, Cursor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    user: String,
    #[serde(default)]
    channel: Option<String>,
}

/// Longest user name a command may carry, as a token's `sub`.
const MAX_USER_LEN: usize = 256;

/// Answers a server API call by `who`, whose body was read: `{"ok":true}` once the
/// command is on its way to every node.
pub async fn serve(app: &App, who: &Identity, op: Op, body: &[u8]) -> Result<Response<Body>> {
    if !who.server {
        return Err(Error::Forbidden(
            "the server API needs a backend's API key (X-Cascade-Api-Key)".into(),
        ));
    }
    let request: Request =
        serde_json::from_slice(body).map_err(|e| Error::BadJson(e.to_string()))?;
    if request.user.is_empty() || request.user.len() > MAX_USER_LEN {
        return Err(Error::BadParam {
            name: "user",
            reason: format!("1 to {MAX_USER_LEN} bytes"),
        });
    }
    let channel = match (op, request.channel) {
        (Op::Disconnect, None) => None,
        (Op::Disconnect, Some(_)) => {
            return Err(Error::BadJson("a disconnect names no channel".into()));
        }
        (_, Some(channel)) => Some(Channel::parse(&channel)?.to_string()),
        (_, None) => {
            return Err(Error::BadParam {
                name: "channel",
                reason: "name the channel".into(),
            });
        }
    };
    // A subscribe starts where the channel is now: whatever the backend publishes once
    // this call returned reaches the user's sessions, however fast it follows.
    let start = match (op, &channel) {
        (Op::Subscribe, Some(name)) => {
            let here = Cursor {
                entries: vec![(Channel::parse(name)?, None)],
            };
            let (_, start) = app.bus.catch_up(&here, None).await?;
            Some(start.to_string())
        }
        _ => None,
    };
    let command = Command {
        op,
        user: request.user,
        channel,
        start,
    };
    app.bus.command(&command).await?;
    Ok(json(StatusCode::OK, r#"{"ok":true}"#.to_owned()))
}

/// Refuses a user the server disconnected within the last [`RECENT`](crate::bus::control::RECENT), on any transport:
/// its clients are not to come back at once with the same credentials.
pub fn refuse_disconnected(app: &App, who: &Identity) -> Result<()> {
    match who.user.as_deref() {
        Some(user) if !who.server && app.bus.recent_commands(user).disconnected => {
            Err(Error::Disconnected)
        }
        _ => Ok(()),
    }
}

/// What the server API changed in a poll's channels: the client is told, so that it
/// follows them as its own (`"subscribed"` and `"unsubscribed"` in the answer).
#[derive(Debug, Default)]
pub struct Changes {
    /// Channels the server subscribed the user to that the request did not name.
    pub subscribed: Vec<Channel>,
    /// Channels the request named that the server unsubscribed the user from.
    pub unsubscribed: Vec<Channel>,
}

impl Changes {
    /// Whether the client has nothing to learn.
    pub fn is_empty(&self) -> bool {
        self.subscribed.is_empty() && self.unsubscribed.is_empty()
    }
}

/// The channels of a poll by `who` that the server subscribed it to lately, taken out
/// of `cursor` before the rules look at it: they are the backend's decision. Put them
/// back with [`put_back`] once the rules kept what they allow. Also says what the
/// request did not know of.
pub fn take_granted(
    app: &App,
    who: &Identity,
    cursor: &mut Cursor,
) -> (Vec<(Channel, Option<crate::protocol::Position>)>, Changes) {
    let mut changes = Changes::default();
    let Some(user) = who.user.as_deref().filter(|_| !who.server) else {
        return (Vec::new(), changes);
    };
    let recent = app.bus.recent_commands(user);
    if recent.subscribed.is_empty() && recent.unsubscribed.is_empty() {
        return (Vec::new(), changes);
    }
    cursor.entries.retain(|(channel, _)| {
        let dropped = recent.unsubscribed.contains(channel);
        if dropped {
            changes.unsubscribed.push(channel.clone());
        }
        !dropped
    });
    let mut granted = Vec::new();
    for (channel, start) in recent.subscribed {
        match cursor.entries.iter().position(|(c, _)| *c == channel) {
            Some(at) => granted.push(cursor.entries.remove(at)),
            None => {
                changes.subscribed.push(channel.clone());
                granted.push((channel, start));
            }
        }
    }
    (granted, changes)
}

/// Puts back what [`take_granted`] took, within `max` channels.
pub fn put_back(
    cursor: &mut Cursor,
    granted: Vec<(Channel, Option<crate::protocol::Position>)>,
    max: usize,
) {
    for entry in granted {
        if cursor.entries.len() >= max {
            break;
        }
        cursor.entries.push(entry);
    }
}
