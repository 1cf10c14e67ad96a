//! The hand-written HTTP/1 path, for the requests most of a gateway's connections make:
//! the transports' `GET`s (`/sse`, `/longpoll`, `/poll`, the `/ws` handshake),
//! `/negotiate`, their CORS preflights, `POST /publish` and the static files. Which
//! requests those are, and what answers them, is the [`Router`]'s to say (the route
//! table's, through `routes`); this module knows HTTP/1, sockets and the connection's
//! info, nothing of transports. A connection stays here for as long as its requests do.
//!
//! These requests spend their life waiting (a short poller's connection waits between
//! its polls). Served by hyper, each keeps hyper's connection buffers (8 KiB to read,
//! 8 KiB for response heads) for as long as it waits, and an upgraded WebSocket keeps a
//! boxed hyper socket. Here the request head is read into a small buffer that is released
//! once parsed, and the answer is written straight to the socket. Anything else (another
//! route, a body but one of a declared length, an upgrade to anything but WebSocket,
//! HTTP/1.0, a head this path cannot parse) goes to hyper with the bytes already read, so
//! hyper stays the one full HTTP implementation and this path only ever takes requests it
//! fully understands.
//!
//! The path ends in a typed hand-off ([`Next`]): hyper for the rest, a WebSocket's
//! socket, a stream's socket, or the end. It is generic over the socket ([`Socket`]), so
//! that any that keeps the contract is served the same way.
//!
//! This module is the connection's loop (read a head, route, answer, again) and its waits;
//! `head` reads and parses request heads, `answer` frames and writes the answers.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderName;
use http::{Extensions, Response};
use tokio::io::AsyncWriteExt;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFuture;

use crate::conn::ConnInfo;
use crate::error::{Error, Result};
use crate::http::{Body, LeanRequest, Verb};
use crate::socket::Socket;

mod answer;
mod head;

pub use answer::{Rest, chunk_len, try_write_chunk, try_write_chunk_with, write, write_chunked};
use answer::{Sending, prepare, write_whole};
pub use head::kept;
use head::read_head;

/// What the HTTP/1 path needs of the application: which requests it may serve, the
/// admission of a caller before its body is read, and the routing. `routes` implements
/// it from the one route table.
pub trait Router: Send + Sync + Sized + 'static {
    /// What a request leaves for the connection's next one (a long poll's subscription).
    type Carry: Send;
    /// An accepted WebSocket handshake, to run on the socket once its `101` is written.
    type Upgrade: Send;
    /// The route at `path`, if this path may serve it.
    fn lean_route(path: &str) -> Option<LeanRoute>;
    /// The header `name`, if every route's admission reads it (the origin, credentials,
    /// and what the operator has the connect hook forwarded).
    fn admission_reads(&self, name: &str) -> Option<HeaderName>;
    /// The deadlines and sizes this path keeps, read for each request.
    fn limits(&self) -> Limits;
    /// Whether the server is draining.
    fn draining(&self) -> bool;
    /// Resolves once the server starts draining.
    fn drain_started(&self) -> WaitForCancellationFuture<'_>;
    /// Counts a failure of the client's that ends its connection, by error code.
    fn count(&self, code: &'static str);
    /// Admits the caller of a request with a body before a byte of the body is read (the
    /// origin, then who is asking, then their budget), recording it in `req`.
    fn admit<'a>(
        &'a self,
        req: &'a mut LeanRequest,
    ) -> impl Future<Output = Result<()>> + Send + 'a;
    /// Routes a request: its answer, and what the connection keeps. `timer` is the
    /// connection's, lent for a long poll's hold.
    fn route<'t>(
        router: Arc<Self>,
        req: Box<LeanRequest>,
        kept: Kept<Self>,
        timer: Pin<&'t mut Sleep>,
    ) -> impl Future<Output = (Response<Body>, Kept<Self>)> + Send + 't;
}

/// What this path needs to know of a route it may serve.
#[derive(Clone, Copy, Debug)]
pub struct LeanRoute {
    /// The method it answers.
    pub method: Verb,
    /// Whether its handler is given the connection's info.
    pub conn: bool,
    /// Whether it may upgrade the connection (to a WebSocket).
    pub upgrade: bool,
    /// Request headers its handler reads besides the admission's.
    pub reads: &'static [&'static str],
}

impl LeanRoute {
    /// The header `name`, if its handler reads it (beyond admission's).
    #[inline] // Per header of every request; a call across codegen units otherwise.
    pub fn reads(&self, name: &str) -> Option<HeaderName> {
        self.reads
            .iter()
            .find(|read| name.eq_ignore_ascii_case(read))
            .map(|read| HeaderName::from_static(read))
    }
}

/// The deadlines and sizes this path keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// For a request's head to arrive.
    pub header_timeout: Duration,
    /// For a request's body to arrive.
    pub body_timeout: Duration,
    /// The largest body read.
    pub max_body: usize,
}

/// What a routed request leaves to its connection besides the answer.
pub struct Kept<R: Router> {
    /// The accepted WebSocket handshake, when the answer is `101`.
    pub upgrade: Option<R::Upgrade>,
    /// What the connection's next request is given (and drops unless it goes on with it).
    pub carry: Option<R::Carry>,
}

impl<R: Router> Default for Kept<R> {
    fn default() -> Self {
        Kept {
            upgrade: None,
            carry: None,
        }
    }
}

/// A streamed answer (SSE), whose writer takes the socket over; nothing of it is
/// written yet.
pub struct Streaming {
    /// The answer's head, encoded.
    pub head: Vec<u8>,
    /// Its body.
    pub body: Body,
    /// The response's extensions, where its route left what the writer needs.
    pub extensions: Extensions,
    /// The start of a next request, read while this one was routed.
    pub buf: BytesMut,
}

/// A request head longer than this goes to hyper, which applies its own limits.
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines parsed here; more goes to hyper.
const MAX_HEADERS: usize = 64;
/// The first read's size: a browser's GET head is usually well under this.
const FIRST_READ: usize = 2048;
/// Most room a body's read sets aside at a time.
const BODY_STEP: usize = 16 * 1024;

/// What follows this path on a connection.
pub enum Next<R: Router> {
    /// hyper serves the rest; these bytes of the next request were read already.
    Hyper(Bytes),
    /// The handshake was answered: the WebSocket runs on the socket, starting with
    /// these bytes the client sent after its handshake.
    WebSocket(R::Upgrade, Vec<u8>),
    /// A stream (SSE) that takes the socket over, to share it with the hub's express
    /// writes: nothing of it is written yet.
    Stream(Box<Streaming>),
    /// The connection is finished.
    Closed,
}

/// Serves the router's lean routes on `stream` for as long as its requests are lean ones.
///
/// Not an `async fn`, so that the future does not keep its arguments twice (see
/// `server::serve`); transient waits are boxed so that the state a parked long poll or an
/// SSE stream keeps is the smallest one.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub fn serve<'a, S: Socket, R: Router>(
    stream: &'a mut S,
    info: &'a ConnInfo,
    app: &'a Arc<R>,
) -> impl Future<Output = Next<R>> + Send + 'a {
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
            let header_timeout = app.limits().header_timeout;
            timer.as_mut().reset(crate::wake::deadline(header_timeout));
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
                            _ = app.drain_started() => false,
                        },
                        // After an SSE request that took the token and was then refused
                        // (a stream that opens leaves this path): rare, and boxed, as the
                        // kill wait would otherwise make every connection's task larger.
                        Some(kill) => {
                            Box::pin(async {
                                tokio::select! {
                                    biased;
                                    ready = readable => ready.is_ok(),
                                    _ = app.drain_started() => false,
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
                read_head::<S, R>(app, stream, &mut buf, info).await
            };
            // Matched without a binding of its own, which the task would keep while the
            // request is routed.
            let (mut req, mut keep_alive) = match tokio::select! {
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
                    app.count("request_timeout");
                    return Next::Closed;
                }
            };
            // A refused publish's body, skipped once the refusal is answered.
            let mut unread = 0;
            if let Some(length) = req.unread_body() {
                // Boxed: only a publish reads a body, and a parked poll should not keep
                // room for it.
                match Box::pin(admit_and_read(
                    stream,
                    &mut buf,
                    &mut req,
                    length,
                    &**app,
                    timer.as_mut(),
                ))
                .await
                {
                    Ok(read) => req.set_body(Ok(read)),
                    Err(Unread::Gone) => return Next::Closed,
                    // Answered through the route, CORS headers and all.
                    Err(Unread::Refused(err)) => {
                        req.set_body(Err(err));
                        unread = length;
                    }
                    // What is left of the body is never read, so the connection closes
                    // after the answer.
                    Err(Unread::Failed(err)) => {
                        req.set_body(Err(err));
                        keep_alive = false;
                    }
                }
            }
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            // Routing and sending are separate futures so that a long stream does not keep
            // the routing's room in this task.
            let kept = Kept {
                upgrade: None,
                carry: kept_poll.take(),
            };
            // Destructured at once: a binding of the whole would take room of its own.
            let Some((response, Kept { upgrade, carry })) =
                route(stream, &mut buf, info, app, req, kept, timer.as_mut()).await
            else {
                return Next::Closed;
            };
            kept_poll = carry;
            // The head is encoded here, before any wait, so that a long stream's task keeps
            // only its body, not the response's parts.
            let written = match prepare(stream, response, keep_alive) {
                // A poll's answer, nearly always: written, with nothing to wait for.
                Sending::Tried(Ok(None)) => true,
                Sending::Stream(mut streaming) => {
                    streaming.buf = std::mem::take(&mut buf);
                    return Next::Stream(streaming);
                }
                sending => match send(stream, info, sending).await {
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
            let go_on = written
                && keep_alive
                && !app.draining()
                && (unread == 0
                    || Box::pin(skip(stream, &mut buf, unread, &**app, timer.as_mut())).await);
            if !go_on {
                let _ = stream.shutdown().await;
                return Next::Closed;
            }
        }
    }
}

/// Routes `req`, watching the socket meanwhile: a client that goes away ends the wait.
/// `None` when it did, or the server dropped the connection.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn route<'a, S: Socket, R: Router>(
    stream: &'a mut S,
    buf: &'a mut BytesMut,
    info: &'a ConnInfo,
    app: &'a Arc<R>,
    req: Box<LeanRequest>,
    kept: Kept<R>,
    timer: Pin<&'a mut Sleep>,
) -> impl Future<Output = Option<(Response<Body>, Kept<R>)>> + Send + 'a {
    // Boxed: an SSE stream outlives its routing by hours, and the connection's task
    // should not keep the routing's room for it. Made before the `async move` block (not
    // an `async fn`, which would keep every argument twice), which then keeps only what it
    // waits on, not also the request and the timer it handed on: a parked poll keeps this
    // future.
    let mut routed = Box::pin(R::route(app.clone(), req, kept, timer));
    async move {
        loop {
            tokio::select! {
                biased;
                answer = &mut routed => return Some(answer),
                gone = watch(stream, buf, &**app) => if gone { return None },
                _ = info.killed() => return None,
            }
        }
    }
}

/// Why a request's body was not read.
enum Unread {
    /// The client went away.
    Gone,
    /// The caller was refused before any of it was read (credentials, publish budget); it
    /// is within the limit, and is skipped after the answer.
    Refused(Error),
    /// Too long, or too slow to come: the connection closes after the answer.
    Failed(Error),
}

/// Admits the caller of a request with a body ([`Router::admit`]) and then reads the
/// body, as hyper's path does: a caller refused costs no more than its head and a skip.
async fn admit_and_read<S: Socket, R: Router>(
    stream: &mut S,
    buf: &mut BytesMut,
    req: &mut LeanRequest,
    length: usize,
    app: &R,
    timer: Pin<&mut Sleep>,
) -> Result<Bytes, Unread> {
    if let Err(err) = app.admit(req).await {
        // The route answers the refusal.
        return Err(if length <= app.limits().max_body {
            Unread::Refused(err)
        } else {
            Unread::Failed(err)
        });
    }
    read_body(stream, buf, length, app, timer)
        .await
        .map_err(|err| err.map_or(Unread::Gone, Unread::Failed))
}

/// Reads and drops the `length` bytes of a refused request's body (some may be in `buf`
/// already), within the body's deadline, so that the connection can carry the next
/// request; false when the client went away or was too slow (counted as
/// `request_timeout`).
async fn skip<S: Socket, R: Router>(
    stream: &mut S,
    buf: &mut BytesMut,
    length: usize,
    app: &R,
    mut timer: Pin<&mut Sleep>,
) -> bool {
    use tokio::io::AsyncReadExt;
    let buffered = length.min(buf.len());
    buf.advance(buffered);
    let mut left = length - buffered;
    timer
        .as_mut()
        .reset(crate::wake::deadline(app.limits().body_timeout));
    let mut scratch = [0; 4096];
    while left > 0 {
        let room = left.min(scratch.len());
        tokio::select! {
            biased;
            read = stream.read(&mut scratch[..room]) => match read {
                Ok(0) | Err(_) => return false,
                Ok(read) => left -= read,
            },
            () = timer.as_mut() => {
                // A body that never comes after its refusal: held on to, it would keep the
                // connection for nothing.
                app.count("request_timeout");
                return false;
            }
        }
    }
    true
}

/// Reads the `length` bytes of body that follow a request's head (some may be in `buf`
/// already), within the configured size and time. `Err(None)` when the client went away.
async fn read_body<S: Socket, R: Router>(
    stream: &mut S,
    buf: &mut BytesMut,
    length: usize,
    app: &R,
    mut timer: Pin<&mut Sleep>,
) -> Result<Bytes, Option<Error>> {
    use tokio::io::AsyncReadExt;
    let limits = app.limits();
    if length > limits.max_body {
        return Err(Some(Error::BodyTooLarge(limits.max_body)));
    }
    timer
        .as_mut()
        .reset(crate::wake::deadline(limits.body_timeout));
    while buf.len() < length {
        // Room for what arrives, not for what the head declares: a head alone must not
        // make the gateway set aside the whole limit.
        buf.reserve((length - buf.len()).min(BODY_STEP));
        tokio::select! {
            biased;
            read = stream.read_buf(buf) => match read {
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            },
            () = timer.as_mut() => return Err(Some(Error::RequestTimeout)),
        }
    }
    Ok(buf.split_to(length).freeze())
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

/// Sends a framed answer that needs waiting for room on the socket.
///
/// A future of its own, awaited at one place, so that the connection's task keeps the
/// answer only in the room this wait shares with the routing's (the `Sending` is held
/// across several waits here; held by the connection's own future, it took room that the
/// routing's state could not share).
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn send<'a, S: Socket>(
    stream: &'a mut S,
    info: &'a ConnInfo,
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
            // Each wait is boxed (once per answer that waits): this future
            // shares its room in the connection's task with the routing's, which a parked
            // poll keeps, and should stay the smaller.
            Sending::Tried(Ok(Some(rest))) => Box::pin(write(stream, info, rest)).await,
            Sending::Tried(Err(_)) => false,
            // Handed over by the caller before it gets here.
            Sending::Stream(_) => false,
            // Boxed too: rare here (a preflight's answer).
            Sending::Whole(head, body) => Box::pin(write_whole(stream, info, head, body)).await,
        };
        if written { Sent::Written } else { Sent::Failed }
    }
}

/// Waits for the client to send something while its answer is pending; `true` when it
/// has closed (or errs), `false` when it sent the start of its next request (kept for
/// after this answer).
///
/// Once a head's worth is pipelined, reading stops until the answer is written: the
/// request was read whole and its answer is owed, so a client that sends ahead is slowed
/// down by its own socket (backpressure), never cut off with its answer lost. Its close
/// goes unseen meanwhile; the pending answer ends by itself (a poll's hold, a publish).
async fn watch<S: Socket, R: Router>(stream: &mut S, buf: &mut BytesMut, app: &R) -> bool {
    if buf.len() >= MAX_HEAD {
        return std::future::pending().await;
    }
    // Readiness is polled rather than awaited with `readable()`, whose future carries a
    // waiter node of its own: this wait is part of every parked poll.
    if poll_fn(|cx| stream.poll_read_ready(cx)).await.is_err() {
        return true;
    }
    matches!(read_some(stream, buf, app), Read::Gone)
}

/// What reading a readable socket found.
enum Read {
    /// The client closed (or the socket failed), or sent past the limit beside an open
    /// stream (counted as `pipeline_overflow`).
    Gone,
    /// Nothing more to read now.
    Drained,
    /// The start of a next request, kept for after this answer; there may be more.
    More,
}

/// Reads what a readable socket holds into `buf`, up to the head limit.
fn read_some<S: Socket, R: Router>(stream: &S, buf: &mut BytesMut, app: &R) -> Read {
    if buf.len() >= MAX_HEAD {
        // A client sending beside a stream that never ends: nothing it sends can be
        // served, so stop it rather than buffer more.
        app.count("pipeline_overflow");
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
