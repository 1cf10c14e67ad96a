//! A raw HTTP/1.1 client for tests that must control every byte a connection carries:
//! requests written by hand ([`Ask`]), answers read by their framing ([`Answer`]), on one
//! keep-alive connection ([`Conn`]); and, on it, SSE events and WebSocket text frames.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{TestServer, within};

/// A request, written by hand so that the test controls every byte of it.
pub struct Ask {
    pub method: &'static str,
    pub target: String,
    /// `{addr}` in a value (or the target) is the gateway's address; other `{name}`s are
    /// filled in by [`Ask::bytes_with`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether a `Host` header is sent (an HTTP/1.1 request needs one).
    pub host: bool,
    /// Whether the body is sent chunked rather than with a length.
    pub chunked: bool,
    /// `HTTP/1.1`, or `HTTP/1.0`.
    pub version: &'static str,
}

/// A `method` request for `target`, with a `Host` and nothing else.
pub fn ask(method: &'static str, target: &str) -> Ask {
    Ask {
        method,
        target: target.into(),
        headers: Vec::new(),
        body: Vec::new(),
        host: true,
        chunked: false,
        version: "HTTP/1.1",
    }
}

pub fn get(target: &str) -> Ask {
    ask("GET", target)
}

pub fn head(target: &str) -> Ask {
    ask("HEAD", target)
}

/// A JSON `POST` of `body`, with its length.
pub fn post(target: &str, body: impl Into<String>) -> Ask {
    Ask {
        body: body.into().into_bytes(),
        ..ask("POST", target).header("content-type", "application/json")
    }
}

/// A CORS preflight from `origin` for a `GET` that sends credentials in a header.
pub fn preflight(target: &str, origin: &str) -> Ask {
    ask("OPTIONS", target)
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
}

/// A WebSocket handshake with RFC 6455's sample key.
pub fn upgrade(target: &str) -> Ask {
    handshake(target, "13", "dGhlIHNhbXBsZSBub25jZQ==")
}

/// A WebSocket handshake of `version` with `key`.
pub fn handshake(target: &str, version: &str, key: &str) -> Ask {
    get(target)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", version)
        .header("sec-websocket-key", key)
}

impl Ask {
    /// Adds a header line (a second one of a name is sent as a second line).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn without_host(mut self) -> Self {
        self.host = false;
        self
    }

    /// Gives the request `body` (sent with its length).
    pub fn body(mut self, body: &str) -> Self {
        self.body = body.as_bytes().to_vec();
        self
    }

    /// Sends the body as one chunk rather than with a length.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    pub fn http10(mut self) -> Self {
        self.version = "HTTP/1.0";
        self
    }

    /// The request's bytes, for `server`.
    pub fn bytes(&self, server: &TestServer) -> Vec<u8> {
        self.bytes_with(server, &[])
    }

    /// The request's bytes, for `server`, each `{name}` of `vars` filled in.
    pub fn bytes_with(&self, server: &TestServer, vars: &[(&str, &str)]) -> Vec<u8> {
        let addr = server.addr.to_string();
        let fill = |text: &str| {
            let mut text = text.replace("{addr}", &addr);
            for (var, filled) in vars {
                text = text.replace(&format!("{{{var}}}"), filled);
            }
            text
        };
        let target = fill(&self.target);
        let mut head = format!("{} {target} {}\r\n", self.method, self.version);
        if self.host {
            head.push_str(&format!("host: {addr}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {}\r\n", fill(value)));
        }
        if self.chunked {
            assert!(!self.body.is_empty(), "a chunked body of one chunk");
            head.push_str("transfer-encoding: chunked\r\n\r\n");
            head.push_str(&format!("{:x}\r\n", self.body.len()));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&self.body);
            bytes.extend_from_slice(b"\r\n0\r\n\r\n");
            return bytes;
        }
        if !self.body.is_empty() {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// The request line, for messages.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.method, self.target, self.version)
    }
}

/// An answer read off the socket.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Lower-case names, each with its values in the order sent.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The body (de-chunked), or for an SSE stream its first event.
    pub body: Value,
    /// Nothing can follow on the connection (an upgrade, a stream, `connection: close`).
    pub last: bool,
}

impl Answer {
    /// The first value of the header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v[0].as_str())
    }

    /// Whether it says `connection: close`.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// Whether it opens an SSE stream.
    pub fn is_stream(&self) -> bool {
        self.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
    }
}

/// A raw keep-alive connection to the gateway.
pub struct Conn {
    reader: Reader,
    write: OwnedWriteHalf,
}

/// A connection's read side.
struct Reader {
    read: OwnedReadHalf,
    /// Read and not yet consumed.
    rest: Vec<u8>,
}

impl Conn {
    /// Connects to `server`.
    pub async fn open(server: &TestServer) -> Self {
        let stream = within(TcpStream::connect(server.addr))
            .await
            .expect("connect");
        let (read, write) = stream.into_split();
        Conn {
            reader: Reader {
                read,
                rest: Vec::new(),
            },
            write,
        }
    }

    /// Sends `bytes` and reads the answer to a request of `method`. The answer is read
    /// while the request is written: a gateway may answer (and close) before it has read
    /// a body it refuses, and the rest of the write then fails, which is the client's
    /// loss, not the test's.
    pub async fn exchange(&mut self, bytes: &[u8], method: &str) -> Answer {
        let write = async {
            let _ = self.write.write_all(bytes).await;
        };
        let ((), answer) = within(async { tokio::join!(write, self.reader.answer(method)) }).await;
        answer
    }

    /// Sends `bytes` and reads the answer to a request of `method`; `None` when the
    /// gateway closed the connection instead of answering.
    pub async fn try_exchange(&mut self, bytes: &[u8], method: &str) -> Option<Answer> {
        let _ = self.write.write_all(bytes).await;
        if self.reader.rest.is_empty() && !within(self.reader.more()).await {
            return None;
        }
        Some(within(self.reader.answer(method)).await)
    }

    /// The next event of an open SSE stream (heartbeats skipped), its fields as
    /// [`first_event`] gives them; each event in a chunk of its own, as the gateway
    /// writes them.
    pub async fn next_event(&mut self) -> Value {
        let mut pending = Vec::new();
        within(async {
            loop {
                if let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    let fields = first_event(&event);
                    if fields.as_object().is_some_and(|f| !f.is_empty()) {
                        return fields;
                    }
                    continue;
                }
                let size = self.reader.line().await;
                let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
                assert!(size > 0, "the stream ended");
                pending.extend(self.reader.take(size).await);
                assert_eq!(self.reader.take(2).await, b"\r\n", "a chunk's end");
            }
        })
        .await
    }

    /// Sends a masked WebSocket text frame (payload under 126 bytes).
    pub async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        assert!(payload.len() < 126);
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.write.write_all(&frame).await.expect("write a frame");
    }

    /// The next WebSocket text frame from the gateway, as JSON (pings skipped).
    pub async fn next_text(&mut self) -> Value {
        within(async {
            loop {
                let head = self.reader.take(2).await;
                let length = match head[1] & 0x7f {
                    126 => {
                        let n = self.reader.take(2).await;
                        usize::from(u16::from_be_bytes([n[0], n[1]]))
                    }
                    127 => panic!("a frame too long for this test"),
                    n => usize::from(n),
                };
                let payload = self.reader.take(length).await;
                match head[0] & 0x0f {
                    0x1 => return serde_json::from_slice(&payload).expect("a JSON frame"),
                    0x9 | 0xa => continue,
                    opcode => panic!("an unexpected frame {opcode:#x}: {payload:?}"),
                }
            }
        })
        .await
    }
}

impl Reader {
    /// Reads more from the socket; panics when it closed.
    async fn fill(&mut self) {
        assert!(
            self.more().await,
            "connection closed mid-answer: {:?}",
            String::from_utf8_lossy(&self.rest)
        );
    }

    /// Reads more from the socket; false when it closed.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = self.read.read(&mut chunk).await.expect("read");
        self.rest.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Takes `n` bytes, reading as needed.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.rest.len() < n {
            self.fill().await;
        }
        self.rest.drain(..n).collect()
    }

    /// Takes a line ending in CRLF, without it.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.rest.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2).await;
                return String::from_utf8(line[..end].to_vec()).expect("utf-8 line");
            }
            self.fill().await;
        }
    }

    /// Reads one answer: its head, and its body by its framing; of an SSE stream, the
    /// first event only. Interim answers (`100 Continue`) are skipped.
    async fn answer(&mut self, method: &str) -> Answer {
        let mut status_line = self.line().await;
        while status_line.starts_with("HTTP/1.1 1") && !status_line.starts_with("HTTP/1.1 101") {
            while !self.line().await.is_empty() {}
            status_line = self.line().await;
        }
        let status: u16 = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_default()
                .push(value.trim().to_owned());
        }
        let mut answer = Answer {
            status,
            headers,
            body: Value::Null,
            last: false,
        };
        let bodiless = method == "HEAD" || matches!(status, 101 | 204 | 304);
        let chunked = answer
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let raw = if bodiless {
            Vec::new()
        } else if chunked {
            self.chunks(answer.is_stream()).await
        } else {
            let length = answer
                .header("content-length")
                .map(|l| l.parse().expect("a length"))
                .unwrap_or_else(|| panic!("a framed body: {:?}", answer.headers));
            self.take(length).await
        };
        answer.last = status == 101 || answer.is_stream() || answer.closes();
        answer.body = if raw.is_empty() {
            Value::Null
        } else if answer.is_stream() {
            first_event(&raw)
        } else if answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
        {
            serde_json::from_slice(&raw).expect("a JSON body")
        } else {
            String::from_utf8(raw).expect("a text body").into()
        };
        answer
    }

    /// A chunked body; of a stream, up to the end of its first event.
    async fn chunks(&mut self, stream: bool) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size = self.line().await;
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("a chunk size: {size:?}"));
            if size == 0 {
                assert_eq!(self.line().await, "", "no trailers");
                return body;
            }
            body.extend(self.take(size).await);
            assert_eq!(self.take(2).await, b"\r\n", "a chunk's end");
            if stream && body.windows(2).any(|w| w == b"\n\n") {
                return body;
            }
        }
    }
}

/// The fields of the first event of an SSE body, its data parsed.
pub fn first_event(raw: &[u8]) -> Value {
    let text = std::str::from_utf8(raw).expect("utf-8 events");
    let event = text.split("\n\n").next().unwrap_or("");
    let mut fields = serde_json::Map::new();
    for line in event.lines().filter(|l| !l.starts_with(':')) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        let value = match field {
            "data" => serde_json::from_str(value).expect("JSON data"),
            _ => value.into(),
        };
        fields.insert(field.into(), value);
    }
    Value::Object(fields)
}
