//! `POST /publish`: backends (and read-only rungs of the browser client) publish over HTTP.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::app::App;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{Body, LeanRequest, Query, RequestHead, json, read_body};
use crate::protocol::{Channel, Message, compact_json};
use crate::server::ConnInfo;

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
    publish(&app, &parts.headers, parts.uri.query(), conn, read).await
}

/// The same for a publish the lean HTTP/1 path took, whose body it has read already.
pub async fn serve_lean(app: Arc<App>, mut req: LeanRequest) -> Result<Response<Body>> {
    let body = req.take_body();
    publish(&app, req.headers(), req.query(), req.conn(), async { body }).await
}

/// Publishes what `body` brings, for a caller allowed by its headers and query; `conn` is
/// the connection it came on, whose publish budget a client spends.
async fn publish(
    app: &App,
    headers: &HeaderMap,
    query: Option<&str>,
    conn: Option<&ConnInfo>,
    body: impl Future<Output = Result<Bytes>>,
) -> Result<Response<Body>> {
    let query = Query::parse(query);
    let who = app.auth.identify(headers, &query, &app.bus).await?;
    if !who.server
        && let Some(conn) = conn
    {
        conn.take_publish()?;
    }
    let limits = &app.config.limits;
    let body = body.await?;
    let request: PublishRequest =
        serde_json::from_slice(&body).map_err(|e| Error::BadJson(e.to_string()))?;
    let (channel, data) = validate(&request.channel, request.data, limits.max_message_bytes)?;
    app.auth.check_publish(&who, &channel)?;
    let message = app.bus.publish(&channel, data).await?;
    app.metrics.published("http");
    Ok(json(StatusCode::OK, acknowledgement(&message)))
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
