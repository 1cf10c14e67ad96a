//! A TLS connection: its handshake within `tls.handshake_timeout_ms`, then what its ALPN
//! chose. `h2` goes to hyper's HTTP/2, as cleartext h2c does; `http/1.1` (or no ALPN) to
//! the lean HTTP/1 path over the session ([`TlsSocket`] keeps the socket contract), with
//! the same hand-offs as a plain connection's.
//!
//! A handshake that does not finish in time is dropped and counted as
//! `tls_handshake_timeout`; one that fails (garbage instead of a ClientHello, no shared
//! version or cipher, the client's alert) as `tls_handshake_failed`.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::Protocol;
use super::hyper::{Protocols, serve_hyper};
use crate::app::App;
use crate::conn::ConnInfo;
use crate::http1::{self, Next};
use crate::socket::Prefixed;
use crate::tls::{ALPN_H2, Tls, TlsSocket};
use crate::transport::sse;

/// Serves one accepted connection over TLS until it ends (see `super::serve`, its plain
/// twin: a task of a type of its own, so that plain connections' tasks stay their size).
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub(super) fn serve(
    tcp: TcpStream,
    info: ConnInfo,
    app: Arc<App>,
    tls: Arc<Tls>,
    protocols: Arc<Protocols>,
) -> impl Future<Output = ()> + Send {
    async move {
        let remote = info.remote();
        // Boxed: the handshake's state is large, and over once the connection idles.
        let handshake = Box::pin(async {
            let accept = tls.acceptor().accept(tcp);
            tokio::select! {
                done = tokio::time::timeout(tls.handshake_within, accept) => Some(done),
                // Nothing in flight yet: a drain closes it at once.
                _ = app.shutdown.cancelled() => None,
            }
        });
        let stream = match handshake.await {
            Some(Ok(Ok(stream))) => stream,
            Some(Ok(Err(err))) => {
                app.metrics.error("tls_handshake_failed");
                tracing::debug!(%remote, error = %err, "tls handshake failed");
                return;
            }
            Some(Err(_)) => {
                app.metrics.error("tls_handshake_timeout");
                tracing::debug!(%remote, "tls handshake not finished in time");
                return;
            }
            None => return,
        };
        let (tcp, session) = stream.into_inner();
        app.metrics.tls_handshake(session.alpn_protocol());
        let protocol = match session.alpn_protocol() {
            Some(ALPN_H2) => Protocol::Http2,
            _ => Protocol::Http1,
        };
        let mut socket = Tls::socket(tcp, session);
        let prefix = match protocol {
            Protocol::Http1 => match http1::serve(&mut socket, &info, &app).await {
                Next::Hyper(prefix) => prefix,
                Next::WebSocket(websocket, rest) => {
                    app.streams.spawn(websocket.run_on(socket, rest));
                    return;
                }
                Next::Stream(streaming) => {
                    app.streams
                        .spawn(sse::stream::run(socket, info, app.clone(), streaming));
                    return;
                }
                Next::Closed => return,
            },
            Protocol::Http2 => Bytes::new(),
        };
        let io = Prefixed::<TlsSocket>::new(prefix, socket);
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
