//! The accept loop and graceful drain.
//!
//! `run` takes a bound listener (tests pass port 0) and serves until the app's shutdown
//! token is cancelled. Draining then tells every client to come back after a randomized
//! delay: WebSockets close with 1012, SSE streams end after a `retry:`, parked long polls
//! are answered. The process waits for all of that up to the drain deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::conn::ConnInfo;
use crate::error::Error;
use crate::limits::TokenBucket;
use crate::routes;

mod h2;
mod lean;

use lean::Prefixed;

/// Serves on `listener` until `app.shutdown` is cancelled, then drains.
pub async fn run(listener: TcpListener, app: Arc<App>) {
    let protocols = Arc::new(Protocols::new(&app));
    // Every connection task, so that the drain can wait for their last answers.
    let connections = TaskTracker::new();

    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = app.shutdown.cancelled() => break,
        };
        let permit = match app.connections.admit(remote) {
            Ok(permit) => permit,
            Err(reason) => {
                app.metrics.error("too_many_connections");
                tokio::spawn(refuse(stream, Error::TooManyConnections(reason)));
                continue;
            }
        };
        // Latency matters more than packet count for realtime delivery.
        let _ = stream.set_nodelay(true);
        let limits = &app.config.limits;
        let budget = TokenBucket::new(limits.publish_rate_per_second, limits.publish_burst);
        let info = ConnInfo::new(permit, budget);
        connections.spawn(serve(stream, info, app.clone(), protocols.clone()));
    }

    drop(listener);
    drain(&app, connections).await;
}

/// The HTTP/1 and HTTP/2 connection settings, built once and shared by every connection.
///
/// The two builders are used directly rather than through hyper-util's `auto` builder and
/// its graceful-shutdown watcher: those made every connection's task larger (and its
/// first read buffered twice) for a protocol choice that one `peek` makes (see
/// [`request_started`]); the drain asks each connection to finish instead.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    first_bytes_within: Duration,
}

impl Protocols {
    fn new(app: &App) -> Self {
        let header_timeout = Duration::from_millis(app.config.limits.header_read_timeout_ms);
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // A slowloris client that trickles its headers is dropped.
            .header_read_timeout(header_timeout);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Protocols {
            http1,
            http2,
            first_bytes_within: header_timeout,
        }
    }
}

/// Which HTTP a connection speaks, told from its first bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves one accepted connection until it ends, the server drops it (`kill`), or the
/// drain asks it to finish its current answer and close. HTTP/1 connections start on the
/// lean path (`/sse`, `/longpoll`, `/poll`, `/negotiate`, `POST /publish`, the `/ws`
/// handshake) and move to hyper at their first other request.
///
/// A plain fn around an `async move` block rather than an `async fn`: an async fn keeps
/// room for its arguments beside the locals they move into for its whole life, and this
/// future is every open connection's task (its size is a test: see `sizes` below).
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn serve(
    mut stream: TcpStream,
    info: ConnInfo,
    app: Arc<App>,
    protocols: Arc<Protocols>,
) -> impl Future<Output = ()> + Send {
    async move {
        // Boxed, as is every transient wait here: the task is as large as its largest
        // state, and a parked long poll should not pay for this one.
        let within = protocols.first_bytes_within;
        // A connection that has not begun a request has nothing in flight: a drain
        // closes it at once rather than waiting out its first-bytes deadline (HTTP
        // clients open spare connections, which may never be used).
        let started = Box::pin(async {
            tokio::select! {
                protocol = request_started(&stream, within) => protocol,
                _ = app.shutdown.cancelled() => None,
            }
        });
        let Some(protocol) = started.await else {
            tracing::debug!(remote = %info.remote(), "connection sent no request in time");
            return;
        };
        let prefix = match protocol {
            Protocol::Http1 => match lean::serve(&mut stream, &info, &app).await {
                lean::Next::Hyper(prefix) => prefix,
                lean::Next::WebSocket(websocket, rest) => {
                    // A task of its own, sized for the WebSocket alone: this one is sized
                    // for the largest lean route.
                    app.streams.spawn(websocket.run_on(stream, rest));
                    return;
                }
                lean::Next::Stream(streaming) => {
                    // Likewise: the stream's task keeps the socket, shared with the hub.
                    app.streams
                        .spawn(lean::stream::run(stream, info, app.clone(), streaming));
                    return;
                }
                lean::Next::Closed => return,
            },
            Protocol::Http2 => Bytes::new(),
        };
        let io = Prefixed::new(prefix, stream);
        let remote = info.remote();
        // Boxed: most connections never reach hyper, and an inline hyper connection would
        // make every connection's task as large as its state.
        let result = Box::pin(serve_hyper(io, protocol, info, app, &protocols)).await;
        match result {
            Some(Err(err)) => {
                tracing::debug!(%remote, error = %err, "connection ended with an error")
            }
            None => tracing::debug!(%remote, "connection dropped"),
            Some(Ok(())) => {}
        }
    }
}

/// Serves the rest of a connection with hyper. `None` when the server dropped it.
async fn serve_hyper(
    io: Prefixed,
    protocol: Protocol,
    info: ConnInfo,
    app: Arc<App>,
    protocols: &Protocols,
) -> Option<hyper::Result<()>> {
    let kill = info.kill().clone();
    let ends = Ends {
        app: app.clone(),
        // hyper keeps HTTP/1's deadlines itself (`header_read_timeout`, between requests
        // too); HTTP/2's are kept here.
        http2: (protocol == Protocol::Http2).then(|| Http2Deadlines::new(&app)),
    };
    let streams = ends.http2.as_ref().map(|d| d.activity.clone());
    let kept = routes::KeptPoll::default();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let refused = info.forwarded(req.headers_mut()).err();
        req.extensions_mut().insert(info.clone());
        let stream = streams.as_ref().map(|s| s.open());
        let app = app.clone();
        let kept = kept.clone();
        // Boxed: hyper keeps room for one in-flight request future per connection for
        // as long as the connection lives, so an inline one would cost every idle
        // connection the size of the largest route.
        Box::pin(async move {
            let response = match refused {
                Some(err) => Ok(routes::refuse(&app, &err)),
                None => routes::handle(app, req, kept).await,
            };
            match stream {
                Some(stream) => response.map(|r| r.map(|body| h2::Counted::wrap(body, stream))),
                None => response,
            }
        }) as Pin<Box<dyn Future<Output = _> + Send>>
    });
    let io = TokioIo::new(io);
    // Pinned here and driven by reference: moved into `drive`, the connection's state
    // would be laid out twice.
    match protocol {
        Protocol::Http1 => {
            let conn = protocols
                .http1
                .serve_connection(io, service)
                .with_upgrades();
            drive(std::pin::pin!(conn), &ends, &kill).await
        }
        Protocol::Http2 => {
            let conn = protocols.http2.serve_connection(io, service);
            drive(std::pin::pin!(conn), &ends, &kill).await
        }
    }
}

/// What ends a hyper connection besides its peer: the drain, and HTTP/2's deadlines.
struct Ends {
    app: Arc<App>,
    http2: Option<Http2Deadlines>,
}

/// An HTTP/2 connection's deadlines (see [`h2`]).
struct Http2Deadlines {
    activity: Arc<h2::Activity>,
    first: Duration,
    idle: Duration,
}

impl Http2Deadlines {
    fn new(app: &App) -> Self {
        let limits = &app.config.limits;
        Http2Deadlines {
            activity: h2::Activity::new(),
            first: Duration::from_millis(limits.header_read_timeout_ms),
            idle: Duration::from_millis(limits.http2_idle_timeout_ms),
        }
    }

    /// Resolves once a deadline has passed; never without deadlines.
    async fn expired(deadlines: Option<&Self>) -> h2::Expired {
        let Some(d) = deadlines else {
            return std::future::pending().await;
        };
        let every = h2::check_every(d.first, d.idle);
        loop {
            tokio::time::sleep(every).await;
            let now = tokio::time::Instant::now();
            if let Some(expired) = d.activity.expired(now, d.first, d.idle) {
                return expired;
            }
        }
    }
}

/// A hyper connection that can be asked to finish its in-flight requests and close.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    Self: Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B, E> Graceful for http2::Connection<I, S, E>
where
    Self: Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

/// Runs `conn` to its end; on shutdown, or idle past its deadline, lets it finish what is
/// in flight. `None` when the connection was dropped: through `kill`, or for sending no
/// request in time.
async fn drive<C: Graceful>(
    mut conn: Pin<&mut C>,
    ends: &Ends,
    kill: &CancellationToken,
) -> Option<hyper::Result<()>> {
    // An idle connection has nothing in flight: its goodbye (HTTP/2's GOAWAY) gets a
    // moment, not the drain's deadline.
    let mut grace = None;
    tokio::select! {
        result = conn.as_mut() => return Some(result),
        _ = kill.cancelled() => return None,
        _ = ends.app.shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
        expired = Http2Deadlines::expired(ends.http2.as_ref()) => match expired {
            h2::Expired::NoRequest => {
                ends.app.metrics.error("request_timeout");
                return None;
            }
            h2::Expired::Idle => {
                conn.as_mut().graceful_shutdown();
                grace = Some(Duration::from_secs(1));
            }
        },
    }
    let grace = async {
        match grace {
            Some(grace) => tokio::time::sleep(grace).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = conn => Some(result),
        _ = kill.cancelled() => None,
        _ = grace => None,
    }
}

/// Waits until the client has begun a request and tells which protocol it speaks.
/// hyper would otherwise wait for the first bytes with no deadline, before its header
/// timer starts, so a client that connects and sends nothing, or trickles the HTTP/2
/// preface, would hold its connection slot forever.
async fn request_started(stream: &TcpStream, within: Duration) -> Option<Protocol> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + within;
    let mut head = [0u8; PREFACE.len()];
    loop {
        let read = tokio::time::timeout_at(deadline, stream.peek(&mut head)).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        if head[..n] != PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // A partial preface: peek would return the same bytes at once, so pause.
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Answers a connection over the limits with a plain 503 and closes it, without handing
/// it to hyper (which would hold it open for keep-alive). The request head is read first
/// (briefly, bounded) so that HTTP clients that wait to finish sending can read the answer.
async fn refuse(mut stream: TcpStream, err: Error) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let mut tail = Vec::with_capacity(8);
    // Real clients send their request right after connecting; a silent one gets the
    // answer anyway after a moment.
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            let keep = tail.len().saturating_sub(3);
            tail.drain(..keep);
        }
    })
    .await;
    // Written by hand, as no HTTP machinery serves this connection, but with the status
    // and body of the one error mapping.
    let body = err.to_json();
    let status = err.status();
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Tells every client to come back later and waits for them, up to the drain deadline.
async fn drain(app: &App, connections: TaskTracker) {
    let deadline = Duration::from_millis(app.config.shutdown.drain_deadline_ms);
    tracing::info!(deadline_ms = deadline.as_millis() as u64, "draining");
    // Parked long polls check for shutdown when woken: they answer now, with a retry.
    app.bus.wake_all();
    connections.close();
    app.streams.close();
    let drained = async {
        connections.wait().await;
        app.streams.wait().await;
    };
    match tokio::time::timeout(deadline, drained).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain deadline passed; exiting with clients still connected"),
    }
}

/// The sizes the idle-memory figures in BENCHMARKS.md rest on: every open connection keeps
/// one of these futures for as long as it waits, so each budget is a test, and a change
/// that grows one must say so here (and re-measure the idle rows).
#[cfg(test)]
mod sizes {
    use std::mem::size_of_val;

    use super::*;
    use crate::http::LeanRequest;
    use crate::routes::Kept;

    /// A connected pair of sockets on loopback: the server's side and the client's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    fn app() -> Arc<App> {
        App::new(crate::config::Config::default()).unwrap()
    }

    fn info(app: &App, stream: &TcpStream) -> ConnInfo {
        let permit = app.connections.admit(stream.peer_addr().unwrap()).unwrap();
        ConnInfo::new(permit, TokenBucket::new(1, 1))
    }

    /// Every connection's task: a parked long poll's and a short poller's between polls.
    #[tokio::test]
    async fn a_connection_task_fits_its_budget() {
        let app = app();
        let (stream, _client) = pair().await;
        let info = info(&app, &stream);
        let protocols = Arc::new(Protocols::new(&app));
        let task = serve(stream, info, app, protocols);
        budget("connection task", size_of_val(&task), 528, 536);
    }

    /// The routing and the long poll under it, boxed once while a poll is parked.
    #[tokio::test]
    async fn a_parked_long_polls_routing_fits_its_budget() {
        let app = app();
        let req = Box::new(LeanRequest::new(
            "/longpoll?channels=a",
            http::HeaderMap::new(),
            None,
        ));
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let routed = routes::handle_lean(app, req, Kept::default(), timer.as_mut());
        budget("parked long poll routing", size_of_val(&routed), 392, 392);
    }

    /// An upgraded WebSocket's task on the lean path.
    #[tokio::test]
    async fn a_websocket_task_fits_its_budget() {
        let app = app();
        let (stream, _client) = pair().await;
        let req = LeanRequest::new("/ws", websocket_headers(), None);
        let (_, accepted) = crate::transport::websocket::handshake(app, &req)
            .await
            .unwrap();
        let task = accepted.run_on(stream, Vec::new());
        budget("websocket task", size_of_val(&task), 1544, 1544);
    }

    /// An SSE stream's task on the lean path, once it has its socket.
    #[tokio::test]
    async fn an_sse_stream_task_fits_its_budget() {
        let app = app();
        let (stream, _client) = pair().await;
        let info = info(&app, &stream);
        let streaming =
            lean::stream::Streaming::new(Vec::new(), crate::http::full(""), Default::default());
        let task = lean::stream::run(stream, info, app, streaming);
        budget("sse stream task", size_of_val(&task), 520, 528);
    }

    /// Fails when `size` is over its budget: `release` bytes in an optimised build (the
    /// figures BENCHMARKS.md measures), `debug` in a test build, which lays futures out
    /// larger.
    fn budget(what: &str, size: usize, release: usize, debug: usize) {
        let budget = if cfg!(debug_assertions) {
            debug
        } else {
            release
        };
        eprintln!("{what}: {size} bytes (budget {budget})");
        assert!(
            size <= budget,
            "{what}: {size} bytes, over its budget of {budget}"
        );
    }

    fn websocket_headers() -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        headers
    }
}
