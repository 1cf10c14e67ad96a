//! Small HTTP helpers shared by the routes: the response body type, JSON and error
//! responses (the one place an [`Error`] becomes a status), request heads and bounded
//! body reads.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::auth::Identity;
use crate::conn::ConnInfo;
use crate::error::{Error, Result};

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

/// Keeps an HTTP/2 stream counted as in flight after its response is sent: an extended
/// CONNECT's, whose stream the WebSocket then is. Whoever takes the stream over holds it.
#[derive(Clone)]
pub struct HeldStream(pub std::sync::Arc<dyn Send + Sync>);

/// What the subscribing routes read of a request, whichever server took it: hyper's
/// [`Request`], or the lean path's [`LeanRequest`].
pub trait RequestHead {
    /// The query string, if the target has one.
    fn query(&self) -> Option<&str>;
    /// The request's headers.
    fn headers(&self) -> &HeaderMap;
    /// The connection the request came on, when the server recorded it.
    fn conn(&self) -> Option<&ConnInfo>;
    /// The HTTP version it came in.
    fn version(&self) -> http::Version;
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

    fn version(&self) -> http::Version {
        Request::version(self)
    }
}

/// The method a route answers (an enum of its own: `http::Method` cannot live in a
/// static table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `GET` or `POST`: Engine.IO's polling reads with one and writes with the other.
    GetOrPost,
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
    /// This many bytes follow the head, not read yet, from this admitted caller.
    Admitted(usize, Box<Identity>),
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
            LeanBody::Declared(length) | LeanBody::Admitted(length, _) => Some(length),
            _ => None,
        }
    }

    /// Records the caller admitted before the body is read.
    pub fn admit(&mut self, caller: Identity) {
        if let LeanBody::Declared(length) = self.body {
            self.body = LeanBody::Admitted(length, Box::new(caller));
        }
    }

    /// Gives the request the body read for its admitted caller, or why it was not read.
    pub fn set_body(&mut self, body: Result<Bytes>) {
        self.body = match (body, std::mem::take(&mut self.body)) {
            (Ok(body), LeanBody::Admitted(_, caller)) => LeanBody::Read(body, caller),
            // Read without an admission: a caller never admitted is never served.
            (Ok(_), _) => LeanBody::Refused(Box::new(Error::Internal(
                "a request body was read before its caller was admitted".into(),
            ))),
            (Err(err), _) => LeanBody::Refused(Box::new(err)),
        };
    }

    /// Takes the body read for a `POST` with its admitted caller (`None` for any other
    /// request), or why it was not read.
    pub fn take_body(&mut self) -> Result<Option<(Bytes, Identity)>> {
        match std::mem::take(&mut self.body) {
            LeanBody::Read(body, caller) => Ok(Some((body, *caller))),
            LeanBody::Refused(err) => Err(*err),
            LeanBody::None | LeanBody::Declared(_) | LeanBody::Admitted(..) => Ok(None),
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

    fn version(&self) -> http::Version {
        // The lean path takes HTTP/1.1 only.
        http::Version::HTTP_11
    }
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
    use super::{LeanRequest, RequestHead};

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
}
