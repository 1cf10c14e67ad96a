//! The node's fan-out backlog: deliveries queued for its subscribers and not yet taken,
//! and the wait that keeps publishers from running far ahead of them.
//!
//! The hub's walk only queues (tens of nanoseconds a subscriber); writing costs about a
//! microsecond a delivery. A backend publishing as fast as its answers come can therefore
//! queue messages far faster than the node writes them, and every message waits behind
//! the whole backlog: unpaced, 2,000 messages to 1,000 subscribers had a p99 of 160 ms
//! (BENCHMARKS.md). Answering a backend's publish only once the backlog is back under a
//! bound caps that wait, while the backlog stays deep enough for writers to batch.
//!
//! A subscriber that reads nothing keeps its queued messages until it is cut off (a full
//! queue or `write_timeout_ms`), and waiting for it would throttle every publisher on the
//! node. So a publisher waits only while the backlog is being taken: when it stops
//! shrinking for a moment, the wait ends.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A wait ends when the backlog has not shrunk for this long: its rest is not being
/// written, so waiting longer would not help.
const STALL: Duration = Duration::from_millis(20);

/// No publish waits longer than this in all.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Deliveries queued on this node and not yet taken by their subscribers.
pub struct Backlog {
    /// Signed: a subscriber may take a message before the walk that queued it has added
    /// its count.
    queued: AtomicI64,
    /// Above this, publishes wait; 0 means they never do.
    limit: i64,
    /// Told when the backlog falls to the limit.
    below: Notify,
}

impl Backlog {
    /// An empty backlog whose publishes wait above `limit` queued deliveries (0: never).
    pub fn new(limit: u64) -> Self {
        Backlog {
            queued: AtomicI64::new(0),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            below: Notify::new(),
        }
    }

    /// Deliveries queued now.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed).max(0) as u64
    }

    /// Counts `count` deliveries queued by one walk.
    pub(super) fn add(&self, count: usize) {
        self.queued.fetch_add(count as i64, Ordering::Relaxed);
    }

    /// Counts `count` deliveries taken (or dropped with their subscriber).
    pub(super) fn take(&self, count: usize) {
        let count = count as i64;
        let before = self.queued.fetch_sub(count, Ordering::Relaxed);
        if self.limit > 0 && before > self.limit && before - count <= self.limit {
            self.below.notify_waiters();
        }
    }

    /// Whether a publish would wait now.
    pub fn over(&self) -> bool {
        self.limit > 0 && self.queued.load(Ordering::Relaxed) > self.limit
    }

    /// Waits while the backlog is over the limit and shrinking, at most a second in all.
    /// Returns how long it waited, `None` when it did not.
    pub async fn wait(&self) -> Option<Duration> {
        if !self.over() {
            return None;
        }
        let start = Instant::now();
        let mut last = self.queued.load(Ordering::Relaxed);
        loop {
            let below = self.below.notified();
            tokio::pin!(below);
            // Registered before the check, so a fall to the limit between the two is
            // not missed.
            below.as_mut().enable();
            let now = self.queued.load(Ordering::Relaxed);
            if now <= self.limit {
                break;
            }
            if tokio::time::timeout(STALL, below).await.is_err() {
                let now = self.queued.load(Ordering::Relaxed);
                if now >= last || start.elapsed() >= MAX_WAIT {
                    break;
                }
                last = now;
            }
        }
        Some(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn under_the_limit_a_publish_does_not_wait() {
        let backlog = Backlog::new(10);
        backlog.add(10);
        assert_eq!(backlog.wait().await, None);
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_backlog_is_taken_down_to_the_limit() {
        let backlog = Arc::new(Backlog::new(10));
        backlog.add(100);
        let taker = backlog.clone();
        let taking = tokio::spawn(async move {
            for _ in 0..9 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                taker.take(10);
            }
        });
        let waited = backlog.wait().await.expect("over the limit: it waits");
        assert!(backlog.queued() <= 10, "left at {}", backlog.queued());
        assert!(waited >= Duration::from_millis(40), "waited {waited:?}");
        taking.await.unwrap();
    }

    #[tokio::test]
    async fn a_backlog_nobody_takes_holds_a_publish_only_briefly() {
        let backlog = Backlog::new(10);
        backlog.add(100);
        let waited = backlog.wait().await.expect("over the limit: it waits");
        assert!(waited < MAX_WAIT / 4, "waited {waited:?}");
        assert_eq!(backlog.queued(), 100);
    }

    #[tokio::test]
    async fn a_limit_of_zero_never_waits() {
        let backlog = Backlog::new(0);
        backlog.add(1_000_000);
        assert_eq!(backlog.wait().await, None);
    }

    #[test]
    fn a_take_before_its_walk_counts_is_no_underflow() {
        let backlog = Backlog::new(10);
        backlog.take(3);
        assert_eq!(backlog.queued(), 0);
        backlog.add(3);
        assert_eq!(backlog.queued(), 0);
    }
}
