//! The message object as delivered (`{"channel":..,"epoch":..,"offset":..,"ts":..,"data":..}`),
//! built once at publish and shared by every subscriber; the gap that stands in for lost
//! history; and the compaction that keeps a payload on one line.

use std::fmt;
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Channel, Epoch, Position, parse_offset};

/// Tells a reader that the history it asked for is gone: it continues from `first`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The channel whose history was lost.
    pub channel: Channel,
    /// The channel's current epoch.
    pub epoch: Epoch,
    /// The first offset still retained (the next one to be published if none is).
    pub first: u64,
}

impl Gap {
    /// The gap as its JSON object, `{"channel":..,"epoch":..,"first":..}`.
    pub fn to_json(&self) -> String {
        // Channel and epoch alphabets need no JSON escaping.
        format!(
            r#"{{"channel":"{}","epoch":"{}","first":{}}}"#,
            self.channel, self.epoch, self.first
        )
    }

    /// The position a reader holds after accepting this gap.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.first.saturating_sub(1),
        }
    }
}

/// One published message, encoded once and shared by every subscriber and transport.
pub struct Message {
    /// The channel it was published to.
    pub channel: Channel,
    /// The epoch of the history that holds it.
    pub epoch: Epoch,
    /// Its offset within that epoch, starting at 1.
    pub offset: u64,
    /// Publish time, unix milliseconds.
    pub ts: u64,
    /// The delivered JSON object, built once at publish.
    json: Bytes,
    /// Where `data` starts inside `json`.
    data_start: usize,
    /// The WebSocket transport's frame, built on first use: most messages never reach a
    /// WebSocket (see [`Message::ws_encoding`]).
    ws_frame: OnceLock<Bytes>,
    /// The SSE transport's event for subscribers of this channel alone, built on first
    /// use (see [`Message::sse_encoding`]).
    sse_event: OnceLock<Bytes>,
}

impl Message {
    /// Builds a message around `data`, which must be compact, valid JSON.
    pub fn new(channel: Channel, epoch: Epoch, offset: u64, ts: u64, data: &[u8]) -> Self {
        use std::fmt::Write as _;
        let mut json = BytesMut::with_capacity(80 + channel.as_str().len() + data.len());
        // Channel and epoch alphabets need no JSON escaping; writing to BytesMut cannot fail.
        let _ = write!(
            json,
            r#"{{"channel":"{channel}","epoch":"{epoch}","offset":{offset},"ts":{ts},"data":"#
        );
        let data_start = json.len();
        json.put_slice(data);
        json.put_u8(b'}');
        Message {
            channel,
            epoch,
            offset,
            ts,
            json: json.freeze(),
            data_start,
            ws_frame: OnceLock::new(),
            sse_event: OnceLock::new(),
        }
    }

    /// Parses a message object in the canonical shape built by [`Message::new`] (as an
    /// engine stores it), reusing `json` without copying. `None` for any other shape.
    pub fn from_json(json: Bytes) -> Option<Self> {
        let text = std::str::from_utf8(&json).ok()?;
        let rest = text.strip_prefix("{\"channel\":\"")?;
        let (channel, rest) = rest.split_once("\",\"epoch\":\"")?;
        let (epoch, rest) = rest.split_once("\",\"offset\":")?;
        let (offset, rest) = rest.split_once(",\"ts\":")?;
        let (ts, rest) = rest.split_once(",\"data\":")?;
        if !rest.ends_with('}') {
            return None;
        }
        let data_start = json.len() - rest.len();
        Some(Message {
            channel: Channel::parse(channel).ok()?,
            epoch: Epoch::parse(epoch)?,
            offset: parse_offset(offset)?,
            ts: parse_offset(ts)?,
            data_start,
            json,
            ws_frame: OnceLock::new(),
            sse_event: OnceLock::new(),
        })
    }

    /// The message object as delivered by SSE and the polling transports.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The data payload alone (a slice of the shared JSON).
    pub fn data(&self) -> &[u8] {
        &self.json[self.data_start..self.json.len() - 1]
    }

    /// The WebSocket frame this message keeps: `encode`d on its first use, then the same
    /// bytes for every subscriber. The WebSocket transport owns the encoding and is the one
    /// caller, always with the same `encode`; this module only keeps the result.
    pub(crate) fn ws_encoding(&self, encode: impl FnOnce(&Self) -> Bytes) -> &Bytes {
        self.ws_frame.get_or_init(|| encode(self))
    }

    /// The SSE event this message keeps for subscribers of its channel alone: `encode`d
    /// on its first use, then the same bytes for every such subscriber. The SSE transport
    /// owns the encoding and is the one caller, always with the same `encode`.
    pub(crate) fn sse_encoding(&self, encode: impl FnOnce(&Self) -> Bytes) -> &Bytes {
        self.sse_event.get_or_init(|| encode(self))
    }

    /// The position a reader holds once it has this message.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("epoch", &self.epoch)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Validates `raw` as JSON and strips insignificant whitespace, so that a payload never
/// carries a raw newline into an SSE `data:` line. Returns `None` for invalid JSON.
pub fn compact_json(raw: &[u8]) -> Option<Bytes> {
    serde_json::from_slice::<&serde_json::value::RawValue>(raw).ok()?;
    if !raw
        .iter()
        .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Some(Bytes::copy_from_slice(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in raw {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
        }
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_encodings_share_one_payload() {
        let m = Message::new(
            Channel::parse("chat").unwrap(),
            Epoch::parse("e1X9").unwrap(),
            42,
            1_764_300_000_000,
            br#"{"text":"hi"}"#,
        );
        let json: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"channel":"chat","epoch":"e1X9","offset":42,"ts":1764300000000u64,"data":{"text":"hi"}})
        );
        assert_eq!(m.data(), br#"{"text":"hi"}"#);
    }

    #[test]
    fn canonical_json_parses_back() {
        let m = Message::new(
            Channel::parse("room:lobby").unwrap(),
            Epoch::parse("k3Jd").unwrap(),
            7,
            1_764_300_000_000,
            br#"{"t":"a\",\"data\":1"}"#,
        );
        let back = Message::from_json(m.json().clone()).unwrap();
        assert_eq!(back.channel.as_str(), "room:lobby");
        assert_eq!(back.epoch.as_str(), "k3Jd");
        assert_eq!((back.offset, back.ts), (7, 1_764_300_000_000));
        assert_eq!(back.data(), m.data());
        for bad in [&b"{}"[..], b"{\"channel\":\"a\"}", b"\xff"] {
            assert!(Message::from_json(Bytes::copy_from_slice(bad)).is_none());
        }
    }

    #[test]
    fn compact_json_strips_only_insignificant_whitespace() {
        let raw = b"{ \"a\" :\n [1, 2],\t\"s\": \"x y\\\" z\" }";
        assert_eq!(
            &compact_json(raw).unwrap()[..],
            b"{\"a\":[1,2],\"s\":\"x y\\\" z\"}"
        );
        assert!(compact_json(b"{").is_none());
        assert!(compact_json(b"").is_none());
        assert_eq!(&compact_json(b"42").unwrap()[..], b"42");
    }

    #[test]
    fn gap_json_and_position() {
        let gap = Gap {
            channel: Channel::parse("chat").unwrap(),
            epoch: Epoch::parse("k3Jd").unwrap(),
            first: 5,
        };
        assert_eq!(
            gap.to_json(),
            r#"{"channel":"chat","epoch":"k3Jd","first":5}"#
        );
        assert_eq!(gap.position().offset, 4);
    }

    /// A history keeps every retained message: the transports' encodings cost it one
    /// `Bytes` slot each, 40 bytes, whether built or not.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_message_is_its_fields_and_two_encoding_slots() {
        assert_eq!(std::mem::size_of::<Message>(), 168);
    }
}
