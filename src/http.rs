//! Small HTTP helpers shared by the routes: the response body type, JSON and error
//! responses (the one place an [`Error`] becomes a status), query strings and bounded
//! body reads.

use std::borrow::Cow;
use std::convert::Infallible;
use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::auth::Identity;
use crate::error::{Error, Result};
use crate::server::ConnInfo;

/// The body of every response: buffered or streamed, never failing mid-way.
///
/// Two variants of one pointer pair's size, as the boxed body alone was: every connection
/// task that may hold a response keeps room for one. A JSON answer, which every poll
/// gets, implies its two headers by its variant instead of keeping them in a header map
/// of its own (two allocations per answer).
pub enum Body {
    /// Any body, boxed.
    Boxed(UnsyncBoxBody<Bytes, Infallible>),
    /// A complete JSON answer that is never to be cached, as [`json`] makes: its
    /// [`Body::implied_headers`] are added by whichever server writes it. Empty once
    /// handed out.
    Json(Box<Vec<u8>>),
}

impl Body {
    /// The headers this body implies, as (lower-case name, value).
    pub fn implied_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Body::Json(_) => &[
                ("content-type", "application/json"),
                // Realtime answers go stale at once.
                ("cache-control", "no-store"),
            ],
            Body::Boxed(_) => &[],
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Json(bytes) if bytes.is_empty() => std::task::Poll::Ready(None),
            Body::Json(bytes) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
                Bytes::from(std::mem::take(&mut **bytes)),
            )))),
            Body::Boxed(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Json(bytes) => bytes.is_empty(),
            Body::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Json(bytes) => http_body::SizeHint::with_exact(bytes.len() as u64),
            Body::Boxed(body) => body.size_hint(),
        }
    }
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Boxed(Full::new(bytes.into()).boxed_unsync())
}

/// A JSON response, never cached (its headers are implied by its body: see [`Body::Json`]).
pub fn json(status: StatusCode, body: impl Into<Vec<u8>>) -> Response<Body> {
    let mut response = Response::new(Body::Json(Box::new(body.into())));
    *response.status_mut() = status;
    response
}

/// Adds the headers a response's body implies, for a server that writes from the header
/// map alone (hyper).
pub fn add_implied_headers(response: &mut Response<Body>) {
    for (name, value) in response.body().implied_headers() {
        response.headers_mut().insert(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

/// The error response: status, `{"error":{"code","message"}}` and `Allow` for 405.
pub fn error_response(err: &Error) -> Response<Body> {
    let mut response = json(err.status(), err.to_json());
    if let Error::MethodNotAllowed { allow, .. } = err {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// What the subscribing routes read of a request, whichever server took it: hyper's
/// [`Request`], or the lean path's [`LeanRequest`].
pub trait RequestHead {
    /// The query string, if the target has one.
    fn query(&self) -> Option<&str>;
    /// The request's headers.
    fn headers(&self) -> &HeaderMap;
    /// The connection the request came on, when the server recorded it.
    fn conn(&self) -> Option<&ConnInfo>;
}

impl<B> RequestHead for Request<B> {
    fn query(&self) -> Option<&str> {
        self.uri().query()
    }

    fn headers(&self) -> &HeaderMap {
        Request::headers(self)
    }

    fn conn(&self) -> Option<&ConnInfo> {
        self.extensions().get()
    }
}

/// A `GET` request as the server's lean path takes it: its origin-form target, the
/// headers the routes read, and its connection.
///
/// Not an `http::Request`: its `Uri`, checked byte by byte again after the head's parser
/// had checked the target, and copied into a buffer of its own, cost about a twentieth of
/// a long poll's instructions.
pub struct LeanRequest {
    /// The target up to any fragment.
    target: Box<str>,
    /// Where the path ends: at the `?`, or the end of the target.
    path_end: usize,
    headers: HeaderMap,
    conn: Option<ConnInfo>,
    /// An `OPTIONS` request (a CORS preflight), not a `GET`.
    preflight: bool,
    /// A `POST`'s body: its declared length until the server has read it.
    body: LeanBody,
}

/// The body of a lean request: only `POST /publish` has one, of a declared length.
#[derive(Default)]
pub enum LeanBody {
    /// A `GET` or a preflight.
    #[default]
    None,
    /// This many bytes follow the head, not read yet.
    Declared(usize),
    /// Read whole, from the caller admitted before it was read.
    Read(Bytes, Box<Identity>),
    /// Not read: the caller refused, or the body too long or too slow to come. The answer
    /// says so.
    Refused(Box<Error>),
}

impl LeanRequest {
    /// A `GET` for `target` (origin-form, as the head's parser accepted it).
    pub fn new(target: &str, headers: HeaderMap, conn: Option<ConnInfo>) -> Self {
        // A fragment is never sent, and never part of the query: `Uri` drops it too.
        // `#` and `?` are ASCII, so both places are on char boundaries.
        let target = &target[..memchr::memchr(b'#', target.as_bytes()).unwrap_or(target.len())];
        LeanRequest {
            path_end: path_end(target),
            target: target.into(),
            headers,
            conn,
            preflight: false,
            body: LeanBody::None,
        }
    }

    /// The same as a `POST` with a body of `length` bytes yet to be read.
    pub fn with_body(mut self, length: usize) -> Self {
        self.body = LeanBody::Declared(length);
        self
    }

    /// The body's declared length if it is yet to be read.
    pub fn unread_body(&self) -> Option<usize> {
        match self.body {
            LeanBody::Declared(length) => Some(length),
            _ => None,
        }
    }

    /// Gives the request the body read for it and the caller admitted before it was
    /// read, or why it was not read.
    pub fn set_body(&mut self, body: Result<(Bytes, Identity)>) {
        self.body = match body {
            Ok((body, caller)) => LeanBody::Read(body, Box::new(caller)),
            Err(err) => LeanBody::Refused(Box::new(err)),
        };
    }

    /// Takes the body read for a `POST` with its admitted caller (`None` for any other
    /// request), or why it was not read.
    pub fn take_body(&mut self) -> Result<Option<(Bytes, Identity)>> {
        match std::mem::take(&mut self.body) {
            LeanBody::Read(body, caller) => Ok(Some((body, *caller))),
            LeanBody::Refused(err) => Err(*err),
            LeanBody::None | LeanBody::Declared(_) => Ok(None),
        }
    }

    /// The same as an `OPTIONS` request: a CORS preflight.
    pub fn into_preflight(mut self) -> Self {
        self.preflight = true;
        self
    }

    /// Whether it is an `OPTIONS` request (a CORS preflight).
    pub fn is_preflight(&self) -> bool {
        self.preflight
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        &self.target[..self.path_end]
    }
}

/// Where the path of an origin-form target ends: at the `?`, or the end.
pub fn path_end(target: &str) -> usize {
    memchr::memchr(b'?', target.as_bytes()).unwrap_or(target.len())
}

impl RequestHead for LeanRequest {
    fn query(&self) -> Option<&str> {
        self.target.get(self.path_end + 1..)
    }

    fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    fn conn(&self) -> Option<&ConnInfo> {
        self.conn.as_ref()
    }
}

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

/// Reads a request body, refusing more than `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(Error::BodyTooLarge(limit)),
        Err(err) => Err(Error::BadParam {
            name: "body",
            reason: format!("could not read the request body: {err}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{LeanRequest, Query, RequestHead};

    #[test]
    fn a_lean_request_splits_its_target_as_a_uri_would() {
        for (target, path, query) in [
            ("/longpoll", "/longpoll", None),
            ("/longpoll?", "/longpoll", Some("")),
            (
                "/poll?channels=a&cursor=a@e:1",
                "/poll",
                Some("channels=a&cursor=a@e:1"),
            ),
            ("/sse?channels=a#top", "/sse", Some("channels=a")),
            ("/ws#x?y", "/ws", None),
            ("/a?b?c", "/a", Some("b?c")),
        ] {
            let req = LeanRequest::new(target, http::HeaderMap::new(), None);
            assert_eq!(req.path(), path, "{target}");
            assert_eq!(req.query(), query, "{target}");
            let uri: http::Uri = target.parse().unwrap();
            assert_eq!((uri.path(), uri.query()), (path, query), "{target}");
        }
    }

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
