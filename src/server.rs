//! The accept loop and graceful drain.
//!
//! `run` takes a bound listener (tests pass port 0) and serves until the app's shutdown
//! token is cancelled. Draining then tells every client to come back after a randomized
//! delay: WebSockets close with 1012, SSE streams end after a `retry:`, parked long polls
//! are answered. The process waits for all of that up to the drain deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::routes;

/// What a handler knows about the connection its request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// Cancelling this drops the connection: used to cut off a stalled SSE reader whose
    /// body hyper has stopped polling.
    pub kill: CancellationToken,
}

/// Serves on `listener` until `app.shutdown` is cancelled, then drains.
pub async fn run(listener: TcpListener, app: Arc<App>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
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
        // Latency matters more than packet count for realtime delivery.
        let _ = stream.set_nodelay(true);
        let kill = CancellationToken::new();
        let info = ConnInfo {
            remote,
            kill: kill.clone(),
        };
        let handler_app = app.clone();
        let service = service_fn(move |mut req| {
            req.extensions_mut().insert(info.clone());
            routes::handle(handler_app.clone(), req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                result = conn => if let Err(err) = result {
                    tracing::debug!(%remote, error = %err, "connection ended with an error");
                },
                _ = kill.cancelled() => tracing::debug!(%remote, "connection dropped"),
            }
        });
    }

    drop(listener);
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
