//! A minimal HTTP/1.1 client for the load generator: keep-alive requests with
//! `Content-Length` or chunked bodies, and chunked streams for SSE.
//!
//! Hand-written rather than a full client so that each simulated client costs one socket,
//! one buffer and no background task, and so that sockets can be bound to a chosen
//! loopback source address before connecting. It speaks only to the gateway under test.

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Opens a TCP connection to `addr`, bound to `source` first when given: each source
/// address has its own ephemeral port range, so several of them hold more connections.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a response body ends.
#[derive(Clone, Copy, Debug)]
pub enum Length {
    /// `Content-Length` bytes.
    Exact(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// At connection close.
    Close,
}

/// A response's status and framing.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// How the body ends.
    pub length: Length,
}

/// One keep-alive connection (over TLS in a `--tls` run).
pub struct Conn {
    stream: crate::tls::Stream,
    buf: BytesMut,
}

impl Conn {
    /// Connects to `addr`, from `source` when given.
    pub async fn open(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<Self> {
        Ok(Conn {
            stream: crate::tls::connect(addr, source).await?,
            buf: BytesMut::with_capacity(4096),
        })
    }

    /// Writes a request; a non-empty body is sent as JSON.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let mut request = Vec::with_capacity(160 + path.len() + body.len());
        request.extend_from_slice(method.as_bytes());
        request.push(b' ');
        request.extend_from_slice(path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (name, value) in headers {
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || method == "POST" {
            request.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            request.extend_from_slice(body.len().to_string().as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        self.stream.write_all(&request).await
    }

    /// Sends a request and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(u16, Bytes)> {
        self.send(method, path, headers, body).await?;
        self.response().await
    }

    /// Reads one whole response.
    pub async fn response(&mut self) -> io::Result<(u16, Bytes)> {
        let head = self.head().await?;
        let body = self.body(head).await?;
        Ok((head.status, body))
    }

    /// Reads a response head, leaving the body in the buffer.
    pub async fn head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = parse_head(&self.buf[..end])?;
                let _ = self.buf.split_to(end + 4);
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head too long"));
            }
            self.fill().await?;
        }
    }

    /// Reads a whole body framed as `head` says.
    pub async fn body(&mut self, head: Head) -> io::Result<Bytes> {
        match head.length {
            Length::Exact(len) => {
                while self.buf.len() < len {
                    self.fill().await?;
                }
                Ok(self.buf.split_to(len).freeze())
            }
            Length::Chunked => {
                let mut body = BytesMut::new();
                while let Some(chunk) = self.chunk().await? {
                    body.extend_from_slice(&chunk);
                }
                Ok(body.freeze())
            }
            Length::Close => Err(invalid("response without length on a keep-alive request")),
        }
    }

    /// The next piece of a streamed body; `None` when it ends.
    pub async fn piece(&mut self, head: Head) -> io::Result<Option<Bytes>> {
        match head.length {
            Length::Chunked => self.chunk().await,
            Length::Exact(_) | Length::Close => {
                if self.buf.is_empty() {
                    match self.fill().await {
                        Ok(()) => {}
                        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                            return Ok(None);
                        }
                        Err(err) => return Err(err),
                    }
                }
                Ok(Some(self.buf.split().freeze()))
            }
        }
    }

    /// The next chunk of a chunked body; `None` after the last one.
    async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(line_end) = find(&self.buf, b"\r\n") {
                let line = std::str::from_utf8(&self.buf[..line_end])
                    .map_err(|_| invalid("bad chunk size"))?;
                let size_text = line.split(';').next().unwrap_or("").trim();
                let size =
                    usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
                if size == 0 {
                    // The last chunk, then optional trailers, then an empty line.
                    if let Some(end) = find(&self.buf[line_end..], b"\r\n\r\n") {
                        let _ = self.buf.split_to(line_end + end + 4);
                        return Ok(None);
                    }
                } else if self.buf.len() >= line_end + 2 + size + 2 {
                    let _ = self.buf.split_to(line_end + 2);
                    let data = self.buf.split_to(size).freeze();
                    let _ = self.buf.split_to(2);
                    return Ok(Some(data));
                }
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(())
    }
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut length = Length::Close;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Length::Exact(value.parse().map_err(|_| invalid("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            length = Length::Chunked;
        }
    }
    Ok(Head { status, length })
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    // A first-byte scan keeps this cheap on the short texts it sees.
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(offset) => {
                let at = i + offset;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// Where `needle` last occurs in `hay`.
pub fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&at| &hay[at..at + needle.len()] == needle)
}
