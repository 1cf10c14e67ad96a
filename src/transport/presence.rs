//! `GET /presence?channel=room:1` (and the WebSocket `presence` frame): who is in a
//! channel, on every node. A backend asks with its API key; a client may ask about a
//! channel it may read, when the channel's namespace keeps presence (`presence = true`).

use std::sync::Arc;

use http::{Response, StatusCode};

use crate::app::App;
use crate::auth::Identity;
use crate::bus::Present;
use crate::config::Transport;
use crate::error::{Error, Result};
use crate::http::{Body, RequestHead, json};
use crate::protocol::{Channel, Cursor};
use crate::query::Query;

/// Answers `GET /presence`.
pub async fn serve(app: Arc<App>, head: &(impl RequestHead + Sync)) -> Result<Response<Body>> {
    let query = Query::parse(head.query());
    let who = app.auth.identify(head.headers(), &query, &app.bus).await?;
    let who = super::session::resume(&app, who, &query);
    let channel = query.get("channel").ok_or(Error::BadParam {
        name: "channel",
        reason: "name the channel: ?channel=room:1".into(),
    })?;
    let channel = Channel::parse(channel)?;
    check(&app, &who, &channel)?;
    Ok(json(StatusCode::OK, answer(&app, &channel).await?))
}

/// Refuses a presence query `who` may not make about `channel`.
pub fn check(app: &App, who: &Identity, channel: &Channel) -> Result<()> {
    if who.server {
        return Ok(());
    }
    if !app.bus.tracks_presence(channel) {
        return Err(Error::Forbidden(format!(
            "the namespace of {channel} keeps no presence (namespaces.<name>.presence)"
        )));
    }
    app.auth.check_subscribe(who, channel)
}

/// `{"channel":..,"clients":[{"user","client","transport"}]}`.
pub async fn answer(app: &App, channel: &Channel) -> Result<String> {
    let clients = app.bus.presence(channel).await?;
    Ok(serde_json::json!({"channel": channel.as_str(), "clients": clients}).to_string())
}

/// The client `who` is to presence and to `exclude_client`, on `transport`: its session,
/// if it has one. A stream without a session gets an id of its own where some namespace
/// keeps presence, so that it can be listed.
pub fn member(app: &App, who: &Identity, transport: Transport) -> Option<Present> {
    if who.server {
        return None;
    }
    let streaming = matches!(transport, Transport::Websocket | Transport::Sse);
    let client = match who.client() {
        Some(client) => *client,
        None if streaming && app.bus.keeps_presence() => crate::session::ClientId::random(),
        None => return None,
    };
    Some(Present {
        user: who.user.clone(),
        client,
        transport: transport.name().into(),
    })
}

/// Makes a polling client present in the channels it polls, where they keep presence.
pub async fn polled(app: &App, member: Option<&Present>, cursor: &Cursor) {
    if let Some(member) = member {
        app.bus.polled(cursor, member).await;
    }
}
