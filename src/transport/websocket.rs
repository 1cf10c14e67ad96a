//! `GET /ws`: the top rung. One upgraded connection carries subscribe, unsubscribe and
//! publish from the client and messages, gaps and acks from the server, as JSON text
//! frames. A malformed frame gets an `error` frame and the connection stays open; a
//! protocol violation closes it with the matching close code.
//!
//! This module is the handshake and the express writer the hub uses on the socket;
//! `connection` is the connection itself; `wire` encodes a message's frame once for all
//! its subscribers; `close` holds the close codes; `echo`, built only with the test-only
//! `autobahn` feature, answers `/ws?echo` for the Autobahn conformance run.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::app::App;
use crate::auth::Identity;
use crate::bus::{CursorAfter, Express, Written};
use crate::config::Transport;
use crate::conn::ConnInfo;
use crate::error::{Error, Result};
use crate::http::{Body, RequestHead, full};
use crate::protocol::Message;
use crate::query::Query;
use crate::socket::{Holds, SharedSocket, Socket as Io};
use crate::transport::session::{self, Issued};

mod close;
mod connection;
#[cfg(feature = "autobahn")]
mod echo;
pub mod wire;

use connection::Connection;
use wire::WsFrame as _;

pub use close::{
    CLOSE_BACKEND_REFUSED, CLOSE_BACKEND_UNAVAILABLE, CLOSE_ENGINE_UNAVAILABLE,
    CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_INVALID,
};

/// Checks an upgrade request; the `101` answer and what the connection needs once the
/// socket is switched, which whichever HTTP path took the request hands it.
pub async fn handshake<R: RequestHead + Sync>(
    app: Arc<App>,
    req: &R,
) -> Result<(Response<Body>, Box<Accepted>)> {
    // RFC 6455 §4.1: the upgrade is an HTTP/1.1 one.
    if req.version() != http::Version::HTTP_11 {
        return Err(Error::BadRequest("a WebSocket handshake needs HTTP/1.1"));
    }
    let accept = accept_key(req.headers())?;
    let (mut response, accepted) = accept_caller(app, req).await;
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| Error::Internal(e.to_string()))?,
    );
    Ok((response, accepted))
}

/// Checks an HTTP/2 extended CONNECT (RFC 8441) whose `:protocol` is `protocol`: the `200`
/// answer, after which the stream is the WebSocket, and what the connection needs.
pub async fn connect<R: RequestHead + Sync>(
    app: Arc<App>,
    req: &R,
    protocol: Option<&str>,
) -> Result<(Response<Body>, Box<Accepted>)> {
    if req.version() != http::Version::HTTP_2 || protocol != Some("websocket") {
        return Err(Error::BadRequest(
            "CONNECT opens a WebSocket only over HTTP/2, with :protocol websocket",
        ));
    }
    // RFC 8441 §5: no key and no accept; the version is checked as over HTTP/1.1.
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Error::UpgradeRequired("Sec-WebSocket-Version must be 13"));
    }
    // `200`, with no body: hyper sends no length for a CONNECT's answer.
    Ok(accept_caller(app, req).await)
}

/// Identifies the caller of an accepted handshake: an answer to complete, and what the
/// connection needs once the socket is switched.
async fn accept_caller<R: RequestHead + Sync>(
    app: Arc<App>,
    req: &R,
) -> (Response<Body>, Box<Accepted>) {
    // Browsers cannot read the status of a refused handshake, so bad credentials are
    // reported after the upgrade, as a 4001/4002 close with the reason.
    let query = Query::parse(req.query());
    let conn = req.conn().cloned();
    let who = session::identify(
        &app,
        Transport::Websocket.name(),
        req.headers(),
        &query,
        conn.as_ref(),
    )
    .await;
    let response = Response::new(full(""));
    let accepted = Accepted {
        app,
        who,
        conn,
        #[cfg(feature = "autobahn")]
        echo: query.get("echo").is_some(),
    };
    // Boxed: it travels through the lean path's futures, which would each keep room for it.
    (response, Box::new(accepted))
}

/// An accepted handshake, waiting for its socket.
pub struct Accepted {
    app: Arc<App>,
    /// Who it is, and the client session begun for it, if any.
    who: Result<(Identity, Option<Box<Issued>>)>,
    conn: Option<ConnInfo>,
    /// `?echo` on a build with the `autobahn` feature: the test-only echo, not a client.
    #[cfg(feature = "autobahn")]
    echo: bool,
}

impl Accepted {
    /// Runs the connection on its own socket, which the hub then writes live messages
    /// to express while the connection is idle; `read` holds bytes the client sent after
    /// its handshake that were already read from it.
    ///
    /// A plain fn: as an async fn it would keep room for its arguments in the task.
    pub fn run_on<S: Io>(self: Box<Self>, stream: S, read: Vec<u8>) -> impl Future<Output = ()> {
        let socket = Arc::new(Socket {
            stream,
            app: self.app.clone(),
        });
        let sink: Arc<dyn Express> = socket.clone();
        self.run(SharedSocket(socket), read, Some(sink))
    }

    /// Runs the connection on a stream hyper switched (no express lane: the hub cannot
    /// write to hyper's socket).
    pub fn run_upgraded<S>(self: Box<Self>, io: S) -> impl Future<Output = ()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.run(io, Vec::new(), None)
    }

    /// Runs the connection on the switched stream `io`, with `express` as its lane if the
    /// hub may write to it; `read` as for [`Accepted::run_on`].
    async fn run<S>(self: Box<Self>, io: S, read: Vec<u8>, express: Option<Arc<dyn Express>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        #[cfg(feature = "autobahn")]
        let echo = self.echo;
        // Unboxed by a call that consumes the box: a `*self` here would move the fields out
        // but free the allocation only when `self` leaves scope, at the connection's end,
        // so every idle socket kept its 120-byte box.
        let Accepted { app, who, conn, .. } = unbox(self);
        let config = ws_config(&app.config);
        #[cfg(feature = "autobahn")]
        let config = if echo { echo::config(config) } else { config };
        let ws = WebSocketStream::from_partially_read(io, read, Role::Server, Some(config)).await;
        #[cfg(feature = "autobahn")]
        if echo {
            return echo::run(ws).await;
        }
        let identity = who.as_ref().ok().map(|(who, _)| who.clone());
        let mut connection = Connection::new(app, ws, conn, identity, express);
        match who {
            Ok((_, issued)) => connection.run(issued).await,
            Err(err) => connection.refuse(&err).await,
        }
    }
}

/// Moves `boxed` out of its box and frees the box at once (see `Accepted::run`).
#[allow(clippy::boxed_local)] // Taking the box is the point: it is freed on return.
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// tungstenite's buffers for one connection, each bounded.
fn ws_config(config: &crate::config::Config) -> WebSocketConfig {
    const WRITE_BUFFER: usize = 4 * 1024;
    // 512 until issue 26: 256 bytes more of every idle socket.
    const READ_BUFFER: usize = 256;
    let limits = &config.websocket;
    // Room for the largest frame the gateway writes (a message, or a reply naming up to
    // `max_channels` channels), on top of what is batched before a write. tungstenite's
    // default is unbounded, and its automatic pongs filled it for a client that pings
    // without reading (see `Connection::owe_pong`).
    let largest = config.limits.max_message_bytes.max(limits.max_frame_bytes) + 64 * 1024;
    WebSocketConfig::default()
        // The default 128 KiB read buffer is allocated eagerly per connection and kept
        // for its life (tungstenite never gives it back), so it is sized for what a
        // subscriber sends: a subscribe frame fits in one read. It is also the most one
        // read takes, so a larger frame (a publish) costs a read per 256 bytes.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + largest)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
}

/// A WebSocket's socket, as the hub writes messages to it express.
struct Socket<S> {
    stream: S,
    app: Arc<App>,
}

impl<S: Io> Holds for Socket<S> {
    type Socket = S;

    fn socket(&self) -> &S {
        &self.stream
    }
}

impl<S: Io> Express for Socket<S> {
    fn write(&self, message: &Message, _: Option<CursorAfter<'_>>) -> Written {
        let wire = message.ws_wire();
        match self.stream.try_write(wire) {
            Ok(sent) if sent == wire.len() => {
                let metrics = self.app.metrics.transport(Transport::Websocket);
                metrics.record_delivery(message.ws_frame().len(), message.ts, crate::bus::now_ms());
                Written::All
            }
            Ok(sent) if sent > 0 => Written::Part(sent),
            // Full, or failed: the connection's own write finds out which.
            _ => Written::Nothing,
        }
    }

    fn several_channels(&self) -> bool {
        // A message frame carries its own channel and position, nothing of the others:
        // the cursor is not needed.
        true
    }
}

/// Checks the upgrade request and computes `Sec-WebSocket-Accept`.
fn accept_key(headers: &HeaderMap) -> Result<String> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(Error::UpgradeRequired(
            "send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Error::UpgradeRequired("Sec-WebSocket-Version must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
        .ok_or(Error::UpgradeRequired("Sec-WebSocket-Key is missing"))?;
    if !is_nonce(key.as_bytes()) {
        return Err(Error::BadRequest(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// Whether `key` is the base64 of 16 bytes (RFC 6455 §4.2.1): 22 digits and `==`, the
/// last digit carrying only the nonce's last two bits.
fn is_nonce(key: &[u8]) -> bool {
    let digit = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    matches!(key, [digits @ .., b'=', b'='] if digits.len() == 22 && digits.iter().all(|&b| digit(b)))
        && b"AQgw".contains(&key[21])
}

#[cfg(test)]
mod tests {
    use super::is_nonce;

    #[test]
    fn a_key_is_the_base64_of_sixteen_bytes() {
        assert!(is_nonce(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_nonce(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        for bad in [
            &b"dGhlIHNhbXBsZSBub25jZQ"[..],
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25j*Q==",
            b"dGhlIHNhbXBsZSBub25jZSBub25jZQ==",
            b"x",
        ] {
            assert!(!is_nonce(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
