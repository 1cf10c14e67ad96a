//! The event a message keeps for SSE subscribers of its channel alone. Their cursor after
//! the message is `channel@epoch:offset`, the same for each of them, so the event is
//! built once per message, the first time one of them needs it, rather than once per
//! subscriber; a subscriber of several channels gets an event with its own cursor instead
//! (see [`super::encode`]).

use bytes::{Bytes, BytesMut};

use super::put_event;
use crate::protocol::{Message, put_cursor};

/// A message's SSE event to a subscriber of its channel alone, encoded on first use and
/// kept by the message.
pub trait SseEvent {
    /// The event `id: channel@epoch:offset\ndata: <json>\n\n`, its `id:` the cursor that
    /// resumes right after this message.
    fn sse_event(&self) -> &Bytes;
}

impl SseEvent for Message {
    #[inline] // On every delivery; a call across codegen units otherwise.
    fn sse_event(&self) -> &Bytes {
        self.sse_encoding(encode)
    }
}

/// Builds `message`'s event in one buffer.
fn encode(message: &Message) -> Bytes {
    let mut event =
        BytesMut::with_capacity(message.json().len() + message.channel.as_str().len() + 64);
    put_event(&mut event, message, |out| {
        put_cursor(out, [(&message.channel, Some(&message.position()))]);
    });
    event.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Channel, Cursor, Epoch};

    #[test]
    fn the_shared_sse_event_resumes_right_after_its_message() {
        let m = Message::new(
            Channel::parse("room:lobby").unwrap(),
            Epoch::parse("k3Jd").unwrap(),
            7,
            1_764_300_000_000,
            br#"{"n":1}"#,
        );
        let event = std::str::from_utf8(m.sse_event()).unwrap();
        let json = std::str::from_utf8(m.json()).unwrap();
        assert_eq!(event, format!("id: room:lobby@k3Jd:7\ndata: {json}\n\n"));
        let id = event
            .strip_prefix("id: ")
            .unwrap()
            .split('\n')
            .next()
            .unwrap();
        let cursor = Cursor::parse(id, 1).unwrap();
        assert_eq!(cursor.position(&m.channel), Some(&m.position()));
    }
}
