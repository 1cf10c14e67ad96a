//! Writing an answer on the lean path: its head encoded byte by byte, a poll's JSON
//! answer in one write, streamed bodies as chunks, and the rest of a chunk the hub's
//! express writes left.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{Read, Router, Streaming, read_some};
use crate::conn::ConnInfo;
use crate::http::Body;
use crate::socket::{Socket, taken, write_all};
use crate::sync::Unpoisoned;
use crate::wake::SideWaits;
use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// A response, framed for this path.
pub(super) enum Sending {
    /// `101`'s head; after it the socket is the WebSocket's.
    Upgrade(Vec<u8>),
    /// A JSON answer, head and body, already tried on the socket: what it did not take.
    Tried(io::Result<Option<Vec<u8>>>),
    /// The head (with room for the body) and a complete body of known length.
    Whole(Vec<u8>, UnsyncBoxBody<Bytes, Infallible>),
    /// A streamed body (SSE), which takes the socket over to share it with the hub's
    /// express writes: see [`Streaming`].
    Stream(Box<Streaming>),
}

/// Frames `response` for this path. A JSON answer, which every poll gets, is written at
/// once (see [`try_write_assembled`]).
pub(super) fn prepare(stream: &impl Socket, response: Response<Body>, keep_alive: bool) -> Sending {
    let (parts, body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let mut head = Vec::with_capacity(256);
        encode_head(&mut head, &parts, &[], Framing::None, true);
        return Sending::Upgrade(head);
    }
    let implied = body.implied_headers();
    let body = match body {
        Body::Json(json) => {
            // Head and body in one write: as two, the answer would cross the network
            // (and both ends' TCP stacks) as two segments.
            let framing = Framing::Length(json.len() as u64);
            return Sending::Tried(try_write_assembled(stream, |out| {
                if parts.status == StatusCode::OK {
                    out.extend_from_slice(JSON_OK);
                    encode_fields(out, &parts, framing, keep_alive);
                } else {
                    encode_head(out, &parts, implied, framing, keep_alive);
                }
                out.extend_from_slice(&json);
            }));
        }
        Body::Boxed(body) => body,
    };
    match body.size_hint().exact() {
        Some(length) => {
            let room = usize::try_from(length).unwrap_or(0).min(64 * 1024);
            let mut head = Vec::with_capacity(256 + room);
            // A `204` (a preflight's answer) has no body and must not give a length, nor
            // may a `304` give one other than its `200`'s (RFC 9110, 8.6).
            let framing = match parts.status {
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED => Framing::None,
                _ => Framing::Length(length),
            };
            encode_head(&mut head, &parts, implied, framing, keep_alive);
            Sending::Whole(head, body)
        }
        None => {
            let mut head = Vec::with_capacity(256);
            // A handed-over stream's connection closes with it.
            encode_head(&mut head, &parts, implied, Framing::Chunked, false);
            Sending::Stream(Box::new(Streaming {
                head,
                body: Body::Boxed(body),
                extensions: parts.extensions,
                buf: BytesMut::new(),
            }))
        }
    }
}

/// Writes a head and its complete body in one write (see [`prepare`]).
pub(super) async fn write_whole(
    stream: &mut impl Socket,
    info: &ConnInfo,
    head: &mut Vec<u8>,
    body: &mut UnsyncBoxBody<Bytes, Infallible>,
) -> bool {
    // Complete bodies are ready at once; collected all the same.
    match body.collect().await {
        Ok(collected) => head.extend_from_slice(&collected.to_bytes()),
        Err(never) => match never {},
    }
    write(stream, info, head).await
}

/// Writes a streamed body as chunks as it comes, watching the socket meanwhile; `true`
/// when it ended and was terminated.
///
/// `rest` is where the hub's express writes leave what the socket did not take of a chunk:
/// it goes out before anything else.
///
/// An `async move` block, not an `async fn`, so that an SSE stream, which keeps this
/// future for as long as it is open, does not keep every argument twice.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub fn write_chunked<'a, S: Socket, R: Router>(
    stream: &'a S,
    rest: &'a Rest,
    buf: &'a mut BytesMut,
    info: &'a ConnInfo,
    app: &'a R,
    body: &'a mut Body,
) -> impl Future<Output = bool> + Send + 'a {
    async move {
        // Boxed: inline, it would make every connection's task larger, parked polls too.
        let mut killed = Box::pin(info.killed());
        // The kill token and the socket's read side are polled only after they woke the
        // task, not once more for every chunk: see `crate::wake`.
        let side = SideWaits::default();
        loop {
            if let Some(left) = rest.take()
                && !Box::pin(finish_chunk(stream, &left, &side, killed.as_mut())).await
            {
                return false;
            }
            let frame = poll_fn(|cx| {
                if let Some(waker) = side.fired(cx.waker()) {
                    let mut side_cx = Context::from_waker(&waker);
                    if killed.as_mut().poll(&mut side_cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    loop {
                        match stream.poll_read_ready(&mut side_cx) {
                            Poll::Pending => break,
                            Poll::Ready(Err(_)) => return Poll::Ready(None),
                            Poll::Ready(Ok(())) => match read_some(stream, buf, app) {
                                Read::Gone => return Poll::Ready(None),
                                Read::Drained => break,
                                Read::More => {}
                            },
                        }
                    }
                }
                // Woken by an express write that left a rest: out of the wait to write it.
                if rest.waits() {
                    return Poll::Ready(Some(None));
                }
                Pin::new(&mut *body)
                    .poll_frame(cx)
                    .map(|frame| Some(Some(frame)))
            })
            .await;
            let frame = match frame {
                None => return false,
                Some(None) => continue,
                Some(Some(frame)) => frame,
            };
            // The stream may have taken the part-written message while this task was
            // between its look at the rest and its poll of the stream.
            if let Some(left) = rest.take()
                && !Box::pin(finish_chunk(stream, &left, &side, killed.as_mut())).await
            {
                return false;
            }
            // The frame is consumed by a plain function, before the write's await: held
            // across it, it took room in every stream's future.
            let (rest, last) = match write_frame(stream, frame) {
                Ok(Some(written)) => written,
                Ok(None) => continue,
                Err(_) => return false,
            };
            // Boxed: rare, and an open stream should keep no room for it.
            if let Some(rest) = rest
                && !Box::pin(finish_chunk(stream, &rest, &side, killed.as_mut())).await
            {
                return false;
            }
            if last {
                return true;
            }
        }
    }
}

/// Writes a body frame as a chunk if the socket takes all of it now: what it did not
/// take, copied, and whether the frame ended the body (or an error did, which the body
/// type rules out); `None` for a frame with nothing to send.
pub(super) fn write_frame<E>(
    stream: &impl Socket,
    frame: Option<Result<http_body::Frame<Bytes>, E>>,
) -> io::Result<Option<(Option<Vec<u8>>, bool)>> {
    match framed(frame) {
        None => Ok(None),
        Some(Framed::Data(data)) => Ok(Some((try_write_chunk(stream, &data)?, false))),
        Some(Framed::End) => Ok(Some((Some(b"0\r\n\r\n".to_vec()), true))),
    }
}

/// Writes what the socket did not take of a chunk, giving up when the connection is
/// killed meanwhile; `true` once written.
pub(super) async fn finish_chunk(
    stream: &impl Socket,
    rest: &[u8],
    side: &SideWaits,
    mut killed: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut write = std::pin::pin!(write_all(stream, rest));
    poll_fn(|cx| {
        if let Some(waker) = side.fired(cx.waker()) {
            let mut side_cx = Context::from_waker(&waker);
            if killed.as_mut().poll(&mut side_cx).is_ready() {
                return Poll::Ready(false);
            }
            // The read side may have fired too: it is polled once the chunk is out.
            side.again();
        }
        write.as_mut().poll(cx).map(|written| written.is_ok())
    })
    .await
}

/// A body frame as the chunked encoding sends it.
pub(super) enum Framed {
    /// A chunk of data.
    Data(Bytes),
    /// The terminating chunk.
    End,
}

/// What a body frame sends; `None` for a frame with nothing to send.
pub(super) fn framed<E>(frame: Option<Result<http_body::Frame<Bytes>, E>>) -> Option<Framed> {
    match frame {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) if !data.is_empty() => Some(Framed::Data(data)),
            _ => None,
        },
        _ => Some(Framed::End),
    }
}

/// What the hub's express writes left unwritten of a chunk, for the connection to finish.
#[derive(Default)]
pub struct Rest(std::sync::Mutex<Option<Vec<u8>>>);

impl Rest {
    /// Keeps `left` for the connection.
    pub fn put(&self, left: Vec<u8>) {
        *self.lock() = Some(left);
    }

    /// Whether something waits to be written.
    pub fn waits(&self) -> bool {
        self.lock().is_some()
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.0.locked()
    }
}

/// Writes a data chunk if the socket takes all of it now; else returns, copied, what it
/// did not take. A small chunk is assembled in a buffer and goes out as one plain write
/// (a vectored write of three pieces cost more in the kernel than it saved here); a
/// large one is written vectored, its data not copied.
pub fn try_write_chunk(stream: &impl Socket, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let (size, len) = chunk_size_line(data.len());
    let parts: [&[u8]; 3] = [&size[..len], data, b"\r\n"];
    let total = len + data.len() + 2;
    if total <= SMALL_CHUNK {
        return try_write_assembled(stream, |out| {
            for part in parts {
                out.extend_from_slice(part);
            }
        });
    }
    let written = taken(stream.try_write_vectored(&parts.map(io::IoSlice::new)))?;
    if written == total {
        return Ok(None);
    }
    Ok(Some(parts.concat().split_off(written)))
}

/// Writes a chunk whose data `fill` appends, built in this thread's buffer, if the socket
/// takes all of it now; else returns, copied, what it did not take. Also returns the
/// chunk's length, framing included.
///
/// For data made per write (an SSE event with its subscriber's own cursor): built where
/// it is framed, it costs no buffer of its own and no second copy.
pub fn try_write_chunk_with(
    stream: &impl Socket,
    fill: impl FnOnce(&mut Vec<u8>),
) -> io::Result<(Option<Vec<u8>>, usize)> {
    // Room for the longest size line in front of the data, filled once the data's
    // length is known, right before it.
    const LINE: usize = 18;
    try_write_built(stream, |out| {
        out.resize(LINE, 0);
        fill(out);
        let (size, len) = chunk_size_line(out.len() - LINE);
        out.extend_from_slice(b"\r\n");
        let start = LINE - len;
        out[start..LINE].copy_from_slice(&size[..len]);
        start
    })
}

/// Assembles bytes with `fill` in a buffer of this thread's and writes them if the socket
/// takes all of them now; else returns, copied, what it did not take. A buffer per thread
/// rather than one per write (an allocation) or on the stack (zeroed each time).
pub(super) fn try_write_assembled(
    stream: &impl Socket,
    fill: impl FnOnce(&mut Vec<u8>),
) -> io::Result<Option<Vec<u8>>> {
    let (rest, _) = try_write_built(stream, |out| {
        fill(out);
        0
    })?;
    Ok(rest)
}

/// Builds bytes with `fill` in this thread's buffer and writes them from the offset
/// `fill` returns: what the socket did not take, copied, and how many there were.
fn try_write_built(
    stream: &impl Socket,
    fill: impl FnOnce(&mut Vec<u8>) -> usize,
) -> io::Result<(Option<Vec<u8>>, usize)> {
    ASSEMBLY.with_borrow_mut(|assembled| {
        assembled.clear();
        let start = fill(assembled);
        let built = &assembled[start..];
        let written = taken(stream.try_write(built))?;
        let rest = (written < built.len()).then(|| built[written..].to_vec());
        let whole = built.len();
        if assembled.capacity() > MAX_ASSEMBLY {
            // A rare large answer does not keep its room for the thread's life.
            *assembled = Vec::with_capacity(SMALL_CHUNK);
        }
        Ok((rest, whole))
    })
}

/// Chunks up to this size (framing included) are assembled in one buffer per thread.
pub(super) const SMALL_CHUNK: usize = 2048;
/// The most room the buffer keeps between writes.
pub(super) const MAX_ASSEMBLY: usize = 64 * 1024;

thread_local! {
    static ASSEMBLY: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(SMALL_CHUNK));
}

/// The length of a chunk of `len` bytes of data, framing included.
pub fn chunk_len(len: usize) -> usize {
    chunk_size_line(len).1 + len + 2
}

/// A chunk's size line, `<hex length>\r\n`, and how many of the bytes it fills.
pub(super) fn chunk_size_line(len: usize) -> ([u8; 18], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = [0u8; 18];
    let digits = (usize::BITS as usize / 4 - len.leading_zeros() as usize / 4).max(1);
    for i in 0..digits {
        line[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    line[digits..digits + 2].copy_from_slice(b"\r\n");
    (line, digits + 2)
}

/// Writes all of `bytes`, giving up when the server drops the connection meanwhile (the
/// bus cuts off a subscriber that stalls this way).
pub async fn write(stream: &impl Socket, info: &ConnInfo, bytes: &[u8]) -> bool {
    tokio::select! {
        biased;
        written = write_all(stream, bytes) => written.is_ok(),
        _ = info.killed() => false,
    }
}

/// How a response's body is delimited.
#[derive(Clone, Copy)]
pub(super) enum Framing {
    /// No body at all (`101`, `204`, `304`).
    None,
    Length(u64),
    Chunked,
}

/// Appends the status line and headers (those the body implies first), with the framing
/// this path chose, to `head`. Written byte by byte, not with `write!`, whose formatting
/// machinery cost more than the rest of the head.
pub(super) fn encode_head(
    head: &mut Vec<u8>,
    parts: &http::response::Parts,
    implied: &[(&str, &str)],
    framing: Framing,
    keep_alive: bool,
) {
    let status = parts.status;
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in implied {
        encode_field(head, name, value.as_bytes());
    }
    encode_fields(head, parts, framing, keep_alive);
}

/// The status line and implied headers of a `200` JSON answer, which nearly every poll
/// gets, as one piece (`encode_head` writes them in eight).
pub(super) const JSON_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n";

/// Appends what follows [`JSON_OK`]: the response's own headers and the framing.
pub(super) fn encode_fields(
    head: &mut Vec<u8>,
    parts: &http::response::Parts,
    framing: Framing,
    keep_alive: bool,
) {
    for (name, value) in &parts.headers {
        encode_field(head, name.as_str(), value.as_bytes());
    }
    encode_framing(head, framing, keep_alive);
}

/// Appends one header line.
pub(super) fn encode_field(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Appends the framing header, `connection: close` when the connection ends, the date,
/// and the head's end.
pub(super) fn encode_framing(head: &mut Vec<u8>, framing: Framing, keep_alive: bool) {
    match framing {
        Framing::None => {}
        Framing::Length(length) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    }
    // RFC 9110, 6.6.1: a server with a clock dates its answers.
    head.extend_from_slice(b"date: ");
    DATE.with(|date| head.extend_from_slice(date.borrow_mut().now()));
    head.extend_from_slice(b"\r\n\r\n");
}

thread_local! {
    /// The thread's `Date` value, formatted once a second (as hyper does), not per answer.
    static DATE: std::cell::RefCell<HttpDate> = const {
        std::cell::RefCell::new(HttpDate { second: 0, text: [0; 29] })
    };
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the second it names.
struct HttpDate {
    second: u64,
    text: [u8; 29],
}

impl HttpDate {
    /// The date now, formatted anew only when the second has changed.
    fn now(&mut self) -> &[u8] {
        let now = std::time::SystemTime::now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_framed_with_hex_lengths() {
        for (len, line) in [
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (31, "1f\r\n"),
            (4096, "1000\r\n"),
            (0xabcdef, "abcdef\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let (bytes, used) = chunk_size_line(len);
            assert_eq!(std::str::from_utf8(&bytes[..used]).unwrap(), line);
            assert_eq!(line, format!("{len:x}\r\n"));
        }
    }

    /// A `{}` JSON answer with one header of its own, in parts.
    fn json_answer_with_vary() -> (http::response::Parts, Body) {
        let mut response: Response<Body> = crate::http::json(http::StatusCode::OK, "{}");
        response
            .headers_mut()
            .insert("vary", http::HeaderValue::from_static("Origin"));
        response.into_parts()
    }

    #[test]
    fn heads_carry_the_chosen_framing() {
        let (parts, body) = json_answer_with_vary();
        let implied = body.implied_headers();
        let mut head = Vec::new();
        encode_head(&mut head, &parts, implied, Framing::Length(2), false);
        let head = String::from_utf8(head).unwrap();
        let (head, date) = head.split_once("date: ").expect("a date");
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
             vary: Origin\r\ncontent-length: 2\r\nconnection: close\r\n"
        );
        let date = date.strip_suffix("\r\n\r\n").expect("the head's end");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let mut head = Vec::new();
        encode_head(&mut head, &parts, &[], Framing::Chunked, true);
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.contains("transfer-encoding: chunked\r\ndate: "),
            "{head}"
        );
    }

    #[test]
    fn a_json_answer_head_in_one_piece_is_the_head_in_parts() {
        let (parts, body) = json_answer_with_vary();
        for keep_alive in [true, false] {
            let mut in_parts = Vec::new();
            encode_head(
                &mut in_parts,
                &parts,
                body.implied_headers(),
                Framing::Length(2),
                keep_alive,
            );
            let mut in_one = JSON_OK.to_vec();
            encode_fields(&mut in_one, &parts, Framing::Length(2), keep_alive);
            assert_eq!(
                String::from_utf8(in_one).unwrap(),
                String::from_utf8(in_parts).unwrap()
            );
        }
    }
}
