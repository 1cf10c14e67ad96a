//! Security: credentials, channel rules, browser origins and limits, each checked against
//! a real gateway on 127.0.0.1:0 with real clients.
//!
//! Every refusal is checked three ways: the HTTP status (or WebSocket close code), the
//! error code clients match on, and `cascade_errors_total{code}` moving, so that operators
//! see it too. Tests start from the built-in secure defaults ([`secure_config`]), never
//! from the open `test_config`, and set each rule they test explicitly.

mod support;

#[path = "security/connections.rs"]
mod connections;
#[path = "security/keys.rs"]
mod keys;
#[path = "security/limits.rs"]
mod limits;
#[path = "security/origins.rs"]
mod origins;
#[path = "security/refusals.rs"]
mod refusals;
#[path = "security/rules.rs"]
mod rules;
#[path = "security/tickets.rs"]
mod tickets;
#[path = "security/tokens.rs"]
mod tokens;

use std::net::SocketAddr;

use cascade::auth::Auth;
use cascade::auth::token::{Claims, now_secs};
use cascade::config::Config;
use serde_json::{Value, json};
use support::{TestServer, WsClient, http, within};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The HS256 secret of [`secure_config`].
pub const SECRET: &str = "security-tests-hmac-secret-0123456789";

/// The built-in defaults (what a gateway without a config file runs with) plus an HS256
/// secret and short timers. Rules and limits are left exactly as shipped.
pub fn secure_config() -> Config {
    let mut config = Config::from_sources("", Vec::<(String, String)>::new()).expect("defaults");
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.longpoll.timeout_ms = 2_000;
    config.sse.heartbeat_ms = 200;
    // Long enough that a test busy elsewhere is never dropped for not answering pings.
    config.websocket.ping_interval_ms = 10_000;
    config.shutdown.drain_deadline_ms = 3_000;
    config.shutdown.reconnect_window_ms = 1_000;
    config.token.hmac_secret = SECRET.into();
    config
}

/// A token signed with `config`'s secret, as `cascade token` would mint it; `ttl` may be
/// negative for an expired token.
pub fn token(config: &Config, sub: &str, channels: &[&str], publish: &[&str], ttl: i64) -> String {
    let exp = now_secs().saturating_add_signed(ttl);
    token_until(config, sub, channels, publish, exp)
}

/// A token signed with `config`'s secret that expires at `exp` (unix seconds).
pub fn token_until(
    config: &Config,
    sub: &str,
    channels: &[&str],
    publish: &[&str],
    exp: u64,
) -> String {
    let claims = Claims {
        sub: sub.to_owned(),
        exp,
        channels: channels.iter().map(|c| c.to_string()).collect(),
        publish: publish.iter().map(|c| c.to_string()).collect(),
    };
    Auth::from_config(config)
        .expect("auth from config")
        .sign(&claims)
        .expect("sign")
}

/// The series of `cascade_errors_total` for one code.
pub fn errors_series(code: &str) -> String {
    format!(r#"cascade_errors_total{{code="{code}"}}"#)
}

/// The current value of `cascade_errors_total{code}`.
pub async fn errors(server: &TestServer, code: &str) -> f64 {
    server.metric(&errors_series(code)).await
}

/// Sends `request` and checks the refusal: status, JSON error code, and the error counter
/// moving by exactly one.
pub async fn refused(
    server: &TestServer,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &str,
    what: &str,
) -> reqwest::header::HeaderMap {
    let before = errors(server, code).await;
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let headers = response.headers().clone();
    assert_eq!(response.status().as_u16(), status, "{what}");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let after = errors(server, code).await;
    assert_eq!(
        after,
        before + 1.0,
        "{what}: cascade_errors_total{{{code}}}"
    );
    headers
}

/// Sends `request` and checks that it is served (200), returning the response.
pub async fn served(request: reqwest::RequestBuilder, what: &str) -> reqwest::Response {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        panic!("{what}: expected 200, got {status}: {body}");
    }
    response
}

/// `POST /publish` of `{"n":n}` to `channel`.
pub fn publish(server: &TestServer, channel: &str, n: u64) -> reqwest::RequestBuilder {
    http()
        .post(server.url("/publish"))
        .json(&json!({"channel": channel, "data": {"n": n}}))
}

/// `GET path` on `server`.
pub fn get(server: &TestServer, path: &str) -> reqwest::RequestBuilder {
    http().get(server.url(path))
}

/// Opens `/ws?query` with extra request headers; the handshake's error when refused.
pub async fn ws_open(
    server: &TestServer,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, tungstenite::Error> {
    let mut request = format!("{}?{query}", server.ws_url())
        .into_client_request()
        .expect("ws request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    let (ws, _) = within(tokio_tungstenite::connect_async(request)).await?;
    Ok(WsClient { ws })
}

/// Opens `/ws?query`, expecting the upgrade to succeed and the server to close at once
/// with `close` and the error code as reason, counted once in `cascade_errors_total`.
pub async fn ws_refused(
    server: &TestServer,
    query: &str,
    headers: &[(&str, &str)],
    close: u16,
    code: &str,
) {
    let before = errors(server, code).await;
    let mut ws = ws_open(server, query, headers)
        .await
        .unwrap_or_else(|e| panic!("/ws?{query}: the upgrade succeeds first: {e}"));
    assert_eq!(ws.closed().await, (close, code.to_owned()), "/ws?{query}");
    let after = errors(server, code).await;
    assert_eq!(
        after,
        before + 1.0,
        "/ws?{query}: cascade_errors_total{{{code}}}"
    );
}

/// Sends a WebSocket frame and checks the `error` frame it gets back, and the counter.
pub async fn ws_error(server: &TestServer, ws: &mut WsClient, frame: Value, code: &str) -> Value {
    let before = errors(server, code).await;
    ws.send(frame.clone()).await;
    let reply = ws.recv().await;
    assert_eq!(reply["op"], "error", "{frame} -> {reply}");
    assert_eq!(reply["code"], code, "{frame} -> {reply}");
    let after = errors(server, code).await;
    assert_eq!(
        after,
        before + 1.0,
        "{frame}: cascade_errors_total{{{code}}}"
    );
    reply
}

/// Subscribes over an open WebSocket and checks that it is allowed.
pub async fn ws_subscribed(ws: &mut WsClient, channel: &str) {
    ws.send(json!({"op": "subscribe", "channels": [channel]}))
        .await;
    let reply = ws.recv().await;
    assert_eq!(reply["op"], "subscribed", "subscribe {channel}: {reply}");
}

/// A `(name, value)` Authorization header for `token`.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}
