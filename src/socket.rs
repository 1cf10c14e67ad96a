//! A connection's socket as the HTTP/1 path and the express writers use it: readiness, and
//! reads and writes that never wait, through a shared reference.
//!
//! The lean HTTP/1 path ([`crate::http1`]) waits for a connection's next request without a
//! buffer, by readiness alone, and the hub writes live messages to an idle stream's socket
//! from its own task (see [`crate::bus::Express`]), beside the connection that owns it.
//! Both need more than `AsyncRead`/`AsyncWrite`: [`Socket`] is that contract, so that the
//! path is written once for any socket that keeps it. A TCP socket keeps it as it is; a TLS
//! session keeps it by holding its state behind a lock of its own ([`crate::tls::TlsSocket`]),
//! and buffers what its socket did not take, which [`Socket::poll_flush`] sends.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket read and written through `&self`, without waiting: what the lean HTTP/1 path
/// and the hub's express writes need of a connection.
///
/// `try_*` calls return `WouldBlock` when the socket has nothing to read or no room, and
/// clear the readiness that the `poll_*_ready` calls report, as tokio's own do.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    /// Ready once there may be something to read (or the peer closed).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ready once there may be room to write.
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Reads what is there into `buf`'s spare room; `Ok(0)` when the peer closed.
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Reads what is there into `buf`; `Ok(0)` when the peer closed.
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what the socket takes of `bytes` now.
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize>;
    /// Writes what the socket takes of `bufs` now, in order.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Ready once everything written has gone to the kernel: at once for a bare socket,
    /// which buffers nothing of its own.
    fn poll_flush(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Socket for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }

    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, bytes)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }
}

/// How many bytes a non-blocking write took: none when the socket had no room.
pub fn taken(attempt: io::Result<usize>) -> io::Result<usize> {
    match attempt {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

/// Writes all of `bytes` to a socket that is borrowed, not owned (tokio's `write_all`
/// wants it mutably).
pub async fn write_all(socket: &impl Socket, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        std::future::poll_fn(|cx| socket.poll_write_ready(cx)).await?;
        match socket.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// A connection's stream over a socket held in `T`, which the hub may hold too.
///
/// The connection reads and writes it as any stream; the hub writes through the same
/// socket with `try_write` while the connection is parked and has armed its lane. The bus
/// guarantees the two never write at once, so this type need not.
pub struct SharedSocket<T>(pub Arc<T>);

/// What holds a connection's socket beside what the hub needs with it.
pub trait Holds: Send + Sync {
    /// The socket held.
    type Socket: Socket;
    /// The socket.
    fn socket(&self) -> &Self::Socket;
}

impl<T: Holds> SharedSocket<T> {
    fn socket(&self) -> &T::Socket {
        self.0.socket()
    }
}

impl<T: Holds> AsyncRead for SharedSocket<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = self.socket();
        loop {
            ready!(socket.poll_read_ready(cx))?;
            // A would-block clears the readiness, so the next turn registers the waker.
            match socket.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl<T: Holds> AsyncWrite for SharedSocket<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = self.socket();
        loop {
            ready!(socket.poll_write_ready(cx))?;
            match socket.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting the write side needs the socket to itself; it closes, FIN and all,
        // when the connection and its lane both let go of it, which they do together.
        Poll::Ready(Ok(()))
    }
}

/// A socket with bytes already read from it in front, for handing over to hyper.
pub struct Prefixed<S> {
    prefix: Bytes,
    stream: S,
}

impl<S> Prefixed<S> {
    /// `stream`, whose next bytes are `prefix`.
    pub fn new(prefix: Bytes, stream: S) -> Self {
        Prefixed { prefix, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Release the read buffer: an upgraded connection keeps this socket for
                // its whole life.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
