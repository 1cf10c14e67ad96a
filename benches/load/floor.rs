//! The floor: a stand-in server that delivers with nothing but one `write` per
//! delivery, to measure what the kernel alone charges on this machine.
//!
//! Deliveries per gateway CPU-second over loopback are bounded by the TCP send path
//! (and, on loopback, the receive path and the wake-up of the reader, which run on the
//! sender's core). How close Cascade comes to that bound, and how far the bound itself
//! is from a target, differs from machine to machine; `--server floor` measures it with
//! the same clients, publisher and report as a real run.
//!
//! It speaks just enough of Cascade's wire for the `fanout`, `channels` and `poll`
//! scenarios over WebSocket, long polling and short polling: `GET /healthz`, the
//! WebSocket upgrade with one `subscribe` frame answered `subscribed`, `GET /longpoll`
//! and `GET /poll` with `channels=`, `cursor=` (an index into the channel's messages) and
//! `timeout=`, the parked-poll gauge on `GET /metrics`, and `POST /publish`. A publish
//! builds the message once and writes it to every WebSocket subscriber and every parked
//! poll of the channel straight from the publishing connection's task: no queue, no
//! task woken per subscriber, no protocol state. A poll's next request is read by its
//! connection's task, one read per request. A write that would block waits for the
//! socket, so nothing is dropped. Single-threaded, like a gateway pinned to one core.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::find;

/// Longest request head or client frame accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// One channel: its messages (a cursor is an index into them), its WebSocket
/// subscribers and its parked polls.
#[derive(Default)]
struct Channel {
    messages: Vec<Vec<u8>>,
    sockets: Vec<Rc<TcpStream>>,
    parked: Vec<Rc<TcpStream>>,
}

/// Every channel; all of it lives on one thread.
#[derive(Default)]
struct State {
    channels: HashMap<String, Channel>,
    parked: usize,
}

type Shared = Rc<RefCell<State>>;

/// Serves on `addr` until killed.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        let state: Shared = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(connection(Rc::new(stream), state.clone()));
        }
    })
}

/// One client connection: keep-alive requests until it upgrades or closes. A parked
/// poll is answered by the publisher; this task only reads the next request.
async fn connection(stream: Rc<TcpStream>, state: Shared) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Ok(Some(request)) = read_request(&stream, &mut buf).await else {
            return;
        };
        let answer = match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/healthz") => respond(&stream, 200, b"ok").await,
            ("GET", "/metrics") => {
                let parked = state.borrow().parked;
                let text = format!("cascade_connections{{transport=\"longpoll\"}} {parked}\n");
                respond(&stream, 200, text.as_bytes()).await
            }
            ("GET", "/ws") => {
                upgrade(stream, &request, buf, &state).await;
                return;
            }
            ("GET", "/longpoll" | "/poll") => poll(&stream, &request, &state).await,
            ("POST", "/publish") => publish(&stream, &request.body, &state).await,
            _ => respond(&stream, 404, b"not in the floor server").await,
        };
        if answer.is_err() {
            return;
        }
    }
}

/// What the floor server needs of a request.
struct Request {
    method: String,
    path: String,
    query: String,
    websocket_key: Option<String>,
    body: Vec<u8>,
}

impl Request {
    /// The value of `name=` in the query string, undecoded.
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }
}

/// Reads one request (head and `Content-Length` body); `None` at a clean close.
async fn read_request(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        let status = parsed
            .parse(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let httparse::Status::Complete(head_len) = status {
            let header = |name: &str| {
                parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_owned)
            };
            let length: usize = header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if length > MAX_REQUEST {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too long"));
            }
            let target = parsed.path.unwrap_or("");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut request = Request {
                method: parsed.method.unwrap_or("").to_owned(),
                path: path.to_owned(),
                query: query.to_owned(),
                websocket_key: header("sec-websocket-key"),
                body: Vec::new(),
            };
            while buf.len() < head_len + length {
                if !fill(stream, buf).await? {
                    return Ok(None);
                }
            }
            request.body = buf[head_len..head_len + length].to_vec();
            buf.drain(..head_len + length);
            return Ok(Some(request));
        }
        if buf.len() > MAX_REQUEST || !fill(stream, buf).await? {
            return Ok(None);
        }
    }
}

/// Appends what the socket has; false at end of stream.
async fn fill(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n > 0);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable().await?,
            Err(e) => return Err(e),
        }
    }
}

async fn respond(stream: &TcpStream, status: u16, body: &[u8]) -> io::Result<()> {
    write_all(stream, &response(status, body)).await
}

/// A whole response, head and body, for one write.
fn response(status: u16, body: &[u8]) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    response
}

/// A poll answer: the messages from `cursor` on and the cursor after them.
fn poll_answer(messages: &[Vec<u8>], cursor: usize) -> Vec<u8> {
    let mut body = b"{\"messages\":[".to_vec();
    for (i, message) in messages.iter().enumerate().skip(cursor) {
        if i > cursor {
            body.push(b',');
        }
        body.extend_from_slice(message);
    }
    body.extend_from_slice(format!("],\"cursor\":\"{}\"}}", messages.len()).as_bytes());
    response(200, &body)
}

/// A long or short poll: answered now when there is something after the cursor (or no
/// cursor, or `timeout=0`, or a short poll), else parked for the publisher to answer.
async fn poll(stream: &Rc<TcpStream>, request: &Request, state: &Shared) -> io::Result<()> {
    let Some(name) = request.param("channels") else {
        return respond(stream, 400, b"want channels=").await;
    };
    let cursor = request
        .param("cursor")
        .and_then(|c| c.parse::<usize>().ok());
    let waits = request.path == "/longpoll" && request.param("timeout") != Some("0");
    let answer = {
        let mut state = state.borrow_mut();
        let channel = state.channels.entry(name.to_owned()).or_default();
        match cursor {
            Some(cursor) if waits && cursor >= channel.messages.len() => {
                channel.parked.push(stream.clone());
                state.parked += 1;
                None
            }
            _ => {
                let from = cursor.unwrap_or(channel.messages.len());
                Some(poll_answer(&channel.messages, from))
            }
        }
    };
    match answer {
        Some(answer) => write_all(stream, &answer).await,
        None => Ok(()),
    }
}

/// Completes the upgrade, reads the `subscribe` frame, confirms it, and hands the socket
/// to its channel. Nothing more is read: the clients send nothing else until they close.
async fn upgrade(stream: Rc<TcpStream>, request: &Request, mut buf: Vec<u8>, state: &Shared) {
    let Some(key) = &request.websocket_key else {
        let _ = respond(&stream, 400, b"no sec-websocket-key").await;
        return;
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if write_all(&stream, head.as_bytes()).await.is_err() {
        return;
    }
    let payload = loop {
        if let Some((payload, used)) = client_frame(&buf) {
            buf.drain(..used);
            break payload;
        }
        if buf.len() > MAX_REQUEST || !matches!(fill(&stream, &mut buf).await, Ok(true)) {
            return;
        }
    };
    let Some(name) = between(&payload, b"\"channels\":[\"", b"\"") else {
        return;
    };
    let confirm = format!(r#"{{"op":"subscribed","channels":["{name}"],"cursor":"0"}}"#);
    if write_all(&stream, &server_frame(confirm.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let mut state = state.borrow_mut();
    state.channels.entry(name).or_default().sockets.push(stream);
}

/// Builds the message once and writes it to every subscriber and parked poll of its
/// channel, then answers the publisher.
async fn publish(stream: &TcpStream, body: &[u8], state: &Shared) -> io::Result<()> {
    let (Some(name), Some(at)) = (
        between(body, b"\"channel\":\"", b"\""),
        find(body, b"\"data\":"),
    ) else {
        return respond(stream, 400, b"want {\"channel\":..,\"data\":..}").await;
    };
    let data = &body[at + 7..body.len().saturating_sub(1)];
    // Taken out of the state: a write that has to wait must not hold the borrow.
    let (frame, answer, sockets, parked) = {
        let mut state = state.borrow_mut();
        let channel = state.channels.entry(name.clone()).or_default();
        let offset = channel.messages.len();
        let ts = crate::clients::unix_us() / 1000;
        let mut json =
            format!(r#"{{"channel":"{name}","epoch":"floor","offset":{offset},"ts":{ts},"data":"#)
                .into_bytes();
        json.extend_from_slice(data);
        json.push(b'}');
        let mut ws = b"{\"op\":\"message\",".to_vec();
        ws.extend_from_slice(&json[1..]);
        channel.messages.push(json);
        let parked = std::mem::take(&mut channel.parked);
        // A poll parks only at the end of the channel, so this message is all it lacks.
        let answer = poll_answer(&channel.messages, offset);
        let sockets = channel.sockets.clone();
        state.parked -= parked.len();
        (server_frame(&ws), answer, sockets, parked)
    };
    // A subscriber that went away is skipped; the clients count what they miss.
    for socket in &sockets {
        let _ = write_all(socket, &frame).await;
    }
    for socket in &parked {
        let _ = write_all(socket, &answer).await;
    }
    respond(stream, 200, br#"{"ok":true}"#).await
}

/// One `write` when the socket has room, which is nearly always.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
/// An unmasked text frame.
fn server_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// The unmasked payload of the first whole client frame in `buf`, and the bytes it used.
fn client_frame(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let short = usize::from(*buf.get(1)? & 0x7f);
    let (len, mut at) = match short {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (n, 2),
    };
    let mask: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = buf.get(at..at.checked_add(len)?)?;
    let unmasked = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some((unmasked, at + len))
}

/// The text between `start` and the next `end`.
fn between(hay: &[u8], start: &[u8], end: &[u8]) -> Option<String> {
    let from = find(hay, start)? + start.len();
    let len = find(&hay[from..], end)?;
    String::from_utf8(hay[from..from + len].to_vec()).ok()
}
