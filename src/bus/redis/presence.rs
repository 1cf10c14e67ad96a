//! Presence in Redis: a sorted set per channel, `P:{C}:presence`, whose members are the
//! present clients (their JSON, the same bytes on every write) scored by when they
//! expire (unix milliseconds). Each node adds and removes its own clients as they come
//! and go, in order, and refreshes all of them every [`PRESENCE_HEARTBEAT`]; a read keeps
//! the members not yet expired. A node that dies stops refreshing: its clients vanish
//! from every node's view within [`PRESENCE_TTL`].

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::{mpsc, oneshot};

use super::COMMAND_TIMEOUT;
use crate::bus::presence::merge;
use crate::bus::{Hub, Present, now_ms};
use crate::error::{Error, Result};
use crate::protocol::Channel;

/// How often a node refreshes its clients' entries.
pub const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(10);

/// How long an entry lives without a refresh: how long a dead node's clients stay listed
/// at most.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);

/// A client came or went on this node.
pub(in crate::bus) struct Change {
    channel: Channel,
    present: Present,
    joined: bool,
    /// Told once the change is written.
    written: oneshot::Sender<()>,
}

impl Change {
    /// The change, and what tells when it is written.
    pub(in crate::bus) fn new(
        channel: &Channel,
        present: &Present,
        joined: bool,
    ) -> (Self, oneshot::Receiver<()>) {
        let (written, done) = oneshot::channel();
        let change = Change {
            channel: channel.clone(),
            present: present.clone(),
            joined,
            written,
        };
        (change, done)
    }
}

/// The key of `channel`'s set.
fn key(prefix: &str, channel: &Channel) -> String {
    format!("{prefix}:{{{channel}}}:presence")
}

/// Writes this node's changes in order, and refreshes its clients every heartbeat.
pub(in crate::bus) async fn keep<C: ConnectionLike>(
    prefix: String,
    hub: Arc<Hub>,
    mut connection: C,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let mut heartbeat = tokio::time::interval(PRESENCE_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl = PRESENCE_TTL.as_millis() as u64;
    loop {
        // One pipeline per channel: each stays in its channel's slot, as a cluster needs.
        let mut pipes = Vec::new();
        let mut written = None;
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else { return };
                let mut pipe = redis::pipe();
                let key = key(&prefix, &change.channel);
                let Ok(member) = serde_json::to_string(&change.present) else { continue };
                if change.joined {
                    pipe.zadd(&key, member, now_ms() + ttl).ignore();
                    pipe.pexpire(&key, ttl as i64).ignore();
                } else {
                    pipe.zrem(&key, member).ignore();
                }
                pipes.push(pipe);
                written = Some(change.written);
            }
            _ = heartbeat.tick() => {
                let until = now_ms() + ttl;
                for (channel, clients) in hub.roster().snapshot() {
                    let mut pipe = redis::pipe();
                    let key = key(&prefix, &channel);
                    for present in clients {
                        if let Ok(member) = serde_json::to_string(&present) {
                            pipe.zadd(&key, member, until).ignore();
                        }
                    }
                    pipe.zrembyscore(&key, 0, now_ms()).ignore();
                    pipe.pexpire(&key, ttl as i64).ignore();
                    pipes.push(pipe);
                }
            }
        }
        let mut all_written = true;
        for pipe in pipes {
            let write = pipe.query_async::<()>(&mut connection);
            if !matches!(
                tokio::time::timeout(COMMAND_TIMEOUT, write).await,
                Ok(Ok(()))
            ) {
                all_written = false;
            }
        }
        if !all_written {
            // The next heartbeat writes this node's clients again.
            tracing::debug!("presence not written to redis; the heartbeat retries");
        } else if let Some(written) = written {
            let _ = written.send(());
        }
    }
}

/// Everyone present in `channel` on every node: `here` and the set's live members.
pub(in crate::bus) async fn read<C: ConnectionLike>(
    prefix: &str,
    mut connection: C,
    channel: &Channel,
    here: Vec<Present>,
) -> Result<Vec<Present>> {
    let mut cmd = redis::cmd("ZRANGEBYSCORE");
    cmd.arg(key(prefix, channel)).arg(now_ms()).arg("+inf");
    let read = cmd.query_async::<Vec<Vec<u8>>>(&mut connection);
    let members = match tokio::time::timeout(COMMAND_TIMEOUT, read).await {
        Ok(Ok(members)) => members,
        Ok(Err(err)) => return Err(Error::EngineUnavailable(format!("redis: {err}"))),
        Err(_) => {
            return Err(Error::EngineUnavailable(
                "redis did not answer in time".into(),
            ));
        }
    };
    let there = members
        .iter()
        .filter_map(|member| serde_json::from_slice::<Present>(member).ok())
        .collect();
    Ok(merge(here, there))
}
