//! Engine.IO over WebSocket: a client that opens with it (`transport=websocket`), or one
//! that upgrades its polling session (`&sid=`), on whichever node the WebSocket reaches:
//! the probe (`2probe` → `3probe`) is answered here, a noop through the session's mailbox
//! ends its last poll wherever it is parked, and after the client's `5` the socket's rooms
//! and mailbox continue from the positions that poll left in the engine.
//!
//! One task per connection: frames from the client, the socket's subscription, answers of
//! the backend's rpc hook (run beside it, at most `hooks.max_rpc_in_flight`), and the
//! server's pings, which the client must answer within `socketio.ping_timeout_ms`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::kept::{self, PollState};
use super::packet::{self, Engine, Kind};
use super::quiet;
use super::socket::{self, Joined};
use crate::app::App;
use crate::bus::control::Control;
use crate::bus::{Event, Subscription};
use crate::error::{EngineIoError, Error, Result};
use crate::http::{Body, RequestHead, full};
use crate::protocol::{Channel, Cursor};
use crate::query::Query;
use crate::transport::InFlight;

/// The metric label of this transport.
pub const TRANSPORT: &str = "socketio-websocket";

/// The read buffer of a connection: Socket.IO's frames are small, and an idle connection
/// keeps it (tungstenite's default is 128 KiB; it grows for a larger frame).
const READ_BUFFER: usize = 1024;

/// Answers a WebSocket handshake on `/socket.io/` with `101` and runs the connection.
pub async fn upgrade(
    app: Arc<App>,
    mut req: Request<Incoming>,
    sid: Option<String>,
) -> Result<Response<Body>> {
    let headers = req.headers();
    let is = |name: header::HeaderName, value: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(value))
    };
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    if !is(header::UPGRADE, "websocket") || !is(header::CONNECTION, "upgrade") || key.is_none() {
        return Err(Error::EngineIo(EngineIoError::BadRequest));
    }
    if let Some(sid) = &sid
        && kept::read::<PollState>(&app, &kept::state_key(sid))
            .await?
            .is_none()
    {
        return Err(Error::EngineIo(EngineIoError::SessionIdUnknown));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
        key.map(HeaderValue::as_bytes).unwrap_or_default(),
    );
    let on_upgrade = hyper::upgrade::on(&mut req);
    let remote = req.conn().map(|c| c.client_ip(req.headers()));
    let headers = req.headers().clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    let task_app = app.clone();
    app.streams.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => return tracing::debug!(error = %err, "socket.io upgrade failed"),
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let max = task_app.config.socketio.max_payload_bytes;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let mut conn = Conn {
            app: task_app,
            ws,
            headers,
            query,
            remote,
            joined: None,
            rooms: Cursor::default(),
            mailbox: None,
            subscription: None,
        };
        let reason = conn.run(sid).await;
        Box::pin(conn.end(reason)).await;
    });
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| Error::Internal(e.to_string()))?,
    );
    Ok(response)
}

type Ws = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

struct Conn {
    app: Arc<App>,
    ws: Ws,
    headers: HeaderMap,
    query: String,
    remote: Option<IpAddr>,
    joined: Option<Joined>,
    rooms: Cursor,
    /// The polling session's mailbox, after an upgrade.
    mailbox: Option<Channel>,
    subscription: Option<Subscription>,
}

impl Conn {
    /// Serves the connection; why it ended.
    async fn run(&mut self, sid: Option<String>) -> &'static str {
        let _in_flight = InFlight::new(self.app.metrics.socketio(true));
        let io = self.app.config.socketio.clone();
        match sid {
            None => {
                let sid = crate::session::ClientId::random();
                let open = packet::open(
                    sid.as_str(),
                    false,
                    io.ping_interval_ms,
                    io.ping_timeout_ms,
                    io.max_payload_bytes,
                );
                if self.send(open).await.is_err() {
                    return "client_closed";
                }
            }
            Some(sid) => {
                if let Err(reason) = Box::pin(self.take_over(&sid)).await {
                    return reason;
                }
            }
        }
        let mut rpcs = Rpcs::default();
        let interval = Duration::from_millis(io.ping_interval_ms);
        let mut ping_at = Instant::now() + interval;
        let mut pong_due: Option<Instant> = None;
        // One timer and one shutdown wait for the connection's life, not one per turn of
        // the loop (a turn per delivery).
        let timer = tokio::time::sleep_until(ping_at);
        tokio::pin!(timer);
        let shutdown = self.app.shutdown.cancelled_owned();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                frame = self.ws.next() => {
                    let text = match frame {
                        Some(Ok(Frame::Text(text))) => text,
                        Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => continue,
                        Some(Ok(Frame::Binary(_))) => {
                            self.app.metrics.error(EngineIoError::BadRequest.label());
                            return "bad_packet";
                        }
                        _ => return "client_closed",
                    };
                    // Boxed: a connect calls the backend, and an idle connection's task
                    // would otherwise keep room for that call for as long as it lives.
                    match Box::pin(self.incoming(&text, &mut rpcs)).await {
                        Ok(Some(())) => {
                            pong_due = None;
                            timer.as_mut().reset(ping_at);
                        }
                        Ok(None) => {}
                        Err(reason) => return reason,
                    }
                }
                event = next(&mut self.subscription) => {
                    let out = match event {
                        Ok(event) => self.outgoing(event),
                        Err(closed) => return closed.code(),
                    };
                    match out {
                        Out::Send(frame) => {
                            if self.ws.send(frame).await.is_err() {
                                return "client_closed";
                            }
                        }
                        Out::Nothing => {}
                        Out::End(reason, last) => {
                            if let Some(frame) = last {
                                let _ = self.ws.send(frame).await;
                            }
                            return reason;
                        }
                    }
                }
                Some(answer) = rpcs.answered() => {
                    if self.send(answer).await.is_err() {
                        return "client_closed";
                    }
                }
                () = &mut timer => {
                    if pong_due.is_some() {
                        return "ping_timeout";
                    }
                    if self.send("2".into()).await.is_err() {
                        return "client_closed";
                    }
                    ping_at = Instant::now() + interval;
                    let due = Instant::now() + Duration::from_millis(io.ping_timeout_ms);
                    pong_due = Some(due);
                    timer.as_mut().reset(due);
                }
                () = &mut shutdown => return "shutdown",
            }
        }
    }

    /// The upgrade of polling session `sid`: the probe, then its state once the client's
    /// last poll is over.
    async fn take_over(&mut self, sid: &str) -> Result<(), &'static str> {
        let mailbox = socket::mailbox(sid).map_err(|_| "bad_packet")?;
        let limit = Duration::from_millis(self.app.config.socketio.ping_timeout_ms);
        let until = Instant::now() + limit;
        loop {
            let frame = tokio::time::timeout_at(until, self.ws.next())
                .await
                .map_err(|_| "upgrade_timeout")?;
            let Some(Ok(Frame::Text(text))) = frame else {
                return Err("client_closed");
            };
            match packet::decode_engine(&text) {
                Ok(Engine::Ping("probe")) => {
                    self.send("3probe".into())
                        .await
                        .map_err(|_| "client_closed")?;
                    // Ends the client's parked poll, on whichever node it is.
                    socket::post(&self.app, &mailbox, "6")
                        .await
                        .map_err(|_| "engine_unavailable")?;
                }
                Ok(Engine::Upgrade) => break,
                Ok(_) => {}
                Err(_) => return Err("bad_packet"),
            }
        }
        let (state_key, joined_key) = (kept::state_key(sid), kept::joined_key(sid));
        let (state, joined) = tokio::join!(
            kept::read::<PollState>(&self.app, &state_key),
            kept::read::<Joined>(&self.app, &joined_key)
        );
        let state = state.ok().flatten().ok_or("session_unknown")?;
        let joined = joined.ok().flatten().filter(|j| !j.ended);
        let max = self.app.config.limits.max_channels;
        let mut rooms = Cursor::parse(&state.rooms, max).unwrap_or_default();
        if let Some(joined) = &joined
            && joined.generation != state.generation
        {
            rooms = Cursor::parse(&joined.rooms, max).unwrap_or_default();
        }
        // The server's commands since the last poll: a stream registers for them only
        // from now on.
        if let Some(who) = joined.as_ref().and_then(Joined::identity) {
            let app = &self.app;
            if who
                .user
                .as_deref()
                .is_some_and(|user| app.bus.recent_commands(user).disconnected)
            {
                if let Some(joined) = &joined {
                    quiet::end(app, joined, "disconnected").await;
                }
                let _ = self.send(packet::DISCONNECT.into()).await;
                return Err("disconnected");
            }
            let (granted, _) = crate::transport::server_api::take_granted(app, &who, &mut rooms);
            crate::transport::server_api::put_back(&mut rooms, granted, max);
        }
        let mailbox_at = Cursor::parse(&state.mailbox, 1).map_err(|_| "session_unknown")?;
        self.mailbox = Some(mailbox);
        self.follow(joined, rooms, Some(mailbox_at))
            .await
            .map_err(|_| "engine_unavailable")?;
        // From here this connection tells the socket's end, and the polling session's
        // quiet end is not told (docs/SOCKETIO.md). Lost to a node that found the session
        // over first: so it is. An engine that cannot be asked leaves the telling here.
        if let Some(joined) = &self.joined
            && quiet::told(&self.app)
            && let Ok(false) = quiet::claim_end(&self.app, joined).await
        {
            self.joined = None;
            return Err("session_unknown");
        }
        Ok(())
    }

    /// Becomes `joined`'s connection (when it is one), following `rooms` (and `mailbox`).
    async fn follow(
        &mut self,
        joined: Option<Joined>,
        rooms: Cursor,
        mailbox: Option<Cursor>,
    ) -> Result<()> {
        let mut subscription = self.app.bus.subscribe();
        let mut joined = joined;
        if let Some(joined) = &mut joined {
            subscription.set_client(Some(joined.present(TRANSPORT)), true);
            // Kept as `rooms` and told the client already: not kept twice for the
            // connection's life.
            joined.rooms = String::new();
            joined.pid = String::new();
        }
        if let Some(mailbox) = &mailbox {
            subscription.add(mailbox).await?;
        }
        if !rooms.entries.is_empty() {
            subscription.add(&rooms).await?;
        }
        self.rooms = rooms;
        self.joined = joined;
        self.subscription = Some(subscription);
        Ok(())
    }

    /// Acts on a client's packet; `Some` for a pong.
    async fn incoming(&mut self, text: &str, rpcs: &mut Rpcs) -> Result<Option<()>, &'static str> {
        let bad = |app: &App| {
            app.metrics.error(EngineIoError::BadRequest.label());
            "bad_packet"
        };
        let engine = packet::decode_engine(text).map_err(|_| bad(&self.app))?;
        let message = match engine {
            Engine::Pong(_) => return Ok(Some(())),
            Engine::Ping(data) => {
                let pong = format!("3{data}");
                self.send(pong).await.map_err(|_| "client_closed")?;
                return Ok(None);
            }
            Engine::Close => return Err("client_closed"),
            Engine::Upgrade | Engine::Noop => return Ok(None),
            Engine::Message(message) => message,
        };
        let packet = packet::decode_socket(message).map_err(|_| bad(&self.app))?;
        match packet.kind {
            Kind::Connect => {
                let query = Query::parse(Some(&self.query));
                let answer = socket::connect(
                    &self.app,
                    TRANSPORT,
                    &self.headers,
                    &query,
                    self.remote,
                    packet.namespace,
                    packet.data,
                )
                .await;
                match answer {
                    Ok(joined) => {
                        // Read by the connect hook alone: not kept for the connection's
                        // life (a later CONNECT on it is made without them).
                        self.headers = HeaderMap::new();
                        let ack = packet::connected(&joined.client, &joined.pid);
                        let max = self.app.config.limits.max_channels;
                        let rooms = Cursor::parse(&joined.rooms, max).unwrap_or_default();
                        let mailbox = self.subscription.as_ref().and_then(|s| {
                            let at = self.mailbox.as_ref()?;
                            let entries = s.cursor().entries.into_iter().filter(|(c, _)| c == at);
                            Some(Cursor {
                                entries: entries.collect(),
                            })
                        });
                        self.follow(Some(joined), rooms, mailbox)
                            .await
                            .map_err(|_| "engine_unavailable")?;
                        self.send(ack).await.map_err(|_| "client_closed")?;
                    }
                    Err(error) => self.send(error).await.map_err(|_| "client_closed")?,
                }
            }
            Kind::Event if packet.namespace == "/" => {
                let Some(who) = self.joined.as_ref().and_then(Joined::identity) else {
                    return Ok(None);
                };
                let (name, args) = packet.event().ok_or_else(|| bad(&self.app))?;
                let args: Vec<Box<serde_json::value::RawValue>> =
                    args.into_iter().map(ToOwned::to_owned).collect();
                let max = self.app.config.hooks.max_rpc_in_flight;
                let (answers, slots) = rpcs.open(max);
                let Ok(slot) = slots.try_acquire_owned() else {
                    if let Some(id) = packet.id {
                        let err = Error::RateLimited;
                        self.app.metrics.error_answer(&err);
                        let ack = packet::ack(id, &err.to_json());
                        self.send(ack).await.map_err(|_| "client_closed")?;
                    }
                    return Ok(None);
                };
                let (app, id) = (self.app.clone(), packet.id);
                tokio::spawn(async move {
                    let args: Vec<&serde_json::value::RawValue> =
                        args.iter().map(AsRef::as_ref).collect();
                    if let Some(ack) = socket::event(&app, &who, &name, &args, id).await {
                        let _ = answers.send(ack).await;
                    }
                    drop(slot);
                });
            }
            Kind::Disconnect if packet.namespace == "/" => {
                if let Some(joined) = self.joined.take() {
                    socket::ended(&self.app, &joined, "client_closed");
                }
                self.subscription = None;
            }
            _ => {}
        }
        Ok(None)
    }

    /// What one event of the subscription makes the connection write.
    fn outgoing(&mut self, event: Event) -> Out {
        let text = |text: String| Out::Send(Frame::text(text));
        match event {
            Event::Message(m) if Some(&m.channel) == self.mailbox.as_ref() => {
                match socket::posted(&m) {
                    Some(packet) if packet != "6" => text(packet),
                    _ => Out::Nothing,
                }
            }
            Event::Message(m) if self.joined.is_some() => {
                socket::advance(&mut self.rooms, &m);
                let metrics = self.app.metrics.socketio(true);
                metrics.record_delivery(m.json().len(), m.ts, crate::bus::now_ms());
                match Utf8Bytes::try_from(socket::deliver(&m, &self.rooms)) {
                    Ok(packet) => Out::Send(Frame::Text(packet)),
                    Err(_) => Out::End("bad_packet", None),
                }
            }
            Event::Control(Control::Disconnected) => Out::End(
                "disconnected",
                Some(Frame::text(packet::DISCONNECT.to_owned())),
            ),
            Event::Control(Control::Subscribed(added)) => {
                for (channel, at) in added.entries {
                    if !self.rooms.entries.iter().any(|(c, _)| *c == channel) {
                        self.rooms.entries.push((channel, at));
                    }
                }
                Out::Nothing
            }
            Event::Control(Control::Unsubscribed(channel)) => {
                self.rooms.entries.retain(|(c, _)| *c != channel);
                Out::Nothing
            }
            Event::Gap(_) => {
                self.app.metrics.socketio(true).gaps.inc();
                Out::Nothing
            }
            Event::Message(_) => Out::Nothing,
        }
    }

    async fn send(&mut self, text: String) -> Result<(), ()> {
        self.ws.send(Frame::text(text)).await.map_err(|_| ())
    }

    /// Tells the backend the socket ended, and keeps it recoverable for a while.
    async fn end(&mut self, reason: &'static str) {
        if let Some(joined) = self.joined.take() {
            socket::ended(&self.app, &joined, reason);
            socket::seen(&self.app, &joined, Duration::ZERO).await;
        }
        let _ = self.ws.close(None).await;
    }
}

/// What the connection writes for one event of its subscription.
enum Out {
    /// A frame.
    Send(Frame),
    /// Nothing (a control event applied, a noop, a gap).
    Nothing,
    /// The connection ends for this reason, after this last frame.
    End(&'static str, Option<Frame>),
}

/// The backend calls of a connection's events, made beside it: made at its first event,
/// so that a connection that never emits keeps none of it.
#[derive(Default)]
struct Rpcs {
    open: Option<Box<RpcChannel>>,
}

struct RpcChannel {
    answers: tokio::sync::mpsc::Sender<String>,
    answered: tokio::sync::mpsc::Receiver<String>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Rpcs {
    /// Where answers go, and the slots that bound the calls in flight to `max`.
    fn open(
        &mut self,
        max: usize,
    ) -> (
        tokio::sync::mpsc::Sender<String>,
        Arc<tokio::sync::Semaphore>,
    ) {
        let channel = self.open.get_or_insert_with(|| {
            let (answers, answered) = tokio::sync::mpsc::channel(max.max(1));
            Box::new(RpcChannel {
                answers,
                answered,
                slots: Arc::new(tokio::sync::Semaphore::new(max)),
            })
        });
        (channel.answers.clone(), channel.slots.clone())
    }

    /// The next acknowledgement to send; pending until a call was made.
    async fn answered(&mut self) -> Option<String> {
        match &mut self.open {
            Some(channel) => channel.answered.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// The next event of an optional subscription; pending without one.
async fn next(subscription: &mut Option<Subscription>) -> Result<Event, crate::bus::Closed> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}
