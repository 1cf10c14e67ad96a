//! A finished TLS session over its TCP socket, read and written through `&self` without
//! waiting: the [`Socket`] contract, which the lean HTTP/1 path and the hub's express
//! writes need. The session sits behind a lock of its own (std, not tokio's: never held
//! across an await), as the hub writes to it from its task while the connection's own
//! task waits to read.
//!
//! Two things differ from a bare TCP socket, and are kept here:
//! - Readiness is the session's: decrypted bytes already buffered (they may have come
//!   with the handshake's last flight) are readable with nothing new on the socket.
//! - A write is encrypted whole, and the socket may take only part of the records: the
//!   rest waits in the session. Every later write sends it first, and so does the
//!   connection's wait to read, which also waits for the socket's room while anything
//!   is left; a write from another task (the hub) that leaves some wakes that wait.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConnection;

use crate::socket::Socket;
use crate::sync::Unpoisoned;

/// A TLS connection whose handshake is done.
pub struct TlsSocket {
    tcp: TcpStream,
    session: Mutex<Session>,
}

struct Session {
    tls: ServerConnection,
    /// The task that last waited to read, woken when a write leaves records unsent.
    reader: Option<Waker>,
    /// The session failed (a bad record, an alert): every read reports it.
    failed: bool,
}

/// The TCP socket as rustls reads and writes it: never waiting.
struct Tcp<'a>(&'a TcpStream);

impl Read for Tcp<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Tcp<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Session {
    /// Sends the records the session holds, as far as the socket takes them; whether
    /// none are left.
    fn flush(&mut self, tcp: &TcpStream) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut Tcp(tcp)) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// Whether a read returns at once: bytes decrypted and unread, the peer's close, or
    /// the session's failure.
    fn readable(&mut self) -> bool {
        if self.failed {
            return true;
        }
        match self.tls.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => {
                self.failed = true;
                true
            }
        }
    }

    /// Reads decrypted bytes into `buf`, reading and decrypting records from the socket
    /// while none are buffered; `Ok(0)` when the peer closed (with or without its
    /// `close_notify`).
    fn read(&mut self, tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.failed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "tls session failed",
                ));
            }
            match self.tls.reader().read(buf) {
                Ok(read) => return Ok(read),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) => return Err(err),
            }
            // A would-block here clears the socket's readiness, as a TCP read's does.
            self.tls.read_tls(&mut Tcp(tcp))?;
            let processed = self.tls.process_new_packets();
            // Alerts and key updates the records asked for, as far as the socket takes.
            self.flush(tcp)?;
            if let Err(err) = processed {
                self.failed = true;
                return Err(io::Error::new(io::ErrorKind::InvalidData, err));
            }
        }
    }

    /// Encrypts what of `bytes` the session takes after sending what it held; would block
    /// while records are left from before. `Ok` with the records perhaps not all sent,
    /// and whether they were.
    fn write(
        &mut self,
        tcp: &TcpStream,
        write: impl FnOnce(&mut ServerConnection) -> io::Result<usize>,
    ) -> io::Result<(usize, bool)> {
        if !self.flush(tcp)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = write(&mut self.tls)?;
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok((taken, self.flush(tcp)?))
    }
}

impl TlsSocket {
    /// The session `tls`, its handshake done, over `tcp`.
    pub(super) fn new(tcp: TcpStream, tls: ServerConnection) -> Self {
        TlsSocket {
            tcp,
            session: Mutex::new(Session {
                tls,
                reader: None,
                failed: false,
            }),
        }
    }

    /// Writes through the session; wakes the reading task when records are left unsent.
    fn write_with(
        &self,
        write: impl FnOnce(&mut ServerConnection) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let (taken, waker) = {
            let mut session = self.session.locked();
            let (taken, sent) = session.write(&self.tcp, write)?;
            (taken, if sent { None } else { session.reader.take() })
        };
        // Outside the lock: the woken task takes it at once.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(taken)
    }
}

impl Socket for TlsSocket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut session = self.session.locked();
            if session.readable() {
                return Poll::Ready(Ok(()));
            }
            // Records a write left: sent now, or when the socket has room.
            loop {
                if session.flush(&self.tcp)? {
                    break;
                }
                match self.tcp.poll_write_ready(cx) {
                    // A would-block cleared it: the next turn waits.
                    Poll::Ready(ready) => ready?,
                    Poll::Pending => break,
                }
            }
            if !session
                .reader
                .as_ref()
                .is_some_and(|reader| reader.will_wake(cx.waker()))
            {
                session.reader = Some(cx.waker().clone());
            }
        }
        self.tcp.poll_read_ready(cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.session.locked().flush(&self.tcp)? {
                return self.tcp.poll_write_ready(cx);
            }
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.session.locked().flush(&self.tcp)? {
                return Poll::Ready(Ok(()));
            }
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let start = buf.len();
        if buf.capacity() == start {
            buf.reserve(1024);
        }
        buf.resize(buf.capacity(), 0);
        let read = self.try_read(&mut buf[start..]);
        buf.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.session.locked().read(&self.tcp, buf)
    }

    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        self.write_with(|tls| tls.writer().write(bytes))
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_with(|tls| tls.writer().write_vectored(bufs))
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(Socket::poll_read_ready(&*self, cx))?;
            match self.try_read(buf.initialize_unfilled()) {
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

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(Socket::poll_write_ready(&*self, cx))?;
            match self.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(Socket::poll_write_ready(&*self, cx))?;
            match self.try_write_vectored(bufs) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Socket::poll_flush(&*self, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Idempotent in rustls: polled again, it queues nothing more.
        self.session.locked().tls.send_close_notify();
        ready!(Socket::poll_flush(&*self, cx))?;
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    /// Every idle TLS connection keeps one (inside its task, or the WebSocket's and SSE
    /// stream's shared socket), beside rustls' heap: its 4 KiB read buffer, the record
    /// keys. A change that grows it re-measures the TLS idle rows (BENCHMARKS.md).
    #[test]
    fn a_tls_socket_fits_its_budget() {
        let size = std::mem::size_of::<super::TlsSocket>();
        assert!(size <= 1280, "TlsSocket is {size} bytes");
    }
}
