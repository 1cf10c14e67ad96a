//! Browser origins: the allowlist on every route (the WebSocket upgrade included), the
//! gateway's own origin, `*`, CORS answers and preflights.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use tokio_tungstenite::tungstenite;

use super::support::{TestServer, http};
use super::*;

const APP: &str = "https://app.example.com";

fn origin_config(allowed: &[&str], credentials: bool) -> Config {
    let mut config = secure_config();
    config.allowed_origins = allowed.iter().map(|o| o.to_string()).collect();
    config.cors_credentials = credentials;
    config
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ascii header"))
}

/// Every route a browser can reach, as (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/poll?channels=news"),
    ("GET", "/longpoll?channels=news&timeout=0"),
    ("GET", "/sse?channels=news"),
    ("GET", "/negotiate"),
    ("POST", "/publish"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/ws"),
    ("GET", "/cascade.js"),
    ("GET", "/no-such-route"),
    ("DELETE", "/publish"),
    ("OPTIONS", "/publish"),
];

fn request(server: &TestServer, method: &str, path: &str) -> reqwest::RequestBuilder {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let request = http().request(method.clone(), server.url(path));
    if method == Method::POST {
        request.json(&serde_json::json!({"channel": "news", "data": 1}))
    } else {
        request
    }
}

#[tokio::test]
async fn other_origins_are_refused_on_every_route() {
    let server = TestServer::start(origin_config(&[APP], false)).await;
    let port = server.addr.port();
    let evil = [
        "https://evil.example".to_owned(),
        "null".to_owned(),
        "https://app.example.com.evil.example".to_owned(),
        "https://app.example.com:8443".to_owned(),
        "http://app.example.com".to_owned(),
        "https://evilapp.example.com".to_owned(),
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
    ];
    for origin in &evil {
        for (method, path) in ROUTES {
            let what = format!("{method} {path} from {origin}");
            let request = request(&server, method, path).header("origin", origin);
            let headers = refused(&server, request, 403, "origin_not_allowed", &what).await;
            assert_eq!(
                header(&headers, "access-control-allow-origin"),
                None,
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn requests_without_origin_or_from_the_gateway_itself_pass() {
    let server = TestServer::start(origin_config(&[APP], false)).await;
    let response = served(get(&server, "/poll?channels=news"), "no Origin (a backend)").await;
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        None
    );
    // Same origin: the Origin's host is the Host header (reqwest sends 127.0.0.1:port).
    let own = format!("http://{}", server.addr);
    let response = served(
        get(&server, "/poll?channels=news").header("origin", &own),
        "same origin",
    )
    .await;
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        Some(own.as_str())
    );
    let mut ws = ws_open(&server, "", &[("origin", &own)])
        .await
        .expect("same-origin ws");
    ws_subscribed(&mut ws, "news").await;
}

#[tokio::test]
async fn allowed_origins_get_cors_headers() {
    // Trailing slashes and case in the config do not matter; the echo is what was sent.
    let server = TestServer::start(origin_config(&["HTTPS://App.Example.com/"], false)).await;
    for origin in [APP, "https://APP.example.COM"] {
        let response = served(
            get(&server, "/poll?channels=news").header("origin", origin),
            origin,
        )
        .await;
        let headers = response.headers();
        assert_eq!(header(headers, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(headers, "vary"), Some("Origin"));
        assert_eq!(header(headers, "access-control-allow-credentials"), None);
    }
    // Errors carry the CORS headers too, so the page can read them.
    let request = publish(&server, "news", 1).header("origin", APP);
    let headers = refused(&server, request, 401, "token_invalid", "anonymous publish").await;
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
    let mut ws = ws_open(&server, "", &[("origin", APP)])
        .await
        .expect("allowed ws");
    ws_subscribed(&mut ws, "news").await;
}

#[tokio::test]
async fn websocket_upgrades_from_other_origins_are_refused() {
    let server = TestServer::start(origin_config(&[APP], false)).await;
    let before = errors(&server, "origin_not_allowed").await;
    match ws_open(
        &server,
        "channels=news",
        &[("origin", "https://evil.example")],
    )
    .await
    {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            let body = response.body().as_deref().unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(body).expect("json");
            assert_eq!(body["error"]["code"], "origin_not_allowed");
        }
        Err(other) => panic!("expected a 403 handshake, got {other}"),
        Ok(_) => panic!("a cross-site WebSocket was upgraded"),
    }
    let after = errors(&server, "origin_not_allowed").await;
    assert_eq!(after, before + 1.0);
    // Credentials do not help a foreign page.
    let alice = token(&secure_config(), "alice", &[], &[], 60);
    let result = ws_open(
        &server,
        &format!("token={alice}"),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(
        matches!(result, Err(tungstenite::Error::Http(r)) if r.status() == StatusCode::FORBIDDEN)
    );
}

#[tokio::test]
async fn a_wildcard_allows_any_origin() {
    let server = TestServer::start(origin_config(&["*"], false)).await;
    for origin in ["https://evil.example", "null", "http://localhost:3000"] {
        let response = served(
            get(&server, "/poll?channels=news").header("origin", origin),
            origin,
        )
        .await;
        assert_eq!(
            header(response.headers(), "access-control-allow-origin"),
            Some(origin)
        );
        let mut ws = ws_open(&server, "", &[("origin", origin)])
            .await
            .expect("ws with '*'");
        ws_subscribed(&mut ws, "news").await;
    }
    // '*' opens origins, not channels: the rules still apply.
    let request = publish(&server, "news", 1).header("origin", "https://evil.example");
    refused(&server, request, 401, "token_invalid", "anonymous publish").await;
}

#[tokio::test]
async fn preflights_are_answered_for_allowed_origins_only() {
    for credentials in [false, true] {
        let server = TestServer::start(origin_config(&[APP], credentials)).await;
        let preflight = |origin: &str| {
            http()
                .request(Method::OPTIONS, server.url("/publish"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
        };
        let response = preflight(APP).send().await.expect("preflight");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let headers = response.headers();
        assert_eq!(header(headers, "access-control-allow-origin"), Some(APP));
        assert_eq!(
            header(headers, "access-control-allow-methods"),
            Some("GET, POST, OPTIONS")
        );
        let allowed = header(headers, "access-control-allow-headers").expect("allow-headers");
        for name in [
            "Authorization",
            "Content-Type",
            "Last-Event-ID",
            "X-Cascade-Api-Key",
        ] {
            assert!(allowed.contains(name), "{name} in {allowed}");
        }
        assert_eq!(header(headers, "access-control-max-age"), Some("600"));
        assert_eq!(header(headers, "vary"), Some("Origin"));
        let expected = credentials.then_some("true");
        assert_eq!(
            header(headers, "access-control-allow-credentials"),
            expected
        );
        // The actual request carries the credentials header the same way.
        let response = served(
            get(&server, "/poll?channels=news").header("origin", APP),
            "after preflight",
        )
        .await;
        assert_eq!(
            header(response.headers(), "access-control-allow-credentials"),
            expected
        );

        let headers = refused(
            &server,
            preflight("https://evil.example"),
            403,
            "origin_not_allowed",
            "foreign preflight",
        )
        .await;
        assert_eq!(header(&headers, "access-control-allow-origin"), None);
        assert_eq!(header(&headers, "access-control-allow-methods"), None);
    }
}

#[tokio::test]
async fn allowed_origins_come_from_the_environment() {
    let env = [(
        "CASCADE_ALLOWED_ORIGINS".to_owned(),
        "https://a.example, https://b.example".to_owned(),
    )];
    let mut config = Config::from_sources("", env).expect("config");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let server = TestServer::start(config).await;
    for origin in ["https://a.example", "https://b.example"] {
        served(
            get(&server, "/poll?channels=news").header("origin", origin),
            origin,
        )
        .await;
    }
    let request = get(&server, "/poll?channels=news").header("origin", "https://c.example");
    refused(&server, request, 403, "origin_not_allowed", "not listed").await;
}
