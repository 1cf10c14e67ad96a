//! The simulated clients: one subscriber per transport and an HTTP publisher.
//!
//! Every published message carries `{"t":<unix micros at send>,"n":<sequence>}`. Receivers
//! find `"t":` and `"n":` by byte search instead of parsing JSON, so the generator stays
//! cheaper than the gateway it measures, and mark `n` in a bitmap per subscriber: a second
//! sighting is a duplicate, a never-seen `n` at the end is a loss.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use cascade::config::Transport;

use crate::http::{Conn, find, rfind};
use crate::peers;

/// Microseconds since the unix epoch.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A latency histogram in microseconds, up to an hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Counters shared by every client of a run.
pub struct Tally {
    /// Subscribers whose subscription the server confirmed (for polls: whose first,
    /// immediate answer fixed their cursor; the gateway's gauge confirms long polls park).
    pub confirmed: AtomicUsize,
    /// Subscribers that failed before being confirmed.
    pub failed: AtomicUsize,
    /// Subscribers that ended early after being confirmed (closed, cut off, errors).
    pub dropped: AtomicUsize,
    /// First sightings of a message by a subscriber.
    pub delivered: AtomicU64,
    /// Repeated sightings.
    pub duplicates: AtomicU64,
    /// Sequence numbers outside `1..=expected`.
    pub strays: AtomicU64,
    /// Gaps the server reported.
    pub gaps: AtomicU64,
    /// Poll and long-poll responses.
    pub requests: AtomicU64,
    /// When the last new message arrived, unix micros.
    pub last_delivery_us: AtomicU64,
    /// Publish-to-receive latency, microseconds.
    pub latency: Mutex<Histogram<u64>>,
    /// The first error any client saw, for the report.
    pub first_error: Mutex<Option<String>>,
}

impl Tally {
    /// Zeroed counters.
    pub fn new() -> Self {
        Tally {
            confirmed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            strays: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
            first_error: Mutex::new(None),
        }
    }

    /// Keeps the first error seen.
    pub fn error(&self, error: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(error);
    }
}

/// What one subscriber follows and expects.
#[derive(Clone)]
pub struct Follow {
    /// The transport it uses.
    pub transport: Transport,
    /// Its channels, comma-separated: the one it is counted on first, then any quiet one
    /// of its own.
    pub channels: String,
    /// How many messages the first channel will carry (`n` runs over `1..=expected`).
    pub expected: u64,
    /// Short-poll interval; zero polls back to back.
    pub interval: Duration,
    /// The `timeout=` of each long poll, seconds.
    pub hold_s: u64,
    /// Local address to bind before connecting.
    pub source: Option<IpAddr>,
    /// Ask `/negotiate` on the connection before subscribing on it.
    pub negotiate: bool,
    /// The server's wire: Cascade's, or a peer's.
    pub wire: Wire,
}

/// Which server's wire a subscriber speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Cascade's (and the floor's).
    Cascade,
    /// Nchan's WebSocket subscriber (see `peers`).
    Nchan,
    /// Socket.IO's (see `peers`).
    Socketio,
    /// Socket.IO's, on Cascade's `/socket.io/` (see `peers`).
    CascadeSocketio,
}

/// Marks `n`s seen by one subscriber and feeds the shared tally.
pub struct Receiver {
    seen: Vec<u64>,
    expected: u64,
    tally: Arc<Tally>,
}

impl Receiver {
    fn new(expected: u64, tally: Arc<Tally>) -> Self {
        Receiver {
            seen: vec![0; expected.div_ceil(64) as usize],
            expected,
            tally,
        }
    }

    /// Finds every `"t":..,"n":..` pair in `bytes` (one frame, an SSE batch or a poll
    /// body) and records it.
    pub fn take(&mut self, bytes: &[u8]) {
        let now = unix_us();
        let (mut new, mut duplicates, mut strays) = (0, 0, 0);
        let mut latencies = [0u64; 64];
        let mut pending = 0;
        let mut pos = 0;
        while let Some(i) = find(&bytes[pos..], b"\"t\":") {
            let (t, after_t) = number(bytes, pos + i + 4);
            let Some(j) = find(&bytes[after_t..], b"\"n\":") else {
                break;
            };
            let (n, end) = number(bytes, after_t + j + 4);
            pos = end;
            if n == 0 || n > self.expected {
                strays += 1;
                continue;
            }
            let (word, bit) = (((n - 1) / 64) as usize, (n - 1) % 64);
            if self.seen[word] & (1 << bit) != 0 {
                duplicates += 1;
                continue;
            }
            self.seen[word] |= 1 << bit;
            new += 1;
            latencies[pending] = now.saturating_sub(t);
            pending += 1;
            if pending == latencies.len() {
                self.record(&latencies);
                pending = 0;
            }
        }
        self.record(&latencies[..pending]);
        if new > 0 {
            self.tally.delivered.fetch_add(new, Ordering::Relaxed);
            self.tally
                .last_delivery_us
                .fetch_max(now, Ordering::Relaxed);
        }
        if duplicates > 0 {
            self.tally
                .duplicates
                .fetch_add(duplicates, Ordering::Relaxed);
        }
        if strays > 0 {
            self.tally.strays.fetch_add(strays, Ordering::Relaxed);
        }
    }

    fn record(&self, latencies: &[u64]) {
        if latencies.is_empty() {
            return;
        }
        let mut histogram = self.tally.latency.lock().unwrap_or_else(|e| e.into_inner());
        for &us in latencies {
            histogram.saturating_record(us.max(1));
        }
    }
}

/// The decimal number starting at `at`, and where it ends.
fn number(bytes: &[u8], at: usize) -> (u64, usize) {
    let mut value = 0u64;
    let mut end = at;
    while let Some(&b) = bytes.get(end) {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        end += 1;
    }
    (value, end)
}

/// Counts a subscriber as confirmed once, and releases its connect slot then.
pub struct Ready {
    tally: Arc<Tally>,
    permit: Option<OwnedSemaphorePermit>,
    confirmed: bool,
}

impl Ready {
    /// Counts the subscriber as subscribed.
    pub fn confirm(&mut self) {
        if !self.confirmed {
            self.confirmed = true;
            self.permit = None;
            self.tally.confirmed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs one subscriber until `stop`; errors end it and are counted.
pub async fn subscriber(
    addr: SocketAddr,
    follow: Follow,
    tally: Arc<Tally>,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let mut ready = Ready {
        tally: tally.clone(),
        permit: Some(permit),
        confirmed: false,
    };
    let mut receiver = Receiver::new(follow.expected, tally.clone());
    let run = async {
        match follow.transport {
            Transport::Websocket => match follow.wire {
                Wire::Cascade => websocket(addr, &follow, &mut receiver, &mut ready).await,
                Wire::Nchan => peers::nchan(addr, &follow, &mut receiver, &mut ready).await,
                Wire::Socketio | Wire::CascadeSocketio => {
                    peers::socketio(addr, &follow, &mut receiver, &mut ready).await
                }
            },
            Transport::Sse => sse(addr, &follow, &mut receiver, &mut ready).await,
            Transport::Longpoll => long_poll(addr, &follow, &mut receiver, &mut ready).await,
            Transport::Poll => short_poll(addr, &follow, &mut receiver, &mut ready).await,
        }
    };
    let outcome = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        outcome = run => outcome,
    };
    if let Err(error) = outcome {
        if ready.confirmed {
            tally.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
        tally.error(format!("{}: {error}", follow.transport.name()));
    }
}

/// A WebSocket client connected to `path` on `addr` (from `follow`'s source address).
pub async fn open_websocket(
    addr: SocketAddr,
    follow: &Follow,
    path: &str,
) -> Result<WebSocketStream<crate::tls::Stream>, String> {
    let stream = crate::tls::connect(addr, follow.source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let scheme = if crate::tls::enabled() { "wss" } else { "ws" };
    // Small buffers: thousands of these share one process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("{scheme}://{addr}{path}"),
        stream,
        Some(config),
    )
    .await
    .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

async fn websocket(
    addr: SocketAddr,
    follow: &Follow,
    receiver: &mut Receiver,
    ready: &mut Ready,
) -> Result<(), String> {
    let mut ws = open_websocket(addr, follow, "/ws").await?;
    let list = follow.channels.replace(',', r#"",""#);
    let subscribe = format!(r#"{{"op":"subscribe","channels":["{list}"]}}"#);
    ws.send(Frame::text(subscribe))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    // tungstenite answers the server's pings while we read.
    while let Some(frame) = ws.next().await {
        match frame.map_err(|e| format!("read: {e}"))? {
            Frame::Text(text) => {
                let bytes = text.as_bytes();
                if bytes.starts_with(br#"{"op":"message""#) {
                    receiver.take(bytes);
                } else if bytes.starts_with(br#"{"op":"subscribed""#) {
                    ready.confirm();
                } else if bytes.starts_with(br#"{"op":"gap""#) {
                    receiver.tally.gaps.fetch_add(1, Ordering::Relaxed);
                } else if bytes.starts_with(br#"{"op":"error""#) {
                    return Err(format!("server error frame: {}", text.as_str()));
                }
            }
            Frame::Close(close) => {
                return Err(format!(
                    "closed by the server: {}",
                    close.map_or_else(
                        || "no code".to_owned(),
                        |c| format!("{} {}", c.code, c.reason)
                    )
                ));
            }
            _ => {}
        }
    }
    Err("connection ended".to_owned())
}

async fn sse(
    addr: SocketAddr,
    follow: &Follow,
    receiver: &mut Receiver,
    ready: &mut Ready,
) -> Result<(), String> {
    let mut conn = Conn::open(addr, follow.source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if follow.negotiate {
        negotiate(&mut conn).await?;
    }
    let path = format!("/sse?channels={}", follow.channels);
    conn.send("GET", &path, &[("Accept", "text/event-stream")], b"")
        .await
        .map_err(|e| format!("request: {e}"))?;
    let head = conn.head().await.map_err(|e| format!("response: {e}"))?;
    if head.status != 200 {
        return Err(format!("status {}", head.status));
    }
    if follow.wire != Wire::Cascade {
        // A peer's stream has no `open` event: its answer is the confirmation.
        ready.confirm();
    }
    let mut pending = BytesMut::new();
    loop {
        let piece = conn.piece(head).await.map_err(|e| format!("read: {e}"))?;
        let Some(piece) = piece else {
            return Err("stream ended".to_owned());
        };
        pending.extend_from_slice(&piece);
        // Take every complete event at once; only rare events need a closer look.
        let Some(end) = rfind(&pending, b"\n\n") else {
            continue;
        };
        let events = pending.split_to(end + 2);
        receiver.take(&events);
        if find(&events, b"event: ").is_some() {
            if find(&events, b"event: open").is_some() {
                ready.confirm();
            }
            if find(&events, b"event: gap").is_some() {
                receiver.tally.gaps.fetch_add(1, Ordering::Relaxed);
            }
            if find(&events, b"event: error").is_some()
                || find(&events, b"event: reconnect").is_some()
            {
                let text = String::from_utf8_lossy(&events);
                return Err(format!("server ended the stream: {}", text.trim()));
            }
        }
    }
}

/// The `"cursor":"..."` of a poll answer.
fn cursor_of(body: &[u8]) -> Option<String> {
    let start = find(body, b"\"cursor\":\"")? + 10;
    let len = body[start..].iter().position(|&b| b == b'"')?;
    String::from_utf8(body[start..start + len].to_vec()).ok()
}

async fn long_poll(
    addr: SocketAddr,
    follow: &Follow,
    receiver: &mut Receiver,
    ready: &mut Ready,
) -> Result<(), String> {
    let mut conn = Conn::open(addr, follow.source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if follow.negotiate {
        negotiate(&mut conn).await?;
    }
    // A first poll with `timeout=0` answers at once with the current position: it proves
    // the gateway has accepted this client (which keeps the connect slot until then) and
    // gives the cursor every parked poll resumes from.
    let mut cursor: Option<String> = None;
    let mut hold_s = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!(
                "/longpoll?channels={}&cursor={c}&timeout={hold_s}",
                follow.channels
            ),
            None => format!("/longpoll?channels={}&timeout=0", follow.channels),
        };
        let (status, body) = conn
            .request("GET", &path, &[], b"")
            .await
            .map_err(|e| format!("long poll: {e}"))?;
        if status != 200 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        if cursor.is_some() {
            receiver.tally.requests.fetch_add(1, Ordering::Relaxed);
        }
        receiver.take(&body);
        if find(&body, b"\"gaps\":").is_some() {
            receiver.tally.gaps.fetch_add(1, Ordering::Relaxed);
        }
        cursor = Some(cursor_of(&body).ok_or("answer without a cursor")?);
        // From here every poll parks; the gateway's gauge confirms that it has.
        ready.confirm();
        hold_s = follow.hold_s;
    }
}

async fn short_poll(
    addr: SocketAddr,
    follow: &Follow,
    receiver: &mut Receiver,
    ready: &mut Ready,
) -> Result<(), String> {
    let mut conn = Conn::open(addr, follow.source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if follow.negotiate {
        negotiate(&mut conn).await?;
    }
    let mut cursor: Option<String> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        let path = match &cursor {
            Some(c) => format!("/poll?channels={}&cursor={c}", follow.channels),
            None => format!("/poll?channels={}", follow.channels),
        };
        let (status, body) = conn
            .request("GET", &path, &[], b"")
            .await
            .map_err(|e| format!("poll: {e}"))?;
        if status != 200 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        if cursor.is_none() {
            // The first answer only fixes the starting position. Spread the clients over
            // one interval from here instead of polling in lockstep.
            ready.confirm();
            next = tokio::time::Instant::now() + follow.interval.mul_f64(fastrand::f64());
        } else {
            receiver.tally.requests.fetch_add(1, Ordering::Relaxed);
            next += follow.interval;
        }
        receiver.take(&body);
        if find(&body, b"\"gaps\":").is_some() {
            receiver.tally.gaps.fetch_add(1, Ordering::Relaxed);
        }
        cursor = Some(cursor_of(&body).ok_or("answer without a cursor")?);
        if !follow.interval.is_zero() {
            // A client that fell behind polls at once rather than bunching up later.
            next = next.max(tokio::time::Instant::now());
            tokio::time::sleep_until(next).await;
        }
    }
}

/// What the publishers share.
pub struct Publishing {
    /// Messages to publish in all.
    pub messages: u64,
    /// Messages per second in all; zero means as fast as the replies come.
    pub rate: f64,
    /// Message `j` goes to `channels[j % len]` with `n = j / len + 1`.
    pub channels: Vec<String>,
    /// The API key that lets a backend publish without the per-connection rate limit.
    pub api_key: String,
    /// Messages per request; above 1 each request is a batch.
    pub batch: u64,
    /// When publishing began; message `j` is due at `start + j / rate`.
    pub start: Instant,
    /// No publish starts after this.
    pub deadline: Instant,
    /// The next message index to publish.
    pub next: AtomicU64,
    /// Publishes answered 200.
    pub published: AtomicU64,
    /// Publishes answered 200, per channel: what its subscribers must have seen.
    pub published_per_channel: Vec<AtomicU64>,
    /// Publishes refused or failed.
    pub failed: AtomicU64,
    /// Publish round trips, microseconds.
    pub round_trip: Mutex<Histogram<u64>>,
}

/// Publishes over one keep-alive connection until the plan or the deadline runs out.
pub async fn publisher(addr: SocketAddr, plan: Arc<Publishing>, tally: Arc<Tally>) {
    let mut conn = match Conn::open(addr, None).await {
        Ok(conn) => conn,
        Err(e) => {
            tally.error(format!("publisher connect: {e}"));
            return;
        }
    };
    let headers = [("X-Cascade-Api-Key", plan.api_key.as_str())];
    let width = plan.channels.len() as u64;
    loop {
        let first = plan.next.fetch_add(plan.batch, Ordering::Relaxed);
        if first >= plan.messages {
            return;
        }
        let messages = first..(first + plan.batch).min(plan.messages);
        if plan.rate > 0.0 {
            let due = plan.start + Duration::from_secs_f64(first as f64 / plan.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() > plan.deadline {
            return;
        }
        let sent = unix_us();
        let item = |j: u64| {
            let channel = &plan.channels[(j % width) as usize];
            format!(
                r#"{{"channel":"{channel}","data":{{"t":{sent},"n":{}}}}}"#,
                j / width + 1
            )
        };
        let body = if plan.batch > 1 {
            let items: Vec<String> = messages.clone().map(item).collect();
            format!("[{}]", items.join(","))
        } else {
            item(first)
        };
        match conn
            .request("POST", "/publish", &headers, body.as_bytes())
            .await
        {
            // A peer may say 201 or 202 (Nchan does).
            Ok((200..=299, answer)) => {
                let batched = (plan.batch > 1).then(|| batch_published(&answer));
                for (at, j) in messages.enumerate() {
                    if batched
                        .as_ref()
                        .is_some_and(|ok| !ok.get(at).copied().unwrap_or(false))
                    {
                        plan.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    plan.published.fetch_add(1, Ordering::Relaxed);
                    plan.published_per_channel[(j % width) as usize]
                        .fetch_add(1, Ordering::Relaxed);
                }
                let rtt = unix_us().saturating_sub(sent).max(1);
                let mut histogram = plan.round_trip.lock().unwrap_or_else(|e| e.into_inner());
                histogram.saturating_record(rtt);
            }
            Ok((status, body)) => {
                plan.failed.fetch_add(1, Ordering::Relaxed);
                tally.error(format!(
                    "publish answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Err(e) => {
                plan.failed.fetch_add(1, Ordering::Relaxed);
                tally.error(format!("publish: {e}"));
                match Conn::open(addr, None).await {
                    Ok(fresh) => conn = fresh,
                    Err(_) => return,
                }
            }
        }
    }
}

/// Which items of a batch publish's answer (`{"results":[..]}`) were published.
fn batch_published(answer: &[u8]) -> Vec<bool> {
    let answer: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    answer["results"]
        .as_array()
        .map(|results| results.iter().map(|r| r["offset"].is_u64()).collect())
        .unwrap_or_default()
}

/// Asks `/negotiate` on `conn`, as a ladder client does before it opens its rung.
async fn negotiate(conn: &mut Conn) -> Result<(), String> {
    let (status, body) = conn
        .request("GET", "/negotiate", &[], b"")
        .await
        .map_err(|e| format!("negotiate: {e}"))?;
    if status != 200 {
        return Err(format!(
            "negotiate: status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}
