//! The pub/sub channel names of the Redis engine: live messages (one per channel, or a
//! fixed set of shards) and the server API's commands.

use redis::aio::ConnectionLike;

use super::COMMAND_TIMEOUT;
use crate::bus::control::Command;
use crate::error::{Error, Result};
use crate::protocol::Channel;

/// Publishes a server command on `topic`, which every node follows.
pub(in crate::bus) async fn announce<C: ConnectionLike>(
    mut connection: C,
    topic: String,
    command: &Command,
) -> Result<()> {
    let payload = serde_json::to_string(command).map_err(|e| Error::Internal(e.to_string()))?;
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(topic).arg(payload);
    match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<i64>(&mut connection)).await {
        Ok(result) => result
            .map(|_| ())
            .map_err(|e| Error::EngineUnavailable(format!("redis: {e}"))),
        Err(_) => Err(Error::EngineUnavailable(
            "redis did not answer in time".into(),
        )),
    }
}

/// The pub/sub channel names live messages travel on.
#[derive(Clone, Debug)]
pub(super) struct Topics {
    pub(super) prefix: String,
    pub(super) shards: u32,
}

impl Topics {
    /// The pub/sub channel of `channel`'s messages.
    pub(super) fn of(&self, channel: &Channel) -> String {
        if self.shards == 0 {
            return format!("{}:live:{channel}", self.prefix);
        }
        // FNV-1a: stable across nodes and versions, unlike the std hasher.
        let hash = channel
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        format!("{}:shard:{}", self.prefix, hash % u64::from(self.shards))
    }

    /// The channels every node follows: the shards (none without sharding) and the
    /// server API's commands.
    pub(super) fn fixed(&self) -> Vec<String> {
        (0..self.shards)
            .map(|n| format!("{}:shard:{n}", self.prefix))
            .chain([self.control()])
            .collect()
    }

    /// The pub/sub channel of the server API's commands.
    pub(super) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    pub(super) fn sharded(&self) -> bool {
        self.shards > 0
    }
}
