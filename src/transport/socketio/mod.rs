//! `/socket.io/`: Engine.IO 4 and Socket.IO 5, so that a page written for
//! `socket.io-client` 3.x/4.x connects to Cascade by changing only its URL
//! (docs/SOCKETIO.md). Polling ([`polling`]), WebSocket and the upgrade ([`ws`]), the
//! default namespace's socket ([`socket`]), the packets ([`packet`]), and the disconnect
//! hook's word on a polling socket that went quiet ([`quiet`]).
//!
//! Written by hand rather than on socketioxide/engineioxide: their sessions live in one
//! process's memory, so every poll of a session must reach the node that opened it
//! (sticky sessions). Here a session is kept in the engine and its packets travel by the
//! bus, so any node serves any request. What it may not touch: engines (only
//! [`crate::bus::Bus`]), and HTTP statuses (its refusals are [`EngineIoError`]s).

pub mod kept;
pub mod packet;
pub mod polling;
pub mod quiet;
pub mod socket;
pub mod ws;

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::error::{EngineIoError, Error, Result};
use crate::http::Body;
use crate::query::Query;

/// Where Socket.IO's clients look by default.
pub const PATH: &str = "/socket.io/";

/// Answers a request to `/socket.io/`: a handshake, a poll, a post of packets, or a
/// WebSocket.
pub async fn serve(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>> {
    if !app.config.socketio.enabled {
        return Err(Error::TransportDisabled("socketio"));
    }
    let query = Query::parse(req.uri().query());
    let refuse = |err| Err(Error::EngineIo(err));
    if query.get("EIO") != Some("4") {
        return refuse(EngineIoError::UnsupportedProtocolVersion);
    }
    let websocket = match query.get("transport") {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return refuse(EngineIoError::TransportUnknown),
    };
    let sid = match query.get("sid") {
        Some(sid) if crate::session::ClientId::parse(sid).is_none() => {
            return refuse(EngineIoError::SessionIdUnknown);
        }
        other => other.map(str::to_owned),
    };
    app.metrics.socketio(websocket).served.inc();
    match (websocket, sid, req.method()) {
        (true, sid, &Method::GET) => ws::upgrade(app, req, sid).await,
        (true, _, _) => refuse(EngineIoError::BadRequest),
        (false, None, &Method::GET) => polling::handshake(&app).await,
        (false, None, _) => refuse(EngineIoError::BadHandshakeMethod),
        (false, Some(sid), &Method::GET) => polling::get(app, &sid).await,
        (false, Some(sid), _) => polling::post(app, &sid, req).await,
    }
}
