//! The deadlines of an HTTP/2 connection, which hyper does not enforce: its first request
//! within `limits.header_read_timeout_ms` of the preface, and no longer than
//! `limits.http2_idle_timeout_ms` with no stream in flight. Without them a client that
//! sends the preface (and a SETTINGS frame) and nothing else held its connection slot
//! forever.
//!
//! A stream is in flight from the moment hyper hands its request to the service until
//! its response body is dropped (sent whole, or reset), which [`Counted`] tracks.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::http::Body;
use crate::sync::Unpoisoned;

/// What one HTTP/2 connection has in flight.
pub(super) struct Activity {
    state: Mutex<State>,
}

struct State {
    /// Streams whose response has not finished.
    open: usize,
    /// Whether any request came at all.
    served: bool,
    /// When the last stream finished, or the connection began.
    idle_since: Instant,
}

/// Why a connection's deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expired {
    /// No request within the header deadline of the preface.
    NoRequest,
    /// No stream for the idle limit.
    Idle,
}

impl Activity {
    /// A connection whose preface has just been read.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(State {
                open: 0,
                served: false,
                idle_since: Instant::now(),
            }),
        })
    }

    /// Counts a stream in flight until the returned guard is dropped.
    pub(super) fn open(self: &Arc<Self>) -> StreamGuard {
        let mut state = self.state.locked();
        state.open += 1;
        state.served = true;
        StreamGuard(self.clone())
    }

    /// Whether a deadline has passed at `now`.
    pub(super) fn expired(&self, now: Instant, first: Duration, idle: Duration) -> Option<Expired> {
        let state = self.state.locked();
        let quiet = now.saturating_duration_since(state.idle_since);
        match (state.open, state.served) {
            (1.., _) => None,
            (0, false) if quiet >= first => Some(Expired::NoRequest),
            (0, true) if quiet >= idle => Some(Expired::Idle),
            (0, _) => None,
        }
    }
}

/// A stream in flight on an HTTP/2 connection.
pub(super) struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut state = self.0.state.locked();
        state.open -= 1;
        if state.open == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its stream counted as in flight until it is dropped.
pub(super) struct Counted {
    body: Body,
    _stream: StreamGuard,
}

impl Counted {
    /// `body`, counted by `stream`, as a response body.
    pub(super) fn wrap(body: Body, stream: StreamGuard) -> Body {
        Body::Boxed(
            Counted {
                body,
                _stream: stream,
            }
            .boxed_unsync(),
        )
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// How often a connection looks at its deadlines: often enough that neither is overrun by
/// more than a quarter.
pub(super) fn check_every(first: Duration, idle: Duration) -> Duration {
    (first.min(idle) / 4).max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_expires_at_the_header_deadline() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(activity.expired(start + FIRST / 2, FIRST, IDLE), None);
        assert_eq!(
            activity.expired(start + FIRST, FIRST, IDLE),
            Some(Expired::NoRequest)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_in_flight_holds_the_connection_and_its_end_starts_the_idle_clock() {
        let activity = Activity::new();
        let stream = activity.open();
        tokio::time::advance(IDLE * 2).await;
        assert_eq!(activity.expired(Instant::now(), FIRST, IDLE), None);
        drop(stream);
        let ended = Instant::now();
        assert_eq!(activity.expired(ended + FIRST, FIRST, IDLE), None);
        assert_eq!(
            activity.expired(ended + IDLE, FIRST, IDLE),
            Some(Expired::Idle)
        );
    }
}
