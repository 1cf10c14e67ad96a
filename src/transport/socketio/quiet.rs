//! A polling socket that went quiet: told to the disconnect hook (`reason: "idle"`) once,
//! across every node, when its Engine.IO session expires (`pingInterval + pingTimeout`
//! after its last poll, what a Socket.IO server calls a ping timeout).
//!
//! The engine is the judge, not a node's clock: a socket's polls may reach any node, so
//! one node seeing them stop says nothing. Each node watches the sessions it served
//! ([`crate::hooks::idle::Watched`]: ids and due times, nothing else) and, once one is
//! due, asks the engine: its state still kept means it polls somewhere (looked at again
//! when that state would expire); gone means it is over, and the node that wins the
//! socket's end claim ([`claim_end`]) tells the backend. Every other end of a polling
//! socket (its close or `41`, a server disconnect, an upgrade to WebSocket) claims the
//! same key first, so no socket is told twice, and an upgraded one is told by its
//! WebSocket alone.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::kept::{self, PollState};
use super::socket::{self, Joined};
use crate::app::App;
use crate::config::HookEvent;
use crate::error::Result;
use crate::session::ClientId;

/// Due sessions one pass looks at, at most; the rest wait for the next pass.
const MAX_PER_PASS: usize = 10_000;

/// Engine reads in flight at once during a pass.
const CONCURRENCY: usize = 32;

/// Whether a polling socket's end is told here: the disconnect hook is on.
pub fn told(app: &App) -> bool {
    app.hooks
        .as_ref()
        .is_some_and(|hooks| hooks.on(HookEvent::Disconnect))
}

/// Watches session `sid`, which this node just served, for going quiet: looked at once
/// its state would expire. Starts this node's looking on first use.
pub fn watch(app: &Arc<App>, sid: &str) {
    let (Some(hooks), Some(id)) = (&app.hooks, ClientId::parse(sid)) else {
        return;
    };
    if !told(app) {
        return;
    }
    let watched = hooks.socketio_watched();
    watched.watch(id, Instant::now() + kept::session_ttl(app));
    if watched.start() {
        tokio::spawn(sweep(Arc::downgrade(app)));
    }
}

/// The key whose claim says socket `client`'s end was told.
fn end_key(client: &str) -> String {
    format!("sio:end:{client}")
}

/// Claims the telling of `joined`'s end across every node: true for the one caller that
/// tells it. Held until every kept trace of the socket is gone: its socket lives two
/// session lifetimes past its last poll ([`kept::joined_ttl`]), the claim three.
pub async fn claim_end(app: &App, joined: &Joined) -> Result<bool> {
    let ttl = kept::session_ttl(app) * 3;
    app.bus.claim_once(&end_key(&joined.client), ttl).await
}

/// Tells the backend `joined` ended for `reason`, unless another end was told already.
/// An engine that cannot be asked does not stop a client's own close from being told.
pub async fn end(app: &App, joined: &Joined, reason: &'static str) {
    if !told(app) {
        return;
    }
    if claim_end(app, joined).await.unwrap_or(true) {
        socket::ended(app, joined, reason);
    }
}

/// Looks at this node's due sessions a few times per session lifetime, for as long as
/// the gateway runs.
async fn sweep(app: Weak<App>) {
    let every = {
        let Some(app) = app.upgrade() else { return };
        (kept::session_ttl(&app) / 8).max(Duration::from_millis(20))
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        if app.shutdown.is_cancelled() {
            return;
        }
        let Some(hooks) = app.hooks.clone() else {
            return;
        };
        let watched = hooks.socketio_watched();
        let due = watched.due(Instant::now(), MAX_PER_PASS);
        futures_util::stream::iter(due)
            .for_each_concurrent(CONCURRENCY, |sid| {
                let app = &app;
                async move {
                    if let Some(again) = look(app, sid, every).await {
                        watched.watch(sid, again);
                    }
                }
            })
            .await;
    }
}

/// Looks at session `sid`: when to look again, or `None` once it is done with (told
/// here, told elsewhere, or nothing to tell). `every` is the sweep's period.
async fn look(app: &App, sid: ClientId, every: Duration) -> Option<Instant> {
    let sid = sid.as_str();
    let ttl = kept::session_ttl(app);
    let retry = Some(Instant::now() + every);
    let state = match kept::read::<PollState>(app, &kept::state_key(sid)).await {
        Ok(state) => state,
        Err(_) => return retry,
    };
    if let Some(state) = state {
        // Still polled, here or elsewhere: looked at again when its state would expire
        // (a node's clock is good enough to choose when to look, not to decide).
        let expires = state.seen_ms.saturating_add(ttl.as_millis() as u64);
        let left = Duration::from_millis(expires.saturating_sub(crate::bus::now_ms()));
        return Some(Instant::now() + left.clamp(every, ttl));
    }
    let joined = match kept::read::<Joined>(app, &kept::joined_key(sid)).await {
        Ok(joined) => joined.filter(|j| !j.ended)?,
        Err(_) => return retry,
    };
    match claim_end(app, &joined).await {
        Ok(true) => {
            socket::ended(app, &joined, "idle");
            None
        }
        Ok(false) => None,
        Err(_) => retry,
    }
}
