//! The accept loop and graceful drain.
//!
//! `run` takes a bound listener (tests pass port 0) and serves until the app's shutdown
//! token is cancelled. Draining then tells every client to come back after a randomized
//! delay: WebSockets close with 1012, SSE streams end after a `retry:`, parked long polls
//! are answered. The process waits for all of that up to the drain deadline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::error::Error;
use crate::limits::{ConnectionPermit, TokenBucket};
use crate::routes;

/// What a handler knows about the connection its request came on.
#[derive(Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// Cancelling this drops the connection: used to cut off a stalled SSE reader whose
    /// body hyper has stopped polling.
    pub kill: CancellationToken,
    /// The connection's slot under the connection limits; an upgraded WebSocket keeps a
    /// clone so the slot stays taken while it is open.
    pub permit: Arc<ConnectionPermit>,
    /// Publishes allowed on this connection (token bucket), shared by its requests.
    pub publish_budget: Arc<Mutex<TokenBucket>>,
}

impl ConnInfo {
    /// Takes one publish from the connection's budget, or refuses with `rate_limited`.
    pub fn take_publish(&self) -> crate::error::Result<()> {
        let mut budget = self
            .publish_budget
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if budget.try_take() {
            Ok(())
        } else {
            Err(crate::error::Error::RateLimited)
        }
    }
}

/// Serves on `listener` until `app.shutdown` is cancelled, then drains.
pub async fn run(listener: TcpListener, app: Arc<App>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A slowloris client that trickles its headers is dropped.
        .header_read_timeout(Duration::from_millis(
            app.config.limits.header_read_timeout_ms,
        ));
    let graceful = GracefulShutdown::new();

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
        let permit = match app.connections.admit(remote.ip()) {
            Ok(permit) => Arc::new(permit),
            Err(reason) => {
                app.metrics.error("too_many_connections");
                tokio::spawn(refuse(stream, Error::TooManyConnections(reason)));
                continue;
            }
        };
        // Latency matters more than packet count for realtime delivery.
        let _ = stream.set_nodelay(true);
        let kill = CancellationToken::new();
        let limits = &app.config.limits;
        let info = ConnInfo {
            remote,
            kill: kill.clone(),
            permit,
            publish_budget: Arc::new(Mutex::new(TokenBucket::new(
                limits.publish_rate_per_second,
                limits.publish_burst,
            ))),
        };
        let handler_app = app.clone();
        let service = service_fn(move |mut req| {
            req.extensions_mut().insert(info.clone());
            routes::handle(handler_app.clone(), req)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_bytes_within = Duration::from_millis(limits.header_read_timeout_ms);
        tokio::spawn(async move {
            if !request_started(&stream, first_bytes_within).await {
                tracing::debug!(%remote, "connection sent no request in time");
                return;
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = watcher.watch(conn);
            tokio::select! {
                result = conn => if let Err(err) = result {
                    tracing::debug!(%remote, error = %err, "connection ended with an error");
                },
                _ = kill.cancelled() => tracing::debug!(%remote, "connection dropped"),
            }
        });
    }

    drop(listener);
    drain(&app, graceful).await;
}

/// Waits until the client has begun a request. hyper-util reads the first bytes (to tell
/// HTTP/1 from the HTTP/2 preface) with no deadline, before hyper's header timer starts,
/// so a client that connects and sends nothing, or trickles the preface, would otherwise
/// hold its connection slot forever.
async fn request_started(stream: &TcpStream, within: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + within;
    let mut head = [0u8; PREFACE.len()];
    loop {
        let read = tokio::time::timeout_at(deadline, stream.peek(&mut head)).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        // Not HTTP/2, or its whole preface: hyper's own timers take it from here.
        if n == PREFACE.len() || head[..n] != PREFACE[..n] {
            return true;
        }
        // A partial preface: peek would return the same bytes at once, so pause.
        if tokio::time::Instant::now() >= deadline {
            return false;
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
    let body = err.to_json();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Tells every client to come back later and waits for them, up to the drain deadline.
async fn drain(app: &App, graceful: GracefulShutdown) {
    let deadline = Duration::from_millis(app.config.shutdown.drain_deadline_ms);
    tracing::info!(deadline_ms = deadline.as_millis() as u64, "draining");
    app.streams.close();
    let drained = async {
        graceful.shutdown().await;
        app.streams.wait().await;
    };
    match tokio::time::timeout(deadline, drained).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain deadline passed; exiting with clients still connected"),
    }
}
