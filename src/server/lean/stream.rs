//! A streamed answer (SSE) on the lean path once it has its connection to itself: the
//! writer of its chunks, and the hub's express writes to the same socket.
//!
//! The lean path hands over a stream whose answer carries an [`ExpressSlot`]. Its socket
//! goes into an `Arc` shared with the hub, which, while the stream is parked, writes each
//! live message to it as a whole chunk (see [`crate::bus::Express`]). The connection
//! closes when the stream ends (its head says `connection: close`): a client that comes
//! back opens a new one, as EventSource does.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::{self as lean, Rest};
use crate::app::App;
use crate::bus::{CursorAfter, Express, Written};
use crate::config::Transport;
use crate::conn::ConnInfo;
use crate::http::Body;
use crate::protocol::Message;
use crate::transport::sse::event::SseEvent as _;
use crate::transport::sse::{self, ExpressSlot};

/// A streamed answer, not yet written, and what was read past its request.
pub struct Streaming {
    head: Vec<u8>,
    body: Body,
    slot: ExpressSlot,
    /// The start of a next request, read while this one was routed.
    pub buf: BytesMut,
}

impl Streaming {
    /// An answer of `head` and `body`, whose stream takes its express writer from `slot`.
    pub fn new(head: Vec<u8>, body: Body, slot: ExpressSlot) -> Box<Self> {
        Box::new(Streaming {
            head,
            body,
            slot,
            buf: BytesMut::new(),
        })
    }
}

/// Writes the answer on `stream`, lending the hub an express writer over it, until the
/// stream ends or the connection is dropped.
///
/// A plain fn around an `async move` block: an async fn would keep its arguments twice,
/// for as long as the stream is open.
#[allow(clippy::manual_async_fn)]
pub fn run(
    stream: TcpStream,
    info: ConnInfo,
    app: Arc<App>,
    streaming: Box<Streaming>,
) -> impl Future<Output = ()> + Send {
    async move {
        let Streaming {
            head,
            mut body,
            slot,
            mut buf,
        } = *streaming;
        let socket = Arc::new(Socket {
            stream,
            rest: Rest::default(),
            app: app.clone(),
        });
        let _ = slot.0.set(socket.clone());
        drop(slot);
        let (stream, rest) = (&socket.stream, &socket.rest);
        let _ = lean::write(stream, &info, &head).await
            && lean::write_chunked(stream, rest, &mut buf, &info, &app, &mut body).await;
    }
}

/// A handed-over stream's socket, as the hub writes messages to it express.
struct Socket {
    stream: TcpStream,
    /// What the socket did not take of the last chunk written express.
    rest: Rest,
    app: Arc<App>,
}

impl Express for Socket {
    fn write(&self, message: &Message, cursor: Option<CursorAfter<'_>>) -> Written {
        let tried = match cursor {
            // To a subscriber of one channel, the event the message keeps.
            None => {
                let event = message.sse_event();
                lean::try_write_chunk(&self.stream, event)
                    .map(|left| (left, lean::chunk_len(event.len())))
            }
            Some(cursor) => lean::try_write_chunk_with(&self.stream, |out| {
                sse::put_event_after(out, message, cursor)
            }),
        };
        match tried {
            Ok((None, _)) => {
                let metrics = self.app.metrics.transport(Transport::Sse);
                metrics.record_delivery(message.json().len(), message.ts, crate::bus::now_ms());
                Written::All
            }
            Ok((Some(left), chunk)) => {
                if left.len() >= chunk {
                    return Written::Nothing;
                }
                let sent = chunk - left.len();
                self.rest.put(left);
                Written::Part(sent)
            }
            // Failed: the connection's own write finds out.
            Err(_) => Written::Nothing,
        }
    }

    fn idle(&self) -> bool {
        !self.rest.waits()
    }

    fn several_channels(&self) -> bool {
        true
    }
}
