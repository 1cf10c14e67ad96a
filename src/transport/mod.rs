//! The transports: each turns the bus into one rung of the ladder. They share the request
//! parsing below and meet the bus only through [`crate::bus::Bus`] and
//! [`crate::bus::Subscription`].

pub mod assets;
pub mod demo;
pub mod long_poll;
pub mod negotiate;
pub mod presence;
pub mod publish;
pub mod rpc;
pub mod server_api;
pub mod session;
pub mod short_poll;
pub mod socketio;
pub mod sse;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use prometheus::{IntCounter, IntGauge};
use tokio_util::sync::CancellationToken;

use http::HeaderMap;

use crate::app::App;
use crate::auth::Identity;
use crate::bus::Event;
use crate::config::Transport;
use crate::error::{Error, Refusal, Result};
use crate::metrics::TransportMetrics;
use crate::protocol::{Channel, Cursor};
use crate::query::Query;

/// Counts a connection or request for as long as it is open or in flight.
pub struct InFlight {
    open: IntGauge,
}

impl InFlight {
    /// Counts one more served and one more open on the transport.
    pub fn new(metrics: &TransportMetrics) -> Self {
        metrics.served.inc();
        metrics.open.inc();
        InFlight {
            open: metrics.open.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A peer address for logs, `-` when unknown; formatted only if the line is logged.
struct Remote(Option<SocketAddr>);

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The life of one long-lived connection (WebSocket, SSE): counted while open and logged
/// once when it opens and once, with the reason, when it closes.
pub struct Session {
    transport: Transport,
    remote: Option<SocketAddr>,
    opened: Instant,
    reason: &'static str,
    cut: CancellationToken,
    slow_consumers: IntCounter,
    /// The backend's disconnect hook and the session's user, told when it closes.
    goodbye: Option<Box<Goodbye>>,
    _in_flight: InFlight,
}

impl Session {
    /// Opens and logs a session whose subscription is cut off through `cut`.
    pub fn open(
        transport: Transport,
        metrics: &TransportMetrics,
        remote: Option<SocketAddr>,
        cut: CancellationToken,
    ) -> Self {
        tracing::info!(transport = transport.name(), remote = %Remote(remote), "connection open");
        Session {
            transport,
            remote,
            opened: Instant::now(),
            reason: "client_closed",
            cut,
            slow_consumers: metrics.slow_consumers.clone(),
            goodbye: None,
            _in_flight: InFlight::new(metrics),
        }
    }

    /// Tells the backend's disconnect hook when the session closes, if `who` has a
    /// client session and the hook is on.
    pub fn tell_backend(&mut self, app: &App, who: &Identity) {
        if let (Some(hooks), Some(session)) = (&app.hooks, &who.session)
            && hooks.on(crate::config::HookEvent::Disconnect)
        {
            self.goodbye = Some(Box::new(Goodbye {
                hooks: hooks.clone(),
                user: who.user.clone(),
                session: session.clone(),
            }));
        }
    }
}

impl Session {
    /// Records why the session is ending, for the close log line.
    pub fn ending(&mut self, reason: &'static str) {
        self.reason = reason;
    }

    /// Cuts the session off as a slow consumer (counted when it closes).
    pub fn cut_off(&mut self) {
        self.cut.cancel();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Counted here because a stalled SSE reader is dropped with its connection
        // before its stream can notice anything.
        if self.cut.is_cancelled() {
            self.reason = "slow_consumer";
            self.slow_consumers.inc();
        }
        tracing::info!(
            transport = self.transport.name(),
            remote = %Remote(self.remote),
            reason = self.reason,
            seconds = self.opened.elapsed().as_secs_f64(),
            "connection closed"
        );
        if let Some(goodbye) = self.goodbye.take() {
            let Goodbye {
                hooks,
                user,
                session,
            } = *goodbye;
            hooks.disconnect_session(user.as_deref(), &session, self.reason);
        }
    }
}

/// What a session's end tells the backend: who it was (not the whole identity, whose
/// token patterns an open connection need not keep twice).
struct Goodbye {
    hooks: Arc<crate::hooks::Hooks>,
    user: Option<Arc<str>>,
    session: Arc<crate::session::ClientSession>,
}

/// Ready once the gateway shuts down, and registers no waker: a transport that waits on
/// a subscription learns of a drain from [`crate::bus::Bus::wake_all`], which wakes every
/// subscription after the token is cancelled.
pub fn shutting_down(app: &App) -> std::task::Poll<()> {
    if app.shutdown.is_cancelled() {
        std::task::Poll::Ready(())
    } else {
        std::task::Poll::Pending
    }
}

/// The channels a request follows: `channels=a,b` with positions from `cursor=` (or from
/// the `Last-Event-ID` header on SSE), or the cursor's own channels when `channels` is
/// absent. Cursor entries for channels not listed in `channels` are ignored.
pub fn requested_cursor(
    query: &Query<'_>,
    cursor_override: Option<&str>,
    max_channels: usize,
) -> Result<Cursor> {
    let cursor = cursor_override
        .or_else(|| query.get("cursor"))
        .unwrap_or("");
    let names = query.get("channels").map(|list| list.split(','));
    wanted_cursor(names, cursor, max_channels)
}

/// The rule of [`requested_cursor`] for any source of names (a query, a WebSocket frame).
pub fn wanted_cursor<'a>(
    names: Option<impl IntoIterator<Item = &'a str>>,
    cursor: &str,
    max_channels: usize,
) -> Result<Cursor> {
    let mut cursor = Cursor::parse(cursor, max_channels)?;
    let Some(names) = names else {
        if cursor.entries.is_empty() {
            return Err(Error::NoChannels);
        }
        return Ok(cursor);
    };
    // The cursor is reordered in place: its first `kept` entries are the wanted ones, in
    // the order named, and the rest is dropped. A poller names the channels of its own
    // cursor, in the same order, so nothing moves and nothing is parsed twice.
    let mut kept = 0;
    for name in names {
        if cursor.entries[..kept]
            .iter()
            .any(|(c, _)| c.as_str() == name)
        {
            continue;
        }
        if kept == max_channels {
            return Err(Error::TooManyChannels(max_channels));
        }
        match cursor.entries[kept..]
            .iter()
            .position(|(c, _)| c.as_str() == name)
        {
            Some(at) => cursor.entries.swap(kept, kept + at),
            None => cursor.entries.insert(kept, (Channel::parse(name)?, None)),
        }
        kept += 1;
    }
    if kept == 0 {
        return Err(Error::NoChannels);
    }
    cursor.entries.truncate(kept);
    Ok(cursor)
}

/// What a subscribing request was allowed: the channels refused, the client session it
/// began (if any), and what the server API changed in its channels.
pub type Allowed = (
    Vec<Refusal>,
    Option<Box<session::Issued>>,
    server_api::Changes,
);

/// Identifies the caller, with its client session ([`session::identify`]), and keeps the
/// channels of `cursor` it may read ([`session::allowed`]); returns who it is and what
/// it was allowed ([`Allowed`]).
pub async fn authorize_subscribe(
    app: &App,
    transport: Transport,
    headers: &HeaderMap,
    query: &Query<'_>,
    conn: Option<&crate::conn::ConnInfo>,
    cursor: &mut Cursor,
) -> Result<(Identity, Allowed)> {
    let (who, issued) = session::identify(app, transport.name(), headers, query, conn).await?;
    let (refused, remembered, mut changes) = allowed(app, &who, cursor).await?;
    if issued.is_some() {
        subscribe_granted(app, &who, cursor, &mut changes);
    }
    // The later value carries all of the earlier one.
    Ok((who, (refused, remembered.or(issued), changes)))
}

/// Adds to `cursor`, from now, the channels the connect hook granted a session that
/// this request began: they are subscribed for the client without it asking, and
/// `changes` tells it so. Within `limits.max_channels`.
pub fn subscribe_granted(
    app: &App,
    who: &Identity,
    cursor: &mut Cursor,
    changes: &mut server_api::Changes,
) {
    let Some(session) = &who.session else { return };
    for channel in &session.granted {
        if cursor.entries.len() >= app.config.limits.max_channels {
            break;
        }
        if !cursor.entries.iter().any(|(c, _)| c == channel) {
            cursor.entries.push((channel.clone(), None));
            changes.subscribed.push(channel.clone());
        }
    }
}

/// [`session::allowed`], after the server API's recent commands for the user: the
/// channels the server subscribed it to lately are kept whatever the rules say, those
/// it unsubscribed it from are dropped.
pub async fn allowed(app: &App, who: &Identity, cursor: &mut Cursor) -> Result<Allowed> {
    let (granted, changes) = server_api::take_granted(app, who, cursor);
    let (refused, issued) = if cursor.entries.is_empty() && !granted.is_empty() {
        (Vec::new(), None)
    } else {
        session::allowed(app, who, cursor).await?
    };
    server_api::put_back(cursor, granted, app.config.limits.max_channels);
    Ok((refused, issued, changes))
}

/// Drops from `cursor` the channels the rules do not let `who` read, and names them: the
/// request is served with the others. Each refused channel is counted as a refusal. When
/// none is left, the request is refused as its first channel was, naming them all (and
/// counted where that error is answered).
pub fn keep_allowed(app: &App, who: &Identity, cursor: &mut Cursor) -> Result<Vec<Refusal>> {
    let mut refused = Vec::new();
    let mut labels = Vec::new();
    let mut first = None;
    cursor.entries.retain(
        |(channel, _)| match app.auth.check_subscribe(who, channel) {
            Ok(()) => true,
            Err(err) => {
                refused.push(Refusal {
                    channel: channel.as_str().to_owned(),
                    code: err.refusal_code(),
                });
                labels.push(err.label());
                first.get_or_insert(err);
                false
            }
        },
    );
    if let Some(first) = first {
        if cursor.entries.is_empty() {
            return Err(Error::Refused {
                first: Box::new(first),
                refused,
            });
        }
        for label in labels {
            app.metrics.error(label);
        }
    }
    Ok(refused)
}

/// Appends `,"refused":[..]` to a JSON object being written, when any channel was refused.
pub fn put_refused(out: &mut BytesMut, refused: &[Refusal]) {
    if refused.is_empty() {
        return;
    }
    out.put_slice(b",\"refused\":");
    // Channel names and codes need no escaping, but serde keeps that a non-question.
    out.put_slice(
        serde_json::to_string(refused)
            .unwrap_or_default()
            .as_bytes(),
    );
}

/// Appends `,"subscribed":[..]` and `,"unsubscribed":[..]`: the server API's changes to a
/// poll's channels, from the request's admission and from a live subscription's
/// [`Control`](crate::bus::control::Control) events.
pub fn put_changes(out: &mut BytesMut, events: &[Event], changes: Option<&server_api::Changes>) {
    use crate::bus::control::Control;
    let mut subscribed: Vec<&str> = Vec::new();
    let mut unsubscribed: Vec<&str> = Vec::new();
    if let Some(changes) = changes {
        subscribed.extend(changes.subscribed.iter().map(Channel::as_str));
        unsubscribed.extend(changes.unsubscribed.iter().map(Channel::as_str));
    }
    for event in events {
        match event {
            Event::Control(Control::Subscribed(cursor)) => {
                subscribed.extend(cursor.entries.iter().map(|(channel, _)| channel.as_str()))
            }
            Event::Control(Control::Unsubscribed(channel)) => unsubscribed.push(channel.as_str()),
            _ => {}
        }
    }
    for (name, channels) in [("subscribed", subscribed), ("unsubscribed", unsubscribed)] {
        if !channels.is_empty() {
            out.put_slice(format!(",\"{name}\":").as_bytes());
            out.put_slice(
                serde_json::to_string(&channels)
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
    }
}

/// Encodes the polling answer `{"messages":[..],"cursor":"..","gaps":[..],"refused":[..]}`,
/// recording the deliveries; `put_cursor` appends the cursor's text (a subscription writes
/// its own without building a [`Cursor`]), `refused` names the channels left out,
/// `issued` the client session the request began, `changes` what the server API changed
/// in its channels (with those a live subscription applied, from `events`), and
/// `retry_ms` is added when the gateway is draining.
pub fn poll_body(
    events: &[Event],
    put_cursor: impl FnOnce(&mut BytesMut),
    refused: &[Refusal],
    issued: Option<&session::Issued>,
    changes: Option<&server_api::Changes>,
    retry_ms: Option<u64>,
    metrics: &TransportMetrics,
) -> Vec<u8> {
    let now = crate::bus::now_ms();
    let mut body = BytesMut::with_capacity(64 + events.len() * 128);
    body.put_slice(b"{\"messages\":[");
    let mut first = true;
    for event in events {
        if let Event::Message(message) = event {
            if !first {
                body.put_u8(b',');
            }
            first = false;
            body.put_slice(message.json());
            metrics.record_delivery(message.json().len(), message.ts, now);
        }
    }
    body.put_slice(b"],\"cursor\":\"");
    // Cursor characters need no JSON escaping.
    put_cursor(&mut body);
    body.put_u8(b'"');
    let gaps: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Gap(gap) => Some(gap.to_json()),
            Event::Message(_) | Event::Control(_) => None,
        })
        .collect();
    if !gaps.is_empty() {
        metrics.gaps.inc_by(gaps.len() as u64);
        body.put_slice(b",\"gaps\":[");
        body.put_slice(gaps.join(",").as_bytes());
        body.put_u8(b']');
    }
    put_refused(&mut body, refused);
    put_changes(&mut body, events, changes);
    if let Some(issued) = issued {
        issued.put(&mut body);
    }
    if let Some(retry_ms) = retry_ms {
        body.put_slice(format!(",\"retry_ms\":{retry_ms}").as_bytes());
    }
    body.put_u8(b'}');
    // The buffer itself, not frozen: a frozen buffer that is not full costs an
    // allocation of its own.
    body.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Query<'_> {
        Query::parse(Some(q))
    }

    #[test]
    fn channels_take_positions_from_the_cursor() {
        let c = requested_cursor(&query("channels=a,b&cursor=b@E:4,z@E:1"), None, 8).unwrap();
        assert_eq!(c.to_string(), "a,b@E:4");
        let c = requested_cursor(&query("cursor=b@E:4"), None, 8).unwrap();
        assert_eq!(c.to_string(), "b@E:4");
        let c = requested_cursor(&query("channels=a,a"), Some("a@X:2"), 8).unwrap();
        assert_eq!(c.to_string(), "a@X:2");
        // In the order named, whatever the cursor's order; unnamed entries dropped.
        let c = requested_cursor(&query("channels=c,b,a&cursor=a@E:1,b@E:2,d@E:3"), None, 8);
        assert_eq!(c.unwrap().to_string(), "c,b@E:2,a@E:1");
        let c = requested_cursor(&query("channels=b,x,b&cursor=a@E:1,b@E:2"), None, 8);
        assert_eq!(c.unwrap().to_string(), "b@E:2,x");
        let c = requested_cursor(&query("channels=a,b,c&cursor=c@E:1"), None, 2);
        assert_eq!(c.unwrap_err().code(), "too_many_channels");
    }

    #[test]
    fn bad_requests_have_codes() {
        let code = |q: &str, max| requested_cursor(&query(q), None, max).unwrap_err().label();
        assert_eq!(code("", 8), "no_channels");
        assert_eq!(code("channels=", 8), "bad_channel");
        assert_eq!(code("channels=a@b", 8), "bad_channel");
        assert_eq!(code("channels=a,b,c", 2), "too_many_channels");
        assert_eq!(code("channels=a&cursor=a@", 8), "bad_cursor");
    }
}
