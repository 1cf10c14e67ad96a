//! `POST /publish`: backends (and read-only rungs of the browser client) publish over HTTP,
//! one message a request, or a backend's batch of them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::app::App;
use crate::auth::Identity;
use crate::config::HookEvent;
use crate::error::{Error, Result};
use crate::http::{Body, RequestHead, json};
use crate::protocol::{Channel, Message, Publication, compact_json};
use crate::query::Query;
use crate::session::ClientId;

#[derive(Deserialize)]
struct PublishRequest<'a> {
    // Owned: a channel may arrive JSON-escaped (`room\/1`), which cannot be borrowed.
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    /// A client session not to hand the message to (Socket.IO's `broadcast`).
    #[serde(default)]
    exclude_client: Option<String>,
    /// The event name a Socket.IO client receives it as (default `message`), also
    /// delivered to Cascade's own clients in the message object.
    #[serde(default)]
    event: Option<String>,
    /// Read only to refuse it: the sender is the gateway's to set.
    #[serde(borrow, default, deserialize_with = "present")]
    from: Option<&'a RawValue>,
}

/// `Some` for a present field, even one holding JSON `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    Deserialize::deserialize(deserializer).map(Some)
}

/// The caller of a publish, once it has spent one of its connection's publish budget (a
/// backend's API key spends none). Each HTTP path calls it before reading a byte of the
/// body, so that a caller refused costs no more than its head.
pub async fn admit(app: &App, head: &(impl RequestHead + Sync)) -> Result<Identity> {
    let query = Query::parse(head.query());
    let who = app.auth.identify(head.headers(), &query, &app.bus).await?;
    let who = super::session::resume(app, who, &query);
    if !who.server
        && let Some(conn) = head.conn()
    {
        conn.take_publish(Some(head.headers()))?;
    }
    Ok(who)
}

/// Answers a publish whose caller was admitted ([`admit`]) and whose body was read: one
/// message, or an array of them (a batch), with their positions.
///
/// The answer waits while this node's fan-out backlog is over `limits.publish_backlog`
/// (see [`crate::bus::Backlog`]): a backend publishing as fast as it is answered then
/// goes at the pace the node writes, instead of queueing ever longer waits for everyone.
pub async fn publish(app: &App, who: &Identity, body: &[u8]) -> Result<Response<Body>> {
    let answer = if body.trim_ascii_start().first() == Some(&b'[') {
        publish_batch(app, who, body).await?
    } else {
        let request: PublishRequest =
            serde_json::from_slice(body).map_err(|e| Error::BadJson(e.to_string()))?;
        let message = publish_one(app, who, &request).await?;
        json(StatusCode::OK, acknowledgement(&message))
    };
    if let Some(waited) = app.bus.backlog().wait().await {
        app.metrics.publish_waited(waited);
    }
    Ok(answer)
}

/// Publishes a backend's batch in its order, answering each message in its place: its
/// position, or the error that refused it alone (the others are published all the same).
///
/// One request for many messages spares a backend a round trip and the gateway an HTTP
/// request each. Backends only: a user's publish budget counts requests, and a batch
/// would carry many messages on one.
async fn publish_batch(app: &App, who: &Identity, body: &[u8]) -> Result<Response<Body>> {
    // Its shape first, then who may send it, as for one message.
    let requests: Vec<PublishRequest> =
        serde_json::from_slice(body).map_err(|e| Error::BadJson(e.to_string()))?;
    if requests.is_empty() {
        return Err(Error::BadJson("the batch is empty".into()));
    }
    if !who.server {
        return Err(Error::Forbidden(
            "a batch publish needs a backend's API key".into(),
        ));
    }
    let mut answer = String::with_capacity(16 + requests.len() * 64);
    answer.push_str(r#"{"results":["#);
    for (at, request) in requests.iter().enumerate() {
        if at > 0 {
            answer.push(',');
        }
        match publish_one(app, who, request).await {
            Ok(message) => answer.push_str(&acknowledgement(&message)),
            Err(err) => {
                app.metrics.error(err.label());
                answer.push_str(&err.to_json());
            }
        }
    }
    answer.push_str("]}");
    Ok(json(StatusCode::OK, answer))
}

/// Checks and publishes one message for `who`.
async fn publish_one(
    app: &App,
    who: &Identity,
    request: &PublishRequest<'_>,
) -> Result<Arc<Message>> {
    if request.from.is_some() {
        return Err(Error::FromNotAllowed);
    }
    let max_bytes = app.config.limits.max_message_bytes;
    let (channel, data) = validate(&request.channel, request.data, max_bytes)?;
    let exclude = excluded(request.exclude_client.as_deref())?;
    let event = request.event.as_deref().map(checked_event).transpose()?;
    app.auth.check_publish(who, &channel)?;
    let data = hooked(app, who, &channel, data).await?;
    let mut publication = publication(who, data, exclude);
    if let Some(event) = event {
        publication = publication.event(event);
    }
    let message = app.bus.publish_as(&channel, publication).await?;
    app.metrics.published("http");
    Ok(message)
}

/// The data a client's publish goes out with: the backend's publish hook, when it is on,
/// may refuse it or replace it. Backends' own publishes are not asked about.
pub async fn hooked(app: &App, who: &Identity, channel: &Channel, data: Bytes) -> Result<Bytes> {
    match &app.hooks {
        Some(hooks) if hooks.on(HookEvent::Publish) && !who.server => {
            hooks.publish(who, channel, data).await
        }
        _ => Ok(data),
    }
}

/// What `who` publishes: a client's publish carries its sender as `from` (its user, its
/// client session), set here and nowhere else; a backend's carries none.
pub fn publication(who: &Identity, data: Bytes, exclude: Option<ClientId>) -> Publication {
    let publication = Publication {
        exclude: exclude.map(|c| Arc::from(c.as_str())),
        ..Publication::data(data)
    };
    if who.server {
        return publication;
    }
    publication.from(who.user.as_deref(), who.client().map(ClientId::as_str))
}

/// Checks a publish's `event` name.
fn checked_event(event: &str) -> Result<&str> {
    if crate::protocol::is_event_name(event) {
        Ok(event)
    } else {
        Err(Error::BadParam {
            name: "event",
            reason: "1 to 64 of A-Z a-z 0-9 _ - . : /".into(),
        })
    }
}

/// Checks an `exclude_client`: an id as the gateway gives them.
pub fn excluded(exclude_client: Option<&str>) -> Result<Option<ClientId>> {
    exclude_client
        .map(|text| {
            ClientId::parse(text).ok_or_else(|| Error::BadParam {
                name: "exclude_client",
                reason: "not a client id".into(),
            })
        })
        .transpose()
}

/// Checks a publish from any entry point: a valid channel and data within the size limit.
pub fn validate(channel: &str, data: &RawValue, max_bytes: usize) -> Result<(Channel, Bytes)> {
    let channel = Channel::parse(channel)?;
    let raw = data.get().as_bytes();
    if raw.len() > max_bytes {
        return Err(Error::MessageTooLarge(max_bytes));
    }
    // RawValue is already valid JSON; compacting keeps raw newlines out of SSE lines.
    let data = compact_json(raw).ok_or_else(|| Error::BadJson("data is not valid JSON".into()))?;
    Ok((channel, data))
}

/// `{"channel":..,"epoch":..,"offset":..}` for a published message.
pub fn acknowledgement(message: &Message) -> String {
    format!(
        r#"{{"channel":"{}","epoch":"{}","offset":{}}}"#,
        message.channel, message.epoch, message.offset
    )
}
