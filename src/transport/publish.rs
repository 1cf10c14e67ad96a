//! `POST /publish`: backends (and read-only rungs of the browser client) publish over HTTP,
//! one message a request, or a backend's batch of them.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::app::App;
use crate::auth::Identity;
use crate::config::Config;
use crate::conn::ConnInfo;
use crate::error::{Error, Result};
use crate::http::{Body, LeanRequest, RequestHead, json, read_body};
use crate::protocol::{Channel, Message, compact_json};
use crate::query::Query;

#[derive(Deserialize)]
struct PublishRequest<'a> {
    // Owned: a channel may arrive JSON-escaped (`room\/1`), which cannot be borrowed.
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Answers a publish request with the message's position.
pub async fn serve(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let limits = &app.config.limits;
    let read = async {
        let read = read_body(body, limits.max_body_bytes);
        tokio::time::timeout(Config::ms(limits.body_read_timeout_ms), read)
            .await
            .map_err(|_| Error::RequestTimeout)?
    };
    let conn = parts.extensions.get::<ConnInfo>();
    let who = admit(&app, &parts.headers, parts.uri.query(), conn).await?;
    let body = read.await?;
    publish(&app, &who, &body).await
}

/// The same for a publish the lean HTTP/1 path took: its connection's loop admitted the
/// caller ([`admit_lean`]) and then read the body, or says why it did neither.
pub async fn serve_lean(app: Arc<App>, mut req: LeanRequest) -> Result<Response<Body>> {
    let (body, who) = match req.take_body()? {
        Some(read) => read,
        // A request whose body the loop did not take: admitted here, with nothing to read.
        None => (Bytes::new(), admit_lean(&app, &req).await?),
    };
    publish(&app, &who, &body).await
}

/// The caller of a publish the lean path took, admitted (credentials, then its
/// connection's publish budget) before the body is read, as on hyper's path.
pub async fn admit_lean(app: &App, req: &LeanRequest) -> Result<Identity> {
    admit(app, req.headers(), req.query(), req.conn()).await
}

/// The caller its headers and query name, once it has spent one of its connection's
/// publish budget (`conn`; a backend's API key spends none). Checked before a byte of the
/// body is read, so that a caller refused costs no more than its head.
async fn admit(
    app: &App,
    headers: &HeaderMap,
    query: Option<&str>,
    conn: Option<&ConnInfo>,
) -> Result<Identity> {
    let query = Query::parse(query);
    let who = app.auth.identify(headers, &query, &app.bus).await?;
    if !who.server
        && let Some(conn) = conn
    {
        conn.take_publish(Some(headers))?;
    }
    Ok(who)
}

/// Publishes what `body` asks, for `who`: one message, or an array of them (a batch).
async fn publish(app: &App, who: &Identity, body: &[u8]) -> Result<Response<Body>> {
    if body.trim_ascii_start().first() == Some(&b'[') {
        return publish_batch(app, who, body).await;
    }
    let request: PublishRequest =
        serde_json::from_slice(body).map_err(|e| Error::BadJson(e.to_string()))?;
    let message = publish_one(app, who, &request).await?;
    Ok(json(StatusCode::OK, acknowledgement(&message)))
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
                app.metrics.error(err.code());
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
    let max_bytes = app.config.limits.max_message_bytes;
    let (channel, data) = validate(&request.channel, request.data, max_bytes)?;
    app.auth.check_publish(who, &channel)?;
    let message = app.bus.publish(&channel, data).await?;
    app.metrics.published("http");
    Ok(message)
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
