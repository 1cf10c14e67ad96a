//! `[socketio]`: the Socket.IO endpoint at `/socket.io/` (docs/SOCKETIO.md).

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// `[socketio]`: Engine.IO 4 / Socket.IO 5 for existing `socket.io-client` pages.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoConfig {
    /// Serves `/socket.io/`.
    pub enabled: bool,
    /// Engine.IO's `pingInterval`: how often the server pings, and how long a poll is held
    /// at most, in milliseconds.
    pub ping_interval_ms: u64,
    /// Engine.IO's `pingTimeout`: how long after a missed ping a session is over, in
    /// milliseconds.
    pub ping_timeout_ms: u64,
    /// Engine.IO's `maxPayload` (Socket.IO's `maxHttpBufferSize`): the largest request
    /// body or WebSocket message a client may send, in bytes.
    pub max_payload_bytes: usize,
    /// How long after a disconnect a socket can still be recovered (Socket.IO's
    /// `maxDisconnectionDuration`), in milliseconds.
    pub recovery_ms: u64,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            enabled: true,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_payload_bytes: 1_000_000,
            recovery_ms: 120_000,
        }
    }
}

impl SocketIoConfig {
    /// Refuses a `[socketio]` the gateway could not use.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        for (key, value) in [
            ("socketio.ping_interval_ms", self.ping_interval_ms),
            ("socketio.ping_timeout_ms", self.ping_timeout_ms),
            ("socketio.max_payload_bytes", self.max_payload_bytes as u64),
            ("socketio.recovery_ms", self.recovery_ms),
        ] {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        // What one request may make the gateway buffer; an event's arguments are still
        // bounded by `limits.max_message_bytes` on their way to the backend.
        if self.max_payload_bytes > 16 * 1024 * 1024 {
            bail!("socketio.max_payload_bytes: at most 16 MiB");
        }
        Ok(())
    }
}
