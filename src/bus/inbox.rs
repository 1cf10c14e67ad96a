//! A subscriber's bounded inbox: the hub pushes live messages in, the subscription takes
//! them out.
//!
//! A mutex around a `VecDeque`, not a tokio mpsc channel: a channel costs every
//! subscriber about a kilobyte up front (cache-padded halves and a first block of slots)
//! whether or not a message ever waits in it, and a gateway holds mostly idle
//! subscribers. This costs a hundred-odd bytes and grows only while messages wait. The
//! lock is held for a push or a pop, never across an await.
//!
//! The inbox also holds the subscriber's express lane (see [`super::express`]): the hub
//! writes through it under the same lock, so a transport that disarms it holds the socket
//! alone from then on.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio_util::sync::CancellationToken;

use super::control::Member;
use super::express::{CursorAfter, Express, Written};
use crate::protocol::{Channel, Fit, Message, Position};
use crate::sync::Unpoisoned;

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
    /// 32 bits leave room for `client` within the allocation size step.
    capacity: u32,
    /// The client session the subscription is, if any (see `Subscription::set_client`);
    /// here rather than in the subscription, which every open WebSocket keeps inline.
    client: Option<Arc<Member>>,
    /// Set when the inbox overflowed.
    cut: AtomicBool,
    /// Cancelled with `cut`, for a transport that must drop its connection at once. A
    /// long poll has none: it answers on its next check, and a token costs a hundred-odd
    /// bytes per parked poll.
    cut_token: Option<CancellationToken>,
    /// The subscription is gone: pushes are dropped. Set under the lock; an atomic beside
    /// the flags rather than a field of `State` keeps this struct within its allocation
    /// size step.
    closed: AtomicBool,
    /// What the express lane holds for the subscription to take (`MOVED`, `WRITTEN`), so
    /// that taking nothing needs no lock.
    news: AtomicU8,
}

/// `Shared::news`: express writes moved the subscriber's position.
const MOVED: u8 = 1;
/// `Shared::news`: the queue's front message was written in part.
const WRITTEN: u8 = 2;
/// `Shared::news`: a server command waits for the subscription (see `bus::control`).
const COMMAND: u8 = 4;

struct State {
    queue: VecDeque<Arc<Message>>,
    /// The subscription's waker while it waits for a message.
    waker: Option<Waker>,
    /// Boxed: only a transport that writes express has one, and every parked long poll
    /// would otherwise carry its room.
    lane: Option<Box<Lane>>,
}

/// A transport's express writer and whether the hub may use it now.
struct Lane {
    sink: Arc<dyn Express>,
    /// The hub may write now.
    armed: bool,
    /// The subscriber's positions, as of arming and express writes.
    reads: Reads,
    /// Bytes of the queue's front message the hub wrote before the socket filled.
    written: usize,
}

/// Where an armed subscriber stands in the channels it follows.
enum Reads {
    /// Never armed.
    Unset,
    /// Its one channel. The inbox is registered for that channel alone, and epochs are
    /// random per channel history, so a message's epoch tells whether it belongs.
    One(Position),
    /// Each of its channels. The buffer is kept from one arming to the next.
    Many(Vec<(Channel, Position)>),
}

impl Reads {
    /// The position held in `message`'s channel, if the lane writes for it.
    fn of(&mut self, message: &Message) -> Option<&mut Position> {
        match self {
            Reads::Unset => None,
            Reads::One(read) => Some(read),
            Reads::Many(reads) => reads
                .iter_mut()
                .find(|(channel, _)| *channel == message.channel)
                .map(|(_, read)| read),
        }
    }

    /// Moves the subscriber to `message` if it is the next of one of its channels, and
    /// returns the offset it held there before.
    fn advance(&mut self, message: &Message) -> Option<u64> {
        let read = self
            .of(message)
            .filter(|read| read.fit(message) == Fit::Next)?;
        Some(std::mem::replace(&mut read.offset, message.offset))
    }

    /// Undoes [`Reads::advance`] for a message that was not written whole.
    fn retreat(&mut self, message: &Message, before: u64) {
        if let Some(read) = self.of(message) {
            read.offset = before;
        }
    }

    /// The whole cursor, for a subscriber of several channels.
    fn cursor(&self) -> Option<CursorAfter<'_>> {
        match self {
            Reads::Many(reads) => Some(CursorAfter(reads)),
            Reads::Unset | Reads::One(_) => None,
        }
    }
}

/// Sets `kept` to `read`, cloning its epoch only if it changed (an epoch is shared, and
/// the same one nearly always).
fn refresh(kept: &mut Position, read: &Position) {
    if kept.epoch != read.epoch {
        kept.epoch = read.epoch.clone();
    }
    kept.offset = read.offset;
}

/// The transport's hold on its express lane, usable while its subscription is borrowed
/// by a wait.
pub struct ExpressSwitch {
    shared: Arc<Shared>,
}

impl ExpressSwitch {
    /// Stops express writes: from its return the transport alone writes to its socket.
    /// True when a message the hub part-wrote waits at the front of the queue, whose rest
    /// must go out before anything else.
    pub fn disarm(&self) -> bool {
        let mut state = self.shared.lock();
        let Some(lane) = state.lane.as_mut() else {
            return false;
        };
        lane.armed = false;
        lane.written > 0
    }
}

/// What became of a push.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    Queued,
    /// Written to the subscriber's socket express: delivered, not queued.
    Written,
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
            lane: None,
        };
        Inbox {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
                client: None,
                cut: AtomicBool::new(false),
                cut_token: cut,
                closed: AtomicBool::new(false),
                news: AtomicU8::new(0),
            }),
        }
    }

    /// Makes the inbox client session `client`'s; false (and nothing changed) once the
    /// hub or an express lane holds the inbox: it must be set first.
    pub(super) fn set_client(&mut self, client: Option<Arc<Member>>) -> bool {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => {
                shared.client = client;
                true
            }
            None => false,
        }
    }

    /// The client session the inbox is, if any.
    pub(super) fn client(&self) -> Option<&Arc<Member>> {
        self.shared.client.as_ref()
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

    /// Gives the hub `sink` to write live messages express through while armed.
    pub(super) fn set_express(&self, sink: Arc<dyn Express>) -> ExpressSwitch {
        self.shared.lock().lane = Some(Box::new(Lane {
            sink,
            armed: false,
            reads: Reads::Unset,
            written: 0,
        }));
        ExpressSwitch {
            shared: self.shared.clone(),
        }
    }

    /// Lets the hub write express from `reads`, the subscriber's position in each channel
    /// it follows; false when there is no lane, a message already waits, or the sink
    /// cannot write for a subscriber of several channels.
    pub(super) fn arm<'a>(
        &self,
        mut reads: impl ExactSizeIterator<Item = (&'a Channel, &'a Position)> + Clone,
    ) -> bool {
        let mut state = self.shared.lock();
        let idle = state.queue.is_empty() && !self.shared.closed.load(Ordering::Relaxed);
        let Some(lane) = state.lane.as_mut().filter(|lane| idle && lane.sink.idle()) else {
            return false;
        };
        match reads.len() {
            0 => return false,
            1 => {
                let (_, read) = reads.next().expect("one position");
                match &mut lane.reads {
                    Reads::One(kept) => refresh(kept, read),
                    reads => *reads = Reads::One(read.clone()),
                }
            }
            _ if !lane.sink.several_channels() => return false,
            // Armed again for the same channels, as nearly always: the positions are
            // updated in place, with no reference count touched.
            _ => match &mut lane.reads {
                Reads::Many(kept)
                    if kept.len() == reads.len()
                        && kept
                            .iter()
                            .zip(reads.clone())
                            .all(|((c, _), (n, _))| c == n) =>
                {
                    for ((_, kept), (_, read)) in kept.iter_mut().zip(reads) {
                        refresh(kept, read);
                    }
                }
                slot => {
                    let mut kept = match std::mem::replace(slot, Reads::Unset) {
                        Reads::Many(mut kept) => {
                            kept.clear();
                            kept
                        }
                        _ => Vec::with_capacity(reads.len()),
                    };
                    kept.extend(reads.map(|(channel, read)| (channel.clone(), read.clone())));
                    *slot = Reads::Many(kept);
                }
            },
        }
        lane.armed = true;
        true
    }

    /// Hands `moved` each position express writes have moved the subscriber to since
    /// last asked, with its channel (`None` for a subscriber of one channel), if they have.
    pub(super) fn take_moved(&self, mut moved: impl FnMut(Option<&Channel>, &Position)) {
        if self.shared.news.load(Ordering::Relaxed) & MOVED == 0 {
            return;
        }
        let state = self.shared.lock();
        self.shared.news.fetch_and(!MOVED, Ordering::Relaxed);
        match state.lane.as_ref().map(|lane| &lane.reads) {
            Some(Reads::One(read)) => moved(None, read),
            Some(Reads::Many(reads)) => {
                for (channel, read) in reads {
                    moved(Some(channel), read);
                }
            }
            Some(Reads::Unset) | None => {}
        }
    }

    /// Arms for a subscriber of one channel that has read up to `read`.
    #[cfg(test)]
    pub(super) fn arm_at(&self, channel: &Channel, read: &Position) -> bool {
        self.arm(std::iter::once((channel, read)))
    }

    /// What [`Inbox::take_moved`] hands out, collected.
    #[cfg(test)]
    pub(super) fn moved(&self) -> Vec<(Option<Channel>, Position)> {
        let mut moved = Vec::new();
        self.take_moved(|channel, read| moved.push((channel.cloned(), read.clone())));
        moved
    }

    /// Bytes of the message just popped that the hub already wrote express; 0 mostly.
    pub(super) fn take_written(&self) -> usize {
        if self.shared.news.load(Ordering::Relaxed) & WRITTEN == 0 {
            return 0;
        }
        let mut state = self.shared.lock();
        self.shared.news.fetch_and(!WRITTEN, Ordering::Relaxed);
        state
            .lane
            .as_mut()
            .map_or(0, |lane| std::mem::take(&mut lane.written))
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

    /// Whether a server command waits, clearing the flag.
    pub(super) fn take_command(&self) -> bool {
        self.shared.news.load(Ordering::Acquire) & COMMAND != 0
            && self.shared.news.fetch_and(!COMMAND, Ordering::AcqRel) & COMMAND != 0
    }

    /// The oldest message, waiting for one; `None` when a server command waits instead.
    /// Cancel-safe: nothing is taken unless it is returned.
    pub(super) async fn pop(&self) -> Option<Arc<Message>> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(message) = state.queue.pop_front() {
                if state.queue.is_empty() {
                    state.queue.shrink_to(KEEP_CAPACITY);
                }
                return Poll::Ready(Some(message));
            }
            if self.shared.news.load(Ordering::Acquire) & COMMAND != 0 {
                return Poll::Ready(None);
            }
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Closes the inbox: later pushes are dropped. Returns how many messages it still
    /// held, which nobody will take; 0 once closed.
    pub(super) fn close(&self) -> usize {
        let mut state = self.shared.lock();
        self.shared.closed.store(true, Ordering::Relaxed);
        // The hub may still hold a handle until it is unregistered: free the messages now,
        // and the socket the express lane holds.
        let held = state.queue.len();
        state.queue = VecDeque::new();
        state.waker = None;
        state.lane = None;
        held
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.close();
    }
}

impl Subscriber {
    /// Starts loading the inbox's fields into the cache, ahead of a push.
    pub(super) fn prefetch(&self) {
        prefetch(Arc::as_ptr(&self.shared));
    }

    /// Starts loading the inbox's express lane into the cache, ahead of a push. The
    /// inbox itself should be in the cache already (see [`Subscriber::prefetch`]); a lane
    /// whose lock is held just now is skipped.
    pub(super) fn prefetch_lane(&self) {
        if let Ok(state) = self.shared.state.try_lock()
            && let Some(lane) = &state.lane
        {
            prefetch(&**lane);
        }
    }

    /// Writes `message` express if `express` allows it and the subscriber is armed for it;
    /// else queues it and wakes the subscription. Never waits.
    pub(super) fn push(&self, message: &Arc<Message>, express: bool) -> Pushed {
        let waker = {
            let mut state = self.shared.lock();
            if self.shared.closed.load(Ordering::Relaxed) {
                return Pushed::Closed;
            }
            if let Some(lane) = state.lane.as_mut().filter(|lane| lane.armed) {
                // Armed implies an empty queue: every push that queues disarms.
                lane.armed = false;
                let before = if express {
                    lane.reads.advance(message)
                } else {
                    None
                };
                if let Some(before) = before {
                    match lane.sink.write(message, lane.reads.cursor()) {
                        Written::All => {
                            lane.armed = true;
                            self.shared.news.fetch_or(MOVED, Ordering::Relaxed);
                            return Pushed::Written;
                        }
                        // Queued below like any other; the transport writes the rest when
                        // it takes the message.
                        Written::Part(sent) => {
                            lane.reads.retreat(message, before);
                            lane.written = sent;
                            self.shared.news.fetch_or(WRITTEN, Ordering::Relaxed);
                        }
                        Written::Nothing => lane.reads.retreat(message, before),
                    }
                }
            }
            if state.queue.len() >= self.shared.capacity as usize {
                return Pushed::Full;
            }
            state.queue.push_back(message.clone());
            state.waker.take()
        };
        // Woken outside the lock, so the subscription never finds it held.
        if let Some(waker) = waker {
            waker.wake();
        }
        Pushed::Queued
    }

    /// Wakes the subscription if it waits, with nothing new to take.
    /// The client session the subscriber is, if any.
    pub(super) fn client(&self) -> Option<&Arc<Member>> {
        self.shared.client.as_ref()
    }

    /// Tells the subscription a server command waits: its wait for a message ends.
    pub(super) fn command_waiting(&self) {
        self.shared.news.fetch_or(COMMAND, Ordering::Release);
        self.wake();
    }

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

/// Starts loading `value` (at most two cache lines long) into the cache: a hint, which
/// never faults, so `value` may even be gone by now.
fn prefetch<T>(value: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let first: *const i8 = value.cast();
        let last = first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
        // SAFETY: a prefetch reads nothing the program sees and cannot fault, whatever
        // the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(first);
            _mm_prefetch::<_MM_HINT_T0>(last);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding this lock leaves the queue consistent: every
        // critical section is a single push, pop or flag change.
        self.state.locked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Channel, Epoch};

    fn message(offset: u64) -> Arc<Message> {
        message_in("inbox", offset)
    }

    fn message_in(channel: &str, offset: u64) -> Arc<Message> {
        let channel = Channel::parse(channel).unwrap();
        // An epoch per channel, as engines make them.
        let epoch = Epoch::parse(&format!("e{}", channel.as_str().len())).unwrap();
        Arc::new(Message::new(channel, epoch, offset, 0, b"null"))
    }

    #[test]
    fn keeps_order_and_refuses_past_capacity() {
        let inbox = Inbox::new(2, None);
        let hub = inbox.subscriber();
        assert_eq!(hub.push(&message(1), true), Pushed::Queued);
        assert_eq!(hub.push(&message(2), true), Pushed::Queued);
        assert_eq!(hub.push(&message(3), true), Pushed::Full);
        assert_eq!(inbox.try_pop().unwrap().offset, 1);
        assert_eq!(hub.push(&message(3), true), Pushed::Queued);
        assert_eq!(inbox.try_pop().unwrap().offset, 2);
        assert_eq!(inbox.try_pop().unwrap().offset, 3);
        assert!(inbox.try_pop().is_none());
    }

    #[test]
    fn pushes_after_the_subscription_is_gone_are_dropped() {
        let inbox = Inbox::new(4, None);
        let hub = inbox.subscriber();
        let kept = message(1);
        assert_eq!(hub.push(&kept.clone(), true), Pushed::Queued);
        drop(inbox);
        assert_eq!(Arc::strong_count(&kept), 1, "queued messages are freed");
        assert_eq!(hub.push(&message(2), true), Pushed::Closed);
    }

    #[test]
    fn a_burst_gives_its_buffer_back_once_drained() {
        let inbox = Inbox::new(1024, None);
        let hub = inbox.subscriber();
        for offset in 0..500 {
            assert_eq!(hub.push(&message(offset), true), Pushed::Queued);
        }
        while inbox.try_pop().is_some() {}
        assert!(inbox.shared.lock().queue.capacity() <= KEEP_CAPACITY);
    }

    /// A socket that takes up to `room` more bytes of wire form (a message's offset here).
    struct Sink {
        room: std::sync::Mutex<usize>,
        wrote: std::sync::Mutex<Vec<u64>>,
        /// The cursor each write was given, for a subscriber of several channels.
        cursors: std::sync::Mutex<Vec<String>>,
        several_channels: bool,
    }

    impl Express for Sink {
        fn write(&self, message: &Message, cursor: Option<CursorAfter<'_>>) -> Written {
            if let Some(cursor) = cursor {
                let mut text = bytes::BytesMut::new();
                cursor.put(&mut text);
                assert!(text.len() <= cursor.len_max());
                let text = String::from_utf8(text.to_vec()).unwrap();
                self.cursors.lock().unwrap().push(text);
            }
            let mut room = self.room.lock().unwrap();
            let len = message.json().len();
            let took = len.min(*room);
            *room -= took;
            if took > 0 {
                self.wrote.lock().unwrap().push(message.offset);
            }
            match took {
                0 => Written::Nothing,
                took if took == len => Written::All,
                took => Written::Part(took),
            }
        }

        fn several_channels(&self) -> bool {
            self.several_channels
        }
    }

    fn lane(room: usize) -> (Inbox, Arc<Sink>, ExpressSwitch) {
        let inbox = Inbox::new(8, None);
        let sink = Arc::new(Sink {
            room: std::sync::Mutex::new(room),
            wrote: Default::default(),
            cursors: Default::default(),
            several_channels: true,
        });
        let switch = inbox.set_express(sink.clone());
        (inbox, sink, switch)
    }

    fn at(offset: u64) -> Position {
        message(offset).position()
    }

    /// Arms `inbox` for a subscriber of the tests' one channel, which has read `offset`.
    fn arm(inbox: &Inbox, offset: u64) -> bool {
        inbox.arm_at(&message(offset).channel, &at(offset))
    }

    /// The position express writes moved the subscriber of one channel to, if they did.
    fn moved(inbox: &Inbox) -> Option<Position> {
        match inbox.moved().as_slice() {
            [] => None,
            [(None, read)] => Some(read.clone()),
            other => panic!("one position of one channel, not {other:?}"),
        }
    }

    #[test]
    fn an_armed_lane_writes_the_next_messages_and_moves_the_position() {
        let (inbox, sink, switch) = lane(usize::MAX);
        let hub = inbox.subscriber();
        assert!(arm(&inbox, 4));
        assert_eq!(hub.push(&message(5), true), Pushed::Written);
        assert_eq!(hub.push(&message(6), true), Pushed::Written);
        assert!(inbox.try_pop().is_none(), "nothing queued");
        assert_eq!(*sink.wrote.lock().unwrap(), [5, 6]);
        assert!(!switch.disarm(), "nothing part-written");
        assert_eq!(moved(&inbox), Some(at(6)));
        assert_eq!(moved(&inbox), None, "taken once");
        assert_eq!(hub.push(&message(7), true), Pushed::Queued, "disarmed");
    }

    #[test]
    fn a_message_out_of_turn_or_unhurried_is_queued_and_disarms() {
        let (inbox, sink, _switch) = lane(usize::MAX);
        let hub = inbox.subscriber();
        assert!(arm(&inbox, 4));
        assert_eq!(hub.push(&message(6), true), Pushed::Queued, "a hole");
        assert_eq!(
            hub.push(&message(7), true),
            Pushed::Queued,
            "behind the queue"
        );
        assert!(!arm(&inbox, 4), "a message waits");
        inbox.try_pop();
        inbox.try_pop();
        assert!(arm(&inbox, 7));
        assert_eq!(
            hub.push(&message(8), false),
            Pushed::Queued,
            "the hub said queue"
        );
        assert_eq!(
            hub.push(&message(9), true),
            Pushed::Queued,
            "and that disarmed"
        );
        assert!(sink.wrote.lock().unwrap().is_empty());
        assert_eq!(moved(&inbox), None);
    }

    #[test]
    fn a_part_written_message_is_queued_with_what_was_written() {
        let len = message(5).json().len();
        let (inbox, _sink, switch) = lane(len + 3);
        let hub = inbox.subscriber();
        assert!(arm(&inbox, 4));
        assert_eq!(hub.push(&message(5), true), Pushed::Written);
        assert_eq!(hub.push(&message(6), true), Pushed::Queued);
        assert_eq!(hub.push(&message(7), true), Pushed::Queued);
        assert!(switch.disarm(), "the rest of 6 must go first");
        assert_eq!(moved(&inbox), Some(at(5)), "6 is not delivered yet");
        assert_eq!(inbox.try_pop().unwrap().offset, 6);
        assert_eq!(inbox.take_written(), 3);
        assert_eq!(inbox.take_written(), 0, "taken once");
        assert_eq!(inbox.try_pop().unwrap().offset, 7);
    }

    #[test]
    fn a_full_socket_queues_and_a_dropped_inbox_lets_go_of_it() {
        let (inbox, sink, switch) = lane(0);
        let hub = inbox.subscriber();
        assert!(arm(&inbox, 4));
        assert_eq!(hub.push(&message(5), true), Pushed::Queued);
        assert!(!switch.disarm());
        assert_eq!(Arc::strong_count(&sink), 2);
        drop(inbox);
        assert_eq!(Arc::strong_count(&sink), 1, "the socket is released");
        assert_eq!(hub.push(&message(6), true), Pushed::Closed);
    }

    #[test]
    fn a_lane_over_several_channels_writes_the_next_message_of_each() {
        let (inbox, sink, _switch) = lane(usize::MAX);
        let hub = inbox.subscriber();
        let (a, b) = (message_in("a", 4), message_in("bb", 7));
        let reads = [(&a.channel, &a.position()), (&b.channel, &b.position())];
        assert!(inbox.arm(reads.into_iter()));
        assert_eq!(hub.push(&message_in("a", 5), true), Pushed::Written);
        assert_eq!(hub.push(&message_in("bb", 8), true), Pushed::Written);
        assert_eq!(hub.push(&message_in("a", 6), true), Pushed::Written);
        assert_eq!(*sink.wrote.lock().unwrap(), [5, 8, 6]);
        assert_eq!(
            *sink.cursors.lock().unwrap(),
            ["a@e1:5,bb@e2:7", "a@e1:5,bb@e2:8", "a@e1:6,bb@e2:8"],
            "each write sees the cursor after its message"
        );
        assert_eq!(
            inbox.moved(),
            [
                (Some(a.channel.clone()), message_in("a", 6).position()),
                (Some(b.channel.clone()), message_in("bb", 8).position()),
            ]
        );
        assert_eq!(
            hub.push(&message_in("ccc", 1), true),
            Pushed::Queued,
            "a channel the lane does not know"
        );
        assert_eq!(hub.push(&message_in("a", 7), true), Pushed::Queued);
        inbox.try_pop();
        inbox.try_pop();
        let (a7, b8) = (message_in("a", 7), message_in("bb", 8));
        let reads = [(&a.channel, &a7.position()), (&b.channel, &b8.position())];
        assert!(
            inbox.arm(reads.into_iter()),
            "the same channels, further on"
        );
        assert_eq!(hub.push(&message_in("a", 8), true), Pushed::Written);
        assert_eq!(
            sink.cursors.lock().unwrap().last().unwrap(),
            "a@e1:8,bb@e2:8"
        );
        let reads = [(&a.channel, &a.position())];
        assert!(inbox.arm(reads.into_iter()), "one channel after several");
        assert_eq!(hub.push(&message_in("a", 5), true), Pushed::Written);
    }

    #[test]
    fn a_message_not_written_whole_leaves_its_channel_where_it_was() {
        let len = message_in("a", 5).json().len();
        let (inbox, sink, switch) = lane(len + 3);
        let hub = inbox.subscriber();
        let (a, b) = (message_in("a", 4), message_in("bb", 7));
        let reads = [(&a.channel, &a.position()), (&b.channel, &b.position())];
        assert!(inbox.arm(reads.into_iter()));
        assert_eq!(hub.push(&message_in("a", 5), true), Pushed::Written);
        assert_eq!(hub.push(&message_in("bb", 8), true), Pushed::Queued);
        assert!(switch.disarm(), "the rest of bb 8 must go first");
        assert_eq!(*sink.wrote.lock().unwrap(), [5, 8]);
        assert_eq!(
            inbox.moved(),
            [
                (Some(a.channel.clone()), message_in("a", 5).position()),
                (Some(b.channel.clone()), b.position()),
            ],
            "bb 8 is delivered by the queue"
        );
    }

    #[test]
    fn a_sink_that_frames_per_subscriber_is_not_armed_for_several_channels() {
        let inbox = Inbox::new(8, None);
        inbox.set_express(Arc::new(Sink {
            room: std::sync::Mutex::new(usize::MAX),
            wrote: Default::default(),
            cursors: Default::default(),
            several_channels: false,
        }));
        let (a, b) = (message_in("a", 4), message_in("bb", 7));
        let reads = [(&a.channel, &a.position()), (&b.channel, &b.position())];
        assert!(!inbox.arm(reads.into_iter()));
        assert_eq!(
            inbox.subscriber().push(&message_in("a", 5), true),
            Pushed::Queued
        );
        assert!(
            !inbox.arm(std::iter::once((&a.channel, &a.position()))),
            "queued"
        );
        inbox.try_pop();
        assert!(inbox.arm(std::iter::once((&a.channel, &a.position()))));
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
        assert_eq!(hub.push(&message(9), true), Pushed::Queued);
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        assert!(matches!(pop.as_mut().poll(&mut cx), Poll::Ready(Some(m)) if m.offset == 9));
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
            async move { inbox.pop().await.map(|m| m.offset) }
        });
        tokio::task::yield_now().await;
        assert_eq!(hub.push(&message(7), true), Pushed::Queued);
        let offset = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(offset, Some(7));
    }
}
