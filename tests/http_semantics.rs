//! HTTP's own rules, on both HTTP/1 paths (the lean one and hyper's): exactly one `Host`,
//! `HEAD` where probes and caches send it, and a WebSocket handshake as RFC 6455 has it.
//! Raw requests over real sockets, since HTTP clients do not send malformed ones.

mod support;

use serde_json::Value;
use support::{TestServer, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer read to the end of its connection.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn code(&self) -> String {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        body["error"]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// Sends `request` as is and reads its answer: to its `Content-Length` when it has one,
/// else to the end of the connection (every such request here asks for the close).
async fn raw(server: &TestServer, request: &str) -> Answer {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    let head_only = request.starts_with("HEAD ");
    within(async {
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                let length = head.lines().find_map(|l| {
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                match length {
                    Some(_) if head_only => return,
                    Some(length) if bytes.len() >= end + 4 + length => return,
                    _ => {}
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if head_only {
        // Anything after the head would be a body: give it a moment to show up.
        let mut chunk = [0u8; 64];
        let late = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            stream.read(&mut chunk),
        )
        .await;
        if let Ok(Ok(n)) = late {
            bytes.extend_from_slice(&chunk[..n]);
        }
    }
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8(bytes[..end].to_vec()).expect("utf-8 head");
    let status = head[9..12].parse().expect("status");
    Answer {
        status,
        head,
        body: bytes[end + 4..].to_vec(),
    }
}

/// The lean path's routes and hyper's each refuse a request without a `Host`, or with two.
#[tokio::test]
async fn an_http11_request_needs_exactly_one_host_on_both_paths() {
    let server = TestServer::default().await;
    // `/poll` is the lean path's, `/healthz` hyper's.
    for path in ["/poll?channels=a", "/healthz"] {
        let none = raw(
            &server,
            &format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            (none.status, none.code().as_str()),
            (400, "bad_request"),
            "{path}"
        );
        let two = raw(
            &server,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            (two.status, two.code().as_str()),
            (400, "bad_request"),
            "{path}"
        );
        let one = raw(
            &server,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(one.status, 200, "{path}: {}", one.head);
    }
    // HTTP/1.0 may leave it out.
    let old = raw(&server, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(old.status, 200, "{}", old.head);
    let refused = r#"cascade_errors_total{code="bad_request"}"#;
    assert_eq!(server.metric(refused).await, 4.0);
}

/// With two `Host` headers, the same-origin check once took the first: a page of
/// `http://evil` that also sent `Host: evil` passed it.
#[tokio::test]
async fn a_second_host_cannot_make_a_cross_origin_request_look_same_origin() {
    let server = TestServer::default().await;
    for path in ["/negotiate", "/healthz"] {
        let answer = raw(
            &server,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: evil\r\nHost: gateway\r\nOrigin: http://evil\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.head);
        assert_eq!(answer.header("access-control-allow-origin"), None, "{path}");
    }
}

/// Load balancers probe with `HEAD`: the head of the `GET` answer, no body.
#[tokio::test]
async fn head_is_served_on_probes_metrics_and_static_files() {
    let server = TestServer::default().await;
    for path in ["/healthz", "/readyz", "/metrics", "/cascade.js"] {
        let get = raw(
            &server,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let head = raw(
            &server,
            &format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            (get.status, head.status),
            (200, 200),
            "{path}: {}",
            head.head
        );
        assert!(head.body.is_empty(), "{path}: a HEAD answer has no body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{path}"
        );
        if path == "/cascade.js" {
            assert_eq!(
                head.header("content-length"),
                Some(get.body.len().to_string().as_str()),
                "{path}"
            );
        }
    }
    let sse = raw(
        &server,
        "HEAD /sse?channels=a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(sse.status, 405, "{}", sse.head);
    assert_eq!(sse.header("allow"), Some("GET"));
    let post = raw(
        &server,
        "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405, "{}", post.head);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

fn handshake(version: &str, key: &str) -> String {
    format!(
        "GET /ws HTTP/{version}\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// RFC 6455 §4.2.1: a key that is not 16 bytes in base64, or a handshake over HTTP/1.0,
/// is refused with 400 rather than upgraded.
#[tokio::test]
async fn a_malformed_websocket_handshake_is_refused() {
    let server = TestServer::default().await;
    for (version, key) in [
        ("1.1", "not-a-nonce"),
        ("1.1", "dGhlIHNhbXBsZSBub25jZQ"),
        ("1.1", "dGhlIHNhbXBsZSBub25jZSBub25jZQ=="),
        ("1.0", "dGhlIHNhbXBsZSBub25jZQ=="),
    ] {
        let answer = raw(&server, &handshake(version, key)).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (400, "bad_request"),
            "HTTP/{version} key {key}: {}",
            answer.head
        );
    }
    // The RFC's own sample is upgraded.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(handshake("1.1", "dGhlIHNhbXBsZSBub25jZQ==").as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 12];
    within(stream.read_exact(&mut head)).await.expect("head");
    assert_eq!(&head, b"HTTP/1.1 101");
}
