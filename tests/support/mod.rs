//! Test harness: a real gateway on 127.0.0.1:0 and real clients for every transport.
#![allow(dead_code, unreachable_pub)]

pub mod backend;
pub mod nodes;
pub mod process;
pub mod raw_http;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod socketio;
pub mod stream;
pub mod tls;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cascade::app::App;
use cascade::config::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A gateway serving on an ephemeral port, drained when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    task: Option<JoinHandle<()>>,
}

/// Defaults with short timeouts, so that tests wait milliseconds, not seconds.
pub fn test_config() -> Config {
    let mut config = Config::from_sources("", Vec::<(String, String)>::new()).expect("defaults");
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.longpoll.timeout_ms = 2_000;
    config.sse.heartbeat_ms = 200;
    config.websocket.ping_interval_ms = 500;
    config.shutdown.drain_deadline_ms = 3_000;
    config.shutdown.reconnect_window_ms = 1_000;
    // Most tests exercise transports, not permissions: open publishing and lift the
    // per-connection publish rate. tests/security.rs tests the secure defaults.
    config.channels.publish = cascade::auth::rules::PublishRule::Anyone;
    config.limits.publish_rate_per_second = 1_000_000;
    config.limits.publish_burst = 1_000_000;
    config
}

impl TestServer {
    /// Starts a gateway with `config` (its `listen` is ignored: port 0 is used).
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let app = App::new(config).expect("app");
        let task = tokio::spawn(cascade::server::run(listener, app.clone()));
        TestServer {
            addr,
            app,
            task: Some(task),
        }
    }

    /// Starts a gateway with [`test_config`].
    pub async fn default() -> Self {
        Self::start(test_config()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Begins draining and waits until the server has finished.
    pub async fn shutdown(mut self) {
        self.app.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within(task).await.expect("server task");
        }
    }

    /// Publishes over HTTP; returns (epoch, offset).
    pub async fn publish(&self, channel: &str, data: Value) -> (String, u64) {
        let response = http()
            .post(self.url("/publish"))
            .json(&serde_json::json!({"channel": channel, "data": data}))
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 200, "publish to {channel}");
        let body: Value = response.json().await.expect("publish body");
        (
            body["epoch"].as_str().expect("epoch").to_owned(),
            body["offset"].as_u64().expect("offset"),
        )
    }

    /// GETs `path` and returns (status, JSON body).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = http().get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The Prometheus text from /metrics.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one sample line in /metrics, e.g. `cascade_connections{transport="sse"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.app.shutdown.cancel();
    }
}

/// Finds a sample in Prometheus text; 0 when the series is absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// A shared HTTP client (no pooling surprises across tests: each call is independent).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("client")
}

/// The body of `GET url`, as text.
pub async fn get_text(url: &str) -> String {
    let response = http().get(url).send().await.expect("GET");
    response.text().await.expect("text body")
}

/// Awaits `future`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("timed out waiting")
}

/// A hyper response's status and whole body, read within [`DEADLINE`].
pub async fn status_and_body<B>(response: hyper::Response<B>) -> (u16, bytes::Bytes)
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt as _;
    let status = response.status().as_u16();
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// Polls `check` until it returns true, failing after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A WebSocket client speaking the JSON frame protocol, over a plain socket by default
/// (over TLS or an HTTP/2 stream: see `tls`).
pub struct WsClient<S = tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    pub ws: tokio_tungstenite::WebSocketStream<S>,
}

impl WsClient {
    pub async fn connect(server: &TestServer) -> Self {
        let (ws, _) = within(tokio_tungstenite::connect_async(server.ws_url()))
            .await
            .expect("websocket connect");
        WsClient { ws }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> WsClient<S> {
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(WsMessage::text(frame.to_string()))
            .await
            .expect("ws send");
    }

    /// The next JSON text frame (pings and pongs are skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = within(self.ws.next())
                .await
                .expect("ws stream ended")
                .expect("ws frame");
            match frame {
                WsMessage::Text(text) => return serde_json::from_str(&text).expect("json frame"),
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, channels: &[&str], cursor: Option<&str>) -> Value {
        let mut frame = serde_json::json!({"op": "subscribe", "channels": channels});
        if let Some(cursor) = cursor {
            frame["cursor"] = cursor.into();
        }
        self.send(frame).await;
        let reply = self.recv().await;
        assert_eq!(reply["op"], "subscribed", "{reply}");
        reply
    }

    /// Waits for the close frame; returns (code, reason).
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match within(self.ws.next()).await {
                Some(Ok(WsMessage::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(WsMessage::Close(None))) | None => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("ws error before close: {err}"),
            }
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("sse data is json")
    }
}

/// A minimal EventSource: parses the stream per the HTML spec's line rules.
pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: BytesMut,
    /// Comment lines seen so far (heartbeats).
    pub comments: usize,
}

impl SseClient {
    pub async fn connect(server: &TestServer, query: &str, last_event_id: Option<&str>) -> Self {
        let mut request = http().get(server.url(&format!("/sse?{query}")));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        // No client timeout: the stream is long-lived; reads are bounded by `within`.
        let response = reqwest::Client::new()
            .execute(request.build().expect("request"))
            .await
            .expect("sse connect");
        SseClient {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            stream: response.bytes_stream().boxed(),
            buffer: BytesMut::new(),
            comments: 0,
        }
    }

    /// The next event (comments are counted, not returned); `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        let mut event = SseEvent::default();
        let mut has_fields = false;
        loop {
            while let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(pos + 1);
                let line = std::str::from_utf8(&line[..pos])
                    .expect("utf8")
                    .trim_end_matches('\r')
                    .to_owned();
                if line.is_empty() {
                    if has_fields {
                        if event.event.is_empty() {
                            event.event = "message".into();
                        }
                        return Some(event);
                    }
                    continue;
                }
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                has_fields = true;
                let (field, value) = line.split_once(':').unwrap_or((&line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event.event = value.to_owned(),
                    "id" => event.id = Some(value.to_owned()),
                    "retry" => event.retry = value.parse().ok(),
                    "data" => {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                    }
                    _ => {}
                }
            }
            match within(self.stream.next()).await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next event of type `message`, skipping others; panics if the stream ends or
    /// none comes within [`DEADLINE`] (heartbeats alone keep each read within it).
    pub async fn next_message(&mut self) -> SseEvent {
        within(async {
            loop {
                let event = self.next().await.expect("sse stream ended");
                if event.event == "message" {
                    return event;
                }
            }
        })
        .await
    }
}

/// A hand-rolled WebSocket client over a raw `TcpStream`, for what tokio-tungstenite does
/// on its own and a test must not: never answering pings, or never reading at all (with a
/// tiny receive buffer, so that the server's writes stall quickly).
pub mod raw_ws {
    use std::net::SocketAddr;

    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use super::within;

    /// The RFC 6455 sample key and the accept value it must produce.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// Opcodes of the frames a test looks at.
    pub const TEXT: u8 = 0x1;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;

    /// An upgraded connection and the bytes read past the handshake; over a `TcpStream`
    /// by default, or any stream (TLS, an HTTP/2 stream: see `wire`).
    pub struct RawWs<S = TcpStream> {
        pub stream: S,
        buffer: BytesMut,
    }

    /// Connects to `/ws` and upgrades by hand. With `recv_buffer`, SO_RCVBUF is set before
    /// connecting (the kernel may round it up), so the TCP window stays small.
    pub async fn connect(addr: SocketAddr, recv_buffer: Option<u32>) -> RawWs {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let stream = within(socket.connect(addr)).await.expect("connect");
        handshake(stream, &addr.to_string()).await
    }

    /// Upgrades `stream`, a fresh HTTP/1.1 connection to the gateway, to a WebSocket on
    /// `/ws` by hand.
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        host: &str,
    ) -> RawWs<S> {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write upgrade");
        stream.flush().await.expect("flush upgrade");
        let mut buffer = BytesMut::with_capacity(1024);
        let end = loop {
            if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let n = within(stream.read_buf(&mut buffer))
                .await
                .expect("read upgrade response");
            assert!(n > 0, "connection closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "not upgraded: {head}");
        assert!(
            head.contains(&format!(
                "sec-websocket-accept: {}",
                ACCEPT.to_ascii_lowercase()
            )),
            "wrong accept key: {head}"
        );
        buffer.advance(end);
        RawWs { stream, buffer }
    }

    /// A stream already upgraded to a WebSocket (an RFC 8441 stream: no HTTP/1.1 head).
    pub fn upgraded<S>(stream: S) -> RawWs<S> {
        RawWs {
            stream,
            buffer: BytesMut::with_capacity(1024),
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
        /// Sends one masked text frame.
        pub async fn send_text(&mut self, text: &str) {
            let payload = text.as_bytes();
            let mut frame = vec![0x80 | TEXT];
            match payload.len() {
                n if n < 126 => frame.push(0x80 | n as u8),
                n if n <= u16::MAX as usize => {
                    frame.push(0x80 | 126);
                    frame.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    frame.push(0x80 | 127);
                    frame.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            let mask: [u8; 4] = fastrand::u32(..).to_be_bytes();
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            self.stream.write_all(&frame).await.expect("write frame");
            self.stream.flush().await.expect("flush frame");
        }

        /// The next frame as (opcode, payload), without a deadline; `None` once the server
        /// has closed the TCP connection (EOF or reset).
        pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
            loop {
                if let Some(frame) = self.parse() {
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.buffer).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        }

        /// The next text frame as JSON, skipping control frames; panics on anything else.
        pub async fn recv_json(&mut self) -> serde_json::Value {
            loop {
                match within(self.read_frame()).await {
                    Some((TEXT, payload)) => {
                        return serde_json::from_slice(&payload).expect("json frame");
                    }
                    Some((opcode, _)) if opcode >= 0x9 => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        }

        /// One complete unmasked server frame from the buffer, if there is one.
        fn parse(&mut self) -> Option<(u8, Vec<u8>)> {
            let b = &self.buffer;
            if b.len() < 2 {
                return None;
            }
            assert_eq!(b[0] & 0x80, 0x80, "fragmented frames are not expected");
            assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
            let (len, header) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => return None,
                n => (n as usize, 2),
            };
            if b.len() < header + len {
                return None;
            }
            let opcode = b[0] & 0x0f;
            self.buffer.advance(header);
            let payload = self.buffer.split_to(len).to_vec();
            Some((opcode, payload))
        }
    }
}

/// Publishes `{"n": n}` over HTTP with a reused client; returns (epoch, offset).
pub async fn post(client: &reqwest::Client, base: &str, channel: &str, n: u64) -> (String, u64) {
    let response = client
        .post(format!("{base}/publish"))
        .json(&serde_json::json!({"channel": channel, "data": {"n": n}}))
        .send()
        .await
        .expect("publish request");
    assert_eq!(response.status(), 200, "publish {n} to {channel}");
    let body: Value = response.json().await.expect("publish body");
    (
        body["epoch"].as_str().expect("epoch").to_owned(),
        body["offset"].as_u64().expect("offset"),
    )
}
