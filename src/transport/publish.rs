//! `POST /publish`: backends (and read-only rungs of the browser client) publish over HTTP.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::app::App;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{Body, Query, json, read_body};
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
    let query = Query::parse(req.uri().query());
    let who = app.auth.identify(req.headers(), &query, &app.bus).await?;
    if !who.server {
        if let Some(conn) = req.extensions().get::<ConnInfo>() {
            conn.take_publish()?;
        }
    }
    let limits = &app.config.limits;
    let read = read_body(req.into_body(), limits.max_body_bytes);
    let body = tokio::time::timeout(Config::ms(limits.body_read_timeout_ms), read)
        .await
        .map_err(|_| Error::RequestTimeout)??;
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
