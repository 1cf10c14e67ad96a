//! `GET /longpoll`: the request is held until a message exists after the cursor or the
//! timeout passes. The cursor carries everything published between two polls, so a client
//! that polls again at once loses nothing.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};

use crate::app::App;
use crate::bus::Event;
use crate::config::Transport;
use crate::error::Result;
use crate::http::{Body, Query, json};
use crate::transport::{InFlight, authorize_subscribe, poll_body, requested_cursor};

/// Most events one answer carries; the rest wait for the next poll.
const MAX_BATCH: usize = 1000;

/// Answers as soon as there is something after the cursor, or empty at the timeout.
///
/// The request comes boxed and is dropped before the poll parks: an async fn keeps room
/// for its arguments for its whole life, and a poll may wait for many seconds.
pub async fn serve<B: Send + Sync>(app: Arc<App>, req: Box<Request<B>>) -> Result<Response<Body>> {
    let metrics = app.metrics.transport(Transport::Longpoll);
    let (cursor, timeout) = {
        let query = Query::parse(req.uri().query());
        let cursor = requested_cursor(&query, None, app.config.limits.max_channels)?;
        let who = authorize_subscribe(&app, req.headers(), &query, &cursor).await?;
        // A poll is never held past the expiry of the credentials it was allowed with.
        let timeout = hold_time(&app, &query)?.min(who.expires_in().unwrap_or(Duration::MAX));
        (cursor, timeout)
    };
    // A parked poll can wait for many seconds: it keeps the cursor, not the request's
    // headers, query and extensions.
    drop(req);
    let _in_flight = InFlight::new(metrics);

    let (mut events, mut next) = app.bus.catch_up(&cursor).await?;
    let mut retry_ms = None;
    if events.is_empty() && !timeout.is_zero() && !app.shutdown.is_cancelled() {
        let mut subscription = app.bus.subscribe();
        // Registers, then re-reads after `next`: anything published since catch_up is kept.
        subscription.add(&next).await?;
        tokio::select! {
            event = subscription.next() => {
                if let Ok(event) = event {
                    events.push(event);
                    // Coalesce whatever else is already queued into the same answer.
                    while events.len() < MAX_BATCH {
                        match subscription.try_next() {
                            Some(Ok(event)) => events.push(event),
                            _ => break,
                        }
                    }
                }
            }
            _ = tokio::time::sleep(timeout) => {}
            _ = app.shutdown.cancelled() => {}
        }
        next = subscription.cursor();
    }
    if app.shutdown.is_cancelled() {
        retry_ms = Some(app.reconnect_delay_ms());
    }
    if events.iter().any(|e| matches!(e, Event::Gap(_))) {
        tracing::debug!(cursor = %cursor, "long poll reported a gap");
    }
    let body = poll_body(&events, &next, retry_ms, metrics);
    Ok(json(StatusCode::OK, body))
}

/// `timeout=` in seconds, defaulting to the configured hold and capped at its maximum.
fn hold_time(app: &App, query: &Query) -> Result<Duration> {
    let config = &app.config.longpoll;
    let ms = match query.number("timeout")? {
        Some(seconds) => seconds.saturating_mul(1000).min(config.max_timeout_ms),
        None => config.timeout_ms,
    };
    Ok(Duration::from_millis(ms))
}
