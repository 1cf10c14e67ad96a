//! Where a reader stands: positions in one channel, how a live message fits one, and
//! cursors, the resume tokens over several channels (`chat@e1X9:42,room:lobby@k3Jd:7`),
//! with the byte-level splitting their parsers share.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::{Channel, Epoch, Message, truncate_for_message};
use crate::error::Error;

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

/// Offsets are plain decimal u64: no sign, no leading `+`, at most 20 digits.
pub(super) fn parse_offset(text: &str) -> Option<u64> {
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
}
