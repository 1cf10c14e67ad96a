//! The message object as delivered (`{"channel":..,"epoch":..,"offset":..,"ts":..,
//! "from":{..},"data":..}`, `from` only on a client's publish), built once at publish and
//! shared by every subscriber; what a publish hands an engine ([`Publication`]) and how an
//! engine stores it ([`Message::stored`]); the gap that stands in for lost history; and the
//! compaction that keeps a payload on one line.

use std::fmt;
use std::sync::{Arc, OnceLock};

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

/// What a publish hands an engine: the payload, who sent it, who must not be handed it.
#[derive(Clone, Debug, Default)]
pub struct Publication {
    /// Compact, valid JSON.
    pub data: Bytes,
    /// The message object's fields between `ts` and `data`, each led by a comma: the
    /// gateway's `,"from":{..}` on a client's publish, `,"presence":".."` on a join or a
    /// leave; empty on a backend's publish. Built by [`Publication::from`] and the
    /// presence events only, never from a client's bytes.
    pub head: Bytes,
    /// The client session not to hand it to (`exclude_client`); its cursor still moves
    /// past it.
    pub exclude: Option<Arc<str>>,
}

impl Publication {
    /// A publication of `data` alone, as a backend's.
    pub fn data(data: Bytes) -> Self {
        Publication {
            data,
            ..Publication::default()
        }
    }

    /// Sets `from` to `{"user":..,"client":..}`, each `null` when unknown: the trusted
    /// sender of a client's publish. Keeps an `event` already set.
    pub fn from(mut self, user: Option<&str>, client: Option<&str>) -> Self {
        let from = serde_json::json!({"user": user, "client": client});
        let mut head = format!(",\"from\":{from}").into_bytes();
        head.extend_from_slice(&self.head);
        self.head = Bytes::from(head);
        self
    }

    /// Names the message's `event` (what a Socket.IO client's `socket.on` listens for),
    /// an [`is_event_name`] the caller checked.
    pub fn event(mut self, event: &str) -> Self {
        debug_assert!(is_event_name(event));
        let mut head = self.head.to_vec();
        // The alphabet needs no JSON escaping.
        head.extend_from_slice(format!(",\"event\":\"{event}\"").as_bytes());
        self.head = Bytes::from(head);
        self
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
    /// The client session not handed this message (see [`Publication::exclude`]).
    exclude: Option<Arc<str>>,
    /// The WebSocket transport's frame, built on first use: most messages never reach a
    /// WebSocket (see [`Message::ws_encoding`]).
    ws_frame: OnceLock<Bytes>,
    /// The SSE transport's event for subscribers of this channel alone, built on first
    /// use (see [`Message::sse_encoding`]).
    sse_event: OnceLock<Bytes>,
    /// The Socket.IO transport's event for sockets that follow this channel alone, built
    /// on first use (see [`Message::sio_encoding`]).
    sio_event: OnceLock<Bytes>,
}

impl Message {
    /// Builds a message around `data`, which must be compact, valid JSON.
    pub fn new(channel: Channel, epoch: Epoch, offset: u64, ts: u64, data: &[u8]) -> Self {
        Self::published(
            channel,
            epoch,
            offset,
            ts,
            &Publication::data(Bytes::copy_from_slice(data)),
        )
    }

    /// Builds the message a publication becomes at `offset`.
    pub fn published(
        channel: Channel,
        epoch: Epoch,
        offset: u64,
        ts: u64,
        publication: &Publication,
    ) -> Self {
        use std::fmt::Write as _;
        let (head, data) = (&publication.head, &publication.data);
        let mut json =
            BytesMut::with_capacity(80 + channel.as_str().len() + head.len() + data.len());
        // Channel and epoch alphabets need no JSON escaping; writing to BytesMut cannot fail.
        let _ = write!(
            json,
            r#"{{"channel":"{channel}","epoch":"{epoch}","offset":{offset},"ts":{ts}"#
        );
        json.put_slice(head);
        json.put_slice(b",\"data\":");
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
            exclude: publication.exclude.clone(),
            ws_frame: OnceLock::new(),
            sse_event: OnceLock::new(),
            sio_event: OnceLock::new(),
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
        // The fields between `ts` and `data` (`from`, `presence`) are kept as they are.
        // The first `,"data":` is the field: inside a string its quote would be escaped.
        let (ts, rest) = rest.split_once(",\"data\":")?;
        let ts = &ts[..ts.find(|c: char| !c.is_ascii_digit()).unwrap_or(ts.len())];
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
            exclude: None,
            ws_frame: OnceLock::new(),
            sse_event: OnceLock::new(),
            sio_event: OnceLock::new(),
        })
    }

    /// How an engine that stores messages as bytes (Redis) keeps it: the message object,
    /// led by the excluded client's id when there is one. [`Message::from_stored`] reads it
    /// back; the prefix is what an engine script puts before the object it builds.
    pub fn stored_prefix(exclude: Option<&str>) -> &str {
        // An id is base64url, never `{`: the first byte tells the two forms apart.
        exclude.unwrap_or("")
    }

    /// Reads back what [`Message::stored_prefix`] and the message object make.
    pub fn from_stored(stored: Bytes) -> Option<Self> {
        let start = stored.iter().position(|&b| b == b'{')?;
        if start == 0 {
            return Self::from_json(stored);
        }
        let exclude = std::str::from_utf8(&stored[..start]).ok()?;
        let exclude: Arc<str> = Arc::from(exclude);
        let mut message = Self::from_json(stored.slice(start..))?;
        message.exclude = Some(exclude);
        Some(message)
    }

    /// Whether the client session `client` is not to be handed this message.
    pub fn excludes(&self, client: &str) -> bool {
        self.exclude.as_deref() == Some(client)
    }

    /// The client session not to be handed this message, if any.
    pub fn excluded(&self) -> Option<&str> {
        self.exclude.as_deref()
    }

    /// Whether some client session is not to be handed this message.
    pub fn excludes_anyone(&self) -> bool {
        self.exclude.is_some()
    }

    /// The message object as delivered by SSE and the polling transports.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The publish's `event` name, if it named one ([`Publication::event`]).
    pub fn event(&self) -> Option<&str> {
        // The fields before `data` are the gateway's own, built without a client's bytes:
        // the marker cannot occur inside a string there.
        let head = std::str::from_utf8(&self.json[..self.data_start]).ok()?;
        let (_, rest) = head.split_once(",\"event\":\"")?;
        rest.split_once('"').map(|(event, _)| event)
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

    /// The Socket.IO event packet this message keeps for sockets that follow its channel
    /// alone (their recovery offset is the message's own position): `encode`d on its first
    /// use, then the same bytes for every such socket. The Socket.IO transport owns the
    /// encoding and is the one caller, always with the same `encode`.
    pub(crate) fn sio_encoding(&self, encode: impl FnOnce(&Self) -> Bytes) -> &Bytes {
        self.sio_event.get_or_init(|| encode(self))
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

/// Longest `event` name of a publish, in bytes.
pub const MAX_EVENT_LEN: usize = 64;

/// Whether `name` may be a publish's `event`: 1 to 64 of `A-Z a-z 0-9 _ - . : /`.
pub fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EVENT_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
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

    #[test]
    fn from_and_exclusion_survive_storage() {
        let publication = Publication {
            exclude: Some(Arc::from("AAAAAAAAAAAAAAAAAAAAAA")),
            ..Publication::data(Bytes::from_static(br#"{"t":1}"#))
        }
        .from(Some("al\"ice,\"data\":1}"), Some("AAAAAAAAAAAAAAAAAAAAAA"));
        let m = Message::published(
            Channel::parse("room:1").unwrap(),
            Epoch::parse("k3Jd").unwrap(),
            3,
            1_764_300_000_000,
            &publication,
        );
        let json: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
        assert_eq!(json["from"]["user"], "al\"ice,\"data\":1}");
        assert_eq!(json["from"]["client"], "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(json["data"], serde_json::json!({"t":1}));
        let mut stored = Message::stored_prefix(publication.exclude.as_deref())
            .as_bytes()
            .to_vec();
        stored.extend_from_slice(m.json());
        let back = Message::from_stored(Bytes::from(stored)).unwrap();
        assert_eq!(back.json(), m.json());
        assert_eq!((back.ts, back.data()), (m.ts, &br#"{"t":1}"#[..]));
        assert!(back.excludes("AAAAAAAAAAAAAAAAAAAAAA") && !back.excludes("B"));
        let plain = Message::from_stored(m.json().clone()).unwrap();
        assert!(!plain.excludes_anyone());
    }

    /// A history keeps every retained message: the transports' encodings cost it one
    /// `Bytes` slot each, 40 bytes, whether built or not.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_message_is_its_fields_and_three_encoding_slots() {
        // 168 before `exclude_client` (issue 23); 184 before the Socket.IO event's slot
        // (issue 24), which spares a fan-out to Socket.IO sockets an encoding per socket.
        assert_eq!(std::mem::size_of::<Message>(), 224);
    }
}
