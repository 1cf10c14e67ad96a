//! The floor: a stand-in server that delivers with nothing but one `write` per
//! subscriber, to measure what the kernel alone charges for a delivery on this machine.
//!
//! Deliveries per gateway CPU-second over loopback are bounded by the TCP send path
//! (and, on loopback, the receive path and the wake-up of the reader, which run on the
//! sender's core). How close Cascade comes to that bound, and how far the bound itself
//! is from a target, differs from machine to machine; `--server floor` measures it with
//! the same clients, publisher and report as a real run.
//!
//! It speaks just enough of Cascade's wire for the `fanout` and `channels` scenarios over
//! WebSocket: `GET /healthz`, the WebSocket upgrade, one `subscribe` frame answered with
//! `subscribed`, and `POST /publish`, which writes the message frame, built once, to every
//! subscriber of the channel straight from the publishing connection's task: no queue,
//! no task per subscriber, no protocol state. A write that would block waits for the
//! socket, so nothing is dropped. Single-threaded, like a gateway pinned to one core.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::find;

/// Longest request head or client frame accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// Subscribers by channel; every socket is written from one thread.
type Channels = Rc<RefCell<HashMap<String, Vec<Rc<TcpStream>>>>>;

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
        let channels: Channels = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(connection(stream, channels.clone()));
        }
    })
}

/// One client connection: keep-alive requests until it upgrades or closes.
async fn connection(mut stream: TcpStream, channels: Channels) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Ok(Some(request)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let answer = match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/healthz") => respond(&mut stream, 200, b"ok").await,
            ("GET", "/ws") => {
                upgrade(stream, &request, buf, &channels).await;
                return;
            }
            ("POST", "/publish") => publish(&mut stream, &request.body, &channels).await,
            _ => respond(&mut stream, 404, b"not in the floor server").await,
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
    websocket_key: Option<String>,
    body: Vec<u8>,
}

/// Reads one request (head and `Content-Length` body); `None` at a clean close.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
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
            let mut request = Request {
                method: parsed.method.unwrap_or("").to_owned(),
                path: parsed.path.unwrap_or("").to_owned(),
                websocket_key: header("sec-websocket-key"),
                body: Vec::new(),
            };
            if length > MAX_REQUEST {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too long"));
            }
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
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

async fn respond(stream: &mut TcpStream, status: u16, body: &[u8]) -> io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    stream.write_all(&response).await
}

/// Completes the upgrade, reads the `subscribe` frame, confirms it, and hands the socket
/// to its channel. Nothing more is read: the clients send nothing else until they close.
async fn upgrade(mut stream: TcpStream, request: &Request, mut buf: Vec<u8>, channels: &Channels) {
    let Some(key) = &request.websocket_key else {
        let _ = respond(&mut stream, 400, b"no sec-websocket-key").await;
        return;
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let payload = loop {
        if let Some((payload, used)) = client_frame(&buf) {
            buf.drain(..used);
            break payload;
        }
        if buf.len() > MAX_REQUEST || !matches!(fill(&mut stream, &mut buf).await, Ok(true)) {
            return;
        }
    };
    let Some(channel) = between(&payload, b"\"channels\":[\"", b"\"") else {
        return;
    };
    let confirm = format!(r#"{{"op":"subscribed","channels":["{channel}"],"cursor":"floor:0"}}"#);
    if stream
        .write_all(&server_frame(confirm.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    channels
        .borrow_mut()
        .entry(channel)
        .or_default()
        .push(Rc::new(stream));
}

/// Builds the message frame once and writes it to every subscriber of its channel.
async fn publish(stream: &mut TcpStream, body: &[u8], channels: &Channels) -> io::Result<()> {
    let (Some(channel), Some(at)) = (
        between(body, b"\"channel\":\"", b"\""),
        find(body, b"\"data\":"),
    ) else {
        return respond(stream, 400, b"want {\"channel\":..,\"data\":..}").await;
    };
    let data = &body[at + 7..body.len().saturating_sub(1)];
    let ts = crate::clients::unix_us() / 1000;
    let mut json = format!(
        r#"{{"op":"message","channel":"{channel}","epoch":"floor","offset":0,"ts":{ts},"data":"#
    )
    .into_bytes();
    json.extend_from_slice(data);
    json.push(b'}');
    let frame = server_frame(&json);
    // Cloned out of the map: a write that has to wait must not hold the borrow.
    let subscribers = channels.borrow().get(&channel).cloned().unwrap_or_default();
    for subscriber in &subscribers {
        // A subscriber that went away is skipped; the clients count what they miss.
        let _ = write_all(subscriber, &frame).await;
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
