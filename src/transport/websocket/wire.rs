//! A message's WebSocket frame, `{"op":"message",...}` as a final, unmasked text frame
//! (RFC 6455, 5.2). Built once per message, the first time a subscriber needs it, and
//! kept by the message, so that every subscriber's socket is given the same buffer: the
//! hub's express writes and a connection's direct writes whole, tungstenite its payload.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::protocol::Message;

/// What a message's frame starts with, before the rest of the message object.
const PREFIX: &[u8] = b"{\"op\":\"message\",";

/// A message's WebSocket frame, encoded on first use and kept by the message.
pub trait WsFrame {
    /// The frame as a server writes it on the wire (unmasked, final, text), so that
    /// every subscriber's socket can be given the one buffer.
    fn ws_wire(&self) -> &Bytes;

    /// The frame's payload, the text `{"op":"message",...}`: what tungstenite writes
    /// after the head, and what a delivery is counted as.
    fn ws_frame(&self) -> &[u8];

    /// The frame for tungstenite to write, its payload sharing [`WsFrame::ws_wire`]'s
    /// buffer: what a `Message::Text` becomes inside tungstenite, without building one.
    fn ws_message(&self) -> tungstenite::Message;
}

// Inlined: both are on every delivery, called from other codegen units.
impl WsFrame for Message {
    #[inline]
    fn ws_wire(&self) -> &Bytes {
        self.ws_encoding(encode)
    }

    #[inline]
    fn ws_frame(&self) -> &[u8] {
        let wire = self.ws_wire();
        &wire[head_len(wire.len())..]
    }

    fn ws_message(&self) -> tungstenite::Message {
        let wire = self.ws_wire();
        let payload = wire.slice(head_len(wire.len())..);
        tungstenite::Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), true))
    }
}

/// Builds `message`'s frame, head and payload in one buffer.
fn encode(message: &Message) -> Bytes {
    let json = message.json();
    let len = PREFIX.len() + json.len() - 1;
    let mut wire = BytesMut::with_capacity(len + 10);
    put_head(&mut wire, len);
    let start = wire.len();
    wire.put_slice(PREFIX);
    wire.put_slice(&json[1..]);
    // JSON built at publish came from a str; JSON read back from an engine might not be
    // UTF-8, and its subscribers then get an error frame instead.
    if std::str::from_utf8(&wire[start..]).is_ok() {
        return wire.freeze();
    }
    const ERROR: &str = r#"{"op":"error","code":"internal","message":"invalid frame"}"#;
    let mut wire = BytesMut::with_capacity(ERROR.len() + 2);
    put_head(&mut wire, ERROR.len());
    wire.put_slice(ERROR.as_bytes());
    wire.freeze()
}

/// `text` as a final, unmasked text frame, head and payload in one buffer.
pub fn text_frame(text: &str) -> Bytes {
    let mut wire = BytesMut::with_capacity(text.len() + 10);
    put_head(&mut wire, text.len());
    wire.put_slice(text.as_bytes());
    wire.freeze()
}

/// Appends the head of a final, unmasked text frame of `len` bytes (RFC 6455, 5.2).
fn put_head(out: &mut BytesMut, len: usize) {
    out.put_u8(0x81);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// The length of the head [`put_head`] wrote in front of a frame `wire_len` bytes long:
/// 2 bytes below 126 of payload, 4 up to 65,535, 10 beyond.
fn head_len(wire_len: usize) -> usize {
    if wire_len < 2 + 126 {
        2
    } else if wire_len <= 4 + u16::MAX as usize {
        4
    } else {
        10
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    use super::*;
    use crate::protocol::{Channel, Epoch};

    fn message(data: &[u8]) -> Message {
        Message::new(
            Channel::parse("chat").unwrap(),
            Epoch::parse("e1X9").unwrap(),
            42,
            1_764_300_000_000,
            data,
        )
    }

    #[test]
    fn the_frame_is_the_message_object_with_its_op() {
        let m = message(br#"{"text":"hi"}"#);
        let ws: serde_json::Value = serde_json::from_slice(m.ws_frame()).unwrap();
        assert_eq!(ws["op"], "message");
        assert_eq!(ws["offset"], 42);
        let json: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
        for (key, value) in json.as_object().unwrap() {
            assert_eq!(&ws[key], value, "{key}");
        }
    }

    #[test]
    fn the_ws_wire_frame_is_a_final_unmasked_text_frame_of_the_payload() {
        // Each length class of the frame head (7 bits, 16 bits, 64 bits) and the payload
        // lengths either side of each boundary.
        let base = PREFIX.len() + message(b"\"\"").json().len() - 1;
        let sizes = [
            10,
            500,
            70_000,
            125 - base,
            126 - base,
            65_535 - base,
            65_536 - base,
        ];
        for size in sizes {
            let data = format!("\"{}\"", "x".repeat(size));
            let m = message(data.as_bytes());
            let mut wire = std::io::Cursor::new(m.ws_wire().clone());
            let (head, len) = FrameHeader::parse(&mut wire).unwrap().unwrap();
            assert!(head.is_final);
            assert_eq!(head.opcode, OpCode::Data(Data::Text));
            assert_eq!(head.mask, None);
            let payload = &wire.get_ref()[wire.position() as usize..];
            assert_eq!(len as usize, payload.len());
            assert_eq!(payload, m.ws_frame());
            let tungstenite::Message::Frame(frame) = m.ws_message() else {
                panic!("a frame");
            };
            assert!(frame.header().is_final);
            assert_eq!(frame.header().opcode, OpCode::Data(Data::Text));
            assert_eq!(frame.payload(), m.ws_frame());
        }
    }

    #[test]
    fn a_payload_that_is_not_utf8_becomes_an_error_frame() {
        let m = message(b"\"\xff\"");
        let ws: serde_json::Value = serde_json::from_slice(m.ws_frame()).unwrap();
        assert_eq!(
            (&ws["op"], &ws["code"]),
            (&"error".into(), &"internal".into())
        );
        assert_eq!(m.ws_wire()[1] as usize, m.ws_frame().len());
    }
}
