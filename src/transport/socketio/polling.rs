//! Engine.IO's HTTP long-polling, with no sticky sessions: every request of a session may
//! land on any node. Nothing of a session lives in a node's memory between requests:
//!
//! - its poll state (its rooms' cursor, its mailbox position, when it was last polled) is
//!   kept in the engine under `sio:<sid>` ([`crate::bus::Bus::keep`]), written only by
//!   `GET`s, which Engine.IO never overlaps, and only while it lives: once it expired
//!   (`pingInterval + pingTimeout` after the last poll) the session is over on every node;
//! - its socket ([`Joined`]: the session the connect hook accepted, its rooms at connect)
//!   under `sio:<sid>:s`, written by the `POST` that carried the CONNECT (or ended it),
//!   kept alive by every `GET` without being rewritten, and outliving the poll state so
//!   that the node that finds the session quiet can tell the backend who it was
//!   ([`super::quiet`]);
//! - packets that are not room messages (the connect answer, acknowledgements, the noop
//!   that ends a poll during an upgrade) travel through the session's mailbox channel, so
//!   a poll parked on one node wakes for a `POST` served by another.
//!
//! A poll reads its rooms and mailbox from the bus by cursor, as any Cascade poll does:
//! an answer lost in flight is the only thing that can lose a message, as in Engine.IO.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::kept::{PollState, joined_key, joined_ttl, json, read, session_ttl, state_key, write};
use super::packet::{self, BadPacket, Engine, Kind};
use super::quiet;
use super::socket::{self, Joined};
use crate::app::App;
use crate::bus::Event;
use crate::bus::control::Control;
use crate::config::Config;
use crate::error::{EngineIoError, Error, Result};
use crate::http::{Body, RequestHead, full, read_body};
use crate::protocol::{Channel, Cursor, Position};
use crate::query::Query;
use crate::session::ClientId;
use crate::transport::InFlight;

/// The metric label of this transport.
pub const TRANSPORT: &str = "socketio-polling";

/// Most packets one poll answers with; the rest wait for the next poll.
const MAX_PACKETS: usize = 256;

/// Opens a polling session: its state kept, its mailbox's position taken; the Engine.IO
/// open packet.
pub async fn handshake(app: &App) -> Result<Response<Body>> {
    let sid = ClientId::random();
    let mailbox = socket::mailbox(sid.as_str())?;
    let (_, start) = app
        .bus
        .catch_up(
            &Cursor {
                entries: vec![(mailbox, None)],
            },
            None,
        )
        .await?;
    let state = PollState {
        mailbox: start.to_string(),
        seen_ms: crate::bus::now_ms(),
        ..PollState::default()
    };
    write(app, &state_key(sid.as_str()), &state, session_ttl(app)).await?;
    let io = &app.config.socketio;
    Ok(text(packet::open(
        sid.as_str(),
        true,
        io.ping_interval_ms,
        io.ping_timeout_ms,
        io.max_payload_bytes,
    )))
}

/// Answers a `GET` of session `sid`: what is pending, or once something is, or a ping
/// after `socketio.ping_interval_ms`.
pub async fn get(app: Arc<App>, sid: &str) -> Result<Response<Body>> {
    let _in_flight = InFlight::new(app.metrics.socketio(false));
    let key = state_key(sid);
    let socket_key = joined_key(sid);
    let (state, joined) = tokio::try_join!(
        read::<PollState>(&app, &key),
        read::<Joined>(&app, &socket_key)
    )?;
    let Some(mut state) = state else {
        return Err(Error::EngineIo(EngineIoError::SessionIdUnknown));
    };
    let max = app.config.limits.max_channels + 1;
    let joined = joined.filter(|j| !j.ended);
    if let Some(joined) = &joined
        && joined.generation != state.generation
    {
        state.generation = joined.generation;
        state.rooms = joined.rooms.clone();
    }
    let mut rooms = Cursor::parse(&state.rooms, max).map_err(|_| bad())?;
    let who = joined.as_ref().and_then(Joined::identity);
    if let Some(who) = &who {
        let (granted, _) = crate::transport::server_api::take_granted(&app, who, &mut rooms);
        crate::transport::server_api::put_back(&mut rooms, granted, max - 1);
    }
    let mailbox = Cursor::parse(&state.mailbox, 1).map_err(|_| bad())?;
    let mut subscription = app.bus.subscribe();
    if let Some(joined) = &joined {
        let present = joined.present(TRANSPORT);
        // Present in its rooms for a while after each poll, as a Cascade poller is.
        crate::transport::presence::polled(&app, Some(&present), &rooms).await;
        subscription.set_client(Some(present), false);
    }
    subscription.add(&mailbox).await?;
    if !rooms.entries.is_empty() {
        subscription.add(&rooms).await?;
    }
    // The server disconnected the user lately (`POST /disconnect`) while this socket was
    // between polls: it is told now, on whichever node.
    let disconnected = joined
        .as_ref()
        .and_then(|j| j.user.as_deref())
        .is_some_and(|user| app.bus.recent_commands(user).disconnected);
    let events = if disconnected {
        vec![Event::Control(Control::Disconnected)]
    } else {
        gather(&app, &mut subscription).await
    };
    let mailbox_channel = &mailbox.entries[0].0;
    let mut packets = Vec::new();
    // Whether this poll ended the socket (a server disconnect).
    let mut ended_here = false;
    let metrics = app.metrics.socketio(false);
    let now = crate::bus::now_ms();
    for event in &events {
        match event {
            Event::Message(m) if m.channel == *mailbox_channel => {
                packets.extend(socket::posted(m));
            }
            Event::Message(m) if joined.is_some() => {
                socket::advance(&mut rooms, m);
                let packet = socket::deliver(m, &rooms);
                packets.push(String::from_utf8_lossy(&packet).into_owned());
                metrics.record_delivery(m.json().len(), m.ts, now);
            }
            Event::Control(Control::Disconnected) => {
                packets.push(packet::DISCONNECT.into());
                if let Some(mut ending) = joined.clone().filter(|_| !ended_here) {
                    ended_here = true;
                    quiet::end(&app, &ending, "disconnected").await;
                    ending.ended = true;
                    write(&app, &socket_key, &ending, joined_ttl(&app)).await?;
                }
            }
            Event::Control(Control::Subscribed(added)) => {
                for (channel, at) in &added.entries {
                    if !rooms.entries.iter().any(|(c, _)| c == channel) {
                        rooms.entries.push((channel.clone(), at.clone()));
                    }
                }
            }
            Event::Control(Control::Unsubscribed(channel)) => {
                rooms.entries.retain(|(c, _)| c != channel);
            }
            Event::Gap(_) => metrics.gaps.inc(),
            _ => {}
        }
    }
    // The subscription's positions are the truth; a room it no longer follows is gone.
    let reached = subscription.cursor();
    let position = |channel: &Channel| -> Option<Position> {
        reached
            .entries
            .iter()
            .find(|(c, _)| c == channel)
            .and_then(|(_, p)| p.clone())
    };
    for (channel, at) in rooms.entries.iter_mut() {
        if let Some(reached) = position(&*channel) {
            *at = Some(reached);
        }
    }
    state.rooms = rooms.to_string();
    state.mailbox = Cursor {
        entries: vec![(mailbox_channel.clone(), position(mailbox_channel))],
    }
    .to_string();
    drop(subscription);
    state.seen_ms = crate::bus::now_ms();
    let ttl = session_ttl(&app);
    // Written only while it lives: a session that expired while this poll was parked is
    // over (a node may have told the backend so), and its next request is refused.
    let prolonged = async {
        match &joined {
            Some(_) => app.bus.prolong(&socket_key, joined_ttl(&app)).await,
            None => Ok(false),
        }
    };
    let (live, _) = tokio::try_join!(app.bus.rekeep(&key, json(&state)?, ttl), prolonged)?;
    if !live {
        packets.push(packet::CLOSE.into());
    } else if let Some(joined) = &joined {
        socket::seen(&app, joined, ttl).await;
        if !ended_here {
            quiet::watch(&app, sid);
        }
    }
    if packets.is_empty() {
        packets.push("2".into());
    }
    Ok(text(packets.join("\u{1e}")))
}

/// The events a poll answers with: those ready, or the first to come within the ping
/// interval, and those ready with it.
async fn gather(app: &App, subscription: &mut crate::bus::Subscription) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < MAX_PACKETS {
        match subscription.try_next() {
            Some(Ok(event)) => events.push(event),
            _ => break,
        }
    }
    if events.is_empty() && !app.shutdown.is_cancelled() {
        let wait = Duration::from_millis(app.config.socketio.ping_interval_ms);
        tokio::select! {
            event = subscription.next() => {
                if let Ok(event) = event {
                    events.push(event);
                }
            }
            () = tokio::time::sleep(wait) => {}
            () = app.shutdown.cancelled() => {}
        }
        while events.len() < MAX_PACKETS {
            match subscription.try_next() {
                Some(Ok(event)) => events.push(event),
                _ => break,
            }
        }
    }
    events
}

/// Answers a `POST` of session `sid`: the client's packets, acted on in order.
pub async fn post(app: Arc<App>, sid: &str, req: Request<Incoming>) -> Result<Response<Body>> {
    let _in_flight = InFlight::new(app.metrics.socketio(false));
    if read::<PollState>(&app, &state_key(sid)).await?.is_none() {
        return Err(Error::EngineIo(EngineIoError::SessionIdUnknown));
    }
    let limits = &app.config.limits;
    let max = app.config.socketio.max_payload_bytes;
    let headers = req.headers().clone();
    let remote = req.conn().map(|c| c.client_ip(&headers));
    let query_text = req.uri().query().unwrap_or("").to_owned();
    let reading = read_body(req.into_body(), max);
    let body = match tokio::time::timeout(Config::ms(limits.body_read_timeout_ms), reading).await {
        Err(_) => return Err(Error::RequestTimeout),
        Ok(Err(Error::BodyTooLarge(_))) => return Err(bad()),
        Ok(other) => other?,
    };
    let body = std::str::from_utf8(&body).map_err(|_| bad())?;
    let query = Query::parse(Some(&query_text));
    let mailbox = socket::mailbox(sid)?;
    let mut joined = read::<Joined>(&app, &joined_key(sid))
        .await?
        .filter(|j| !j.ended);
    for text in packet::split_payload(body) {
        match packet::decode_engine(text).map_err(refused)? {
            Engine::Message(message) => {
                let packet = packet::decode_socket(message).map_err(refused)?;
                match packet.kind {
                    Kind::Connect => {
                        let answer = socket::connect(
                            &app,
                            TRANSPORT,
                            &headers,
                            &query,
                            remote,
                            packet.namespace,
                            packet.data,
                        )
                        .await;
                        match answer {
                            Ok(new) => {
                                write(&app, &joined_key(sid), &new, joined_ttl(&app)).await?;
                                quiet::watch(&app, sid);
                                socket::seen(&app, &new, session_ttl(&app)).await;
                                let ack = packet::connected(&new.client, &new.pid);
                                socket::post(&app, &mailbox, &ack).await?;
                                joined = Some(new);
                            }
                            Err(error) => socket::post(&app, &mailbox, &error).await?,
                        }
                    }
                    Kind::Event if packet.namespace == "/" => {
                        let Some(who) = joined.as_ref().and_then(Joined::identity) else {
                            continue;
                        };
                        let (name, args) = packet.event().ok_or_else(bad)?;
                        if let Some(ack) = socket::event(&app, &who, &name, &args, packet.id).await
                        {
                            socket::post(&app, &mailbox, &ack).await?;
                        }
                    }
                    Kind::Disconnect if packet.namespace == "/" => {
                        if let Some(mut ending) = joined.take() {
                            quiet::end(&app, &ending, "client_closed").await;
                            ending.ended = true;
                            write(&app, &joined_key(sid), &ending, joined_ttl(&app)).await?;
                        }
                    }
                    _ => {}
                }
            }
            Engine::Close => {
                if let Some(mut ending) = joined.take() {
                    quiet::end(&app, &ending, "client_closed").await;
                    ending.ended = true;
                    write(&app, &joined_key(sid), &ending, joined_ttl(&app)).await?;
                }
                // Ends a poll parked elsewhere.
                socket::post(&app, &mailbox, "6").await?;
            }
            Engine::Ping(_) | Engine::Pong(_) | Engine::Upgrade | Engine::Noop => {}
        }
    }
    Ok(text("ok".to_owned()))
}

fn bad() -> Error {
    Error::EngineIo(EngineIoError::BadRequest)
}

fn refused(_: BadPacket) -> Error {
    bad()
}

/// A text answer, as Engine.IO's servers send polling payloads.
pub fn text(body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    *response.status_mut() = StatusCode::OK;
    response
}
