//! Polling clients that stopped polling: a client session of `/longpoll` or `/poll` has
//! no connection whose end says it is over, so it is over once it has not polled for
//! `hooks.poll_idle_ms`, and the disconnect hook is told (`reason: "idle"`).
//!
//! Kept per node: a client whose polls go to several nodes is seen by each, and each tells
//! the backend once it stops polling there (see docs/HOOKS.md).

use std::collections::HashMap;
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
