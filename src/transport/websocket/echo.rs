//! Test-only, built with the `autobahn` feature: `GET /ws?echo` sends every text and
//! binary message back as it came, so that the Autobahn conformance suite
//! (`tests/autobahn.rs`) can drive this gateway's own WebSocket stack. The request takes
//! the same route, origin check and handshake as any `/ws`, and the socket the same
//! tungstenite configuration, with larger message limits; a read error closes it with the
//! same code a real connection would send. It never touches the bus or the hub.
//!
//! A build without the feature has no such module: there `?echo` is an ordinary query
//! parameter, which `/ws` ignores.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::close::{CLOSE_TIMEOUT, read_error_close};

/// The largest message and frame the echo takes: the suite's cases 1 to 7 send up to
/// 256 KiB (7.1.6), 9.x up to 16 MiB, past the gateway's own limits for client frames.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The gateway's socket configuration with the echo's message limits, and a write bound
/// that fits the largest message it sends back.
pub(super) fn config(gateway: WebSocketConfig) -> WebSocketConfig {
    gateway
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .max_write_buffer_size(2 * MAX_MESSAGE_BYTES)
}

/// Echoes data messages until the peer closes, the socket fails or a frame breaks the
/// protocol (then closed with the code [`read_error_close`] gives).
pub(super) async fn run<S>(mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(message @ (Frame::Text(_) | Frame::Binary(_))) => {
                if ws.send(message).await.is_err() {
                    return;
                }
            }
            // tungstenite answers pings itself, and a close on the next flush.
            Ok(Frame::Close(_)) => {
                let _ = ws.flush().await;
                return;
            }
            Ok(_) => {}
            Err(err) => {
                if let Some((code, reason)) = read_error_close(&err) {
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
                }
                return;
            }
        }
    }
}
