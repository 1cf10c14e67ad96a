//! The HTTP side of the hooks: one pooled client (hyper-util's) for `http://` and
//! `https://` backends (rustls), a POST per call, and an answer read up to a bound.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long an idle connection to the backend is kept for the next call.
const IDLE: Duration = Duration::from_secs(30);

/// Bytes read from the backend at a time. hyper's default starts at 8 KiB and adapts
/// upwards, for each connection in the pool; an answer is usually a few hundred bytes,
/// and a larger one is simply read in more steps.
const READ_BUFFER: usize = 2048;

/// Why a call brought no answer to read.
#[derive(Debug)]
pub enum Failure {
    /// No connection, a broken one, or an HTTP status other than 2xx.
    Unavailable(String),
    /// An answer over the size bound.
    TooLarge(usize),
}

/// The backend's HTTP client.
pub struct Client {
    pool: Pool<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `hooks.url` without a trailing `/`.
    base: String,
    user_agent: HeaderValue,
}

impl Client {
    /// A client for the backend at `base` (checked by the config), keeping at most
    /// `max_idle` idle connections to it.
    pub fn new(base: &str, max_idle: usize) -> Self {
        let mut http = HttpConnector::new();
        // `https://` URLs go through the TLS layer, which wants the scheme left to it.
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let pool = Pool::builder(TokioExecutor::new())
            .http1_read_buf_exact_size(READ_BUFFER)
            .pool_idle_timeout(IDLE)
            .pool_max_idle_per_host(max_idle)
            .build(https);
        Client {
            pool,
            base: base.trim_end_matches('/').to_owned(),
            user_agent: HeaderValue::from_static(concat!("cascade/", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// POSTs `body` to `{url}/{event}` with `headers`; the answer's body, at most
    /// `max_answer` bytes. The caller bounds the time.
    pub async fn post(
        &self,
        event: &str,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Bytes,
        max_answer: usize,
    ) -> Result<Bytes, Failure> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/{event}", self.base))
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, self.user_agent.clone())
            .body(Full::new(body))
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        request.headers_mut().extend(headers);
        let response = self
            .pool
            .request(request)
            .await
            .map_err(|e| Failure::Unavailable(describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Unavailable(format!("HTTP {}", status.as_u16())));
        }
        if response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|length| length > max_answer)
        {
            return Err(Failure::TooLarge(max_answer));
        }
        match Limited::new(response.into_body(), max_answer)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                Err(Failure::TooLarge(max_answer))
            }
            Err(err) => Err(Failure::Unavailable(err.to_string())),
        }
    }
}

/// The error and its causes on one line ("client error (Connect): tcp connect error:
/// Connection refused"): hyper-util's own text names only the outermost.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
