//! Per-request and per-connection limits: slow clients, oversized and malformed input,
//! too many channels, and publish floods.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::support::raw_ws::{self, CLOSE};
use super::support::{DEADLINE, TestServer, eventually, within};
use super::*;

pub const KEY: &str = "backend-key-limits-0123456789";

/// Reads one HTTP/1.1 response (head and a `content-length` body) from `stream`; `None`
/// when the server closes the connection first.
pub async fn read_response(stream: &mut TcpStream) -> Option<(u16, Value)> {
    let mut buffer = Vec::new();
    let read = async {
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("content-length"));
                if buffer.len() >= end + 4 + length {
                    let status = head.split_whitespace().nth(1)?.parse().ok()?;
                    let body = &buffer[end + 4..end + 4 + length];
                    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
                    buffer.drain(..end + 4 + length);
                    return Some((status, body));
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    within(read).await
}

/// Waits until the server closes `stream` (EOF or reset), discarding what it sends.
pub async fn closed_by_server(stream: &mut TcpStream, within_: Duration) -> bool {
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within_, read).await.is_ok()
}

/// A raw `POST /publish` request.
pub fn raw_publish(channel: &str, headers: &str) -> Vec<u8> {
    let body = format!(r#"{{"channel":"{channel}","data":1}}"#);
    format!(
        "POST /publish HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn limits_config() -> Config {
    let mut config = secure_config();
    config.api_keys = vec![KEY.into()];
    config
}

#[tokio::test]
async fn slowloris_headers_are_dropped_while_others_are_served() {
    let mut config = limits_config();
    config.limits.header_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Padding: slowslowslowslowslow\r\n\r\n";
    let started = Instant::now();
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 100 ms: the whole head would take over 6 s.
    let trickle = tokio::spawn(async move {
        for byte in request {
            if writer.write_all(&[*byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    });
    // Meanwhile a normal client is served at once.
    for _ in 0..3 {
        served(get(&server, "/healthz"), "a normal client").await;
    }
    let mut seen = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .expect("the server drops a client that trickles its headers");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        !String::from_utf8_lossy(&seen).contains(" 200 "),
        "never served"
    );
    trickle.abort();
    served(get(&server, "/healthz"), "still serving").await;
}

/// A client that connects and never sends a byte holds a connection slot (and its
/// per-IP share) until the header read timeout, like any slow client.
#[tokio::test]
async fn a_connection_that_never_sends_is_dropped() {
    let mut config = limits_config();
    config.limits.header_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    assert!(
        closed_by_server(&mut silent, Duration::from_secs(3)).await,
        "a connection that sends nothing is still open 3 s after a 300 ms header_read_timeout"
    );
}

/// The first bytes of the HTTP/2 preface, trickled, must not escape the header timeout.
#[tokio::test]
async fn a_trickled_http2_preface_is_dropped() {
    let mut config = limits_config();
    config.limits.header_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        std::future::pending::<()>().await;
    });
    let read = async {
        let mut chunk = [0u8; 64];
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                return;
            }
        }
    };
    let dropped = tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .is_ok();
    trickle.abort();
    assert!(dropped, "a trickled HTTP/2 preface is still open after 3 s");
}

/// A complete HTTP/2 preface and an empty SETTINGS frame, then nothing: no request ever
/// comes, and the connection must not outlive the header timeout (it once stayed open
/// for minutes, and a thousand of them filled an address's connection budget).
#[tokio::test]
async fn a_complete_http2_preface_without_a_request_is_dropped_and_counted() {
    let mut config = limits_config();
    config.limits.header_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let started = Instant::now();
    assert!(
        closed_by_server(&mut stream, Duration::from_secs(3)).await,
        "an HTTP/2 connection with no request is still open 3 s after a 300 ms header_read_timeout"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the deadline"
    );
    let timeouts = r#"cascade_errors_total{code="request_timeout"}"#;
    assert_eq!(server.metric(timeouts).await, 1.0);
}

/// An HTTP/2 (h2c) connection: a hyper client over prior knowledge, and its connection's
/// task, which ends when the server closes the connection.
async fn h2_client(
    server: &TestServer,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let io = hyper_util::rt::TokioIo::new(stream);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
    (
        sender,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

fn h2_get(server: &TestServer, path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(server.url(path))
        .body(http_body_util::Empty::new())
        .expect("request")
}

/// An HTTP/2 connection whose requests are all answered is closed once it has had no
/// stream in flight for `http2_idle_timeout_ms`, and not before.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_its_idle_limit() {
    let mut config = limits_config();
    config.limits.http2_idle_timeout_ms = 400;
    let server = TestServer::start(config).await;
    let (mut sender, conn) = h2_client(&server).await;
    let answered = within(sender.send_request(h2_get(&server, "/healthz")))
        .await
        .expect("answer");
    assert_eq!(answered.status(), 200);
    drop(answered);
    let idle = Instant::now();
    within(conn).await.expect("the connection ends");
    let elapsed = idle.elapsed();
    assert!(
        elapsed >= Duration::from_millis(350),
        "closed {elapsed:?} after its last answer, before its idle limit"
    );
}

/// A stream in flight (SSE over HTTP/2) holds its connection open past the idle limit,
/// and keeps delivering.
#[tokio::test]
async fn an_http2_stream_in_flight_outlives_the_idle_limit() {
    use http_body_util::BodyExt;
    let mut config = limits_config();
    config.limits.http2_idle_timeout_ms = 200;
    config.api_keys = vec![KEY.into()];
    let server = TestServer::start(config).await;
    let (mut sender, conn) = h2_client(&server).await;
    let response = within(sender.send_request(h2_get(&server, "/sse?channels=held")))
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !conn.is_finished(),
        "the stream's connection was closed while in flight"
    );
    let published = super::support::http()
        .post(server.url("/publish"))
        .header("X-Cascade-Api-Key", KEY)
        .json(&json!({"channel": "held", "data": {"n": 1}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 200);
    let mut body = response.into_body();
    let mut seen = String::new();
    while !seen.contains(r#""n":1"#) {
        let frame = within(body.frame())
            .await
            .expect("a frame")
            .expect("no error");
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }
}

#[tokio::test]
async fn a_slow_body_gets_408() {
    let mut config = limits_config();
    config.limits.body_read_timeout_ms = 300;
    config.channels.publish = cascade::auth::rules::PublishRule::Anyone;
    let server = TestServer::start(config).await;
    let before = errors(&server, "request_timeout").await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = "POST /publish HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"channel\":";
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let (status, body) = read_response(&mut stream).await.expect("a response");
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(errors(&server, "request_timeout").await, before + 1.0);
}

#[tokio::test]
async fn oversized_bodies_messages_and_frames_are_refused() {
    let mut config = limits_config();
    config.limits.max_body_bytes = 4096;
    config.limits.max_message_bytes = 1024;
    config.websocket.max_frame_bytes = 2048;
    let server = TestServer::start(config).await;
    let with_key = |data: Value| {
        http_post(&server)
            .header("x-cascade-api-key", KEY)
            .json(&json!({"channel": "news", "data": data}))
    };
    served(with_key(json!("x".repeat(1000))), "within both limits").await;
    let request = with_key(json!("x".repeat(2000)));
    refused(
        &server,
        request,
        413,
        "message_too_large",
        "data over max_message_bytes",
    )
    .await;
    let request = with_key(json!("x".repeat(5000)));
    refused(
        &server,
        request,
        413,
        "body_too_large",
        "body over max_body_bytes",
    )
    .await;

    let mut ws = ws_open(&server, "", &[("x-cascade-api-key", KEY)])
        .await
        .expect("ws");
    let frame = json!({"op": "publish", "channel": "news", "data": "x".repeat(1500), "id": 1});
    let reply = ws_error(&server, &mut ws, frame, "message_too_large").await;
    assert_eq!(reply["id"], 1);
    let before = errors(&server, "message_too_large").await;
    let big = json!({"op": "publish", "channel": "news", "data": "x".repeat(4000)});
    ws.ws
        .send(WsMessage::text(big.to_string()))
        .await
        .expect("send");
    assert_eq!(ws.closed().await, (1009, "message_too_large".to_owned()));
    assert_eq!(errors(&server, "message_too_large").await, before + 1.0);
}

fn http_post(server: &TestServer) -> reqwest::RequestBuilder {
    super::support::http().post(server.url("/publish"))
}

#[tokio::test]
async fn ten_thousand_channels_are_refused() {
    let server = TestServer::start(limits_config()).await;
    let names: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
    let list = names.join(",");
    for path in ["/poll", "/sse", "/longpoll"] {
        for param in ["channels", "cursor"] {
            let request = get(&server, &format!("{path}?{param}={list}&timeout=0"));
            refused(
                &server,
                request,
                400,
                "too_many_channels",
                &format!("{path} {param}"),
            )
            .await;
        }
    }
    let request = get(&server, "/sse").header("last-event-id", &list);
    refused(&server, request, 400, "too_many_channels", "Last-Event-ID").await;
    // The limit itself is allowed.
    served(
        get(
            &server,
            &format!("/poll?channels={}", names[..128].join(",")),
        ),
        "128",
    )
    .await;
    // A thousand repeats of one channel are one channel.
    served(
        get(
            &server,
            &format!("/poll?channels={}", vec!["c0"; 10_000].join(",")),
        ),
        "repeats",
    )
    .await;

    let mut ws = ws_open(&server, "", &[]).await.expect("ws");
    let frame = json!({"op": "subscribe", "channels": names});
    ws_error(&server, &mut ws, frame, "too_many_channels").await;
    // The connection stays usable, and the limit holds across subscribe frames.
    ws_subscribed(&mut ws, "c0").await;
    let frame = json!({"op": "subscribe", "channels": &names[..128]});
    assert_eq!(send_recv(&mut ws, frame).await["op"], "subscribed");
    let frame = json!({"op": "subscribe", "channels": ["one-more"]});
    ws_error(&server, &mut ws, frame, "too_many_channels").await;
    ws_subscribed(&mut ws, "c5").await;
}

async fn send_recv(ws: &mut super::support::WsClient, frame: Value) -> Value {
    ws.send(frame).await;
    ws.recv().await
}

/// Sends one masked text frame whose payload is arbitrary bytes.
async fn send_raw_text(ws: &mut raw_ws::RawWs, payload: &[u8]) {
    assert!(payload.len() < 126);
    let mask: [u8; 4] = fastrand::u32(..).to_be_bytes();
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.stream.write_all(&frame).await.expect("write frame");
}

#[tokio::test]
async fn invalid_utf8_in_a_websocket_text_frame_closes_with_1007() {
    let server = TestServer::start(limits_config()).await;
    let before = errors(&server, "invalid_utf8").await;
    let mut ws = raw_ws::connect(server.addr, None).await;
    send_raw_text(
        &mut ws,
        b"{\"op\":\"subscribe\",\"channels\":[\"\xff\xfe\"]}",
    )
    .await;
    let (opcode, payload) = within(ws.read_frame()).await.expect("a close frame");
    assert_eq!(opcode, CLOSE);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1007);
    assert_eq!(&payload[2..], b"invalid_utf8");
    assert_eq!(errors(&server, "invalid_utf8").await, before + 1.0);
}

#[tokio::test]
async fn invalid_utf8_in_query_strings_is_refused() {
    let server = TestServer::start(limits_config()).await;
    let cases = [
        ("/poll?channels=%FF%FE", 400, "bad_channel"),
        ("/sse?channels=%C0%AF", 400, "bad_channel"),
        ("/poll?cursor=news@%FF:1", 400, "bad_cursor"),
        ("/poll?channels=news&cursor=news@E:%FF", 400, "bad_cursor"),
        ("/poll?channels=news&token=%FF%FE", 401, "token_invalid"),
        ("/poll?channels=news&ticket=%ED%A0%80", 401, "token_invalid"),
        ("/longpoll?channels=news&timeout=%FF", 400, "bad_param"),
        ("/negotiate?failed=websocket:%FF", 400, "bad_param"),
    ];
    for (path, status, code) in cases {
        refused(&server, get(&server, path), status, code, path).await;
    }
    ws_refused(&server, "token=%FF", &[], 4001, "token_invalid").await;
    // Raw non-ASCII bytes in the request line never reach a handler.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /poll?channels=\xff\xfe HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let status = read_response(&mut stream).await.map(|(s, _)| s);
    assert!(matches!(status, Some(400) | None), "raw bytes: {status:?}");
    served(get(&server, "/healthz"), "still serving").await;
}

#[tokio::test]
async fn a_publish_flood_is_rate_limited_per_connection() {
    let mut config = limits_config();
    config.limits.publish_rate_per_second = 1;
    config.limits.publish_burst = 5;
    config.channels.publish = cascade::auth::rules::PublishRule::Anyone;
    let server = TestServer::start(config).await;
    let before = errors(&server, "rate_limited").await;
    // One keep-alive connection: the burst, then 429.
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        conn.write_all(&raw_publish("news", ""))
            .await
            .expect("write");
        let (status, body) = read_response(&mut conn).await.expect("response");
        statuses.push(status);
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    assert_eq!(errors(&server, "rate_limited").await, before + 1.0);
    // Another connection has its own budget; the flooding one refills at the rate.
    let mut other = TcpStream::connect(server.addr).await.expect("connect");
    other
        .write_all(&raw_publish("news", ""))
        .await
        .expect("write");
    assert_eq!(read_response(&mut other).await.expect("response").0, 200);
    let started = Instant::now();
    loop {
        conn.write_all(&raw_publish("news", ""))
            .await
            .expect("write");
        match read_response(&mut conn).await.expect("response").0 {
            200 => break,
            429 => assert!(started.elapsed() < DEADLINE, "never refilled"),
            other => panic!("status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // API keys are exempt: backends publish as fast as they need.
    let mut backend = TcpStream::connect(server.addr).await.expect("connect");
    let header = format!("X-Cascade-Api-Key: {KEY}\r\n");
    for n in 0..50 {
        backend
            .write_all(&raw_publish("news", &header))
            .await
            .expect("write");
        let (status, body) = read_response(&mut backend).await.expect("response");
        assert_eq!(status, 200, "backend publish {n}: {body}");
    }

    // Over a WebSocket: acks for the burst, then error frames that echo the id.
    let mut ws = ws_open(&server, "", &[]).await.expect("ws");
    for id in 1..=5 {
        let reply = send_recv(
            &mut ws,
            json!({"op":"publish","channel":"news","data":id,"id":id}),
        )
        .await;
        assert_eq!(reply["op"], "ack", "{reply}");
    }
    let frame = json!({"op":"publish","channel":"news","data":6,"id":6});
    let reply = ws_error(&server, &mut ws, frame, "rate_limited").await;
    assert_eq!(reply["id"], 6);
    ws_subscribed(&mut ws, "news").await;
    let mut backend_ws = ws_open(&server, "", &[("x-cascade-api-key", KEY)])
        .await
        .expect("ws");
    for id in 1..=50 {
        let reply = send_recv(
            &mut backend_ws,
            json!({"op":"publish","channel":"b","data":id,"id":id}),
        )
        .await;
        assert_eq!(reply["op"], "ack", "backend ws publish {id}: {reply}");
    }
}

/// Connects from `ip` (any 127.0.0.0/8 address on Linux) to `addr`.
pub async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((ip, 0)))
        .expect("bind a loopback address");
    within(socket.connect(addr)).await.expect("connect")
}

/// Waits until the gateway counts exactly `n` open connections.
pub async fn open_connections(server: &TestServer, n: usize) {
    let limiter = server.app.connections.clone();
    eventually(&format!("{n} open connections"), || {
        let open = limiter.open();
        async move { open == n }
    })
    .await;
}
