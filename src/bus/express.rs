//! Express delivery: a live message written to an idle subscriber's socket by the fan-out
//! itself, neither queued nor waking the subscriber's task.
//!
//! At paced rates nearly every delivery finds its subscriber idle, and then waking a task,
//! polling it and popping its queue costs as much user time as the `send()` it ends in.
//! The transport keeps the writing (it knows its framing and its socket); the bus decides
//! when the hub may call it. A subscriber is *armed* by its transport while it is parked
//! with nothing unwritten; the hub writes a message express only while the subscriber is
//! armed, its queue is empty and the message is the next offset of one of its channels
//! (of its only one, unless the transport says otherwise: see
//! [`Express::several_channels`]). Any other case, and a socket that does not take the
//! whole message, falls back to the queue and disarms, so messages never overtake one
//! another and the transport never writes while the hub may.

use bytes::BufMut;

use crate::protocol::{Channel, Message, Position, cursor_len_max, put_cursor};

/// A transport's way to write one message straight to its socket, without waiting.
pub trait Express: Send + Sync {
    /// Writes what the socket takes now of `message`'s wire form. `cursor` is the
    /// subscriber's whole cursor once it has the message, given for a subscriber of
    /// several channels; `None` means it follows the message's channel alone, so that the
    /// message's own position is its cursor.
    fn write(&self, message: &Message, cursor: Option<CursorAfter<'_>>) -> Written;

    /// Whether the writer holds nothing unwritten of its own; the hub is armed only then.
    fn idle(&self) -> bool {
        true
    }

    /// Whether the hub may write for a subscriber of several channels, with the
    /// subscriber's [`CursorAfter`] for a transport that stamps it on each message.
    fn several_channels(&self) -> bool {
        false
    }
}

/// The cursor of a subscriber of several channels once it has the message being written:
/// each channel in subscription order at the position last handed out.
#[derive(Clone, Copy)]
pub struct CursorAfter<'a>(pub(super) &'a [(Channel, Position)]);

impl CursorAfter<'_> {
    /// Appends it in [`crate::protocol::Cursor`]'s text form.
    pub fn put(&self, out: &mut impl BufMut) {
        put_cursor(
            out,
            self.0.iter().map(|(channel, read)| (channel, Some(read))),
        );
    }

    /// The most bytes [`CursorAfter::put`] appends.
    pub fn len_max(&self) -> usize {
        cursor_len_max(self.0.iter().map(|(channel, read)| (channel, read)))
    }
}

/// How much of a message [`Express::write`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// All of it: the message is delivered.
    All,
    /// This many bytes, fewer than all: the transport must write the rest before
    /// anything else.
    Part(usize),
    /// Nothing (the socket is full or failed): the message is queued as usual.
    Nothing,
}
