//! What a Socket.IO session keeps in the engine between requests (see [`super::polling`]
//! for what each value is and who writes it): the keys, the lifetimes and the JSON
//! reads and writes that polling, the WebSocket upgrade and the quiet-socket watch share.
//! A leaf of the Socket.IO modules: it knows the bus's value store and nothing of HTTP.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::error::{Error, Result};

/// A poll's state between requests.
#[derive(Default, Serialize, Deserialize)]
pub struct PollState {
    /// The [`super::socket::Joined::generation`] whose rooms `rooms` follows (0: none yet).
    #[serde(default)]
    pub generation: u64,
    /// The rooms' cursor text.
    #[serde(default)]
    pub rooms: String,
    /// The mailbox's cursor text.
    pub mailbox: String,
    /// When the last poll ended, unix milliseconds on the node that served it: when the
    /// state will expire, for a node deciding when to look at it again.
    #[serde(default)]
    pub seen_ms: u64,
}

/// The key of a session's poll state.
pub fn state_key(sid: &str) -> String {
    format!("sio:{sid}")
}

/// The key of a session's socket.
pub fn joined_key(sid: &str) -> String {
    format!("sio:{sid}:s")
}

/// How long a session's state outlives its last request.
pub fn session_ttl(app: &App) -> Duration {
    let io = &app.config.socketio;
    Duration::from_millis(io.ping_interval_ms + io.ping_timeout_ms)
}

/// How long a session's socket outlives its last request: twice its state's, so that it
/// is still there when the state expires and a node looks for whom to tell.
pub fn joined_ttl(app: &App) -> Duration {
    session_ttl(app) * 2
}

/// Reads a kept JSON value.
pub async fn read<T: for<'de> Deserialize<'de>>(app: &App, key: &str) -> Result<Option<T>> {
    Ok(app
        .bus
        .kept(key)
        .await?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// Keeps a JSON value for `ttl`.
pub async fn write<T: Serialize>(app: &App, key: &str, value: &T, ttl: Duration) -> Result<()> {
    app.bus.keep(key, json(value)?, ttl).await
}

/// A value as the engine keeps it.
pub fn json<T: Serialize>(value: &T) -> Result<Bytes> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Bytes::from(bytes))
}
