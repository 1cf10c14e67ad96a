//! `GET /longpoll`: the request is held until a message exists after the cursor or the
//! timeout passes. The cursor carries everything published between two polls, so a client
//! that polls again at once loses nothing.
//!
//! On a keep-alive connection the poll's subscription outlives its answer (see
//! [`Carry`]): the next poll on that connection that resumes exactly where the answer
//! ended goes on with it, with no new registration and no history read, and finds
//! whatever was published in between already queued.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Response, StatusCode};
use tokio::time::Sleep;

use crate::app::App;
use crate::bus::control::Control;
use crate::bus::{Event, Present, Subscription};
use crate::config::Transport;
use crate::error::{Error, Refusal, Result};
use crate::http::{Body, RequestHead, json};
use crate::protocol::Cursor;
use crate::query::Query;
use crate::transport::server_api::Changes;
use crate::transport::session::{self, Issued};
use crate::transport::{InFlight, poll_body, presence, requested_cursor, shutting_down};

/// Most events one answer carries; the rest wait for the next poll.
const MAX_BATCH: usize = 1000;

/// A poll's subscription, kept by its connection between polls.
///
/// Registered all the while, it queues what is published between an answer and the next
/// poll (bounded by the subscriber queue: a connection that stops polling is cut off as
/// any slow subscriber is, and its next poll starts afresh). A poll goes on with it only
/// when the poll's cursor is exactly where the last answer left it
/// ([`Subscription::resumed_by`]); any other request on the connection, or its end,
/// drops it.
pub struct Carry(Box<Subscription>);

/// Where a poll starts.
enum Wanted {
    /// From the connection's kept subscription, which the poll resumes.
    Kept(Box<Subscription>),
    /// From this cursor, with a subscription of its own.
    From(Cursor),
}

/// Answers as soon as there is something after the cursor, or empty at the timeout.
/// `carry` holds the connection's kept subscription, if any, and receives this poll's.
///
/// A parked poll keeps only its subscription and the futures it waits on: the request is
/// dropped before it parks, every await before the wait is boxed (a future is as large as
/// its largest state, and a poll may wait for many seconds), and this is an `async move`
/// block rather than an `async fn`, which would keep its arguments twice.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub fn serve<'a, R: RequestHead + Send + Sync + 'static>(
    app: Arc<App>,
    req: Box<R>,
    carry: &'a mut Option<Carry>,
    mut timer: Pin<&'a mut Sleep>,
) -> impl Future<Output = Result<Response<Body>>> + Send + 'a {
    async move {
        let metrics = app.metrics.transport(Transport::Longpoll);
        let carried = carry.take();
        // One box for both steps: they run one after the other, so it is as large as the
        // larger, and a poll is one allocation cheaper than with a box each.
        let (_in_flight, mut events, mut waiting, told) = Box::pin(async {
            let (wanted, timeout, told, member) = admit(&app, req, carried).await?;
            let in_flight = InFlight::new(metrics);
            let (events, waiting) = start(&app, wanted, timeout, member).await?;
            Ok::<_, crate::error::Error>((in_flight, events, waiting, told))
        })
        .await?;
        // A poll with something to tell (channels left out, a session begun) answers at
        // once (see `admit`); the others park with nothing of it kept.
        if let Some(told) = told {
            return Ok(answer(&app, &events, waiting, Some(&told), carry));
        }
        // By reference: moved out, the subscription would take room of its own beside
        // the `waiting` it came from.
        if let Waiting::Park(subscription, timeout) = &mut waiting {
            timer.as_mut().reset(crate::wake::deadline(*timeout));
            tokio::select! {
                // In this order: the subscription registers its waker before shutdown is
                // checked, and the drain wakes every subscription after cancelling, so a
                // shutdown is never missed. Checked, not waited on: a wait on the token
                // would cost every parked poll another 72 bytes.
                biased;
                event = subscription.next() => {
                    if let Ok(event) = event {
                        events.push(event);
                        // Coalesce whatever else is already queued into the same answer.
                        take_ready(subscription, &mut events);
                    }
                }
                _ = std::future::poll_fn(|_| shutting_down(&app)) => {}
                () = timer.as_mut() => {}
            }
        }
        // The server API ended the user's sessions while this poll waited.
        if events
            .iter()
            .any(|e| matches!(e, Event::Control(Control::Disconnected)))
        {
            return Err(Error::Disconnected);
        }
        Ok(answer(&app, &events, waiting, None, carry))
    }
}

/// What a poll answers at once with, besides its messages.
struct Told {
    /// The channels left out.
    refused: Vec<Refusal>,
    /// The client session it began.
    issued: Option<Box<Issued>>,
    /// What the server API changed in its channels.
    changes: Changes,
}

/// The poll's answer: `events`, the cursor after them and what it was `told`; the
/// subscription goes to `carry` for the connection's next poll, unless the gateway drains.
fn answer(
    app: &App,
    events: &[Event],
    waiting: Waiting,
    told: Option<&Told>,
    carry: &mut Option<Carry>,
) -> Response<Body> {
    let mut retry_ms = None;
    if app.shutdown.is_cancelled() {
        retry_ms = Some(app.reconnect_delay_ms());
    }
    if events.iter().any(|e| matches!(e, Event::Gap(_))) {
        tracing::debug!(next = %waiting.cursor(), "long poll reported a gap");
    }
    let metrics = app.metrics.transport(Transport::Longpoll);
    let body = poll_body(
        events,
        |out| waiting.put_cursor(out),
        told.map_or(&[], |t| &t.refused),
        told.and_then(|t| t.issued.as_deref()),
        told.map(|t| &t.changes),
        retry_ms,
        metrics,
    );
    if let Waiting::Found(subscription) | Waiting::Park(subscription, _) = waiting
        && retry_ms.is_none()
    {
        *carry = Some(Carry(subscription));
    }
    json(StatusCode::OK, body)
}

/// Whether a poll waits for live messages.
enum Waiting {
    /// No: it answers at once with what history held, up to this cursor.
    No(Cursor),
    /// No: it answers at once with what this subscription found.
    Found(Box<Subscription>),
    /// Yes, on this subscription, for at most this long.
    Park(Box<Subscription>, Duration),
}

impl Waiting {
    /// Appends the cursor that resumes after the answer's events.
    fn put_cursor(&self, out: &mut BytesMut) {
        match self {
            Waiting::No(next) => next.put(out),
            Waiting::Found(subscription) | Waiting::Park(subscription, _) => {
                subscription.put_cursor(out)
            }
        }
    }

    /// The cursor that resumes after the answer's events, for logs.
    fn cursor(&self) -> Cursor {
        match self {
            Waiting::No(next) => next.clone(),
            Waiting::Found(subscription) | Waiting::Park(subscription, _) => subscription.cursor(),
        }
    }
}

/// Reads what is already there after `cursor`; with nothing there, the poll waits on the
/// subscription that read it.
///
/// History is read once: the subscription registers before it reads (see
/// `bus::subscription`), so a poll that finds nothing parks with nothing missed and no
/// second read, which is the common case of a client polling again at once.
async fn start(
    app: &App,
    wanted: Wanted,
    timeout: Duration,
    member: Option<Present>,
) -> Result<(Vec<Event>, Waiting)> {
    let client = member.as_ref().map(|m| m.client.as_str());
    let answer_now = timeout.is_zero() || app.shutdown.is_cancelled();
    let mut subscription = match wanted {
        Wanted::Kept(kept) => kept,
        Wanted::From(cursor) if answer_now => {
            let (events, next) = app.bus.catch_up(&cursor, client).await?;
            return Ok((events, Waiting::No(next)));
        }
        Wanted::From(cursor) => {
            // Boxed: a Carry is one pointer wherever the connection keeps it.
            let mut fresh = Box::new(app.bus.subscribe());
            fresh.set_client(member.clone(), false);
            fresh.add(&cursor).await?;
            fresh
        }
    };
    let mut events = Vec::new();
    take_ready(&mut subscription, &mut events);
    if events.is_empty() && !answer_now {
        return Ok((events, Waiting::Park(subscription, timeout)));
    }
    Ok((events, Waiting::Found(subscription)))
}

/// Moves what the subscription holds ready into `events`, up to one answer's worth.
fn take_ready(subscription: &mut Subscription, events: &mut Vec<Event>) {
    while events.len() < MAX_BATCH {
        match subscription.try_next() {
            Some(Ok(event)) => events.push(event),
            _ => break,
        }
    }
}

/// Where the poll starts, how long it may be held and what it answers at once with, once
/// the request is allowed.
async fn admit<R: RequestHead + Send + Sync>(
    app: &App,
    req: Box<R>,
    carried: Option<Carry>,
) -> Result<(Wanted, Duration, Option<Box<Told>>, Option<Present>)> {
    let query = Query::parse(req.query());
    let max = app.config.limits.max_channels;
    let resumed = |kept: &Subscription| {
        kept.resumed_by(query.get("channels"), query.get("cursor").unwrap_or(""))
    };
    let wanted = match carried {
        Some(Carry(kept)) if resumed(&kept) => Wanted::Kept(kept),
        _ => Wanted::From(requested_cursor(&query, None, max)?),
    };
    let (who, mut issued) = session::identify(
        app,
        Transport::Longpoll.name(),
        req.headers(),
        &query,
        req.conn(),
    )
    .await?;
    session::polled(app, &who);
    let (wanted, refused, changes) = match wanted {
        // Credentials come with each poll: the kept subscription goes on only if these
        // allow all of it; else the poll starts afresh from its cursor.
        Wanted::Kept(kept)
            if kept
                .channels()
                .all(|channel| app.auth.check_subscribe(&who, channel).is_ok()) =>
        {
            (Wanted::Kept(kept), Vec::new(), Changes::default())
        }
        Wanted::Kept(_) => {
            let mut cursor = requested_cursor(&query, None, max)?;
            let (refused, remembered, changes) = super::allowed(app, &who, &mut cursor).await?;
            issued = remembered.or(issued);
            (Wanted::From(cursor), refused, changes)
        }
        Wanted::From(mut cursor) => {
            let (refused, remembered, mut changes) = super::allowed(app, &who, &mut cursor).await?;
            if issued.is_some() {
                super::subscribe_granted(app, &who, &mut cursor, &mut changes);
            }
            issued = remembered.or(issued);
            (Wanted::From(cursor), refused, changes)
        }
    };
    // A poll is never held past the expiry of the credentials it was allowed with, and
    // one that left channels out or began a session answers at once: the client should
    // know before it waits.
    let mut timeout = hold_time(app, &query)?.min(who.expires_in().unwrap_or(Duration::MAX));
    let told = (!refused.is_empty() || issued.is_some() || !changes.is_empty()).then(|| {
        Box::new(Told {
            refused,
            issued,
            changes,
        })
    });
    if told.is_some() {
        timeout = Duration::ZERO;
    }
    let member = presence::member(app, &who, Transport::Longpoll);
    if member.is_some() && app.bus.keeps_presence() {
        let cursor = match &wanted {
            Wanted::Kept(kept) => kept.cursor(),
            Wanted::From(cursor) => cursor.clone(),
        };
        presence::polled(app, member.as_ref(), &cursor).await;
    }
    Ok((wanted, timeout, told, member))
}

/// `timeout=` in seconds, defaulting to the configured hold and capped at its maximum.
fn hold_time(app: &App, query: &Query<'_>) -> Result<Duration> {
    let config = &app.config.longpoll;
    let ms = match query.number("timeout")? {
        Some(seconds) => seconds.saturating_mul(1000).min(config.max_timeout_ms),
        None => config.timeout_ms,
    };
    Ok(Duration::from_millis(ms))
}
