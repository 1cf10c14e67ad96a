//! Polling clients that stopped polling: a client session of `/longpoll` or `/poll` has
//! no connection whose end says it is over, so it is over once it has not polled for
//! `hooks.poll_idle_ms`, and the disconnect hook is told (`reason: "idle"`).
//!
//! Kept per node: a client whose polls go to several nodes is seen by each, and each tells
//! the backend once it stops polling there (see docs/HOOKS.md).
//!
//! Socket.IO's polling sessions keep their state in the engine instead, which says when
//! one is over on every node; [`Watched`] only keeps which of them this node served and
//! when to look at them next (the looking is `transport::socketio::quiet`'s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::session::{ClientId, ClientSession};
use crate::sync::Unpoisoned;

/// Most polling sessions watched at once on a node; past it a new one is not watched
/// (and its end not told), so that a flood of one-poll clients cannot grow the map.
pub const MAX_WATCHED: usize = 100_000;

/// When each polling session was last seen.
#[derive(Default)]
pub(super) struct Idle {
    seen: Mutex<HashMap<ClientId, Seen>>,
}

/// A watched session: when it last polled, and who it is, to tell the backend.
pub(super) struct Seen {
    at: Instant,
    pub(super) user: Option<Arc<str>>,
    pub(super) session: Arc<ClientSession>,
}

impl Idle {
    /// Records a poll of `session` by `user`.
    pub(super) fn touch(&self, user: Option<&Arc<str>>, session: &Arc<ClientSession>) {
        let mut seen = self.seen.locked();
        if let Some(entry) = seen.get_mut(&session.client) {
            entry.at = Instant::now();
            return;
        }
        if seen.len() < MAX_WATCHED {
            let entry = Seen {
                at: Instant::now(),
                user: user.cloned(),
                session: session.clone(),
            };
            seen.insert(session.client, entry);
        }
    }

    /// Removes and returns the sessions not seen for `after`.
    pub(super) fn expired(&self, after: Duration) -> Vec<Seen> {
        let mut seen = self.seen.locked();
        let gone: Vec<ClientId> = seen
            .iter()
            .filter(|(_, entry)| entry.at.elapsed() >= after)
            .map(|(id, _)| *id)
            .collect();
        gone.iter().filter_map(|id| seen.remove(id)).collect()
    }
}

/// Sweeps `hooks`' idle polling sessions every quarter of `after` for as long as the
/// hooks live; `tell` is called with each one gone.
pub(super) fn sweep<T: Send + Sync + 'static>(
    hooks: Weak<T>,
    idle: impl Fn(&T) -> &Idle + Send + 'static,
    after: Duration,
    tell: impl Fn(&Arc<T>, Seen) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(after / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(hooks) = hooks.upgrade() else { return };
            for gone in idle(&hooks).expired(after) {
                tell(&hooks, gone);
            }
        }
    });
}

/// Sessions kept in the engine that this node served, by id, with when it looks at each
/// next: a 40-byte entry a session, at most [`MAX_WATCHED`] of them.
#[derive(Default)]
pub struct Watched {
    due: Mutex<HashMap<ClientId, Instant>>,
    started: AtomicBool,
}

impl Watched {
    /// Looks at `id` at `due` (or later, when it was due later already); false when the
    /// map is full and `id` is not watched.
    pub fn watch(&self, id: ClientId, due: Instant) -> bool {
        let mut watched = self.due.locked();
        if let Some(at) = watched.get_mut(&id) {
            *at = (*at).max(due);
            return true;
        }
        if watched.len() >= MAX_WATCHED {
            return false;
        }
        watched.insert(id, due);
        true
    }

    /// Removes and returns the ids due by `now`, at most `max` of them.
    pub fn due(&self, now: Instant, max: usize) -> Vec<ClientId> {
        let mut watched = self.due.locked();
        let due: Vec<ClientId> = watched
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .take(max)
            .collect();
        for id in &due {
            watched.remove(id);
        }
        due
    }

    /// How many ids are watched.
    pub fn len(&self) -> usize {
        self.due.locked().len()
    }

    /// Whether no id is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for the first caller only: the one that starts looking at them.
    pub fn start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_ids_are_bounded_and_taken_once_due() {
        let watched = Watched::default();
        let now = Instant::now();
        let (early, late) = (ClientId::random(), ClientId::random());
        assert!(watched.watch(early, now));
        assert!(watched.watch(late, now + Duration::from_secs(60)));
        // Seen again with an earlier due time: the later one holds.
        assert!(watched.watch(late, now));
        assert_eq!(watched.due(now, 10), vec![early]);
        assert!(watched.due(now, 10).is_empty(), "taken once");
        assert_eq!(watched.len(), 1);
        for _ in 1..MAX_WATCHED {
            assert!(watched.watch(ClientId::random(), now));
        }
        assert!(!watched.watch(ClientId::random(), now), "full");
        assert!(
            watched.watch(late, now),
            "one watched already is seen again"
        );
        assert_eq!(watched.due(now, 5).len(), 5, "at most max");
        assert!(watched.start() && !watched.start(), "started once");
        assert_eq!(
            std::mem::size_of::<(ClientId, Instant)>(),
            40,
            "as documented"
        );
    }
}
