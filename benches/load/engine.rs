//! The engine behind the gateways: `memory` (each node alone), `redis` (every node on
//! one Redis, loopback only) or `redis-cluster` (every node on a local Redis Cluster of 3
//! masters and 3 replicas that the run starts). For Redis this module also reads what
//! the servers did in the measured window (`INFO commandstats`, `INFO stats`, `INFO
//! cpu`) and removes the run's keys afterwards (a run's cluster goes with its keys).
//!
//! Every Redis call here has a one-second connect, read and write timeout, and the key
//! clean-up is bounded in scan rounds.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::ValueEnum;
use serde_json::{Map, Value, json};

/// Which engine the started gateways use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineChoice {
    /// The embedded in-memory engine (one node only shares nothing).
    Memory,
    /// Redis: every node on one Redis, with a prefix unique to the run.
    Redis,
    /// Redis Cluster: every node on a local cluster of 3 masters and 3 replicas, started
    /// for the run.
    RedisCluster,
}

impl EngineChoice {
    /// The name used in `CASCADE_ENGINE` and in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Memory => "memory",
            EngineChoice::Redis => "redis",
            EngineChoice::RedisCluster => "redis-cluster",
        }
    }

    /// Whether several nodes share this engine's messages.
    pub fn shared(self) -> bool {
        self != EngineChoice::Memory
    }
}

const TIMEOUT: Duration = Duration::from_secs(1);
/// Scan rounds of the key clean-up (1000 keys a round is plenty for one run's channels).
const CLEANUP_ROUNDS: usize = 200;

/// Whether `url` is `redis://` on a loopback host (127.0.0.0/8, ::1 or localhost).
pub fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("redis://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn connect(url: &str) -> Option<redis::Connection> {
    let client = redis::Client::open(url).ok()?;
    let conn = client.get_connection_with_timeout(TIMEOUT).ok()?;
    conn.set_read_timeout(Some(TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(TIMEOUT)).ok()?;
    Some(conn)
}

/// What Redis reported at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Calls per command (`cmdstat_<name>:calls=`), including commands run by scripts.
    calls: BTreeMap<String, u64>,
    /// Counters of `INFO stats` worth a delta.
    stats: BTreeMap<String, u64>,
    /// `used_cpu_user + used_cpu_sys`, seconds, of the whole server.
    cpu_s: f64,
    /// The server is a replica.
    replica: bool,
}

/// Reads commandstats, stats and CPU from the Redis at `url`, or from every server of a
/// comma-separated list (a cluster's nodes: the CPU of all, the commands and traffic of
/// the masters, as a replica's count the replication stream again); `None` if one does
/// not answer within the timeout.
pub fn snapshot(url: &str) -> Option<Snapshot> {
    let mut sum = Snapshot::default();
    for server in url.split(',') {
        let snap = snapshot_one(server)?;
        sum.cpu_s += snap.cpu_s;
        if snap.replica {
            continue;
        }
        for (total, each) in [(&mut sum.calls, snap.calls), (&mut sum.stats, snap.stats)] {
            for (key, value) in each {
                *total.entry(key).or_default() += value;
            }
        }
    }
    Some(sum)
}

fn snapshot_one(url: &str) -> Option<Snapshot> {
    let mut conn = connect(url)?;
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("stats")
        .arg("cpu")
        .arg("replication")
        .query(&mut conn)
        .ok()?;
    let mut snap = Snapshot::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        if let Some(command) = key.strip_prefix("cmdstat_") {
            let calls = value
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|c| c.parse().ok());
            if let Some(calls) = calls {
                snap.calls.insert(command.to_owned(), calls);
            }
        } else if matches!(
            key,
            "total_commands_processed" | "total_net_input_bytes" | "total_net_output_bytes"
        ) {
            if let Ok(v) = value.parse() {
                snap.stats.insert(key.to_owned(), v);
            }
        } else if matches!(key, "used_cpu_user" | "used_cpu_sys") {
            snap.cpu_s += value.parse::<f64>().unwrap_or(0.0);
        } else if key == "role" {
            snap.replica = value == "slave";
        }
    }
    Some(snap)
}

/// The window between two snapshots, as JSON: calls per command (only those that moved),
/// the stats deltas, Redis CPU seconds, and the per-message figures for `messages`.
pub fn window(before: &Snapshot, after: &Snapshot, messages: u64) -> Map<String, Value> {
    let delta = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>, key: &str| {
        b.get(key)
            .copied()
            .unwrap_or(0)
            .saturating_sub(a.get(key).copied().unwrap_or(0))
    };
    let calls: Map<String, Value> = after
        .calls
        .keys()
        .map(|k| (k.clone(), delta(&before.calls, &after.calls, k)))
        .filter(|(_, d)| *d > 0)
        .map(|(k, d)| (k, json!(d)))
        .collect();
    let per_message = |n: u64| -> Value {
        if messages == 0 {
            Value::Null
        } else {
            json!((n as f64 / messages as f64 * 1000.0).round() / 1000.0)
        }
    };
    let mut out = Map::new();
    let evalsha = delta(&before.calls, &after.calls, "evalsha");
    // A cluster's live messages are sharded pub/sub.
    let publish = delta(&before.calls, &after.calls, "publish")
        + delta(&before.calls, &after.calls, "spublish");
    let commands = delta(&before.stats, &after.stats, "total_commands_processed");
    out.insert("redis_evalsha_per_message".into(), per_message(evalsha));
    out.insert("redis_publish_per_message".into(), per_message(publish));
    out.insert("redis_commands_per_message".into(), per_message(commands));
    out.insert("redis_commands".into(), json!(commands));
    out.insert(
        "redis_net_in_bytes".into(),
        json!(delta(&before.stats, &after.stats, "total_net_input_bytes")),
    );
    out.insert(
        "redis_net_out_bytes".into(),
        json!(delta(&before.stats, &after.stats, "total_net_output_bytes")),
    );
    out.insert(
        "redis_cpu_s".into(),
        json!(((after.cpu_s - before.cpu_s) * 1000.0).round() / 1000.0),
    );
    out.insert("redis_calls".into(), Value::Object(calls));
    out
}

/// Deletes the keys under `prefix:` (bounded scan); returns how many went.
pub fn cleanup(url: &str, prefix: &str) -> Option<u64> {
    let mut conn = connect(url)?;
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    for _ in 0..CLEANUP_ROUNDS {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
            .ok()?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("DEL").arg(&keys).query(&mut conn).ok()?;
            deleted += n;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Some(deleted)
}
