//! `GET /poll`: short polling, for networks where nothing else works. Answers at once from
//! history without ever registering a live subscriber, so an idle poller costs nothing
//! between requests. It is also how the browser client learns why an SSE request failed
//! before its stream opened (an `EventSource` cannot read the status).

use std::sync::Arc;

use http::{Response, StatusCode};

use crate::app::App;
use crate::config::Transport;
use crate::error::Result;
use crate::http::{Body, RequestHead, json};
use crate::query::Query;
use crate::transport::{
    InFlight, authorize_subscribe, poll_body, presence, requested_cursor, session,
};

/// Answers with everything after the request's cursor, possibly nothing.
pub async fn serve<R: RequestHead>(app: Arc<App>, req: R) -> Result<Response<Body>> {
    let metrics = app.metrics.transport(Transport::Poll);
    let query = Query::parse(req.query());
    let mut cursor = requested_cursor(&query, None, app.config.limits.max_channels)?;
    let (who, (refused, issued, changes)) = authorize_subscribe(
        &app,
        Transport::Poll,
        req.headers(),
        &query,
        req.conn(),
        &mut cursor,
    )
    .await?;
    session::polled(&app, &who);
    let member = presence::member(&app, &who, Transport::Poll);
    presence::polled(&app, member.as_ref(), &cursor).await;
    let _in_flight = InFlight::new(metrics);
    let (events, next) = app
        .bus
        .catch_up(&cursor, member.as_ref().map(|m| m.client.as_str()))
        .await?;
    let retry_ms = app
        .shutdown
        .is_cancelled()
        .then(|| app.reconnect_delay_ms());
    let body = poll_body(
        &events,
        |out| next.put(out),
        &refused,
        issued.as_deref(),
        Some(&changes),
        retry_ms,
        metrics,
    );
    Ok(json(StatusCode::OK, body))
}
