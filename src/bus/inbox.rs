//! A subscriber's bounded inbox: the hub pushes live messages in, the subscription takes
//! them out.
//!
//! A mutex around a `VecDeque`, not a tokio mpsc channel: a channel costs every
//! subscriber about a kilobyte up front (cache-padded halves and a first block of slots)
//! whether or not a message ever waits in it, and a gateway holds mostly idle
//! subscribers. This costs a hundred-odd bytes and grows only while messages wait. The
//! lock is held for a push or a pop, never across an await.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio_util::sync::CancellationToken;

use crate::protocol::Message;

/// Queued capacity kept when an inbox empties; a burst's larger buffer is given back.
const KEEP_CAPACITY: usize = 16;

/// The subscription's end of an inbox.
pub(super) struct Inbox {
    shared: Arc<Shared>,
}

/// The hub's end of an inbox: where to put messages and how to cut the subscriber off.
#[derive(Clone)]
pub(super) struct Subscriber {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// Set when the inbox overflowed.
    cut: AtomicBool,
    /// Cancelled with `cut`, for a transport that must drop its connection at once. A
    /// long poll has none: it answers on its next check, and a token costs a hundred-odd
    /// bytes per parked poll.
    cut_token: Option<CancellationToken>,
}

struct State {
    queue: VecDeque<Arc<Message>>,
    /// The subscription's waker while it waits for a message.
    waker: Option<Waker>,
    /// The subscription is gone: pushes are dropped.
    closed: bool,
}

/// What became of a push.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    Queued,
    /// The inbox held `capacity` messages already: the subscriber cannot keep up.
    Full,
    /// The subscription has been dropped.
    Closed,
}

impl Inbox {
    /// An empty inbox holding at most `capacity` messages; `cut`, if any, is cancelled
    /// when it overflows.
    pub(super) fn new(capacity: usize, cut: Option<CancellationToken>) -> Self {
        let state = State {
            queue: VecDeque::new(),
            waker: None,
            closed: false,
        };
        Inbox {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                capacity: capacity.max(1),
                cut: AtomicBool::new(false),
                cut_token: cut,
            }),
        }
    }

    /// A handle for the hub.
    pub(super) fn subscriber(&self) -> Subscriber {
        Subscriber {
            shared: self.shared.clone(),
        }
    }

    /// Whether the hub has cut the subscriber off.
    pub(super) fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::Acquire)
    }

    /// The token cancelled at the cut, if the inbox was given one.
    pub(super) fn cut_token(&self) -> Option<&CancellationToken> {
        self.shared.cut_token.as_ref()
    }

    /// The oldest message, if one waits.
    pub(super) fn try_pop(&self) -> Option<Arc<Message>> {
        let mut state = self.shared.lock();
        let message = state.queue.pop_front();
        if message.is_some() && state.queue.is_empty() {
            state.queue.shrink_to(KEEP_CAPACITY);
        }
        message
    }

    /// The oldest message, waiting for one. Cancel-safe: nothing is taken unless it is
    /// returned.
    pub(super) async fn pop(&self) -> Arc<Message> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(message) = state.queue.pop_front() {
                if state.queue.is_empty() {
                    state.queue.shrink_to(KEEP_CAPACITY);
                }
                return Poll::Ready(message);
            }
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        // The hub may still hold a handle until it is unregistered: free the messages now.
        state.queue = VecDeque::new();
        state.waker = None;
    }
}

impl Subscriber {
    /// Queues `message` and wakes the subscription; never waits.
    pub(super) fn push(&self, message: Arc<Message>) -> Pushed {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed {
                return Pushed::Closed;
            }
            if state.queue.len() >= self.shared.capacity {
                return Pushed::Full;
            }
            state.queue.push_back(message);
            state.waker.take()
        };
        // Woken outside the lock, so the subscription never finds it held.
        if let Some(waker) = waker {
            waker.wake();
        }
        Pushed::Queued
    }

    /// Wakes the subscription if it waits, with nothing new to take.
    pub(super) fn wake(&self) {
        let waker = self.shared.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Cuts the subscriber off (its inbox overflowed).
    pub(super) fn cut_off(&self) {
        self.shared.cut.store(true, Ordering::Release);
        if let Some(token) = &self.shared.cut_token {
            token.cancel();
        }
    }

    /// Whether the subscriber has been cut off.
    #[cfg(test)]
    pub(super) fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::Acquire)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding this lock leaves the queue consistent: every
        // critical section is a single push, pop or flag change.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Channel, Epoch};

    fn message(offset: u64) -> Arc<Message> {
        let channel = Channel::parse("inbox").unwrap();
        Arc::new(Message::new(
            channel,
            Epoch::parse("e").unwrap(),
            offset,
            0,
            b"null",
        ))
    }

    #[test]
    fn keeps_order_and_refuses_past_capacity() {
        let inbox = Inbox::new(2, None);
        let hub = inbox.subscriber();
        assert_eq!(hub.push(message(1)), Pushed::Queued);
        assert_eq!(hub.push(message(2)), Pushed::Queued);
        assert_eq!(hub.push(message(3)), Pushed::Full);
        assert_eq!(inbox.try_pop().unwrap().offset, 1);
        assert_eq!(hub.push(message(3)), Pushed::Queued);
        assert_eq!(inbox.try_pop().unwrap().offset, 2);
        assert_eq!(inbox.try_pop().unwrap().offset, 3);
        assert!(inbox.try_pop().is_none());
    }

    #[test]
    fn pushes_after_the_subscription_is_gone_are_dropped() {
        let inbox = Inbox::new(4, None);
        let hub = inbox.subscriber();
        let kept = message(1);
        assert_eq!(hub.push(kept.clone()), Pushed::Queued);
        drop(inbox);
        assert_eq!(Arc::strong_count(&kept), 1, "queued messages are freed");
        assert_eq!(hub.push(message(2)), Pushed::Closed);
    }

    #[test]
    fn a_burst_gives_its_buffer_back_once_drained() {
        let inbox = Inbox::new(1024, None);
        let hub = inbox.subscriber();
        for offset in 0..500 {
            assert_eq!(hub.push(message(offset)), Pushed::Queued);
        }
        while inbox.try_pop().is_some() {}
        assert!(inbox.shared.lock().queue.capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test]
    async fn a_wake_reaches_a_waiting_pop_without_a_message() {
        let inbox = Inbox::new(4, None);
        let hub = inbox.subscriber();
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waker = counting_waker(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut pop = std::pin::pin!(inbox.pop());
        assert!(pop.as_mut().poll(&mut cx).is_pending());
        hub.wake();
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert!(pop.as_mut().poll(&mut cx).is_pending(), "nothing to take");
        assert_eq!(hub.push(message(9)), Pushed::Queued);
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        assert!(matches!(pop.as_mut().poll(&mut cx), Poll::Ready(m) if m.offset == 9));
    }

    fn counting_waker(count: Arc<std::sync::atomic::AtomicUsize>) -> Waker {
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        Waker::from(Arc::new(Count(count)))
    }

    #[tokio::test]
    async fn a_waiting_pop_is_woken_by_a_push() {
        let inbox = Arc::new(Inbox::new(4, None));
        let hub = inbox.subscriber();
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.pop().await.offset }
        });
        tokio::task::yield_now().await;
        assert_eq!(hub.push(message(7)), Pushed::Queued);
        let offset = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(offset, 7);
    }
}
