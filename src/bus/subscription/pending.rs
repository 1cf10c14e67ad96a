//! Events waiting to be handed out ahead of the inbox: history read on subscribe or to
//! fill a hole, and server commands' replies.

use std::collections::VecDeque;

use super::Event;

/// A queue of events, boxed and made only while it holds some: most subscriptions never
/// hold one after their first read, and every open WebSocket keeps its subscription
/// inline, where an empty `VecDeque` would keep 32 bytes and this keeps 8.
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "the box is the point: 8 bytes inline instead of an empty VecDeque's 32"
)]
pub(super) struct Pending(Option<Box<VecDeque<Event>>>);

impl Pending {
    fn queue(&mut self) -> &mut VecDeque<Event> {
        self.0.get_or_insert_with(Default::default)
    }

    /// Gives the box back once the queue is empty.
    fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|queue| queue.is_empty()) {
            self.0 = None;
        }
    }

    pub(super) fn push_back(&mut self, event: Event) {
        self.queue().push_back(event);
    }

    pub(super) fn insert(&mut self, at: usize, event: Event) {
        self.queue().insert(at, event);
    }

    pub(super) fn extend(&mut self, events: Vec<Event>) {
        if !events.is_empty() {
            self.queue().extend(events);
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<Event> {
        let event = self.0.as_mut()?.pop_front();
        self.release_if_empty();
        event
    }

    pub(super) fn front(&self) -> Option<&Event> {
        self.0.as_ref()?.front()
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn retain(&mut self, keep: impl FnMut(&Event) -> bool) {
        if let Some(queue) = &mut self.0 {
            queue.retain(keep);
        }
        self.release_if_empty();
    }
}
