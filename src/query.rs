//! Query strings: parsed once per request, borrowed when nothing is escaped. A leaf
//! (it knows only the error type).

use std::borrow::Cow;
use std::ops::Range;

use crate::error::{Error, Result};

/// A parsed query string; the first occurrence of a key wins.
///
/// A query with nothing escaped (a backend's, a poller's) is borrowed as it came; an
/// escaped one is decoded, every key and value into one string. The places of the first
/// pairs are kept inline: a poll parses a query for every answer, and the allocations were
/// most of its cost.
pub struct Query<'a> {
    text: Cow<'a, str>,
    /// The first pairs: a route reads a handful. Room for all 32 inline was 512 bytes to
    /// clear and copy for every query.
    first: [Pair; INLINE_PAIRS],
    /// The pairs after them, up to [`MAX_PAIRS`] in all.
    more: Vec<Pair>,
    /// How many pairs there are.
    len: u8,
}

/// Most pairs kept: no route reads more than a handful, and a hostile `a&a&a…` query would
/// otherwise cost many times its size while a long poll is held.
const MAX_PAIRS: usize = 32;
/// Pairs kept inline.
const INLINE_PAIRS: usize = 6;

/// Where a key and its value lie in the query's text. A request head, query included, is
/// at most hyper's limit of a few hundred KiB (16 KiB on the lean path), far inside `u32`.
#[derive(Clone, Copy, Default)]
struct Pair {
    key: (u32, u32),
    value: (u32, u32),
}

impl<'a> Query<'a> {
    /// Parses the query of a request URI (percent-decoding, `+` as space). Only the first
    /// 32 pairs are kept.
    pub fn parse(query: Option<&'a str>) -> Self {
        let raw = query.unwrap_or("");
        let mut query = Query {
            text: Cow::Borrowed(raw),
            first: [Pair::default(); INLINE_PAIRS],
            more: Vec::new(),
            len: 0,
        };
        // The splitting of form_urlencoded::parse: empty pieces are skipped, and a piece
        // without `=` is a key with an empty value. A key is short, so its `=` is found by
        // a plain scan; a value (a cursor) may be long, so its end is found by memchr.
        let bytes = raw.as_bytes();
        let escaped = memchr::memchr2(b'%', b'+', bytes).is_some();
        let mut start = 0;
        while start <= bytes.len() {
            let end = memchr::memchr(b'&', &bytes[start..]).map_or(bytes.len(), |at| start + at);
            if end > start {
                let (key, value) = match bytes[start..end].iter().position(|&b| b == b'=') {
                    Some(at) => (start..start + at, start + at + 1..end),
                    None => (start..end, end..end),
                };
                let pair = Pair {
                    key: narrow(key),
                    value: narrow(value),
                };
                match query.first.get_mut(usize::from(query.len)) {
                    Some(slot) => *slot = pair,
                    None => query.more.push(pair),
                }
                query.len += 1;
                if usize::from(query.len) == MAX_PAIRS {
                    break;
                }
            }
            start = end + 1;
        }
        if escaped {
            // Decoded part by part into one string; `&` and `=` are ASCII, so every
            // range found above is on char boundaries. Enough room unless invalid UTF-8
            // is replaced by wider U+FFFD.
            let mut decoded = String::with_capacity(raw.len());
            let part = |(start, end): (u32, u32)| &raw[start as usize..end as usize];
            let inline = usize::from(query.len).min(INLINE_PAIRS);
            for pair in query.first[..inline].iter_mut().chain(&mut query.more) {
                pair.key = push_decoded(&mut decoded, part(pair.key));
                pair.value = push_decoded(&mut decoded, part(pair.value));
            }
            query.text = Cow::Owned(decoded);
        }
        query
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        let text = &*self.text;
        let pair = self.pairs().find(|pair| {
            let (start, end) = pair.key;
            text.as_bytes().get(start as usize..end as usize) == Some(key.as_bytes())
        })?;
        let (start, end) = pair.value;
        text.get(start as usize..end as usize)
    }

    /// Every `(key, value)`, in order, decoded; the first occurrence of a key is not
    /// singled out here.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let text = &*self.text;
        let part = |(start, end): (u32, u32)| text.get(start as usize..end as usize).unwrap_or("");
        self.pairs()
            .map(move |pair| (part(pair.key), part(pair.value)))
    }

    /// The pairs, in order.
    fn pairs(&self) -> impl Iterator<Item = &Pair> {
        let inline = usize::from(self.len).min(INLINE_PAIRS);
        self.first[..inline].iter().chain(&self.more)
    }

    /// The value of `key` as a number, if present.
    pub fn number(&self, key: &'static str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| Error::BadParam {
                    name: key,
                    reason: "expected a non-negative whole number".into(),
                })
            })
            .transpose()
    }
}

/// Appends `part` form-decoded (`+` as space, percent escapes, invalid UTF-8 replaced) to
/// `text` and returns where it landed. Most parts need no decoding and are copied as they
/// are; the others are decoded straight onto the end of `text` (browsers encode the `@`
/// and `:` of every cursor), with no copy of the part and no allocation.
fn push_decoded(text: &mut String, part: &str) -> (u32, u32) {
    let start = text.len();
    if memchr::memchr2(b'%', b'+', part.as_bytes()).is_none() {
        text.push_str(part);
        return (start as u32, text.len() as u32);
    }
    let mut bytes = std::mem::take(text).into_bytes();
    let mut rest = part.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => match (rest.first().and_then(hex), rest.get(1).and_then(hex)) {
                (Some(high), Some(low)) => {
                    bytes.push(high << 4 | low);
                    rest = &rest[2..];
                }
                // Not an escape: kept as it is.
                _ => bytes.push(b'%'),
            },
            byte => bytes.push(byte),
        }
    }
    *text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let mut bytes = err.into_bytes();
            let decoded = bytes.split_off(start);
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            text.push_str(&String::from_utf8_lossy(&decoded));
            text
        }
    };
    (start as u32, text.len() as u32)
}

/// A range of the query as stored (see [`Pair`]).
fn narrow(range: Range<usize>) -> (u32, u32) {
    (range.start as u32, range.end as u32)
}

/// The value of one hex digit.
fn hex(digit: &u8) -> Option<u8> {
    (*digit as char).to_digit(16).map(|value| value as u8)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::Query;

    #[test]
    fn query_decodes_and_the_first_occurrence_wins() {
        let query = Query::parse(Some("a=1&b=x%40y+z&a=2&empty=&c%3D=%E2%9C%93"));
        assert_eq!(query.get("a"), Some("1"));
        assert_eq!(query.get("b"), Some("x@y z"));
        assert_eq!(query.get("empty"), Some(""));
        assert_eq!(query.get("c="), Some("✓"));
        assert_eq!(query.get("missing"), None);
        assert_eq!(Query::parse(None).get("a"), None);
        // Nothing escaped: the same rules on the text as it came.
        let plain = Query::parse(Some("&a=1&&b&c=x=y&a=2&"));
        assert_eq!(plain.get("a"), Some("1"));
        assert_eq!(plain.get("b"), Some(""));
        assert_eq!(plain.get("c"), Some("x=y"));
        assert_eq!(plain.get(""), None);
        // ... and borrowed, not copied.
        assert!(matches!(plain.text, Cow::Borrowed(_)));
        assert!(matches!(query.text, Cow::Owned(_)));
    }

    #[test]
    fn query_keeps_32_pairs_and_survives_invalid_utf8() {
        let long: Vec<String> = (0..40).map(|i| format!("k{i}={i}")).collect();
        let long = long.join("&");
        let query = Query::parse(Some(&long));
        // Both sides of the inline pairs' end, and the last pair kept.
        for (key, value) in [("k0", "0"), ("k5", "5"), ("k6", "6"), ("k31", "31")] {
            assert_eq!(query.get(key), Some(value));
        }
        assert_eq!(query.get("k32"), None);
        // The same limit when the pairs are decoded.
        let escaped = long.replace('=', "=%41");
        let query = Query::parse(Some(&escaped));
        for (key, value) in [("k0", "A0"), ("k5", "A5"), ("k6", "A6"), ("k31", "A31")] {
            assert_eq!(query.get(key), Some(value));
        }
        assert_eq!(query.get("k32"), None);
        let bad = Query::parse(Some("x=%FF%FE&y=2"));
        assert_eq!(bad.get("x"), Some("\u{FFFD}\u{FFFD}"));
        assert_eq!(bad.get("y"), Some("2"));
    }

    proptest::proptest! {
        /// The same decoding as the reference percent-decoder with `+` as space, for any
        /// part and whatever precedes it.
        #[test]
        fn query_parts_decode_like_the_reference(
            before in "[a-z%]{0,4}",
            part in "([a-zA-Z0-9@:+ ]|%[0-9a-fA-F]{0,2}|%[g-z]|%[89a-fA-F][0-9a-fA-F]){0,12}",
        ) {
            let text = format!("k={before}&v={part}");
            let query = Query::parse(Some(&text));
            let reference = percent_encoding::percent_decode_str(&part.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            proptest::prop_assert_eq!(query.get("v"), Some(reference.as_str()));
        }
    }
}
