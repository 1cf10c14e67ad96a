//! The wire contract shared by every transport: channel names, epochs, positions, cursors,
//! delivered messages and gaps (see `docs/PROTOCOL.md`).
//!
//! Everything here is pure: parsing and formatting only. It must not know about HTTP,
//! sockets or engines, so that every transport encodes exactly the same bytes.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::Error;

/// Longest channel name, in bytes (all allowed characters are ASCII).
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest epoch token.
pub const MAX_EPOCH_LEN: usize = 16;

/// The text of a channel name or an epoch, shared by every copy. Compared by pointer
/// before text: every delivery compares the message's channel and epoch with the
/// subscriber's, and a subscriber's position holds the epoch of the last message it
/// took, the allocation every later message of that history shares.
#[derive(Clone, Eq, PartialOrd, Ord)]
struct SharedStr(Arc<str>);

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl std::hash::Hash for SharedStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// A validated channel name: 1 to 128 characters from `A-Z a-z 0-9 _ - . : /`.
///
/// Cheap to clone; `,` and `@` can never appear because they delimit cursors.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(SharedStr);

impl Channel {
    /// Parses a channel name, rejecting anything outside the allowed alphabet.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let ok =
            !name.is_empty() && name.len() <= MAX_CHANNEL_LEN && name.bytes().all(is_channel_byte);
        if ok {
            Ok(Channel(SharedStr(Arc::from(name))))
        } else {
            Err(Error::BadChannel(truncate_for_message(name)))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, if the name has one.
    pub fn namespace(&self) -> Option<&str> {
        split_once_ascii(&self.0, b':').map(|(ns, _)| ns)
    }
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/')
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// The identity of one channel history; offsets are only comparable within one epoch.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(SharedStr);

impl Epoch {
    /// Parses an epoch token: 1 to 16 ASCII letters and digits.
    pub fn parse(token: &str) -> Option<Self> {
        let ok = !token.is_empty()
            && token.len() <= MAX_EPOCH_LEN
            && token.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| Epoch(SharedStr(Arc::from(token))))
    }

    /// A fresh random epoch of eight characters.
    pub fn random() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let token: String = (0..8)
            .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
            .collect();
        Epoch(SharedStr(Arc::from(token)))
    }

    /// The token as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// Where a reader stands in one channel: it has everything up to and including `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The history this offset belongs to.
    pub epoch: Epoch,
    /// The last offset the reader has; 0 means none yet.
    pub offset: u64,
}

/// How a live message relates to the position a reader holds in its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// The very next message: deliver it.
    Next,
    /// Already read: drop it.
    Duplicate,
    /// Something is missing before it (or its history is another epoch): read history.
    Hole,
}

impl Position {
    /// How `message`, of this position's channel, relates to it.
    pub fn fit(&self, message: &Message) -> Fit {
        if self.epoch != message.epoch {
            Fit::Hole
        } else if message.offset <= self.offset {
            Fit::Duplicate
        } else if message.offset == self.offset + 1 {
            Fit::Next
        } else {
            Fit::Hole
        }
    }
}

/// A resume token over several channels: `chat@e1X9:42,room:lobby@k3Jd:7`.
///
/// An entry without a position (`chat`) means "from now on".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// One entry per channel, in the order given; channels are unique.
    pub entries: Vec<(Channel, Option<Position>)>,
}

/// Cursor entries checked for duplicates by scanning; longer cursors switch to a set.
const SCANNED_ENTRIES: usize = 16;

impl Cursor {
    /// Parses a cursor, rejecting duplicate channels and more than `max_channels` entries.
    pub fn parse(text: &str, max_channels: usize) -> Result<Self, Error> {
        if text.is_empty() {
            return Ok(Cursor::default());
        }
        let mut entries: Vec<(Channel, Option<Position>)> =
            Vec::with_capacity(max_channels.min(text.bytes().filter(|&b| b == b',').count() + 1));
        // Duplicates are found by scan while the cursor is short (nearly all are one or
        // two channels, and a set costs an allocation and a SipHash per entry) and by set
        // beyond that, so that a 128-entry cursor stays linear.
        let mut seen: Option<std::collections::HashSet<Channel>> = None;
        for part in split_ascii(text, b',') {
            if entries.len() == max_channels {
                return Err(Error::TooManyChannels(max_channels));
            }
            let (name, position) = match split_once_ascii(part, b'@') {
                None => (part, None),
                Some((name, rest)) => {
                    let (epoch, offset) = split_once_ascii(rest, b':').ok_or_else(|| {
                        Error::BadCursor(format!(
                            "entry {:?} lacks ':offset'",
                            truncate_for_message(part)
                        ))
                    })?;
                    let epoch = Epoch::parse(epoch).ok_or_else(|| {
                        Error::BadCursor(format!("bad epoch in {:?}", truncate_for_message(part)))
                    })?;
                    let offset = parse_offset(offset).ok_or_else(|| {
                        Error::BadCursor(format!("bad offset in {:?}", truncate_for_message(part)))
                    })?;
                    (name, Some(Position { epoch, offset }))
                }
            };
            let channel = Channel::parse(name).map_err(|_| {
                Error::BadCursor(format!("bad channel in {:?}", truncate_for_message(part)))
            })?;
            let duplicate = match &mut seen {
                Some(set) => !set.insert(channel.clone()),
                None if entries.len() < SCANNED_ENTRIES => {
                    entries.iter().any(|(c, _)| *c == channel)
                }
                None => {
                    let set = seen.insert(entries.iter().map(|(c, _)| c.clone()).collect());
                    !set.insert(channel.clone())
                }
            };
            if duplicate {
                return Err(Error::BadCursor(format!("channel {channel} appears twice")));
            }
            entries.push((channel, position));
        }
        Ok(Cursor { entries })
    }

    /// The channels, in cursor order.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.entries.iter().map(|(c, _)| c)
    }

    /// The position recorded for `channel`, if any.
    pub fn position(&self, channel: &Channel) -> Option<&Position> {
        self.entries
            .iter()
            .find(|(c, _)| c == channel)
            .and_then(|(_, p)| p.as_ref())
    }

    /// Appends the text form, as `Display` writes it, without the formatting machinery:
    /// every poll answer carries one.
    pub fn put(&self, out: &mut BytesMut) {
        put_cursor(out, self.entries.iter().map(|(c, p)| (c, p.as_ref())));
    }
}

/// Appends cursor entries in their text form, `channel@epoch:offset` (or the bare
/// channel) separated by commas.
pub fn put_cursor<'a>(
    out: &mut impl BufMut,
    entries: impl IntoIterator<Item = (&'a Channel, Option<&'a Position>)>,
) {
    let mut digits = itoa::Buffer::new();
    for (i, (channel, position)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(channel.as_str().as_bytes());
        if let Some(p) = position {
            out.put_u8(b'@');
            out.put_slice(p.epoch.as_str().as_bytes());
            out.put_u8(b':');
            out.put_slice(digits.format(p.offset).as_bytes());
        }
    }
}

/// The most bytes [`put_cursor`] appends for these entries.
pub fn cursor_len_max<'a>(entries: impl IntoIterator<Item = (&'a Channel, &'a Position)>) -> usize {
    entries
        .into_iter()
        // '@', ':', ',' and up to 20 digits.
        .map(|(channel, position)| channel.as_str().len() + position.epoch.as_str().len() + 23)
        .sum()
}

/// Offsets are plain decimal u64: no sign, no leading `+`, at most 20 digits.
/// `str::split_once` for an ASCII byte. A cursor's or a query's parts are a few bytes
/// long, and scanning them costs less than setting up `str`'s searcher, which callgrind
/// showed at about 150 instructions a call.
pub fn split_once_ascii(text: &str, byte: u8) -> Option<(&str, &str)> {
    debug_assert!(byte.is_ascii());
    let at = text.bytes().position(|b| b == byte)?;
    // An ASCII byte is a char boundary on both sides.
    Some((&text[..at], &text[at + 1..]))
}

/// `str::split` for an ASCII byte, on [`split_once_ascii`]: every piece, empty ones
/// included, as `split` yields them.
pub fn split_ascii(text: &str, byte: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let remaining = rest?;
        let (piece, tail) = match split_once_ascii(remaining, byte) {
            Some((piece, tail)) => (piece, Some(tail)),
            None => (remaining, None),
        };
        rest = tail;
        Some(piece)
    })
}

fn parse_offset(text: &str) -> Option<u64> {
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if text.is_empty()
        || text.len() > 20
        || leading_zero
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (channel, position)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match position {
                Some(p) => write!(f, "{channel}@{}:{}", p.epoch, p.offset)?,
                None => write!(f, "{channel}")?,
            }
        }
        Ok(())
    }
}

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
    /// The WebSocket frame, built on first use: most messages never reach a WebSocket.
    ws_frame: OnceLock<WsFrame>,
    /// The SSE event for subscribers of this channel alone, built on first use.
    sse_event: OnceLock<Bytes>,
}

/// A message's WebSocket text frame, whole on the wire and as tungstenite's payload; both
/// share one buffer.
struct WsFrame {
    wire: Bytes,
    text: Utf8Bytes,
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

    /// The WebSocket text frame `{"op":"message",...}`, built and checked as UTF-8 once
    /// per message rather than once per subscriber.
    pub fn ws_frame(&self) -> &Utf8Bytes {
        &self.ws().text
    }

    /// The same frame as a server writes it on the wire (unmasked, final, text), so that
    /// every subscriber's socket can be given the one buffer.
    pub fn ws_wire(&self) -> &Bytes {
        &self.ws().wire
    }

    fn ws(&self) -> &WsFrame {
        self.ws_frame.get_or_init(|| {
            const PREFIX: &[u8] = b"{\"op\":\"message\",";
            let len = PREFIX.len() + self.json.len() - 1;
            let mut wire = BytesMut::with_capacity(len + 10);
            put_ws_header(&mut wire, len);
            let start = wire.len();
            wire.put_slice(PREFIX);
            wire.put_slice(&self.json[1..]);
            let wire = wire.freeze();
            // JSON built here came from a str; JSON read back from an engine might not be
            // UTF-8, and its subscribers then get an error frame instead.
            match Utf8Bytes::try_from(wire.slice(start..)) {
                Ok(text) => WsFrame { wire, text },
                Err(_) => {
                    let text = r#"{"op":"error","code":"internal","message":"invalid frame"}"#;
                    let mut wire = BytesMut::with_capacity(text.len() + 2);
                    put_ws_header(&mut wire, text.len());
                    wire.put_slice(text.as_bytes());
                    WsFrame {
                        wire: wire.freeze(),
                        text: Utf8Bytes::from_static(text),
                    }
                }
            }
        })
    }

    /// The SSE event `id: <cursor>\ndata: <json>\n\n` for a subscriber that follows this
    /// message's channel alone. Its cursor after the message is then
    /// `channel@epoch:offset`, the same for every such subscriber, so the event is built
    /// once per message rather than once per subscriber.
    pub fn sse_event(&self) -> &Bytes {
        self.sse_event.get_or_init(|| {
            let mut event =
                BytesMut::with_capacity(self.json.len() + self.channel.as_str().len() + 64);
            event.put_slice(b"id: ");
            put_cursor(&mut event, [(&self.channel, Some(&self.position()))]);
            event.put_slice(b"\ndata: ");
            event.put_slice(&self.json);
            event.put_slice(b"\n\n");
            event.freeze()
        })
    }

    /// The position a reader holds once it has this message.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

/// Appends the head of a final, unmasked text frame of `len` bytes (RFC 6455, 5.2).
fn put_ws_header(out: &mut BytesMut, len: usize) {
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

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("epoch", &self.epoch)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// A frame a WebSocket client sends.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// `{"op":"subscribe","channels":[..],"cursor":".."}`; either part may be absent.
    Subscribe {
        /// Channel names, unvalidated.
        channels: Option<Vec<String>>,
        /// A cursor, unparsed.
        cursor: Option<String>,
    },
    /// `{"op":"unsubscribe","channels":[..]}`.
    Unsubscribe {
        /// Channel names, unvalidated.
        channels: Vec<String>,
    },
    /// `{"op":"publish","channel":"..","data":<JSON>,"id":7}`.
    Publish {
        /// The channel name, unvalidated.
        channel: String,
        /// The payload, as sent.
        data: &'a serde_json::value::RawValue,
        /// Echoed in the `ack` or `error` frame.
        id: Option<u64>,
    },
}

/// The fields any frame may carry. A flat struct rather than an internally tagged enum:
/// serde buffers tagged enums, which `RawValue` cannot be read from.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrame<'a> {
    op: String,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    id: Option<u64>,
}

/// `Some` for a present field, even one holding JSON `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de serde_json::value::RawValue>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

impl<'a> ClientFrame<'a> {
    /// Parses a text frame. On failure returns the frame's `id` (when it has a readable
    /// one, to echo it) with a `bad_json` or `bad_frame` error.
    pub fn parse(text: &'a str) -> Result<Self, (Option<u64>, Error)> {
        let raw: RawFrame<'a> = serde_json::from_str(text).map_err(|err| {
            #[derive(serde::Deserialize)]
            struct Id {
                id: Option<u64>,
            }
            let id = serde_json::from_str::<Id>(text).ok().and_then(|f| f.id);
            let err = if err.is_data() {
                Error::BadFrame(err.to_string())
            } else {
                Error::BadJson(err.to_string())
            };
            (id, err)
        })?;
        let missing = |field: &str| (raw.id, Error::BadFrame(format!("{} needs {field}", raw.op)));
        match raw.op.as_str() {
            "subscribe" => Ok(ClientFrame::Subscribe {
                channels: raw.channels,
                cursor: raw.cursor,
            }),
            "unsubscribe" => Ok(ClientFrame::Unsubscribe {
                channels: raw.channels.ok_or_else(|| missing("channels"))?,
            }),
            "publish" => Ok(ClientFrame::Publish {
                channel: raw.channel.clone().ok_or_else(|| missing("channel"))?,
                data: raw.data.ok_or_else(|| missing("data"))?,
                id: raw.id,
            }),
            other => Err((
                raw.id,
                Error::BadFrame(format!(
                    "unknown op {:?}: use subscribe, unsubscribe or publish",
                    truncate_for_message(other)
                )),
            )),
        }
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

/// Shortens hostile input before echoing it in an error message.
pub(crate) fn truncate_for_message(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_splits_are_str_splits() {
        for text in ["", ",", "a", "a,b", ",a,,b,", "é,ü", "room:lobby@E:1,x"] {
            let ours: Vec<&str> = split_ascii(text, b',').collect();
            assert_eq!(ours, text.split(',').collect::<Vec<_>>(), "{text:?}");
            assert_eq!(
                split_once_ascii(text, b','),
                text.split_once(','),
                "{text:?}"
            );
        }
    }

    #[test]
    fn channel_alphabet() {
        for ok in [
            "chat",
            "room:lobby",
            "user:alice",
            "a/b.c-d_e",
            &"x".repeat(128),
        ] {
            assert!(Channel::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a,b", "a@b", "a b", "é", &"x".repeat(129), "a\0"] {
            assert!(Channel::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Channel::parse("room:lobby").unwrap().namespace(),
            Some("room")
        );
        assert_eq!(Channel::parse("chat").unwrap().namespace(), None);
    }

    #[test]
    fn cursor_round_trip() {
        let text = "chat@e1X9:42,room:lobby@k3Jd:7,news";
        let cursor = Cursor::parse(text, 128).unwrap();
        assert_eq!(cursor.entries.len(), 3);
        assert_eq!(cursor.to_string(), text);
        let mut put = BytesMut::new();
        cursor.put(&mut put);
        assert_eq!(&put[..], text.as_bytes());
        let chat = Channel::parse("chat").unwrap();
        assert_eq!(cursor.position(&chat).unwrap().offset, 42);
        assert!(Cursor::parse("", 128).unwrap().entries.is_empty());
    }

    #[test]
    fn cursor_rejects_malformed_entries() {
        for bad in [
            "chat@",
            "chat@e1",
            "chat@e1:",
            "chat@e1:-1",
            "chat@e1:+1",
            "chat@e1:x",
            "chat@e1:99999999999999999999999",
            "chat@:1",
            "chat@e!:1",
            "chat@aaaaaaaaaaaaaaaaa:1",
            "@e1:1",
            "chat,chat",
            "chat,",
            ",chat",
            "a b@e:1",
        ] {
            assert!(Cursor::parse(bad, 128).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Cursor::parse("a,b,c", 2),
            Err(Error::TooManyChannels(2))
        ));
    }

    #[test]
    fn cursor_duplicates_are_found_by_scan_and_by_set() {
        for len in [2, SCANNED_ENTRIES, SCANNED_ENTRIES + 1, 100] {
            let names: Vec<String> = (0..len).map(|i| format!("c{i}@e1:{i}")).collect();
            let distinct = names.join(",");
            assert_eq!(Cursor::parse(&distinct, 128).unwrap().entries.len(), len);
            for repeated in [0, len / 2, len - 1] {
                let text = format!("{distinct},c{repeated}");
                let err = Cursor::parse(&text, 128).unwrap_err();
                assert!(err.to_string().contains("appears twice"), "{len}: {err}");
            }
        }
    }

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
        let ws: serde_json::Value = serde_json::from_slice(m.ws_frame().as_bytes()).unwrap();
        assert_eq!(ws["op"], "message");
        assert_eq!(ws["offset"], 42);
    }

    #[test]
    fn the_ws_wire_frame_is_a_final_unmasked_text_frame_of_the_payload() {
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        // Each length class of the frame head: 7 bits, 16 bits, 64 bits.
        for size in [10, 500, 70_000] {
            let data = format!("\"{}\"", "x".repeat(size));
            let m = Message::new(
                Channel::parse("chat").unwrap(),
                Epoch::parse("e1").unwrap(),
                1,
                0,
                data.as_bytes(),
            );
            let mut wire = std::io::Cursor::new(m.ws_wire().clone());
            let (head, len) = FrameHeader::parse(&mut wire).unwrap().unwrap();
            assert!(head.is_final);
            assert_eq!(head.opcode, OpCode::Data(Data::Text));
            assert_eq!(head.mask, None);
            let payload = &wire.get_ref()[wire.position() as usize..];
            assert_eq!(len as usize, payload.len());
            assert_eq!(payload, m.ws_frame().as_bytes());
        }
    }

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
    fn client_frames_parse_with_escapes_and_null_data() {
        let frame =
            ClientFrame::parse(r#"{"op":"publish","channel":"room\/1","data":null,"id":3}"#)
                .unwrap();
        let ClientFrame::Publish { channel, data, id } = frame else {
            panic!("publish");
        };
        assert_eq!(
            (channel.as_str(), data.get(), id),
            ("room/1", "null", Some(3))
        );
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"subscribe","channels":["a"]}"#),
            Ok(ClientFrame::Subscribe { .. })
        ));
        let code = |text: &str| ClientFrame::parse(text).unwrap_err().1.code();
        assert_eq!(code("{"), "bad_json");
        assert_eq!(code(r#"{"op":"dance"}"#), "bad_frame");
        assert_eq!(code(r#"{"op":"publish","channel":"a"}"#), "bad_frame");
        assert_eq!(code(r#"{"op":"subscribe","extra":1}"#), "bad_frame");
        assert_eq!(code("[]"), "bad_frame");
        assert_eq!(
            ClientFrame::parse(r#"{"op":"x","id":9}"#).unwrap_err().0,
            Some(9)
        );
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
    fn random_epochs_are_valid_and_differ() {
        let a = Epoch::random();
        assert!(Epoch::parse(a.as_str()).is_some());
        assert_ne!(a, Epoch::random());
    }
}
