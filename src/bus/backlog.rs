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

use crate::sync::thread_slot;

/// A wait ends when the backlog has not shrunk for this long: its rest is not being
/// written, so waiting longer would not help.
const STALL: Duration = Duration::from_millis(20);

/// No publish waits longer than this in all.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Stripes of the count; threads beyond this many share them.
const STRIPES: usize = 16;

/// Most deliveries a stripe keeps before it moves them into the total.
const MAX_FLUSH: i64 = 64;

/// A count on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicI64);

/// Deliveries queued on this node and not yet taken by their subscribers.
///
/// Every walk and every writer's batch changes the count, from every core. So each
/// thread counts into a stripe of its own, which moves what it holds into the shared
/// total once that passes a few dozen deliveries either way: the shared line is written
/// once per few batches instead of once per batch. Publishes compare the total against
/// the limit, which it is within `STRIPES × flush` of (a quarter of the limit at most).
pub struct Backlog {
    /// What the stripes have moved in. Signed, like each stripe: a subscriber may take a
    /// message before the walk that queued it has added its count.
    total: Line,
    stripes: Box<[Line]>,
    /// A stripe's share beyond which it moves into the total.
    flush: i64,
    /// Above this, publishes wait; 0 means they never do.
    limit: i64,
    /// Told when the total falls to the limit.
    below: Notify,
}

impl Backlog {
    /// An empty backlog whose publishes wait above `limit` queued deliveries (0: never).
    pub fn new(limit: u64) -> Self {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let flush = if limit == 0 {
            MAX_FLUSH
        } else {
            (limit / (4 * STRIPES as i64)).clamp(1, MAX_FLUSH)
        };
        Backlog {
            total: Line::default(),
            stripes: (0..STRIPES).map(|_| Line::default()).collect(),
            flush,
            limit,
            below: Notify::new(),
        }
    }

    /// Deliveries queued now, the stripes' shares included.
    pub fn queued(&self) -> u64 {
        let held: i64 = self
            .stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum();
        (self.total.0.load(Ordering::Relaxed) + held).max(0) as u64
    }

    /// Counts `count` deliveries queued by one walk.
    pub(super) fn add(&self, count: usize) {
        self.change(count as i64);
    }

    /// Counts `count` deliveries taken (or dropped with their subscriber).
    pub(super) fn take(&self, count: usize) {
        self.change(-(count as i64));
    }

    fn change(&self, delta: i64) {
        let stripe = &self.stripes[thread_slot() % STRIPES].0;
        if (stripe.fetch_add(delta, Ordering::Relaxed) + delta).abs() < self.flush {
            return;
        }
        // Another thread on this stripe may have moved it already.
        let moved = stripe.swap(0, Ordering::Relaxed);
        let before = self.total.0.fetch_add(moved, Ordering::Relaxed);
        if self.limit > 0 && before > self.limit && before + moved <= self.limit {
            self.below.notify_waiters();
        }
    }

    /// The total the stripes have moved in, which publishes go by.
    fn total(&self) -> i64 {
        self.total.0.load(Ordering::Relaxed)
    }

    /// Whether a publish would wait now.
    pub fn over(&self) -> bool {
        self.limit > 0 && self.total() > self.limit
    }

    /// Waits while the backlog is over the limit and shrinking, at most a second in all.
    /// Returns how long it waited, `None` when it did not.
    pub async fn wait(&self) -> Option<Duration> {
        if !self.over() {
            return None;
        }
        let start = Instant::now();
        let mut last = self.total();
        loop {
            let below = self.below.notified();
            tokio::pin!(below);
            // Registered before the check, so a fall to the limit between the two is
            // not missed.
            below.as_mut().enable();
            if self.total() <= self.limit {
                break;
            }
            if tokio::time::timeout(STALL, below).await.is_err() {
                let now = self.total();
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
    fn every_threads_share_is_counted_and_the_total_stays_near() {
        let backlog = Arc::new(Backlog::new(8192));
        let threads: Vec<_> = (0..8)
            .map(|thread| {
                let backlog = backlog.clone();
                std::thread::spawn(move || {
                    for round in 0..5_000 {
                        backlog.add(1 + (round + thread) % 40);
                        backlog.take(1 + (round + thread) % 40);
                    }
                    backlog.add(thread + 1);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // 1 + 2 + … + 8, most of it still in the threads' stripes.
        assert_eq!(backlog.queued(), 36);
        let off = (backlog.total() - 36).abs();
        assert!(off <= 8192 / 4, "the total is {off} off");
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
