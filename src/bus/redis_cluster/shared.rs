//! What the cluster engine and its listener share: the watched channels, the last
//! message seen of each, health, and the names of the pub/sub channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use redis::cluster_async::ClusterConnection;
use tokio::sync::{mpsc, watch};

use crate::bus::Hub;
use crate::bus::redis::presence;
use crate::protocol::{Channel, Message};
use crate::sync::Unpoisoned;

/// What the engine and its listener both hold.
pub(super) struct Shared {
    pub(super) watched: Mutex<HashMap<Channel, watch::Sender<bool>>>,
    /// The last message of each watched channel this node saw, checked against the
    /// history after a resubscription.
    pub(super) last: Mutex<HashMap<Channel, Arc<Message>>>,
    pub(super) up: AtomicBool,
    pub(super) gauge: IntGauge,
}

impl Shared {
    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.gauge.set(i64::from(up));
    }

    pub(super) fn is_wanted(&self, channel: &Channel) -> bool {
        self.watched.locked().contains_key(channel)
    }

    /// Remembers `message` as the newest of its channel this node has seen.
    pub(super) fn saw(&self, message: &Arc<Message>) {
        if !self.is_wanted(&message.channel) {
            return;
        }
        let mut last = self.last.locked();
        match last.get(&message.channel) {
            Some(known) if known.epoch == message.epoch && known.offset >= message.offset => {}
            _ => {
                last.insert(message.channel.clone(), message.clone());
            }
        }
    }
}

pub(super) enum Watch {
    Subscribe(Channel),
    Unsubscribe(Channel),
}

/// Writes this node's presence changes once the cluster is reached (see [`presence::keep`]).
pub(super) async fn keep_presence(
    prefix: String,
    hub: Arc<Hub>,
    mut connection: watch::Receiver<Option<ClusterConnection>>,
    changes: mpsc::UnboundedReceiver<presence::Change>,
) {
    let connection = match connection.wait_for(Option::is_some).await {
        Ok(connection) => connection.clone(),
        Err(_) => return,
    };
    let Some(connection) = connection else { return };
    presence::keep(prefix, hub, connection, changes).await;
}

/// The pub/sub channel of the server API's commands.
pub(super) fn control_topic(prefix: &str) -> String {
    format!("{prefix}:control")
}

/// The shard channel of `channel`'s live messages, in the slot of its keys.
pub(super) fn topic(prefix: &str, channel: &Channel) -> String {
    format!("{prefix}:{{{channel}}}:live")
}

/// The channel whose live messages travel on `topic`.
pub(super) fn channel_of(prefix: &str, topic: &[u8]) -> Option<Channel> {
    let topic = std::str::from_utf8(topic).ok()?;
    let name = topic
        .strip_prefix(prefix)?
        .strip_prefix(":{")?
        .strip_suffix("}:live")?;
    Channel::parse(name).ok()
}
