//! A streamed answer (SSE) of the HTTP/1 path once it has its connection to itself: the
//! writer of its chunks, and the hub's express writes to the same socket.
//!
//! The HTTP/1 path hands over a stream ([`Streaming`]) whose answer carries an
//! [`ExpressSlot`]. Its socket
//! goes into an `Arc` shared with the hub, which, while the stream is parked, writes each
//! live message to it as a whole chunk (see [`crate::bus::Express`]). The connection
//! closes when the stream ends (its head says `connection: close`): a client that comes
//! back opens a new one, as EventSource does.

use std::sync::Arc;

use crate::app::App;
use crate::bus::{CursorAfter, Express, Written};
use crate::config::Transport;
use crate::conn::ConnInfo;
use crate::http1::{self, Rest, Streaming};
use crate::protocol::Message;
use crate::socket::Socket as Io;
use crate::transport::sse::event::SseEvent as _;
use crate::transport::sse::{self, ExpressSlot};

/// Writes the answer on `stream`, lending the hub an express writer over it, until the
/// stream ends or the connection is dropped.
///
/// A plain fn around an `async move` block: an async fn would keep its arguments twice,
/// for as long as the stream is open.
#[allow(clippy::manual_async_fn)]
pub fn run<S: Io>(
    stream: S,
    info: ConnInfo,
    app: Arc<App>,
    streaming: Box<Streaming>,
) -> impl Future<Output = ()> + Send {
    async move {
        let Streaming {
            head,
            mut body,
            mut extensions,
            mut buf,
        } = *streaming;
        // A stream that lends no express writer gets an empty slot.
        let slot = extensions.remove::<ExpressSlot>().unwrap_or_default();
        drop(extensions);
        let socket = Arc::new(Socket {
            stream,
            rest: Rest::default(),
            app: app.clone(),
        });
        let _ = slot.0.set(socket.clone());
        drop(slot);
        let (stream, rest) = (&socket.stream, &socket.rest);
        let _ = http1::write(stream, &info, &head).await
            && http1::write_chunked(stream, rest, &mut buf, &info, &*app, &mut body).await;
    }
}

/// A handed-over stream's socket, as the hub writes messages to it express.
struct Socket<S> {
    stream: S,
    /// What the socket did not take of the last chunk written express.
    rest: Rest,
    app: Arc<App>,
}

impl<S: Io> Express for Socket<S> {
    fn write(&self, message: &Message, cursor: Option<CursorAfter<'_>>) -> Written {
        let tried = match cursor {
            // To a subscriber of one channel, the event the message keeps.
            None => {
                let event = message.sse_event();
                http1::try_write_chunk(&self.stream, event)
                    .map(|left| (left, http1::chunk_len(event.len())))
            }
            Some(cursor) => http1::try_write_chunk_with(&self.stream, |out| {
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
