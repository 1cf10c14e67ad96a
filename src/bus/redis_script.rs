//! The Lua scripts of the Redis engines and the calls around them, shared by the
//! single-server engine ([`super::redis`]) and the cluster engine
//! ([`super::redis_cluster`]): one data layout, one publish, one history read.
//!
//! Data layout, for prefix `P` and channel `C` (the hash tag `{C}` keeps a channel's keys,
//! and its sharded pub/sub channel, in one cluster slot):
//! - `P:{C}:meta`, a hash: `epoch` (the history's identity) and `head` (last offset).
//! - `P:{C}:log`, a list of the retained messages, oldest first, each in
//!   [`Message::stored_prefix`]'s form (the message object, led by the id of a client
//!   left out of it). Offsets are consecutive, so the message at offset `o` sits at
//!   index `o - first`.
//!
//! The publish script's ARGV[9] is the `from` head spliced into the object (empty for a
//! server publish) and ARGV[10] the excluded client's prefix.
//!
//! Publishing is one script (offset, append, trim by count and age, expire, announce),
//! so a publish is one round trip and atomic. A history read is one script too. When the
//! keys vanish (eviction, flush, expiry of an idle channel) the next touch makes a new
//! epoch, so readers get an explicit gap, never a silent loss.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::{Script, ScriptInvocation};

use super::{History, RetentionPolicy, now_ms};
use crate::error::{Error, Result};
use crate::protocol::{Channel, Epoch, Gap, Message, Position, Publication};

/// How long a command may take before the engine counts as unavailable.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Spliced into the scripts of an engine whose master may be replaced by a replica (the
/// cluster engine), where each script says `-- PROMOTED(new epoch)`. Redis replicates
/// asynchronously, so a promoted replica may lack the last writes of the master it
/// replaced, and nothing on it tells whether it does: readers may hold messages it never
/// got, and its next publish would reuse their offsets. So the first touch of a channel
/// after a promotion (the key's recorded replication id is now the node's previous one)
/// starts a new epoch without dropping anything: `prev` and `fork` remember where it
/// began, readers at or before `fork` continue through one explicit gap, and readers past
/// it (holding what was lost) get a gap instead of a reused offset. A slot moved to
/// another master keeps its epoch: the keys moved whole. The `INFO` costs about 2 µs of
/// Redis time per script, so the single-server engine leaves it out.
const PROMOTED: &str = r#"do
  local info = redis.call('INFO', 'replication')
  local rid = string.match(info, 'master_replid:(%w+)')
  local known = redis.call('HGET', KEYS[1], 'rid')
  if rid and known ~= rid then
    if known and known == string.match(info, 'master_replid2:(%w+)') then
      local pfirst = tonumber(redis.call('HGET', KEYS[1], 'fork') or '0') + 1
      local head = redis.call('HGET', KEYS[1], 'head')
      redis.call('HSET', KEYS[1], 'prev', epoch, 'pfirst', pfirst, 'fork', head, 'epoch', NEW)
      epoch = NEW
    end
    redis.call('HSET', KEYS[1], 'rid', rid)
  end
end"#;

/// The publish script; `ANNOUNCE` is the command that announces the message live, in the
/// stored form.
const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'head', 0)
end
-- PROMOTED(ARGV[6])
local offset = redis.call('HINCRBY', KEYS[1], 'head', 1)
local json = ARGV[10] .. '{"channel":"' .. ARGV[1] .. '","epoch":"' .. epoch .. '","offset":' ..
  offset .. ',"ts":' .. ARGV[3] .. ARGV[9] .. ',"data":' .. ARGV[2] .. '}'
redis.call('RPUSH', KEYS[2], json)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
local cutoff = tonumber(ARGV[3]) - tonumber(ARGV[5])
while true do
  local first = redis.call('LINDEX', KEYS[2], 0)
  if not first or tonumber(string.match(first, '"ts":(%d+)')) >= cutoff then break end
  redis.call('LPOP', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('ANNOUNCE', ARGV[7], json)
return json
"#;

const HISTORY: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'head', 0)
end
-- PROMOTED(ARGV[6])
local head = tonumber(redis.call('HGET', KEYS[1], 'head'))
local cutoff = tonumber(ARGV[4]) - tonumber(ARGV[5])
while true do
  local first = redis.call('LINDEX', KEYS[2], 0)
  if not first or tonumber(string.match(first, '"ts":(%d+)')) >= cutoff then break end
  redis.call('LPOP', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local first = head - redis.call('LLEN', KEYS[2]) + 1
if ARGV[1] == '' then
  return {epoch, tostring(head), 0, {}, epoch}
end
local prev = redis.call('HGET', KEYS[1], 'prev')
local fork = tonumber(redis.call('HGET', KEYS[1], 'fork') or '0')
local lo = math.max(first, tonumber(redis.call('HGET', KEYS[1], 'pfirst') or '1'))
local from = tonumber(ARGV[2])
local gap = 0
local label = epoch
if ARGV[1] == epoch then
  if from > head then
    gap = 1
    from = head
  elseif from + 1 < first then
    gap = 1
    from = first - 1
    if prev then from = math.max(from, fork) end
  end
elseif prev and ARGV[1] == prev and from < fork then
  if from + 1 < lo then
    gap = 1
    from = lo - 1
  end
  if from < fork then label = prev end
else
  gap = 1
  if prev and ARGV[1] == prev then
    from = math.max(fork, first - 1)
  elseif prev and first - 1 < fork then
    from = lo - 1
    if from < fork then label = prev end
  else
    from = first - 1
  end
end
local start = from + 1 - first
local stop = start + tonumber(ARGV[3]) - 1
if label ~= epoch then stop = math.min(stop, fork - first) end
local messages = {}
if stop >= start then messages = redis.call('LRANGE', KEYS[2], start, stop) end
return {epoch, tostring(head), gap, messages, label}
"#;

/// Checks, after a failover or a slot move, that the history still holds the message a
/// node last handed out (ARGV[1] its epoch, ARGV[2] its offset, ARGV[3] its JSON). A
/// promoted replica may lack the last writes of the master it replaced; its next publish
/// would then reuse an offset that readers already hold, and they would drop the new
/// message as a duplicate. So when the history forked, the channel starts a new epoch,
/// which every reader sees as an explicit gap. Returns the last retained message, if any.
const VERIFY: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch then
  -- PROMOTED(ARGV[4])
end
if epoch and epoch == ARGV[1] then
  local head = tonumber(redis.call('HGET', KEYS[1], 'head'))
  local offset = tonumber(ARGV[2])
  local kept = nil
  if offset <= head then
    local first = head - redis.call('LLEN', KEYS[2]) + 1
    if offset >= first then kept = redis.call('LINDEX', KEYS[2], offset - first) end
  end
  if offset > head or (kept and kept ~= ARGV[3]) then
    redis.call('DEL', KEYS[2])
    redis.call('HDEL', KEYS[1], 'prev', 'fork', 'pfirst')
    redis.call('HSET', KEYS[1], 'epoch', ARGV[4], 'head', 0)
  end
end
return redis.call('LINDEX', KEYS[2], -1)
"#;

/// The scripts of one engine.
pub(super) struct Scripts {
    prefix: String,
    retention: RetentionPolicy,
    publish: Script,
    history: Script,
    verify: Script,
}

impl Scripts {
    /// Scripts for keys under `prefix`, announcing live messages with `announce`
    /// (`PUBLISH` on one server, `SPUBLISH` on a cluster).
    /// With `promotions`, the scripts start a new epoch after a replica's promotion (see
    /// [`PROMOTED`]).
    pub(super) fn new(
        prefix: &str,
        retention: RetentionPolicy,
        announce: &str,
        promotions: bool,
    ) -> Self {
        let script = |source: &str, new_epoch: &str| {
            let marker = format!("-- PROMOTED({new_epoch})");
            let guard = if promotions {
                PROMOTED.replace("NEW", new_epoch)
            } else {
                String::new()
            };
            Script::new(&source.replace(&marker, &guard))
        };
        let publish = PUBLISH.replace("'ANNOUNCE'", &format!("'{announce}'"));
        Scripts {
            prefix: prefix.to_owned(),
            retention,
            publish: script(&publish, "ARGV[6]"),
            history: script(HISTORY, "ARGV[6]"),
            verify: script(VERIFY, "ARGV[4]"),
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The channel's history keys: its hash and its list.
    pub(super) fn keys(&self, channel: &Channel) -> (String, String) {
        let prefix = &self.prefix;
        (
            format!("{prefix}:{{{channel}}}:meta"),
            log_key(prefix, channel),
        )
    }

    /// Appends `publication` to `channel` and announces it on `topic`.
    pub(super) fn publish(
        &self,
        channel: &Channel,
        publication: &Publication,
        topic: String,
    ) -> ScriptInvocation<'_> {
        let (meta, log) = self.keys(channel);
        let retention = self.retention.for_channel(channel);
        let mut invocation = self.publish.key(meta);
        invocation
            .key(log)
            .arg(channel.as_str())
            .arg(&publication.data[..])
            .arg(now_ms())
            .arg(retention.max_messages)
            .arg(retention.max_age.as_millis() as u64)
            .arg(Epoch::random().as_str())
            .arg(topic)
            .arg(idle_ttl_ms(retention.max_age))
            .arg(&publication.head[..])
            .arg(Message::stored_prefix(publication.exclude.as_deref()));
        invocation
    }

    /// Reads up to `limit` messages of `channel` after `from`.
    pub(super) fn history(
        &self,
        channel: &Channel,
        from: Option<&Position>,
        limit: usize,
    ) -> ScriptInvocation<'_> {
        let (meta, log) = self.keys(channel);
        let retention = self.retention.for_channel(channel);
        let mut invocation = self.history.key(meta);
        invocation
            .key(log)
            .arg(from.map_or("", |p| p.epoch.as_str()))
            .arg(from.map_or(0, |p| p.offset))
            .arg(limit.max(1))
            .arg(now_ms())
            .arg(retention.max_age.as_millis() as u64)
            .arg(Epoch::random().as_str())
            .arg(idle_ttl_ms(retention.max_age));
        invocation
    }

    /// Starts a new epoch of `last`'s channel if its history no longer holds `last`, and
    /// returns the channel's last retained message (see `VERIFY`).
    pub(super) fn verify(&self, last: &Message) -> ScriptInvocation<'_> {
        let (meta, log) = self.keys(&last.channel);
        let mut invocation = self.verify.key(meta);
        invocation
            .key(log)
            .arg(last.epoch.as_str())
            .arg(last.offset)
            .arg(stored(last))
            .arg(Epoch::random().as_str());
        invocation
    }
}

/// The list of `channel`'s retained messages.
pub(super) fn log_key(prefix: &str, channel: &Channel) -> String {
    format!("{prefix}:{{{channel}}}:log")
}

/// Keys of an idle channel expire after twice its retention age.
fn idle_ttl_ms(max_age: Duration) -> u64 {
    (max_age.as_millis() as u64).saturating_mul(2).max(1000)
}

/// `message` as the log keeps it (see [`Message::stored_prefix`]).
fn stored(message: &Message) -> Vec<u8> {
    let prefix = Message::stored_prefix(message.excluded());
    let mut stored = Vec::with_capacity(prefix.len() + message.json().len());
    stored.extend_from_slice(prefix.as_bytes());
    stored.extend_from_slice(message.json());
    stored
}

/// The message a publish script returned.
pub(super) fn published(json: Vec<u8>) -> Result<Arc<Message>> {
    Message::from_stored(Bytes::from(json))
        .map(Arc::new)
        .ok_or_else(|| Error::Internal("redis returned a malformed message".into()))
}

/// What a history script returns: epoch, head, gap flag, messages, and the epoch of the
/// messages returned (the previous one while a reader catches up to a promotion's fork).
pub(super) type RawHistory = (String, String, u8, Vec<Vec<u8>>, String);

/// The answer a history script returned for `channel`.
pub(super) fn history(channel: &Channel, raw: RawHistory) -> Result<History> {
    let (epoch, head, gap, raw, label) = raw;
    let malformed = || Error::Internal("redis returned a malformed history".into());
    let epoch = Epoch::parse(&epoch).ok_or_else(malformed)?;
    let label = Epoch::parse(&label).ok_or_else(malformed)?;
    let head: u64 = head.parse().map_err(|_| malformed())?;
    let messages = raw
        .into_iter()
        .map(|json| Message::from_stored(Bytes::from(json)).map(Arc::new))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(malformed)?;
    let gap = (gap == 1).then(|| Gap {
        channel: channel.clone(),
        epoch: label,
        first: messages.first().map_or(head + 1, |m| m.offset),
    });
    Ok(History {
        epoch,
        head,
        gap,
        messages,
    })
}

/// `WAIT`'s answer as the bus reports it: a publish is acknowledged only once `wanted`
/// replicas hold it.
pub(super) fn replicated(reached: i64, wanted: u32) -> Result<()> {
    if reached < i64::from(wanted) {
        return Err(Error::EngineUnavailable(format!(
            "the publish reached {reached} of {wanted} replicas in time"
        )));
    }
    Ok(())
}

/// A Redis error as the bus reports it.
pub(super) fn unavailable(err: redis::RedisError) -> Error {
    Error::EngineUnavailable(format!("redis: {err}"))
}

/// Runs `invocation` on `connection` within the command timeout.
pub(super) async fn invoke<T, C>(invocation: &ScriptInvocation<'_>, connection: &mut C) -> Result<T>
where
    T: redis::FromRedisValue,
    C: redis::aio::ConnectionLike,
{
    match tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(connection)).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(Error::EngineUnavailable(
            "redis did not answer in time".into(),
        )),
    }
}
