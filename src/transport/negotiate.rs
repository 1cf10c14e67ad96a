//! `GET /negotiate`: the ladder of enabled transports, best first, and the place clients
//! report the rungs that failed them, so operators see which networks push users down.
//!
//! Served on the lean HTTP/1 path like the transports' GETs: a browser asks here first and
//! then opens its rung, often on the same keep-alive connection, which would otherwise
//! have passed to hyper for good.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::config::Transport;
use crate::error::{Error, Result};
use crate::http::{Body, RequestHead, json};
use crate::query::Query;

/// Answers with the transport ladder and counts reported fallbacks.
pub async fn serve<R: RequestHead + Send>(app: Arc<App>, req: R) -> Result<Response<Body>> {
    let query = Query::parse(req.query());
    let failed = parse_failed(query.get("failed").unwrap_or(""))?;
    // Bad credentials are reported here, before the client tries any rung; a bearer token
    // is traded for a connect ticket to put in WebSocket and SSE URLs instead of itself.
    app.auth.identify(req.headers(), &query, &app.bus).await?;
    let ticket = app.auth.ticket(req.headers())?;
    app.metrics.negotiations.inc();
    let config = &app.config;
    let next = config
        .transports
        .iter()
        .copied()
        .find(|t| !failed.iter().any(|(f, _)| f == t));
    for (transport, reason) in &failed {
        app.metrics.fallback(*transport, next, reason);
    }
    let transports: Vec<_> = config
        .transports
        .iter()
        .map(|&t| {
            let mut rung = json!({"name": t.name(), "url": t.path()});
            match t {
                Transport::Longpoll => rung["timeout_ms"] = config.longpoll.timeout_ms.into(),
                Transport::Poll => rung["interval_ms"] = config.poll.interval_ms.into(),
                Transport::Websocket | Transport::Sse => {}
            }
            rung
        })
        .collect();
    let mut body = json!({ "transports": transports });
    if let Some(ticket) = ticket {
        body["ticket"] = ticket.into();
    }
    Ok(json(StatusCode::OK, body.to_string()))
}

/// Parses `websocket:timeout,sse` into transports with reasons (`unknown` when absent).
fn parse_failed(text: &str) -> Result<Vec<(Transport, String)>> {
    let mut failed: Vec<(Transport, String)> = Vec::new();
    for entry in text.split(',').filter(|e| !e.is_empty()) {
        let (name, reason) = entry.split_once(':').unwrap_or((entry, "unknown"));
        let transport = Transport::from_name(name).ok_or_else(|| Error::BadParam {
            name: "failed",
            reason: format!(
                "unknown transport {:?}",
                crate::protocol::truncate_for_message(name)
            ),
        })?;
        let reason_ok = !reason.is_empty()
            && reason.len() <= 32
            && reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !reason_ok {
            return Err(Error::BadParam {
                name: "failed",
                reason: "a reason is 1 to 32 of a-z and _".into(),
            });
        }
        if !failed.iter().any(|(t, _)| *t == transport) {
            failed.push((transport, reason.to_owned()));
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_list_parses_reasons() {
        let failed = parse_failed("websocket:timeout,sse,websocket:closed").unwrap();
        assert_eq!(
            failed,
            vec![
                (Transport::Websocket, "timeout".to_owned()),
                (Transport::Sse, "unknown".to_owned())
            ]
        );
        assert!(parse_failed("").unwrap().is_empty());
        assert!(parse_failed("carrier-pigeon").is_err());
        assert!(parse_failed("sse:Bad Reason").is_err());
    }
}
