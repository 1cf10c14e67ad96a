//! A Socket.IO socket on the default namespace, whichever transport carries it: its
//! connect (the backend's connect hook, or a recovery from a cursor), its events (the
//! backend's rpc hook, answered as acknowledgements), and the events it receives (the
//! messages of its rooms). Knows packets and the bus, not HTTP or WebSocket framing.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::packet;
use crate::app::App;
use crate::auth::Identity;
use crate::bus::{Event, Present};
use crate::config::HookEvent;
use crate::error::{Error, Result};
use crate::hooks::Connecting;
use crate::protocol::{Channel, Cursor, Message};
use crate::query::Query;
use crate::session::{ClientId, ClientSession};

/// A socket connected to `/`, as kept between requests: enough for any node to act for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Joined {
    /// Which connect this is: a poll that followed an older one takes this one's rooms.
    pub generation: u64,
    /// The client session's id: Socket.IO's `socket.id`, the hooks' `client`.
    pub client: String,
    /// Its user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the connect hook granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted: Vec<String>,
    /// The connect hook's `expire_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    /// The connect hook's `meta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RawValue>>,
    /// Its rooms, with the positions they start from: cursor text.
    pub rooms: String,
    /// Its private id, what a client sends back to recover it.
    pub pid: String,
    /// Whether the socket ended (a client's disconnect).
    #[serde(default)]
    pub ended: bool,
}

impl Joined {
    /// A socket of client session `session`, following `rooms`, recovered by `pid`; a new
    /// generation, so that a poll that followed an older connect takes these rooms.
    fn new(session: &ClientSession, rooms: &Cursor, pid: String) -> Self {
        Joined {
            generation: fastrand::u64(1..),
            client: session.client.as_str().to_owned(),
            user: session.user.as_deref().map(str::to_owned),
            granted: session
                .granted
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            expire_at: session.expire_at,
            meta: session.meta.clone(),
            rooms: rooms.to_string(),
            pid,
            ended: false,
        }
    }

    /// The identity hooks and rules see.
    pub fn identity(&self) -> Option<Identity> {
        let session = ClientSession {
            client: ClientId::parse(&self.client)?,
            user: self.user.as_deref().map(Arc::from),
            granted: self
                .granted
                .iter()
                .filter_map(|c| Channel::parse(c).ok())
                .collect(),
            allowed: Box::default(),
            expire_at: self.expire_at,
            meta: self.meta.clone(),
        };
        Some(Identity::anonymous().in_session(Arc::new(session)))
    }

    /// Who the socket is to presence, `exclude_client` and the server API.
    pub fn present(&self, transport: &'static str) -> Present {
        Present {
            user: self.user.as_deref().map(Arc::from),
            // Made from a session's id, so it parses; a fresh one otherwise.
            client: ClientId::parse(&self.client).unwrap_or_else(ClientId::random),
            transport: transport.into(),
        }
    }
}

/// The outcome of a CONNECT: the socket, or the connect error packet to send.
pub type Connect = std::result::Result<Joined, String>;

/// Handles a client's CONNECT to `namespace` with its `auth`: a recovery when `auth`
/// carries a private id and an offset that still hold, else a new session that the
/// connect hook accepts (when it is on). `transport` is the metric label.
pub async fn connect(
    app: &App,
    transport: &'static str,
    headers: &HeaderMap,
    query: &Query<'_>,
    remote: Option<std::net::IpAddr>,
    namespace: &str,
    auth: Option<&RawValue>,
) -> Connect {
    if namespace != "/" {
        return Err(packet::connect_error(namespace, "Invalid namespace", None));
    }
    let fields: serde_json::Map<String, serde_json::Value> = auth
        .and_then(|a| serde_json::from_str(a.get()).ok())
        .unwrap_or_default();
    if let Some(joined) = recover(app, &fields).await {
        return Ok(joined);
    }
    match begin(app, transport, headers, query, remote, auth, &fields).await {
        Ok(joined) => Ok(joined),
        Err(err) => {
            app.metrics.error_answer(&err);
            let data = serde_json::json!({"code": err.code()});
            Err(packet::connect_error("/", &err.message(), Some(data)))
        }
    }
}

/// A new session: the token in `auth.token`, then the connect hook.
async fn begin(
    app: &App,
    transport: &'static str,
    headers: &HeaderMap,
    query: &Query<'_>,
    remote: Option<std::net::IpAddr>,
    auth: Option<&RawValue>,
    fields: &serde_json::Map<String, serde_json::Value>,
) -> Result<Joined> {
    let token = fields.get("token").and_then(|t| t.as_str());
    let token_query = token.map(|t| format!("token={}", percent(t)));
    let credentials = Query::parse(token_query.as_deref());
    let who = app.auth.identify(headers, &credentials, &app.bus).await?;
    crate::transport::server_api::refuse_disconnected(app, &who)?;
    let session = match app.hooks.as_ref() {
        Some(hooks) if hooks.on(HookEvent::Connect) && !who.server => {
            let connecting = Connecting {
                transport,
                remote,
                headers,
                query,
                user: who.user.as_deref(),
                auth,
            };
            hooks.connect(connecting).await?
        }
        _ => ClientSession {
            user: who.user.clone(),
            ..ClientSession::fresh()
        },
    };
    let who = who.in_session(Arc::new(session.clone()));
    let mut rooms = Cursor {
        entries: session.granted.iter().map(|c| (c.clone(), None)).collect(),
    };
    // Private messages: a socket with a user follows `user:<user>` where the rules let it.
    if let Some(user) = &who.user
        && let Ok(personal) = Channel::parse(&format!("{}:{user}", crate::auth::rules::PERSONAL))
        && rooms.entries.len() < app.config.limits.max_channels
        && !rooms.entries.iter().any(|(c, _)| *c == personal)
        && app.auth.check_subscribe(&who, &personal).is_ok()
    {
        rooms.entries.push((personal, None));
    }
    // Channels the client asks for in `auth.channels`, as a Cascade client names them:
    // checked by the channel rules and the subscribe hook; those refused are left out.
    if let Some(asked) = fields
        .get("channels")
        .and_then(|c| c.as_array())
        .filter(|a| !a.is_empty())
    {
        let names = asked.iter().filter_map(|c| c.as_str());
        let max = app.config.limits.max_channels;
        let mut wanted = crate::transport::wanted_cursor(Some(names), "", max)?;
        wanted
            .entries
            .retain(|(c, _)| !rooms.entries.iter().any(|(r, _)| r == c));
        if !wanted.entries.is_empty() {
            crate::transport::session::allowed(app, &who, &mut wanted).await?;
            for entry in wanted.entries {
                if rooms.entries.len() < max {
                    rooms.entries.push(entry);
                }
            }
        }
    }
    // Positions now, so that whichever node serves the next poll starts here.
    let (_, rooms) = app.bus.catch_up(&rooms, None).await?;
    let pid = app.sessions.issue(&session)?;
    Ok(Joined::new(&session, &rooms, pid))
}

/// Socket.IO's connection state recovery: `auth.pid` (the signed session) and
/// `auth.offset` (the cursor of the last event received). Recovered when the session was
/// seen within `socketio.recovery_ms`, every room of the offset is still readable, and
/// nothing after it was lost; `None` otherwise, and the client connects anew.
async fn recover(app: &App, fields: &serde_json::Map<String, serde_json::Value>) -> Option<Joined> {
    let pid = fields.get("pid")?.as_str()?;
    let offset = fields.get("offset")?.as_str()?;
    let session = app.sessions.verify(pid)?;
    app.bus
        .kept(&seen_key(session.client.as_str()))
        .await
        .ok()??;
    let mut rooms = Cursor::parse(offset, app.config.limits.max_channels).ok()?;
    let asked = rooms.entries.len();
    let who = Identity::anonymous().in_session(Arc::new(session.clone()));
    crate::transport::server_api::refuse_disconnected(app, &who).ok()?;
    let (refused, _, _) = crate::transport::allowed(app, &who, &mut rooms)
        .await
        .ok()?;
    if !refused.is_empty() || rooms.entries.len() < asked {
        return None;
    }
    let (events, _) = app.bus.catch_up(&rooms, None).await.ok()?;
    if events.iter().any(|e| matches!(e, Event::Gap(_))) {
        return None;
    }
    Some(Joined::new(&session, &rooms, pid.to_owned()))
}

/// The key that says a socket's session was seen lately, for recovery.
pub fn seen_key(client: &str) -> String {
    format!("sio:seen:{client}")
}

/// Records that `joined` was seen: recoverable for `socketio.recovery_ms` plus `extra`.
pub async fn seen(app: &App, joined: &Joined, extra: std::time::Duration) {
    let ttl = std::time::Duration::from_millis(app.config.socketio.recovery_ms) + extra;
    if let Err(err) = app
        .bus
        .keep(
            &seen_key(&joined.client),
            bytes::Bytes::from_static(b"1"),
            ttl,
        )
        .await
    {
        tracing::debug!(%err, "socket.io session not recorded for recovery");
    }
}

/// Handles a client's event: the backend's rpc hook with `method` = the event name and
/// `params` = its arguments. The acknowledgement to send when the client asked for one:
/// the hook's result, or `{"error":{"code","message"}}`.
pub async fn event(
    app: &App,
    who: &Identity,
    name: &str,
    args: &[&RawValue],
    id: Option<u64>,
) -> Option<String> {
    let answer = call(app, who, name, args).await;
    let argument = match answer {
        Ok(result) => result.get().to_owned(),
        Err(err) => {
            app.metrics.error_answer(&err);
            err.to_json()
        }
    };
    id.map(|id| packet::ack(id, &argument))
}

async fn call(app: &App, who: &Identity, name: &str, args: &[&RawValue]) -> Result<Box<RawValue>> {
    let hooks = crate::transport::rpc::enabled(app)?;
    crate::transport::rpc::check_method(name)?;
    let params = serde_json::to_string(args).map_err(|e| Error::Internal(e.to_string()))?;
    let max = app.config.limits.max_message_bytes;
    if params.len() > max {
        return Err(Error::MessageTooLarge(max));
    }
    let params = RawValue::from_string(params).map_err(|e| Error::Internal(e.to_string()))?;
    hooks.rpc(who, name, &params).await
}

/// Tells the backend's disconnect hook that the socket ended.
pub fn ended(app: &App, joined: &Joined, reason: &'static str) {
    if let (Some(hooks), Some(who)) = (&app.hooks, joined.identity()) {
        hooks.disconnect(&who, reason);
    }
}

/// The event packet of a room's message, with `rooms` (the socket's cursor, moved past
/// it by the caller) as its recovery offset.
pub fn deliver(message: &Message, rooms: &Cursor) -> Bytes {
    let encode = |message: &Message, offset: &str| {
        let event = message.event().unwrap_or("message");
        Bytes::from(packet::event(event, message.data(), Some(offset)))
    };
    if rooms.entries.len() == 1 {
        // The offset is the message's own position: one packet for every such socket,
        // built once, as Cascade's own transports build their frames.
        return message
            .sio_encoding(|m| {
                let offset = format!("{}@{}:{}", m.channel, m.epoch, m.offset);
                encode(m, &offset)
            })
            .clone();
    }
    encode(message, &rooms.to_string())
}

/// Moves `rooms` past `message`.
pub fn advance(rooms: &mut Cursor, message: &Message) {
    if let Some(entry) = rooms
        .entries
        .iter_mut()
        .find(|(c, _)| *c == message.channel)
    {
        entry.1 = Some(message.position());
    }
}

/// The socket's mailbox: a channel of its own Engine.IO session, carrying the packets
/// that are not room messages (connect answers, acknowledgements) to whichever node
/// serves its next poll. Named after the session id, which only its client knows.
pub fn mailbox(sid: &str) -> Result<Channel> {
    Channel::parse(&format!("{}:{sid}", crate::auth::rules::RESERVED))
}

/// Puts an Engine.IO packet in the session's mailbox.
pub async fn post(app: &App, mailbox: &Channel, packet: &str) -> Result<()> {
    let data = serde_json::to_string(packet).map_err(|e| Error::Internal(e.to_string()))?;
    app.bus.publish(mailbox, bytes::Bytes::from(data)).await?;
    Ok(())
}

/// The packet a mailbox message carries.
pub fn posted(message: &Message) -> Option<String> {
    serde_json::from_slice(message.data()).ok()
}

/// Percent-encodes a token for the query parser.
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
