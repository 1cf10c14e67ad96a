//! How a WebSocket ends: the gateway's close codes, the code each failure earns, and how
//! long a close frame may take.

use std::time::Duration;

use tokio_tungstenite::tungstenite;

/// Close code for missing, malformed or badly signed credentials.
pub const CLOSE_TOKEN_INVALID: u16 = 4001;
/// Close code when the credentials expire while the socket is open.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4002;
/// Close code when the backend's connect hook refused the client; the reason is the
/// backend's code.
pub const CLOSE_BACKEND_REFUSED: u16 = 4003;
/// Close code when the backend's connect hook could not be asked (down, slow, nonsense);
/// the client should retry later.
pub const CLOSE_BACKEND_UNAVAILABLE: u16 = 4013;
/// Close code when the application's backend ended the user's sessions
/// (`POST /disconnect`): the client must not reconnect with the same credentials.
pub const CLOSE_DISCONNECTED: u16 = 4009;
/// Close code for a subscriber cut off because it could not keep up.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code when the engine cannot be read; the client should resume later.
pub const CLOSE_ENGINE_UNAVAILABLE: u16 = 4011;

/// How long a close frame may take to go out. Short: the peer being closed is often the
/// one that stopped reading (a slow consumer), and its slot should free quickly.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The close code for a subscription the bus ended.
pub(super) fn close_code(closed: crate::bus::Closed) -> u16 {
    match closed {
        crate::bus::Closed::SlowConsumer => CLOSE_SLOW_CONSUMER,
        crate::bus::Closed::EngineUnavailable => CLOSE_ENGINE_UNAVAILABLE,
    }
}

/// The close code and reason for a read error that breaks the protocol; `None` when the
/// socket itself failed and nothing can be sent.
pub(super) fn read_error_close(err: &tungstenite::Error) -> Option<(u16, &'static str)> {
    use tungstenite::Error as E;
    match err {
        E::Capacity(_) => Some((1009, "message_too_large")),
        E::Utf8(_) => Some((1007, "invalid_utf8")),
        E::Protocol(_) => Some((1002, "protocol_error")),
        _ => None,
    }
}
