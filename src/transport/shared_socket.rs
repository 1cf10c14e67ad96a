//! A TCP socket shared between its connection's task and the hub's express writes (see
//! [`crate::bus::Express`]).
//!
//! The connection reads and writes it as any stream; the hub writes through the same
//! socket with `try_write` while the connection is parked and has armed its lane. The bus
//! guarantees the two never write at once, so this type need not.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection's stream over a socket held in `T`, which the hub may hold too.
pub struct SharedSocket<T>(pub Arc<T>);

impl<T: AsRef<TcpStream>> SharedSocket<T> {
    fn stream(&self) -> &TcpStream {
        self.0.as_ref().as_ref()
    }
}

impl<T: AsRef<TcpStream>> AsyncRead for SharedSocket<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = self.stream();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // A would-block clears the readiness, so the next turn registers the waker.
            match stream.try_read(buf.initialize_unfilled()) {
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

impl<T: AsRef<TcpStream>> AsyncWrite for SharedSocket<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = self.stream();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket buffers nothing of its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting the write side needs the socket to itself; it closes, FIN and all,
        // when the connection and its lane both let go of it, which they do together.
        Poll::Ready(Ok(()))
    }
}
