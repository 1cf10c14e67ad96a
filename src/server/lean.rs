//! The lean HTTP/1 path for the GET routes of the transports: `/sse`, `/longpoll`, `/poll`
//! and the `/ws` handshake.
//!
//! These requests are most of a gateway's open connections and they spend their life
//! waiting (a short poller's connection waits between its polls). Served by hyper, each keeps hyper's connection buffers (8 KiB to read, 8 KiB
//! for response heads) for as long as it waits, and an upgraded WebSocket keeps a boxed
//! hyper socket. Here the request head is read into a small buffer that is released once
//! parsed, and the answer is written straight to the socket; a WebSocket runs on the bare
//! socket in a task of its own. Anything else (another route, a body, an upgrade to
//! anything but WebSocket, HTTP/1.0, a head this path cannot parse) goes to hyper with the
//! bytes already read, so hyper stays the one full HTTP implementation and this path only
//! ever takes requests it fully understands.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::app::App;
use crate::http::{Body, LeanRequest};
use crate::routes;
use crate::server::ConnInfo;
use crate::transport::sse::ExpressSlot;
use crate::transport::websocket;
use crate::wake::SideWaits;

/// A request head longer than this goes to hyper, which applies its own limits.
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines parsed here; more goes to hyper.
const MAX_HEADERS: usize = 64;
/// The first read's size: a browser's GET head is usually well under this.
const FIRST_READ: usize = 2048;

/// What follows the lean path on a connection.
pub enum Next {
    /// hyper serves the rest; these bytes of the next request were read already.
    Hyper(Bytes),
    /// The handshake was answered: the WebSocket runs on the socket, starting with
    /// these bytes the client sent after its handshake.
    WebSocket(Box<websocket::Accepted>, Vec<u8>),
    /// A stream (SSE) that takes the socket over, to share it with the hub's express
    /// writes: nothing of it is written yet.
    Stream(Box<super::stream::Streaming>),
    /// The connection is finished.
    Closed,
}

/// Serves the lean routes on `stream` for as long as its requests are lean ones.
///
/// Not an `async fn`, so that the future does not keep its arguments twice (see
/// `server::serve`); transient waits are boxed so that the state a parked long poll or an
/// SSE stream keeps is the smallest one.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub fn serve<'a>(
    stream: &'a mut TcpStream,
    info: &'a ConnInfo,
    app: &'a Arc<App>,
) -> impl Future<Output = Next> + Send + 'a {
    async move {
        let mut buf = BytesMut::new();
        // What the last request left for the next one: a long poll's subscription.
        let mut kept_poll = None;
        // One timer for the connection's life, reset for each wait: for a request's head,
        // and a long poll's hold. A poller sends a request for every answer, and a reset
        // to a later deadline (the hold after the head) is an update of the timer's own
        // state, where a new timer is a trip to the timer wheel to register and another to
        // remove it.
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        loop {
            // Read from the configuration each time rather than kept: 16 bytes of every
            // connection's task.
            let header_timeout = app.config.limits.header_read_timeout_ms;
            timer
                .as_mut()
                .reset(crate::wake::deadline(Duration::from_millis(header_timeout)));
            // Not boxed: it takes no more room in this task than the routing does.
            let head = async {
                if buf.is_empty() {
                    // Between requests nothing is buffered: wait for the next one with no
                    // memory. Biased, as the other selects here: a fair select draws a
                    // random number each time it is polled.
                    let readable = poll_fn(|cx| stream.poll_read_ready(cx));
                    let arrived = match info.kill_taken() {
                        // Nothing can kill the connection during this wait (only its
                        // own streams take the token), so there is no kill to wait on.
                        None => tokio::select! {
                            biased;
                            ready = readable => ready.is_ok(),
                            _ = app.shutdown.cancelled() => false,
                        },
                        // After an SSE stream: rare, and boxed, as the kill wait would
                        // otherwise make every connection's task larger.
                        Some(kill) => {
                            Box::pin(async {
                                tokio::select! {
                                    biased;
                                    ready = readable => ready.is_ok(),
                                    _ = app.shutdown.cancelled() => false,
                                    _ = kill.cancelled() => false,
                                }
                            })
                            .await
                        }
                    };
                    if !arrived {
                        return Err(io::ErrorKind::ConnectionAborted.into());
                    }
                }
                read_head(stream, &mut buf, info).await
            };
            // Matched without a binding of its own, which the task would keep while the
            // request is routed.
            let (req, keep_alive) = match tokio::select! {
                biased;
                head = head => Some(head),
                () = timer.as_mut() => None,
            } {
                Some(Ok(Some(lean))) => lean,
                Some(Ok(None)) => return Next::Hyper(buf.freeze()),
                // Closed, failed, or the gateway is closing it.
                Some(Err(_)) => return Next::Closed,
                // An idle keep-alive connection: closed quietly.
                None if buf.is_empty() => return Next::Closed,
                // A client trickling its head (slowloris).
                None => {
                    app.metrics.error("request_timeout");
                    return Next::Closed;
                }
            };
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            // Routing and sending are separate futures so that a long stream does not keep
            // the routing's room in this task.
            let kept = routes::Kept {
                upgrade: None,
                poll: kept_poll.take(),
            };
            // Destructured at once: a binding of the whole would take room of its own.
            let Some((response, routes::Kept { upgrade, poll })) =
                route(stream, &mut buf, info, app, req, kept, timer.as_mut()).await
            else {
                return Next::Closed;
            };
            kept_poll = poll;
            // The head is encoded here, before any wait, so that a long stream's task keeps
            // only its body, not the response's parts.
            let written = match prepare(stream, response, keep_alive) {
                // A poll's answer, nearly always: written, with nothing to wait for.
                Sending::Tried(Ok(None)) => true,
                Sending::Stream(mut streaming) => {
                    streaming.buf = std::mem::take(&mut buf);
                    return Next::Stream(streaming);
                }
                sending => match send(stream, &mut buf, info, app, sending).await {
                    Sent::Upgraded => {
                        return match upgrade {
                            Some(websocket) => Next::WebSocket(websocket, buf.to_vec()),
                            None => Next::Closed,
                        };
                    }
                    Sent::Written => true,
                    Sent::Failed => false,
                },
            };
            if !written || !keep_alive || app.shutdown.is_cancelled() {
                let _ = stream.shutdown().await;
                return Next::Closed;
            }
        }
    }
}

/// Reads until `buf` holds a whole request head; the request, if this path serves it,
/// and whether the connection may carry another. `None` hands the connection to hyper.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    info: &ConnInfo,
) -> io::Result<Option<(Box<LeanRequest>, bool)>> {
    use tokio::io::AsyncReadExt;
    if buf.is_empty() {
        // Nearly every head arrives whole in one read: it is read and parsed in the
        // thread's buffer, and the connection's own takes only what is left over.
        match poll_fn(|cx| poll_first_read(stream, cx, buf, info)).await? {
            Head::Lean(lean, ()) => return Ok(Some(lean)),
            Head::Other => return Ok(None),
            Head::Partial => {}
        }
    }
    loop {
        match parse_head(buf, info) {
            Head::Lean(lean, ()) => return Ok(Some(lean)),
            Head::Partial if buf.len() < MAX_HEAD => {}
            Head::Partial | Head::Other => return Ok(None),
        }
        if buf.capacity() == buf.len() {
            buf.reserve(if buf.is_empty() {
                FIRST_READ
            } else {
                buf.len()
            });
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads once into the thread's buffer and parses a head there. A request this path
/// serves is consumed, and any bytes after its head are moved to `buf`; otherwise all
/// that was read is, for the caller to go on reading or hand to hyper.
///
/// A buffer per thread rather than the connection's: taken and released for every request
/// of every poller, the connection's cost an allocation and a free per request, and kept,
/// it would be part of every parked poll. `poll_read`, not `try_read`: a short read tells
/// tokio that the socket is drained, which spares the parked poll's watch a read that
/// would find nothing.
fn poll_first_read(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    info: &ConnInfo,
) -> Poll<io::Result<Head<()>>> {
    FIRST.with_borrow_mut(|space| {
        let mut read = ReadBuf::new(&mut space[..]);
        match Pin::new(stream).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Ready(Ok(())) => {}
        }
        let read = read.filled();
        if read.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        let (head, used) = parse(read, info).consumed();
        buf.extend_from_slice(&read[used..]);
        Poll::Ready(Ok(head))
    })
}

thread_local! {
    /// The thread's buffer for a connection's first read of a request (see
    /// [`poll_first_read`]).
    static FIRST: std::cell::RefCell<Box<[u8; FIRST_READ]>> =
        std::cell::RefCell::new(Box::new([0; FIRST_READ]));
}

/// What the start of the read buffer holds.
enum Head<L> {
    /// Not a whole head yet.
    Partial,
    /// A request this path serves and whether the connection may carry another, with
    /// `L`: the head's length, or nothing once it was consumed.
    Lean((Box<LeanRequest>, bool), L),
    /// Anything else: hyper's to serve.
    Other,
}

impl Head<usize> {
    /// The head once consumed, and how many bytes that takes: the head's length for a
    /// request this path serves, none otherwise.
    fn consumed(self) -> (Head<()>, usize) {
        match self {
            Head::Lean(lean, len) => (Head::Lean(lean, ()), len),
            Head::Partial => (Head::Partial, 0),
            Head::Other => (Head::Other, 0),
        }
    }
}

/// Parses the head at the start of `buf`, consuming it if this path serves the request.
fn parse_head(buf: &mut BytesMut, info: &ConnInfo) -> Head<()> {
    let (head, used) = parse(buf, info).consumed();
    buf.advance(used);
    head
}

/// Parses the head at the start of `bytes`: the request and the head's length. Not
/// async: the header array is 2 KiB, which a future would keep for every connection.
fn parse(bytes: &[u8], info: &ConnInfo) -> Head<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => match lean_request(&parsed, info) {
            Some(lean) => Head::Lean(lean, len),
            None => Head::Other,
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Other,
    }
}

/// The request a parsed head stands for, if this path serves it.
fn lean_request(
    parsed: &httparse::Request<'_, '_>,
    info: &ConnInfo,
) -> Option<(Box<LeanRequest>, bool)> {
    let target = parsed.path?;
    let path = &target[..crate::http::path_end(target)];
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let (upgrade_allowed, wants_conn) = match path {
        "/ws" => (true, true),
        "/sse" => (false, true),
        "/longpoll" | "/poll" => (false, false),
        _ => return None,
    };
    // Host is read only to tell a same-origin request from a cross-origin one.
    let has_origin = parsed
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("origin"));
    let mut map = HeaderMap::new();
    let mut keep_alive = true;
    for header in parsed.headers.iter() {
        let (name, value) = (header.name, header.value);
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        // A body, an upgrade or an expectation: hyper's to handle.
        if is("transfer-encoding")
            || is("expect")
            || (is("upgrade") && (!upgrade_allowed || !value.eq_ignore_ascii_case(b"websocket")))
            || (is("content-length") && value != b"0")
        {
            return None;
        }
        if is("connection") {
            keep_alive &= !std::str::from_utf8(value)
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
        let Some(name) = read_by_routes(name, has_origin) else {
            continue;
        };
        map.append(name, HeaderValue::from_bytes(value).ok()?);
    }
    // Only the streams read the connection (to be cut off and for their logs).
    let conn = wants_conn.then(|| info.clone());
    Some((Box::new(LeanRequest::new(target, map, conn)), keep_alive))
}

/// The name of a header the lean routes read, or `None` for one they never do, which is
/// dropped unparsed: a browser sends a dozen headers, and each kept one costs a copy and
/// an allocation in the request's map. The routes read the origin check's `Origin` (and
/// `Host`, only beside an `Origin`), the credentials (`Authorization`, the API key),
/// SSE's `Last-Event-ID` and the WebSocket handshake's headers.
fn read_by_routes(name: &str, has_origin: bool) -> Option<HeaderName> {
    use http::header;
    const KEPT: [(&str, HeaderName); 8] = [
        ("origin", header::ORIGIN),
        ("authorization", header::AUTHORIZATION),
        (crate::auth::API_KEY_HEADER, crate::auth::API_KEY),
        ("last-event-id", HeaderName::from_static("last-event-id")),
        ("upgrade", header::UPGRADE),
        ("connection", header::CONNECTION),
        ("sec-websocket-version", header::SEC_WEBSOCKET_VERSION),
        ("sec-websocket-key", header::SEC_WEBSOCKET_KEY),
    ];
    if has_origin && name.eq_ignore_ascii_case("host") {
        return Some(header::HOST);
    }
    KEPT.into_iter()
        .find(|(kept, _)| name.eq_ignore_ascii_case(kept))
        .map(|(_, name)| name)
}

/// Routes `req`, watching the socket meanwhile: a client that goes away ends the wait.
/// `None` when it did, or the server dropped the connection.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn route<'a>(
    stream: &'a mut TcpStream,
    buf: &'a mut BytesMut,
    info: &'a ConnInfo,
    app: &'a Arc<App>,
    req: Box<LeanRequest>,
    kept: routes::Kept,
    timer: Pin<&'a mut Sleep>,
) -> impl Future<Output = Option<(Response<Body>, routes::Kept)>> + Send + 'a {
    // Boxed: an SSE stream outlives its routing by hours, and the connection's task
    // should not keep the routing's room for it. Made before the `async move` block (not
    // an `async fn`, which would keep every argument twice), which then keeps only what it
    // waits on, not also the request and the timer it handed on: a parked poll keeps this
    // future.
    let mut routed = Box::pin(routes::handle_lean(app.clone(), req, kept, timer));
    async move {
        loop {
            tokio::select! {
                biased;
                answer = &mut routed => return Some(answer),
                gone = watch(stream, buf, app) => if gone { return None },
                _ = info.killed() => return None,
            }
        }
    }
}

/// A response, framed for this path.
enum Sending {
    /// `101`'s head; after it the socket is the WebSocket's.
    Upgrade(Vec<u8>),
    /// A JSON answer, head and body, already tried on the socket: what it did not take.
    Tried(io::Result<Option<Vec<u8>>>),
    /// The head (with room for the body) and a complete body of known length.
    Whole(Vec<u8>, UnsyncBoxBody<Bytes, Infallible>),
    /// The head and a streamed body, to send chunk by chunk.
    Chunked(Vec<u8>, Body),
    /// A stream for the hub to write to as well: the socket is handed over with it.
    Stream(Box<super::stream::Streaming>),
}

/// Frames `response` for this path. A JSON answer, which every poll gets, is written at
/// once (see [`try_write_assembled`]).
fn prepare(stream: &TcpStream, response: Response<Body>, keep_alive: bool) -> Sending {
    let (parts, body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let mut head = Vec::with_capacity(256);
        encode_head(&mut head, &parts, &[], Framing::None, true);
        return Sending::Upgrade(head);
    }
    let implied = body.implied_headers();
    let body = match body {
        Body::Json(json) => {
            // Head and body in one write: as two, the answer would cross the network
            // (and both ends' TCP stacks) as two segments.
            let framing = Framing::Length(json.len() as u64);
            return Sending::Tried(try_write_assembled(stream, |out| {
                if parts.status == StatusCode::OK {
                    out.extend_from_slice(JSON_OK);
                    encode_fields(out, &parts, framing, keep_alive);
                } else {
                    encode_head(out, &parts, implied, framing, keep_alive);
                }
                out.extend_from_slice(&json);
            }));
        }
        Body::Boxed(body) => body,
    };
    match body.size_hint().exact() {
        Some(length) => {
            let room = usize::try_from(length).unwrap_or(0).min(64 * 1024);
            let mut head = Vec::with_capacity(256 + room);
            encode_head(
                &mut head,
                &parts,
                implied,
                Framing::Length(length),
                keep_alive,
            );
            Sending::Whole(head, body)
        }
        None => {
            let mut head = Vec::with_capacity(256);
            let slot = parts.extensions.get::<ExpressSlot>().cloned();
            // A handed-over stream's connection closes with it.
            let keep_alive = keep_alive && slot.is_none();
            encode_head(&mut head, &parts, implied, Framing::Chunked, keep_alive);
            let body = Body::Boxed(body);
            match slot {
                Some(slot) => Sending::Stream(super::stream::Streaming::new(head, body, slot)),
                None => Sending::Chunked(head, body),
            }
        }
    }
}

/// What became of an answer on the socket.
enum Sent {
    /// Written; the connection may carry another request.
    Written,
    /// `101` was written: the socket is the WebSocket's.
    Upgraded,
    /// Not written: the connection is done.
    Failed,
}

/// Sends a framed answer that needs waiting for: room on the socket, or a streamed body.
///
/// A future of its own, awaited at one place, so that the connection's task keeps the
/// answer only in the room this wait shares with the routing's (the `Sending` is held
/// across several waits here; held by the connection's own future, it took room that the
/// routing's state could not share).
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn send<'a>(
    stream: &'a mut TcpStream,
    buf: &'a mut BytesMut,
    info: &'a ConnInfo,
    app: &'a App,
    mut sending: Sending,
) -> impl Future<Output = Sent> + Send + 'a {
    async move {
        let written = match &mut sending {
            Sending::Upgrade(head) => {
                return if Box::pin(write(stream, info, head)).await {
                    Sent::Upgraded
                } else {
                    Sent::Failed
                };
            }
            Sending::Tried(Ok(None)) => true,
            // Each wait is boxed (once per answer that waits, or per stream): this future
            // shares its room in the connection's task with the routing's, which a parked
            // poll keeps, and should stay the smaller.
            Sending::Tried(Ok(Some(rest))) => Box::pin(write(stream, info, rest)).await,
            Sending::Tried(Err(_)) => false,
            // Handed over by the caller before it gets here.
            Sending::Stream(_) => false,
            // Boxed too: rare here (a preflight's answer).
            Sending::Whole(head, body) => Box::pin(write_whole(stream, info, head, body)).await,
            Sending::Chunked(head, body) => {
                Box::pin(write(stream, info, head)).await
                    && Box::pin(write_chunked(stream, None, buf, info, app, body)).await
            }
        };
        if written { Sent::Written } else { Sent::Failed }
    }
}

/// Writes a head and its complete body in one write (see [`prepare`]).
async fn write_whole(
    stream: &mut TcpStream,
    info: &ConnInfo,
    head: &mut Vec<u8>,
    body: &mut UnsyncBoxBody<Bytes, Infallible>,
) -> bool {
    // Complete bodies are ready at once; collected all the same.
    match body.collect().await {
        Ok(collected) => head.extend_from_slice(&collected.to_bytes()),
        Err(never) => match never {},
    }
    write(stream, info, head).await
}

/// Writes a streamed body as chunks as it comes, watching the socket meanwhile; `true`
/// when it ended and was terminated.
///
/// `rest`, if given, is where the hub's express writes leave what the socket did not take
/// of a chunk: it goes out before anything else.
///
/// An `async move` block, not an `async fn`, so that an SSE stream, which keeps this
/// future for as long as it is open, does not keep every argument twice.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub(super) fn write_chunked<'a>(
    stream: &'a TcpStream,
    rest: Option<&'a Rest>,
    buf: &'a mut BytesMut,
    info: &'a ConnInfo,
    app: &'a App,
    body: &'a mut Body,
) -> impl Future<Output = bool> + Send + 'a {
    async move {
        // Boxed: inline, it would make every connection's task larger, parked polls too.
        let mut killed = Box::pin(info.killed());
        // The kill token and the socket's read side are polled only after they woke the
        // task, not once more for every chunk: see `crate::wake`.
        let side = SideWaits::default();
        loop {
            if let Some(left) = rest.and_then(Rest::take)
                && !Box::pin(finish_chunk(stream, &left, &side, killed.as_mut())).await
            {
                return false;
            }
            let frame = poll_fn(|cx| {
                if let Some(waker) = side.fired(cx.waker()) {
                    let mut side_cx = Context::from_waker(&waker);
                    if killed.as_mut().poll(&mut side_cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    loop {
                        match stream.poll_read_ready(&mut side_cx) {
                            Poll::Pending => break,
                            Poll::Ready(Err(_)) => return Poll::Ready(None),
                            Poll::Ready(Ok(())) => match read_some(stream, buf, app) {
                                Read::Gone => return Poll::Ready(None),
                                Read::Drained => break,
                                Read::More => {}
                            },
                        }
                    }
                }
                // Woken by an express write that left a rest: out of the wait to write it.
                if rest.is_some_and(Rest::waits) {
                    return Poll::Ready(Some(None));
                }
                Pin::new(&mut *body)
                    .poll_frame(cx)
                    .map(|frame| Some(Some(frame)))
            })
            .await;
            let frame = match frame {
                None => return false,
                Some(None) => continue,
                Some(Some(frame)) => frame,
            };
            // The stream may have taken the part-written message while this task was
            // between its look at the rest and its poll of the stream.
            if let Some(left) = rest.and_then(Rest::take)
                && !Box::pin(finish_chunk(stream, &left, &side, killed.as_mut())).await
            {
                return false;
            }
            // The frame is consumed by a plain function, before the write's await: held
            // across it, it took room in every stream's future.
            let (rest, last) = match write_frame(stream, frame) {
                Ok(Some(written)) => written,
                Ok(None) => continue,
                Err(_) => return false,
            };
            // Boxed: rare, and an open stream should keep no room for it.
            if let Some(rest) = rest
                && !Box::pin(finish_chunk(stream, &rest, &side, killed.as_mut())).await
            {
                return false;
            }
            if last {
                return true;
            }
        }
    }
}

/// Writes a body frame as a chunk if the socket takes all of it now: what it did not
/// take, copied, and whether the frame ended the body (or an error did, which the body
/// type rules out); `None` for a frame with nothing to send.
fn write_frame<E>(
    stream: &TcpStream,
    frame: Option<Result<http_body::Frame<Bytes>, E>>,
) -> io::Result<Option<(Option<Vec<u8>>, bool)>> {
    match framed(frame) {
        None => Ok(None),
        Some(Framed::Data(data)) => Ok(Some((try_write_chunk(stream, &data)?, false))),
        Some(Framed::End) => Ok(Some((Some(b"0\r\n\r\n".to_vec()), true))),
    }
}

/// Writes what the socket did not take of a chunk, giving up when the connection is
/// killed meanwhile; `true` once written.
async fn finish_chunk(
    stream: &TcpStream,
    rest: &[u8],
    side: &SideWaits,
    mut killed: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut write = std::pin::pin!(write_all(stream, rest));
    poll_fn(|cx| {
        if let Some(waker) = side.fired(cx.waker()) {
            let mut side_cx = Context::from_waker(&waker);
            if killed.as_mut().poll(&mut side_cx).is_ready() {
                return Poll::Ready(false);
            }
            // The read side may have fired too: it is polled once the chunk is out.
            side.again();
        }
        write.as_mut().poll(cx).map(|written| written.is_ok())
    })
    .await
}

/// A body frame as the chunked encoding sends it.
enum Framed {
    /// A chunk of data.
    Data(Bytes),
    /// The terminating chunk.
    End,
}

/// What a body frame sends; `None` for a frame with nothing to send.
fn framed<E>(frame: Option<Result<http_body::Frame<Bytes>, E>>) -> Option<Framed> {
    match frame {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) if !data.is_empty() => Some(Framed::Data(data)),
            _ => None,
        },
        _ => Some(Framed::End),
    }
}

/// What the hub's express writes left unwritten of a chunk, for the connection to finish.
#[derive(Default)]
pub struct Rest(std::sync::Mutex<Option<Vec<u8>>>);

impl Rest {
    /// Keeps `left` for the connection.
    pub fn put(&self, left: Vec<u8>) {
        *self.lock() = Some(left);
    }

    /// Whether something waits to be written.
    pub fn waits(&self) -> bool {
        self.lock().is_some()
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes all of `bytes` to a socket that is borrowed, not owned (tokio's `write_all`
/// wants it mutably).
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Writes a data chunk if the socket takes all of it now; else returns, copied, what it
/// did not take. A small chunk is assembled in a buffer and goes out as one plain write
/// (a vectored write of three pieces cost more in the kernel than it saved here); a
/// large one is written vectored, its data not copied.
pub(super) fn try_write_chunk(stream: &TcpStream, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let (size, len) = chunk_size_line(data.len());
    let parts: [&[u8]; 3] = [&size[..len], data, b"\r\n"];
    let total = len + data.len() + 2;
    if total <= SMALL_CHUNK {
        return try_write_assembled(stream, |out| {
            for part in parts {
                out.extend_from_slice(part);
            }
        });
    }
    let written = taken(stream.try_write_vectored(&parts.map(io::IoSlice::new)))?;
    if written == total {
        return Ok(None);
    }
    Ok(Some(parts.concat().split_off(written)))
}

/// Assembles bytes with `fill` in a buffer of this thread's and writes them if the socket
/// takes all of them now; else returns, copied, what it did not take. A buffer per thread
/// rather than one per write (an allocation) or on the stack (zeroed each time).
fn try_write_assembled(
    stream: &TcpStream,
    fill: impl FnOnce(&mut Vec<u8>),
) -> io::Result<Option<Vec<u8>>> {
    ASSEMBLY.with_borrow_mut(|assembled| {
        assembled.clear();
        fill(assembled);
        let written = taken(stream.try_write(assembled))?;
        let rest = (written < assembled.len()).then(|| assembled[written..].to_vec());
        if assembled.capacity() > MAX_ASSEMBLY {
            // A rare large answer does not keep its room for the thread's life.
            *assembled = Vec::with_capacity(SMALL_CHUNK);
        }
        Ok(rest)
    })
}

/// How many bytes a non-blocking write took: none when the socket had no room.
fn taken(attempt: io::Result<usize>) -> io::Result<usize> {
    match attempt {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

/// Chunks up to this size (framing included) are assembled in one buffer per thread.
const SMALL_CHUNK: usize = 2048;
/// The most room the buffer keeps between writes.
const MAX_ASSEMBLY: usize = 64 * 1024;

thread_local! {
    static ASSEMBLY: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(SMALL_CHUNK));
}

/// The length of a chunk of `len` bytes of data, framing included.
pub(super) fn chunk_len(len: usize) -> usize {
    chunk_size_line(len).1 + len + 2
}

/// A chunk's size line, `<hex length>\r\n`, and how many of the bytes it fills.
fn chunk_size_line(len: usize) -> ([u8; 18], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = [0u8; 18];
    let digits = (usize::BITS as usize / 4 - len.leading_zeros() as usize / 4).max(1);
    for i in 0..digits {
        line[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    line[digits..digits + 2].copy_from_slice(b"\r\n");
    (line, digits + 2)
}

/// Waits for the client to send something while its answer is pending; `true` when it
/// has closed (or errs) or pipelined past the limit, `false` when it sent the start of its
/// next request (kept for after this answer).
async fn watch(stream: &mut TcpStream, buf: &mut BytesMut, app: &App) -> bool {
    // Readiness is polled rather than awaited with `readable()`, whose future carries a
    // waiter node of its own: this wait is part of every parked poll.
    if poll_fn(|cx| stream.poll_read_ready(cx)).await.is_err() {
        return true;
    }
    matches!(read_some(stream, buf, app), Read::Gone)
}

/// What reading a readable socket found.
enum Read {
    /// The client closed (or the socket failed), or pipelined past the limit (counted as
    /// `pipeline_overflow`).
    Gone,
    /// Nothing more to read now.
    Drained,
    /// The start of a next request, kept for after this answer; there may be more.
    More,
}

/// Reads what a readable socket holds into `buf`, up to the head limit.
fn read_some(stream: &TcpStream, buf: &mut BytesMut, app: &App) -> Read {
    if buf.len() >= MAX_HEAD {
        // A client pipelining without reading: stop it rather than buffer more.
        app.metrics.error("pipeline_overflow");
        return Read::Gone;
    }
    buf.reserve(FIRST_READ);
    match stream.try_read_buf(buf) {
        Ok(0) => Read::Gone,
        Ok(_) => Read::More,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Read::Drained,
        Err(_) => Read::Gone,
    }
}

/// Writes all of `bytes`, giving up when the server drops the connection meanwhile (the
/// bus cuts off a subscriber that stalls this way).
pub(super) async fn write(stream: &TcpStream, info: &ConnInfo, bytes: &[u8]) -> bool {
    tokio::select! {
        biased;
        written = write_all(stream, bytes) => written.is_ok(),
        _ = info.killed() => false,
    }
}

/// How a response's body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    /// No body at all (`101`).
    None,
    Length(u64),
    Chunked,
}

/// Appends the status line and headers (those the body implies first), with the framing
/// this path chose, to `head`. Written byte by byte, not with `write!`, whose formatting
/// machinery cost more than the rest of the head.
fn encode_head(
    head: &mut Vec<u8>,
    parts: &http::response::Parts,
    implied: &[(&str, &str)],
    framing: Framing,
    keep_alive: bool,
) {
    let status = parts.status;
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in implied {
        encode_field(head, name, value.as_bytes());
    }
    encode_fields(head, parts, framing, keep_alive);
}

/// The status line and implied headers of a `200` JSON answer, which nearly every poll
/// gets, as one piece (`encode_head` writes them in eight).
const JSON_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n";

/// Appends what follows [`JSON_OK`]: the response's own headers and the framing.
fn encode_fields(
    head: &mut Vec<u8>,
    parts: &http::response::Parts,
    framing: Framing,
    keep_alive: bool,
) {
    for (name, value) in &parts.headers {
        encode_field(head, name.as_str(), value.as_bytes());
    }
    encode_framing(head, framing, keep_alive);
}

/// Appends one header line.
fn encode_field(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Appends the framing header, `connection: close` when the connection ends, and the
/// head's end.
fn encode_framing(head: &mut Vec<u8>, framing: Framing, keep_alive: bool) {
    match framing {
        Framing::None => {}
        Framing::Length(length) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// A socket with bytes already read from it in front, for handing over to hyper.
pub struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl Prefixed {
    /// `stream`, whose next bytes are `prefix`.
    pub fn new(prefix: Bytes, stream: TcpStream) -> Self {
        Prefixed { prefix, stream }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Release the read buffer: an upgraded connection keeps this socket for
                // its whole life.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_framed_with_hex_lengths() {
        for (len, line) in [
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (31, "1f\r\n"),
            (4096, "1000\r\n"),
            (0xabcdef, "abcdef\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let (bytes, used) = chunk_size_line(len);
            assert_eq!(std::str::from_utf8(&bytes[..used]).unwrap(), line);
            assert_eq!(line, format!("{len:x}\r\n"));
        }
    }

    #[test]
    fn only_headers_the_routes_read_are_kept() {
        assert_eq!(read_by_routes("Origin", false), Some(http::header::ORIGIN));
        assert_eq!(
            read_by_routes("X-Cascade-API-Key", false).unwrap().as_str(),
            crate::auth::API_KEY_HEADER
        );
        assert_eq!(
            read_by_routes("LAST-EVENT-ID", false).unwrap().as_str(),
            "last-event-id"
        );
        assert_eq!(read_by_routes("Host", true), Some(http::header::HOST));
        assert_eq!(read_by_routes("Host", false), None);
        for dropped in [
            "User-Agent",
            "Accept",
            "Cookie",
            "Sec-Fetch-Mode",
            "Referer",
        ] {
            assert_eq!(read_by_routes(dropped, true), None, "{dropped}");
        }
    }

    /// A `{}` JSON answer with one header of its own, in parts.
    fn json_answer_with_vary() -> (http::response::Parts, Body) {
        let mut response: Response<Body> = crate::http::json(http::StatusCode::OK, "{}");
        response
            .headers_mut()
            .insert("vary", http::HeaderValue::from_static("Origin"));
        response.into_parts()
    }

    #[test]
    fn heads_carry_the_chosen_framing() {
        let (parts, body) = json_answer_with_vary();
        let implied = body.implied_headers();
        let mut head = Vec::new();
        encode_head(&mut head, &parts, implied, Framing::Length(2), false);
        let head = String::from_utf8(head).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
             vary: Origin\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
        );
        let mut head = Vec::new();
        encode_head(&mut head, &parts, &[], Framing::Chunked, true);
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn a_json_answer_head_in_one_piece_is_the_head_in_parts() {
        let (parts, body) = json_answer_with_vary();
        for keep_alive in [true, false] {
            let mut in_parts = Vec::new();
            encode_head(
                &mut in_parts,
                &parts,
                body.implied_headers(),
                Framing::Length(2),
                keep_alive,
            );
            let mut in_one = JSON_OK.to_vec();
            encode_fields(&mut in_one, &parts, Framing::Length(2), keep_alive);
            assert_eq!(
                String::from_utf8(in_one).unwrap(),
                String::from_utf8(in_parts).unwrap()
            );
        }
    }
}
