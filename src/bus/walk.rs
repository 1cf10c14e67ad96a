//! A channel's walks: each message handed to every local subscriber of its channel, in
//! offset order, with no lock held across a walk, and a wide channel's walk split over
//! the runtime's workers.
//!
//! An engine queues each message for its channel's walk in offset order (while it still
//! holds whatever orders its offsets) and lets go of that before the walk. Whoever finds
//! nobody walking the channel takes the turn and walks the queue until it is empty; a
//! publisher that finds a walk going leaves its message to it and is answered at once,
//! instead of blocking its worker thread behind the walk.
//!
//! A walk reads a snapshot of the channel's subscribers, made at the first walk after
//! they change, so a hot channel's walks take no lock on its subscribers and copy none of
//! them. An express walk (see [`super::express`]) over [`SPREAD_FROM`] subscribers or
//! more is walked in parts, one per worker: each part's writes run on a core of their
//! own, and the part that ends last walks the next message, so that every subscriber
//! still gets its channel's messages in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::runtime::Handle;

use super::backlog::Backlog;
use super::inbox::{Pushed, Subscriber};
use crate::protocol::Message;
use crate::sync::Unpoisoned;

/// Express writes are allowed while they would keep a channel's fan-out busy for at most
/// this share of the time between its messages (1 / `EXPRESS_SHARE`). Beyond it the
/// messages come faster than one write each can serve: queued, they go out in batches.
const EXPRESS_SHARE: u64 = 2;

/// From this many subscribers on, an express walk is split over the workers: a walk of
/// about a millisecond of writes or more, against a few microseconds for a part's spawn
/// and hand-over.
const SPREAD_FROM: usize = 512;

/// No part of a split walk has fewer subscribers than this.
const PART_MIN: usize = SPREAD_FROM / 2;

/// One channel's local subscribers and the walks its messages wait for.
#[derive(Default)]
pub(super) struct Fanout {
    members: Mutex<Members>,
    walks: Mutex<Walks>,
    /// When its last walk began, in nanoseconds of the walker's clock; 0 before the first.
    last_walk: AtomicU64,
    /// What an express write to one of its subscribers has cost lately, in nanoseconds (a
    /// moving average). Per channel: channels' subscribers differ (a lane over several
    /// channels, SSE or WebSocket), and one node-wide average would be a line every
    /// core writes.
    write_ns: AtomicU64,
}

#[derive(Default)]
struct Members {
    /// In subscription order, which a walk follows: subscribers that came one after the
    /// other mostly have neighbouring file descriptors and kernel sockets, and a walk in
    /// that order finds more of the kernel's per-socket data in the cache than one in
    /// hash order (about 7 % less system time per express write).
    by_id: BTreeMap<u64, Subscriber>,
    /// `by_id` in order, made at the first walk after a change.
    snapshot: Option<Arc<[Subscriber]>>,
}

#[derive(Default)]
struct Walks {
    /// Messages waiting for their walk, in offset order, each with the deliveries counted
    /// for it in the backlog.
    queue: VecDeque<(Arc<Message>, usize)>,
    /// Whether someone holds the turn to walk the queue.
    walking: bool,
}

impl Fanout {
    /// Adds a subscriber; returns true when it is the channel's first.
    pub(super) fn insert(&self, id: u64, subscriber: Subscriber) -> bool {
        let mut members = self.members.locked();
        members.by_id.insert(id, subscriber);
        members.snapshot = None;
        members.by_id.len() == 1
    }

    /// Removes a subscriber; returns true when the channel has none left.
    pub(super) fn remove(&self, id: u64) -> bool {
        let mut members = self.members.locked();
        if members.by_id.remove(&id).is_some() {
            members.snapshot = None;
        }
        members.by_id.is_empty()
    }

    /// Calls `each` with every subscriber.
    pub(super) fn for_each(&self, each: impl FnMut(&Subscriber)) {
        self.members.locked().by_id.values().for_each(each);
    }

    fn len(&self) -> usize {
        self.members.locked().by_id.len()
    }

    fn snapshot(&self) -> Arc<[Subscriber]> {
        let mut members = self.members.locked();
        let Members { by_id, snapshot } = &mut *members;
        snapshot
            .get_or_insert_with(|| by_id.values().cloned().collect())
            .clone()
    }

    /// The next message to walk, or the end of the turn when there is none.
    fn next(&self) -> Option<(Arc<Message>, usize)> {
        let mut walks = self.walks.locked();
        let next = walks.queue.pop_front();
        if next.is_none() {
            walks.walking = false;
            // A burst's buffer goes back once it is walked.
            walks.queue = VecDeque::new();
        }
        next
    }

    #[cfg(test)]
    pub(super) fn set_write_ns(&self, ns: u64) {
        self.write_ns.store(ns, Ordering::Relaxed);
    }
}

/// The turn to walk a channel's queue, taken by whoever found nobody walking it. Walk it
/// with [`super::Hub::walk`], after letting go of any lock the engine orders offsets with.
#[must_use = "a turn not walked leaves its channel's messages undelivered"]
pub struct Turn(Arc<Fanout>);

/// One message's walk, split in parts over the workers.
struct Walk {
    message: Arc<Message>,
    express: bool,
    subscribers: Arc<[Subscriber]>,
    parts: usize,
    /// Parts not yet walked: the one that takes it to 0 walks the channel's next message.
    left: AtomicUsize,
}

impl Walk {
    fn part(&self, part: usize) -> &[Subscriber] {
        let len = self.subscribers.len();
        &self.subscribers[len * part / self.parts..len * (part + 1) / self.parts]
    }
}

/// Gives a channel's turn up when its walker panics (a transport's write, say), so that
/// the next publisher takes it and walks what is queued, instead of the channel's
/// messages waiting for a walk that never comes.
struct GiveUpTurn<'a>(&'a Fanout);

impl Drop for GiveUpTurn<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.walks.locked().walking = false;
        }
    }
}

/// Counts a part of a split walk as ended, even one that panicked; after a panic, the last
/// part to end gives the channel's turn up (see [`GiveUpTurn`]).
struct EndPart<'a>(&'a Fanout, &'a Walk);

impl EndPart<'_> {
    /// Ends the part normally: true when it was the last, which then walks on.
    fn last(self) -> bool {
        let last = self.1.left.fetch_sub(1, Ordering::AcqRel) == 1;
        std::mem::forget(self);
        last
    }
}

impl Drop for EndPart<'_> {
    fn drop(&mut self) {
        if self.1.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.walks.locked().walking = false;
        }
    }
}

/// What every channel's walks share: the clock, the node's backlog and the runtime that
/// wide walks are split over.
pub(super) struct Walker {
    clock: Instant,
    backlog: Backlog,
    /// The runtime and its number of workers, when it has more than one.
    workers: Option<(Handle, usize)>,
    /// Whether queued walks are split too (tests of the hand-over between parts).
    split_queued: bool,
}

impl Walker {
    /// A walker whose backends' publishes wait above `limit` queued deliveries, splitting
    /// wide walks over the current runtime's workers (none outside a runtime).
    pub(super) fn new(limit: u64) -> Self {
        let workers = Handle::try_current()
            .ok()
            .map(|handle| {
                let count = handle.metrics().num_workers();
                (handle, count)
            })
            .filter(|(_, count)| *count > 1);
        Walker {
            clock: Instant::now(),
            backlog: Backlog::new(limit),
            workers,
            split_queued: false,
        }
    }

    /// Splits queued walks as well as express ones, for tests of the hand-over.
    #[cfg(test)]
    pub(super) fn split_every_walk(&mut self) {
        self.split_queued = true;
    }

    /// Deliveries queued on this node and not yet taken.
    pub(super) fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Queues `message` for its channel's walk. Returns the turn to walk the queue when
    /// nobody walks it now.
    pub(super) fn enqueue(&self, fanout: Arc<Fanout>, message: &Arc<Message>) -> Option<Turn> {
        // Counted now so that messages waiting for a walk hold publishers back too.
        let counted = fanout.len();
        self.backlog.add(counted);
        let mut walks = fanout.walks.locked();
        walks.queue.push_back((message.clone(), counted));
        if walks.walking {
            return None;
        }
        walks.walking = true;
        drop(walks);
        Some(Turn(fanout))
    }

    /// Walks the turn's queue until it is empty, or until a walk split in parts leaves the
    /// rest to its last part. Returns how many subscribers this thread handed a message.
    pub(super) fn walk(self: &Arc<Self>, Turn(fanout): Turn) -> usize {
        let _unwinding = GiveUpTurn(&fanout);
        let mut handed = 0;
        while let Some((message, counted)) = fanout.next() {
            let subscribers = fanout.snapshot();
            let len = subscribers.len();
            // Subscribers that came or went since the message was counted.
            if len >= counted {
                self.backlog.add(len - counted);
            } else {
                self.backlog.take(counted - len);
            }
            let start = self.now_ns();
            let last = fanout.last_walk.swap(start, Ordering::Relaxed);
            // The whole walk's writes, even when parts run side by side: an express write
            // costs several times a batched one, and is worth it only while the channel's
            // writes would keep one core busy for at most a share of the time.
            let walk_ns = len as u64 * fanout.write_ns.load(Ordering::Relaxed);
            // A message that leaves a client out goes through the queues, where each
            // subscription knows whether it is that client (see `Subscription::set_client`).
            let express = (last == 0
                || walk_ns.saturating_mul(EXPRESS_SHARE) <= start.saturating_sub(last))
                && !message.excludes_anyone();
            let parts = self.parts(len, express);
            let walk = Walk {
                message,
                express,
                subscribers,
                parts,
                left: AtomicUsize::new(parts),
            };
            if parts == 1 {
                handed += self.walk_part(&fanout, &walk, 0);
                continue;
            }
            // Every part is spawned, none walked here: a task spawned from a worker goes
            // into that worker's next-task slot, where no other worker can take it, and
            // each later spawn moves the one before into the worker's queue, where an
            // idle worker steals it. So the parts run side by side, and this thread
            // (a publisher's request, or an engine's listener) goes on at once.
            let walk = Arc::new(walk);
            if let Some((handle, _)) = &self.workers {
                for part in 0..parts {
                    let (walker, fanout, walk) = (self.clone(), fanout.clone(), walk.clone());
                    handle.spawn(async move {
                        let end = EndPart(&fanout, &walk);
                        walker.walk_part(&fanout, &walk, part);
                        if end.last() {
                            walker.walk(Turn(fanout.clone()));
                        }
                    });
                }
            }
            return handed;
        }
        handed
    }

    /// How many parts a walk over `len` subscribers is split into.
    ///
    /// Only an express walk is split: its writes are system calls, microseconds each, and
    /// side by side they end sooner. A queued walk's pushes take tens of nanoseconds; split,
    /// its parts wake each subscriber's task sooner, which then writes one message where
    /// it would have written a batch: on two shared cores, 2.4 times the gateway's CPU per
    /// delivery unpaced (BENCHMARKS.md).
    fn parts(&self, len: usize, express: bool) -> usize {
        match &self.workers {
            Some((_, workers)) if (express || self.split_queued) && len >= SPREAD_FROM => {
                (len / PART_MIN).min(*workers)
            }
            _ => 1,
        }
    }

    /// Hands the walk's message to the subscribers of one part. Returns how many it was
    /// handed to.
    fn walk_part(&self, fanout: &Fanout, walk: &Walk, part: usize) -> usize {
        let subscribers = walk.part(part);
        let start = self.now_ns();
        let (mut queued, mut written) = (0, 0);
        for (at, subscriber) in subscribers.iter().enumerate() {
            if walk.express {
                // Each write is a system call whose kernel work sweeps the cache, so the
                // next subscriber's inbox and lane were misses of their own, one after
                // the other, on every step: a third of the walk's user time. Their loads
                // start a step or two ahead instead: the inbox two ahead, and the lane,
                // whose address is in the inbox, one ahead.
                if let Some(next) = subscribers.get(at + 2) {
                    next.prefetch();
                }
                if let Some(next) = subscribers.get(at + 1) {
                    next.prefetch_lane();
                }
            }
            match subscriber.push(&walk.message, walk.express) {
                Pushed::Queued => queued += 1,
                Pushed::Written => written += 1,
                Pushed::Full => subscriber.cut_off(),
                // The subscriber is being dropped; its Drop unregisters it.
                Pushed::Closed => {}
            }
        }
        // Counted when the message was queued; only what went into inboxes stays.
        if subscribers.len() > queued {
            self.backlog.take(subscribers.len() - queued);
        }
        if written > 0 {
            let each = (self.now_ns() - start) / written as u64;
            let average = fanout.write_ns.load(Ordering::Relaxed);
            let average = if average == 0 {
                each
            } else {
                (average * 7 + each) / 8
            };
            fanout.write_ns.store(average, Ordering::Relaxed);
        }
        queued + written
    }

    /// Nanoseconds since the walker was made; never 0.
    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64 + 1
    }
}
