//! Small HTTP helpers shared by the routes: the response body type, JSON and error
//! responses (the one place an [`Error`] becomes a status), query strings and bounded
//! body reads.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::error::{Error, Result};

/// The body type of every response: buffered or streamed, never failing mid-way.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A `200` JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_store(&mut response);
    response
}

/// Marks a response as never cacheable: realtime answers go stale at once.
pub fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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

/// A parsed query string; the first occurrence of a key wins.
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses the query of a request URI (percent-decoding, `+` as space). Only the first
    /// 32 pairs are kept: no route reads more than a handful, and a hostile `a&a&a…`
    /// query would otherwise cost many times its size while a long poll is held.
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .take(32)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Query(pairs)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
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
