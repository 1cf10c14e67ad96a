//! `GET /sse`: Server-Sent Events. One long response per client; every message carries
//! the resume cursor as its event id, so the browser's own `Last-Event-ID` reconnect
//! resumes exactly. The stream opens with an `open` event at once, which is how a client
//! behind a buffering proxy can tell that nothing flows.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::bus::control::Control;
use crate::bus::{CursorAfter, Event, Express, ExpressSwitch, Subscription};
use crate::config::Transport;
use crate::error::{Refusal, Result};
use crate::http::{Body, RequestHead};
use crate::protocol::{Cursor, Message};
use crate::query::Query;
use crate::transport::server_api::Changes;
use crate::transport::session::Issued;
use crate::transport::{
    Session, authorize_subscribe, presence, put_changes, put_refused, requested_cursor,
    shutting_down,
};
use crate::wake::SideWaits;

pub mod event;
pub mod stream;

use event::SseEvent as _;

/// A batch stops growing past this many bytes, so one write stays reasonably sized.
const BATCH_BYTES: usize = 64 * 1024;

/// Where the server puts the express writer for an SSE stream's socket, once it has handed
/// the socket over to the stream (the lean HTTP/1 path does; hyper cannot). Found among
/// the response's extensions.
#[derive(Clone, Default)]
pub struct ExpressSlot(pub Arc<OnceLock<Arc<dyn Express>>>);

/// Opens an event stream from the request's cursor (or `Last-Event-ID`).
pub async fn serve<R: RequestHead + Send>(app: Arc<App>, req: R) -> Result<Response<Body>> {
    let metrics = app.metrics.transport(Transport::Sse);
    let query = Query::parse(req.query());
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let mut cursor = requested_cursor(&query, last_event_id, app.config.limits.max_channels)?;
    let (who, (refused, issued, changes)) = authorize_subscribe(
        &app,
        Transport::Sse,
        req.headers(),
        &query,
        req.conn(),
        &mut cursor,
    )
    .await?;
    let conn = req.conn().cloned();
    // A stalled reader stops hyper from polling this body, so the cut must reach the
    // connection itself: the server drops a connection whose token is cancelled.
    let cut = conn
        .as_ref()
        .map_or_else(CancellationToken::new, |c| c.kill().clone());
    let mut subscription = app.bus.subscribe_with_cut(cut.clone());
    subscription.set_client(presence::member(&app, &who, Transport::Sse), true);
    let start = subscription.add(&cursor).await?;
    let mut session = Session::open(Transport::Sse, metrics, conn.map(|c| c.remote()), cut);
    session.tell_backend(&app, &who);
    let slot = ExpressSlot::default();
    let open = open_event(
        &start,
        &refused,
        issued.as_deref(),
        &changes,
        app.config.sse.retry_ms,
    );
    let frames = events(
        app.clone(),
        subscription,
        open,
        session,
        who.expires_in(),
        slot.clone(),
    )
    .map(|bytes| Ok(Frame::data(bytes)));
    let mut response = Response::new(Body::Boxed(StreamBody::new(frames).boxed_unsync()));
    response.extensions_mut().insert(slot);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The `open` event: where delivery starts, the channels refused, what the server
/// subscribed the client to (and unsubscribed it from), and the client session begun, if
/// any.
fn open_event(
    start: &Cursor,
    refused: &[Refusal],
    issued: Option<&Issued>,
    changes: &Changes,
    retry_ms: u64,
) -> Bytes {
    let mut out = BytesMut::new();
    let _ = write!(
        out,
        "retry: {retry_ms}\nevent: open\nid: {start}\ndata: {{\"cursor\":\"{start}\""
    );
    put_refused(&mut out, refused);
    put_changes(&mut out, &[], Some(changes));
    if let Some(issued) = issued {
        issued.put(&mut out);
    }
    out.put_slice(b"}\n\n");
    out.freeze()
}

fn events(
    app: Arc<App>,
    mut subscription: Subscription,
    open: Bytes,
    mut session: Session,
    expires_in: Option<Duration>,
    slot: ExpressSlot,
) -> impl Stream<Item = Bytes> + Send {
    let heartbeat_every = Duration::from_millis(app.config.sse.heartbeat_ms);
    // Drain waits for this stream to end: hyper's graceful shutdown does not know it.
    let tracked = app.streams.token();
    async_stream::stream! {
        let _tracked = tracked;
        let metrics = app.metrics.transport(Transport::Sse);
        yield open;
        // Boxed, and only for credentials that expire: a timer inline (and the identity
        // it would borrow) would cost every idle stream its room.
        let mut expiry = expires_in.map(|left| Box::pin(tokio::time::sleep(left)));
        // Ticks at half the interval; a heartbeat goes out after two ticks without an
        // event, so the stream is never silent for longer than the interval, and a
        // delivery only clears a count instead of resetting a timer.
        let half = (heartbeat_every / 2).max(Duration::from_millis(1));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        let mut quiet_ticks = 0u8;
        // Expiry and the heartbeat are polled only after they woke the task, not once
        // more for every delivery: see `crate::wake`.
        let side = SideWaits::default();
        // Taken from the slot once the server has filled it.
        let mut slot = Some(slot);
        let mut express: Option<ExpressSwitch> = None;
        loop {
            // Checked, not waited on: a wait on the token polled its Notify on every
            // delivery. The drain cancels the token, then wakes every subscription, and a
            // check at the top of each turn is not held off by a steady flow of messages.
            if app.shutdown.is_cancelled() {
                session.ending("shutdown");
                let delay = app.reconnect_delay_ms();
                yield Bytes::from(format!(
                    "retry: {delay}\nevent: reconnect\ndata: {{\"retry_ms\":{delay}}}\n\n"
                ));
                break;
            }
            if let Some(sink) = slot.as_ref().and_then(|slot| slot.0.get()) {
                express = Some(subscription.set_express(sink.clone()));
                slot = None;
            }
            // While armed, the hub writes live messages to the socket itself and this
            // stream stays parked: whatever it yields is written only after it disarmed.
            // The server writes all of each frame before it polls the stream again, so
            // there is nothing unwritten to arm over.
            let armed = express.is_some() && subscription.arm();
            let lane = express.as_ref().filter(|_| armed);
            let step = {
                let mut next = std::pin::pin!(subscription.next());
                std::future::poll_fn(|cx| {
                    if let Some(waker) = side.fired(cx.waker()) {
                        // A heartbeat or an error event would be written after a message
                        // the hub part-wrote is finished: the message's turn comes first.
                        if lane.is_some_and(ExpressSwitch::disarm) {
                            side.again();
                            return next.as_mut().poll(cx).map(Step::Event);
                        }
                        let mut side_cx = Context::from_waker(&waker);
                        // The stream ends with the credentials it was opened with; checked
                        // before the subscription, so that a steady backlog cannot keep it
                        // open past them.
                        if expiry
                            .as_mut()
                            .is_some_and(|expiry| expiry.as_mut().poll(&mut side_cx).is_ready())
                        {
                            return Poll::Ready(Step::Expired);
                        }
                        if heartbeat.poll_tick(&mut side_cx).is_ready() {
                            side.again();
                            return Poll::Ready(Step::Tick);
                        }
                    }
                    // The subscription registers its waker before shutdown is checked,
                    // and a drain wakes it after cancelling: a drain is never missed.
                    match next.as_mut().poll(cx) {
                        Poll::Ready(event) => Poll::Ready(Step::Event(event)),
                        Poll::Pending => shutting_down(&app).map(|()| Step::Shutdown),
                    }
                })
                .await
            };
            if let Some(lane) = lane {
                lane.disarm();
            }
            match step {
                Step::Shutdown => {}
                Step::Expired => {
                    app.metrics.error("token_expired");
                    session.ending("token_expired");
                    yield Bytes::from_static(b"event: error\ndata: {\"code\":\"token_expired\"}\n\n");
                    break;
                }
                Step::Tick => {
                    quiet_ticks += 1;
                    if quiet_ticks >= 2 {
                        quiet_ticks = 0;
                        yield Bytes::from_static(b": heartbeat\n\n");
                    }
                }
                Step::Event(Ok(Event::Control(Control::Disconnected))) => {
                    app.metrics.error("disconnected");
                    session.ending("disconnected");
                    yield Bytes::from_static(b"event: error\ndata: {\"code\":\"disconnected\"}\n\n");
                    break;
                }
                Step::Event(Ok(Event::Message(message))) if subscription.take_written() > 0 => {
                    // The hub wrote part of it and the server has written the rest.
                    quiet_ticks = 0;
                    metrics.record_delivery(message.json().len(), message.ts, crate::bus::now_ms());
                }
                Step::Event(Ok(event)) => {
                    quiet_ticks = 0;
                    // A plain function: nothing of the batch's making stays in the
                    // stream's state, which every open stream keeps.
                    yield frame(event, &mut subscription, metrics);
                }
                Step::Event(Err(closed)) => {
                    session.ending(closed.code());
                    yield Bytes::from(format!(
                        "event: error\ndata: {{\"code\":\"{}\"}}\n\n",
                        closed.code()
                    ));
                    break;
                }
            }
        }
    }
}

/// The frame that carries `first` and whatever else is ready after it, up to
/// [`BATCH_BYTES`].
fn frame(
    first: Event,
    subscription: &mut Subscription,
    metrics: &crate::metrics::TransportMetrics,
) -> Bytes {
    let now = crate::bus::now_ms();
    // Every other event is encoded as soon as it is taken, as its `id:` is the cursor at
    // that moment. A message's event to a subscriber of one channel is the message's own
    // (see `encode`), so the next can be taken first, and a lone one (nearly every
    // delivery at a paced rate) goes out as the message keeps it, with no copy.
    let mut taken = None;
    if let Event::Message(message) = &first
        && subscription.follows_one_channel()
    {
        taken = subscription.try_next();
        if taken.is_none() {
            metrics.record_delivery(message.json().len(), message.ts, now);
            return message.sse_event().clone();
        }
    }
    let mut batch = BytesMut::new();
    encode(&mut batch, &first, subscription, metrics, now);
    loop {
        let next = match taken.take() {
            Some(next) => next,
            None if batch.len() < BATCH_BYTES => match subscription.try_next() {
                Some(next) => next,
                None => break,
            },
            None => break,
        };
        let Ok(event) = next else { break };
        encode(&mut batch, &event, subscription, metrics, now);
    }
    batch.freeze()
}

/// What woke the event stream.
enum Step {
    Shutdown,
    Expired,
    Tick,
    Event(std::result::Result<Event, crate::bus::Closed>),
}

/// Appends one event: `id:` is the cursor that resumes right after it. To a subscriber of
/// one channel, a message's event is the one the message keeps ([`Message::sse_event`]),
/// whose `id:` is that cursor.
///
/// [`Message::sse_event`]: crate::protocol::Message::sse_event
pub fn encode(
    out: &mut BytesMut,
    event: &Event,
    subscription: &Subscription,
    metrics: &crate::metrics::TransportMetrics,
    now: u64,
) {
    match event {
        Event::Message(message) if subscription.follows_one_channel() => {
            out.extend_from_slice(message.sse_event());
            metrics.record_delivery(message.json().len(), message.ts, now);
        }
        Event::Message(message) => {
            // One reservation for the whole event: growing by each piece reallocated
            // several times per event.
            out.reserve(16 + subscription.cursor_len_max() + message.json().len());
            put_event(out, message, |out| subscription.put_cursor(out));
            metrics.record_delivery(message.json().len(), message.ts, now);
        }
        Event::Gap(gap) => {
            metrics.gaps.inc();
            out.put_slice(b"event: gap\nid: ");
            subscription.put_cursor(out);
            let _ = write!(out, "\ndata: {}\n\n", gap.to_json());
        }
        // `event: subscribed` / `event: unsubscribed`, `id:` the cursor that now includes
        // (or leaves out) the channel; a disconnect ends the stream before it gets here.
        Event::Control(control) => {
            let (event, channels) = match control {
                Control::Subscribed(start) => (
                    "subscribed",
                    start.entries.iter().map(|(c, _)| c.as_str()).collect(),
                ),
                Control::Unsubscribed(channel) => ("unsubscribed", vec![channel.as_str()]),
                Control::Disconnected => ("error", Vec::new()),
            };
            let data = if channels.is_empty() {
                serde_json::json!({"code": "disconnected"})
            } else {
                serde_json::json!({"channels": channels, "server": true})
            };
            let _ = write!(out, "event: {event}\nid: ");
            subscription.put_cursor(out);
            let _ = write!(out, "\ndata: {data}\n\n");
        }
    }
}

/// Appends a message's event to a subscriber of several channels, written express: its
/// `id:` is the subscriber's cursor once it has the message, as [`encode`] writes it.
pub fn put_event_after(out: &mut impl BufMut, message: &Message, cursor: CursorAfter<'_>) {
    put_event(out, message, |out| cursor.put(out));
}

/// Appends `message`'s event with the cursor `put_cursor` writes as its `id:`.
fn put_event<B: BufMut>(out: &mut B, message: &Message, put_cursor: impl FnOnce(&mut B)) {
    out.put_slice(b"id: ");
    put_cursor(out);
    out.put_slice(b"\ndata: ");
    out.put_slice(message.json());
    out.put_slice(b"\n\n");
}
