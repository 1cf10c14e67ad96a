//! The wire contract shared by every transport: channel names, epochs, positions, cursors,
//! delivered messages and gaps, and the frames a WebSocket client sends (see
//! `docs/PROTOCOL.md`).
//!
//! Everything here is pure: parsing and formatting only. It must not know about HTTP,
//! sockets, engines or transports, so that every transport encodes exactly the same bytes.
//!
//! - `channel`: [`Channel`] and [`Epoch`], the names every position carries.
//! - `cursor`: [`Position`], how a live message [`Fit`]s one, and [`Cursor`], the resume
//!   token over several channels.
//! - `message`: [`Message`], built once at publish and shared by every subscriber; [`Gap`].
//!   A message keeps a slot for each transport encoding built once per message (the
//!   WebSocket frame, the SSE event); the encodings live with their transports.
//! - `frames`: [`ClientFrame`], what a WebSocket client sends.

mod channel;
mod cursor;
mod frames;
mod message;

pub(crate) use channel::truncate_for_message;
pub use channel::{Channel, Epoch, MAX_CHANNEL_LEN, MAX_EPOCH_LEN};
use cursor::parse_offset;
pub use cursor::{
    Cursor, Fit, Position, cursor_len_max, put_cursor, split_ascii, split_once_ascii,
};
pub use frames::ClientFrame;
pub use message::{Gap, MAX_EVENT_LEN, Message, Publication, compact_json, is_event_name};
