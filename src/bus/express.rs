//! Express delivery: a live message written to an idle subscriber's socket by the fan-out
//! itself, neither queued nor waking the subscriber's task.
//!
//! At paced rates nearly every delivery finds its subscriber idle, and then waking a task,
//! polling it and popping its queue costs as much user time as the `send()` it ends in.
//! The transport keeps the writing (it knows its framing and its socket); the bus decides
//! when the hub may call it. A subscriber is *armed* by its transport while it is parked
//! with nothing unwritten; the hub writes a message express only while the subscriber is
//! armed, its queue is empty and the message is the next offset of its channel (of any
//! of its channels, if the transport's framing allows: see [`Express::several_channels`]). Any
//! other case, and a socket that does not take the whole message, falls back to the queue
//! and disarms, so messages never overtake one another and the transport never writes
//! while the hub may.

use crate::protocol::Message;

/// A transport's way to write one message straight to its socket, without waiting.
pub trait Express: Send + Sync {
    /// Writes what the socket takes now of `message`'s wire form.
    fn write(&self, message: &Message) -> Written;

    /// Whether the writer holds nothing unwritten of its own; the hub is armed only then.
    fn idle(&self) -> bool {
        true
    }

    /// Whether a message's wire form is the same whatever else its subscriber follows:
    /// only then does the hub write for a subscriber of several channels. A WebSocket
    /// frame names the message's own position alone; an SSE event's id is the whole
    /// cursor of its subscriber.
    fn several_channels(&self) -> bool {
        false
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
