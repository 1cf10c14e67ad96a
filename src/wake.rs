//! Side waits: the occasional things a long-lived connection waits on beside its
//! subscription (shutdown, token expiry, a timer, the socket's read side), polled only
//! after one of them has woken the task.
//!
//! A connection's task is woken by its subscription for every delivery. Polling every
//! other wait again each time (a `select!`) re-registered a timer, a `Notify` waiter and
//! the socket's readiness per message; that took about a quarter of a paced delivery's
//! instructions. The side waits get a waker of their own that notes it fired, then wakes
//! the task. [`deadline`] serves the one timer a lean connection resets for each of its
//! waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;

/// The waker shared by a task's side waits. Only the flag is kept, not a `Waker`: a
/// long-lived connection's task keeps this, and the waker is made when one fired.
pub struct SideWaits {
    flag: Arc<Flag>,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for SideWaits {
    fn default() -> Self {
        let flag = Arc::new(Flag {
            // Everything is polled on the first turn, which registers this waker.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        SideWaits { flag }
    }
}

impl SideWaits {
    /// Registers `task` to be woken by the side waits; returns the waker to poll them
    /// with if one of them fired since the last call (always on the first), else `None`.
    pub fn fired(&self, task: &Waker) -> Option<Waker> {
        self.flag.task.register(task);
        self.flag
            .woken
            .swap(false, Ordering::AcqRel)
            .then(|| Waker::from(self.flag.clone()))
    }

    /// Has the side waits polled again on the next turn: one that was just ready may be
    /// ready again at once (more frames buffered, a timer behind).
    pub fn again(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}

/// The instant `after` from now, for resetting a timer: a far one when the sum would
/// overflow (a configured hold may be any number of milliseconds).
pub fn deadline(after: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn side_waits_are_due_first_then_only_after_they_fire() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let side = SideWaits::default();
        let waker = side.fired(&task).expect("due on the first turn");
        assert!(side.fired(&task).is_none(), "nothing fired since");
        waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert!(side.fired(&task).is_some());
        assert!(side.fired(&task).is_none());
        side.again();
        assert!(side.fired(&task).is_some());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "again() wakes nothing");
    }
}
