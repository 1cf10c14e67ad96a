//! The accept loop, protocol detection and graceful drain; nothing else.
//!
//! `run` takes a bound listener (tests pass port 0) and serves until the app's shutdown
//! token is cancelled. An HTTP/1 connection starts on the hand-written HTTP/1 path
//! ([`crate::http1`]) and moves to hyper (`hyper`) at its first request that path does not
//! take; an HTTP/2 one is hyper's from the start. With a certificate configured, every
//! connection is TLS (`tls`): its ALPN, not its first bytes, says which HTTP it speaks. The HTTP/1 path's hand-offs (a
//! WebSocket's socket, an SSE stream's) are spawned here as tasks of their own. Draining then tells every client to come back after a
//! randomized delay: WebSockets close with 1012, SSE streams end after a `retry:`, parked
//! long polls are answered. The process waits for all of that up to the drain deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::conn::ConnInfo;
use crate::error::Error;
use crate::http1::{self, Next};
use crate::limits::TokenBucket;
use crate::routes;
use crate::socket::Prefixed;
use crate::transport::sse;

mod h2;
mod hyper;
#[cfg(test)]
mod sizes;
mod tls;

use hyper::{Protocols, serve_hyper};

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
                let err = Error::TooManyConnections(reason);
                if app.tls.is_some() {
                    // A plain-text answer means nothing to a TLS client, and a handshake
                    // is what the limit saves: closed, and counted.
                    app.metrics.error(err.label());
                } else {
                    tokio::spawn(refuse(stream, err, app.clone()));
                }
                continue;
            }
        };
        // Latency matters more than packet count for realtime delivery.
        let _ = stream.set_nodelay(true);
        let limits = &app.config.limits;
        let budget = TokenBucket::new(limits.publish_rate_per_second, limits.publish_burst);
        let info = ConnInfo::new(permit, budget);
        match &app.tls {
            Some(tls) => connections.spawn(tls::serve(
                stream,
                info,
                app.clone(),
                tls.clone(),
                protocols.clone(),
            )),
            None => connections.spawn(serve(stream, info, app.clone(), protocols.clone())),
        };
    }

    drop(listener);
    drain(&app, connections).await;
}

/// Which HTTP a connection speaks, told from its first bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves one accepted connection until it ends, the server drops it (`kill`), or the
/// drain asks it to finish its current answer and close. HTTP/1 connections start on the
/// hand-written path for the routes the table marks lean and move to hyper at their first
/// other request.
///
/// A plain fn around an `async move` block rather than an `async fn`: an async fn keeps
/// room for its arguments beside the locals they move into for its whole life, and this
/// future is every open connection's task (its size is a test: see `sizes`).
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
            Protocol::Http1 => match http1::serve(&mut stream, &info, &app).await {
                Next::Hyper(prefix) => prefix,
                Next::WebSocket(websocket, rest) => {
                    // A task of its own, sized for the WebSocket alone: this one is sized
                    // for the largest lean route.
                    app.streams.spawn(websocket.run_on(stream, rest));
                    return;
                }
                Next::Stream(streaming) => {
                    // Likewise: the stream's task keeps the socket, shared with the hub.
                    app.streams
                        .spawn(sse::stream::run(stream, info, app.clone(), streaming));
                    return;
                }
                Next::Closed => return,
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
///
/// A liveness probe (`GET` or `HEAD /healthz`) is answered as usual instead: a gateway at
/// its connection limit is alive, and an orchestrator that saw its probe refused would
/// restart it and drop every connection it holds.
async fn refuse(mut stream: TcpStream, err: Error, app: Arc<App>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    // The start of the request line, and the last bytes read, to see the head's end.
    // Enough for `HEAD /healthz?`, the longest probe line this looks for.
    const FIRST: usize = 16;
    let mut first = Vec::with_capacity(FIRST);
    let mut tail = Vec::with_capacity(8);
    // Real clients send their request right after connecting; a silent one gets the
    // answer anyway after a moment.
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = FIRST - first.len();
            first.extend_from_slice(&buf[..n.min(room)]);
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            let keep = tail.len().saturating_sub(3);
            tail.drain(..keep);
        }
    })
    .await;
    let probe = |method: &[u8]| {
        first.strip_prefix(method).is_some_and(|rest| {
            rest.strip_prefix(routes::table::HEALTHZ.as_bytes())
                .is_some_and(|rest| rest.starts_with(b" ") || rest.starts_with(b"?"))
        })
    };
    let (head_only, get) = (probe(b"HEAD "), probe(b"GET "));
    // Written by hand, as no HTTP machinery serves this connection, but with the status
    // and body of the one error mapping, or of the route.
    let (status, body) = if (head_only || get) && !app.shutdown.is_cancelled() {
        (http::StatusCode::OK, routes::liveness(&app))
    } else {
        app.metrics.error(err.label());
        (err.status(), err.to_json())
    };
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        if head_only { "" } else { &body }
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
