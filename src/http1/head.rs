//! Reading and parsing a request head on the lean path: the first read into the thread's
//! buffer, httparse, and the `LeanRequest` the routes get, with only the headers they read.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::ReadBuf;

use super::{FIRST_READ, LeanRoute, MAX_HEAD, MAX_HEADERS, Router};
use crate::conn::ConnInfo;
use crate::http::{LeanRequest, Verb};
use crate::socket::Socket;

/// Reads until `buf` holds a whole request head; the request, if this path serves it,
/// and whether the connection may carry another. `None` hands the connection to hyper.
pub(super) async fn read_head<S: Socket, R: Router>(
    router: &R,
    stream: &mut S,
    buf: &mut BytesMut,
    info: &ConnInfo,
) -> io::Result<Option<(Box<LeanRequest>, bool)>> {
    use tokio::io::AsyncReadExt;
    if buf.is_empty() {
        // Nearly every head arrives whole in one read: it is read and parsed in the
        // thread's buffer, and the connection's own takes only what is left over.
        match poll_fn(|cx| poll_first_read::<S, R>(router, stream, cx, buf, info)).await? {
            Head::Lean(lean, ()) => return Ok(Some(lean)),
            Head::Other => return Ok(None),
            Head::Partial => {}
        }
    }
    loop {
        match parse_head(router, buf, info) {
            Head::Lean(lean, ()) => return Ok(Some(lean)),
            Head::Partial if buf.len() < MAX_HEAD => {}
            Head::Partial | Head::Other => return Ok(None),
        }
        if buf.capacity() == buf.len() {
            buf.reserve(if buf.is_empty() {
                FIRST_READ
            } else {
                buf.len()
            });
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads once into the thread's buffer and parses a head there. A request this path
/// serves is consumed, and any bytes after its head are moved to `buf`; otherwise all
/// that was read is, for the caller to go on reading or hand to hyper.
///
/// A buffer per thread rather than the connection's: taken and released for every request
/// of every poller, the connection's cost an allocation and a free per request, and kept,
/// it would be part of every parked poll. `poll_read`, not `try_read`: a short read tells
/// tokio that the socket is drained, which spares the parked poll's watch a read that
/// would find nothing.
pub(super) fn poll_first_read<S: Socket, R: Router>(
    router: &R,
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    info: &ConnInfo,
) -> Poll<io::Result<Head<()>>> {
    FIRST.with_borrow_mut(|space| {
        let mut read = ReadBuf::new(&mut space[..]);
        match Pin::new(stream).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Ready(Ok(())) => {}
        }
        let read = read.filled();
        if read.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        let (head, used) = parse(router, read, info).consumed();
        buf.extend_from_slice(&read[used..]);
        Poll::Ready(Ok(head))
    })
}

thread_local! {
    /// The thread's buffer for a connection's first read of a request (see
    /// [`poll_first_read`]).
    static FIRST: std::cell::RefCell<Box<[u8; FIRST_READ]>> =
        std::cell::RefCell::new(Box::new([0; FIRST_READ]));
}

/// What the start of the read buffer holds.
pub(super) enum Head<L> {
    /// Not a whole head yet.
    Partial,
    /// A request this path serves and whether the connection may carry another, with
    /// `L`: the head's length, or nothing once it was consumed.
    Lean((Box<LeanRequest>, bool), L),
    /// Anything else: hyper's to serve.
    Other,
}

impl Head<usize> {
    /// The head once consumed, and how many bytes that takes: the head's length for a
    /// request this path serves, none otherwise.
    fn consumed(self) -> (Head<()>, usize) {
        match self {
            Head::Lean(lean, len) => (Head::Lean(lean, ()), len),
            Head::Partial => (Head::Partial, 0),
            Head::Other => (Head::Other, 0),
        }
    }
}

/// Parses the head at the start of `buf`, consuming it if this path serves the request.
pub(super) fn parse_head<R: Router>(router: &R, buf: &mut BytesMut, info: &ConnInfo) -> Head<()> {
    let (head, used) = parse(router, buf, info).consumed();
    buf.advance(used);
    head
}

/// Parses the head at the start of `bytes`: the request and the head's length. Not
/// async: the header array is 2 KiB, which a future would keep for every connection.
pub(super) fn parse<R: Router>(router: &R, bytes: &[u8], info: &ConnInfo) -> Head<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => match lean_request(router, &parsed, info) {
            Some(lean) => Head::Lean(lean, len),
            None => Head::Other,
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Other,
    }
}

/// The request a parsed head stands for, if this path serves it.
pub(super) fn lean_request<R: Router>(
    router: &R,
    parsed: &httparse::Request<'_, '_>,
    info: &ConnInfo,
) -> Option<(Box<LeanRequest>, bool)> {
    let target = parsed.path?;
    // Characters no URI holds (RFC 3986), which httparse lets through and hyper refuses:
    // its refusal is the answer, as for any head this path does not understand.
    if memchr::memchr3(b'"', b'<', b'>', target.as_bytes()).is_some() {
        return None;
    }
    let path = &target[..crate::http::path_end(target)];
    let route = R::lean_route(path)?;
    // A preflight: a cross-origin page that sends credentials in a header asks before its
    // `/negotiate` or its polls, and the connection should stay here for them. Any other
    // method than the route's is hyper's to refuse.
    let (preflight, post) = match (parsed.method, route.method) {
        (Some("GET"), Verb::Get) => (false, false),
        (Some("POST"), Verb::Post) => (false, true),
        (Some("OPTIONS"), _) => (true, false),
        _ => return None,
    };
    if parsed.version != Some(1) {
        return None;
    }
    let upgrade_allowed = route.upgrade && !preflight;
    let wants_conn = route.conn && !preflight;
    let proxied = info.proxied();
    // Host is read only to tell a same-origin request from a cross-origin one.
    let has_origin = parsed
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("origin"));
    let mut map = HeaderMap::new();
    let mut keep_alive = true;
    let mut length = None;
    let mut hosts = 0;
    for header in parsed.headers.iter() {
        let (name, value) = (header.name, header.value);
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        hosts += usize::from(is("host"));
        // A chunked body, an upgrade or an expectation: hyper's to handle.
        if is("transfer-encoding")
            || is("expect")
            || (is("upgrade") && (!upgrade_allowed || !value.eq_ignore_ascii_case(b"websocket")))
        {
            return None;
        }
        if is("content-length") {
            // Plain digits, given once; anything else is hyper's to judge.
            let digits = std::str::from_utf8(value).ok()?;
            if length.is_some() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            length = Some(digits.parse::<usize>().ok()?);
        }
        if is("connection") {
            keep_alive &= !std::str::from_utf8(value)
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
        let Some(name) = kept(router, &route, name, has_origin, proxied) else {
            continue;
        };
        map.append(name, HeaderValue::from_bytes(value).ok()?);
    }
    // Without exactly one: hyper's path refuses it (`routes::one_host`). A client at its
    // connection limit behind a proxy likewise.
    if hosts != 1 || info.forwarded(&mut map).is_err() {
        return None;
    }
    // Only the streams read the connection (to be cut off and for their logs), and a
    // publish (its budget).
    let conn = wants_conn.then(|| info.clone());
    let request = LeanRequest::new(target, map, conn);
    let request = match (post, length) {
        (true, Some(length)) => request.with_body(length),
        // A body only where the route reads one; a publish says how long its body is.
        (true, None) | (false, Some(1..)) => return None,
        _ if preflight => request.into_preflight(),
        _ => request,
    };
    Some((Box::new(request), keep_alive))
}

/// The name of a header `route` reads, or `None` for one it never does, which is dropped
/// unparsed: a browser sends a dozen headers, and each kept one costs a copy and an
/// allocation in the request's map. Every route's admission reads the origin check's
/// `Origin` (and `Host`, only beside an `Origin`) and the credentials (`Authorization`,
/// the API key), and, from a trusted proxy, its forwarding headers; the route table says
/// what else each handler reads.
pub fn kept<R: Router>(
    router: &R,
    route: &LeanRoute,
    name: &str,
    has_origin: bool,
    proxied: bool,
) -> Option<HeaderName> {
    use http::header;
    if has_origin && name.eq_ignore_ascii_case("host") {
        return Some(header::HOST);
    }
    if proxied {
        use crate::forwarded::{X_FORWARDED_FOR, X_FORWARDED_HOST};
        let forwarding = [header::FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST];
        if let Some(kept) = forwarding
            .into_iter()
            .find(|kept| name.eq_ignore_ascii_case(kept.as_str()))
        {
            return Some(kept);
        }
    }
    router.admission_reads(name).or_else(|| route.reads(name))
}
