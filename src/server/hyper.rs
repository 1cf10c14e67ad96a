//! The rest of a connection, served by hyper: HTTP/1 after the lean path handed it over,
//! and HTTP/2, whose deadlines hyper does not keep (see `h2`). The drain asks each such
//! connection to finish what it has in flight.
//!
//! HTTP/2's limits per connection (the same over TLS and h2c), from `[limits]`:
//! `http2_max_concurrent_streams` (128), `http2_max_header_list_bytes` (16 KiB, the lean
//! path's head limit), the flow-control windows `http2_stream_window_bytes` (64 KiB) and
//! `http2_connection_window_bytes` (256 KiB: the most request body one connection can have
//! waiting), `http2_keepalive_ms` (a PING after 30 s without a frame; no answer within as
//! long again closes the connection: one that reads nothing cannot hold its streams
//! forever). Each stream's send buffer is [`H2_SEND_BUFFER`]. RFC 8441's extended CONNECT
//! is on, so that a WebSocket can be a stream of the page's connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Method};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Protocol;
use super::h2;
use crate::app::App;
use crate::conn::ConnInfo;
use crate::routes;
use crate::socket::Prefixed;

/// The HTTP/1 and HTTP/2 connection settings, built once and shared by every connection.
///
/// The two builders are used directly rather than through hyper-util's `auto` builder and
/// its graceful-shutdown watcher: those made every connection's task larger (and its
/// first read buffered twice) for a protocol choice that one `peek` makes (see
/// [`super::request_started`]); the drain asks each connection to finish instead.
pub(super) struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// How long a connection may take to begin its first request.
    pub(super) first_bytes_within: Duration,
}

/// Most response bytes hyper queues on one HTTP/2 stream beyond what the client's window
/// lets through (hyper's default is 400 KiB): an SSE stream's next events wait in its
/// subscription's bounded queue instead.
const H2_SEND_BUFFER: usize = 64 * 1024;

impl Protocols {
    pub(super) fn new(app: &App) -> Self {
        let limits = &app.config.limits;
        let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
        let keepalive = Duration::from_millis(limits.http2_keepalive_ms);
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // A slowloris client that trickles its headers is dropped.
            .header_read_timeout(header_timeout);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.http2_max_header_list_bytes)
            .initial_stream_window_size(limits.http2_stream_window_bytes)
            .initial_connection_window_size(limits.http2_connection_window_bytes)
            .max_send_buf_size(H2_SEND_BUFFER)
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .enable_connect_protocol();
        Protocols {
            http1,
            http2,
            first_bytes_within: header_timeout,
        }
    }
}

/// Serves the rest of a connection with hyper. `None` when the server dropped it.
pub(super) async fn serve_hyper<S>(
    io: Prefixed<S>,
    protocol: Protocol,
    info: ConnInfo,
    app: Arc<App>,
    protocols: &Protocols,
) -> Option<hyper::Result<()>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
        // HTTP/2 names the host in `:authority`: given as `Host` too (as a proxy to HTTP/1.1
        // would, RFC 9113 §8.3.1), so that the same-origin check and the forwarding rules
        // read one header whichever HTTP the request came in.
        if req.version() == http::Version::HTTP_2 && !req.headers().contains_key(HOST) {
            let authority = req.uri().authority().map(|a| a.as_str());
            if let Some(host) = authority.and_then(|a| HeaderValue::from_str(a).ok()) {
                req.headers_mut().insert(HOST, host);
            }
        }
        let refused = info.forwarded(req.headers_mut()).err();
        req.extensions_mut().insert(info.clone());
        let stream = streams.as_ref().map(|s| s.open());
        // An extended CONNECT (a WebSocket) outlives its response: its stream stays in
        // flight for as long as whoever takes the upgrade holds this.
        if let Some(streams) = streams.as_ref().filter(|_| req.method() == Method::CONNECT) {
            let held: Arc<dyn Send + Sync> = Arc::new(streams.open());
            req.extensions_mut().insert(crate::http::HeldStream(held));
        }
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
