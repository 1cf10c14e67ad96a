//! A publisher and a WebSocket subscriber for tests that disrupt the engine mid-stream
//! (a Redis Cluster or Sentinel failover, a slot move), and the check of what the
//! subscriber saw against what was acknowledged: in order, once, or an explicit gap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::nodes::Node;
use super::{eventually, http};

/// Publishers are backends: they authenticate with an API key, as in production.
pub const API_KEY: &str = "stream-test-key";

/// How long a stream may stall while the engine fails over or a slot moves.
pub const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

/// Publishes `{"n": n}` to `channel` on `node`; the acknowledged (epoch, offset), or the
/// error code when the gateway refused.
pub async fn publish(node: &Node, channel: &str, n: u64) -> Result<(String, u64), String> {
    NodeUrl(node.url("")).publish(channel, n).await
}

/// An acknowledged publish: (epoch, offset, n).
pub type Ack = (String, u64, u64);

/// Publishes 1..=total to `channel`, 5 ms apart, retrying each refused publish (as a
/// client would) until it is acknowledged; counts acknowledgements in `acked`.
pub fn spawn_publisher(
    node: &Node,
    channel: &'static str,
    total: u64,
    acked: Arc<AtomicU64>,
    last: Arc<OnceLock<Ack>>,
) -> tokio::task::JoinHandle<Published> {
    let node_url = node.url("");
    tokio::spawn(async move {
        let node = NodeUrl(node_url);
        let mut acks = Vec::new();
        let mut acked_at = Vec::new();
        let mut refused = 0;
        let started = Instant::now();
        for n in 1..=total {
            loop {
                assert!(
                    started.elapsed() < FAILOVER_DEADLINE * 2,
                    "publishes did not resume"
                );
                match node.publish(channel, n).await {
                    Ok((epoch, offset)) => {
                        acks.push((epoch, offset, n));
                        acked_at.push(Instant::now());
                        acked.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(_) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = last.set(acks.last().expect("acknowledged").clone());
        Published {
            acks,
            acked_at,
            refused,
        }
    })
}

/// What a publisher got done.
pub struct Published {
    /// The acknowledged publishes, in order.
    pub acks: Vec<Ack>,
    /// When each was acknowledged.
    pub acked_at: Vec<Instant>,
    /// Publishes refused (and retried).
    pub refused: usize,
}

/// A node's base URL, for tasks that outlive a borrow of the [`Node`].
pub struct NodeUrl(pub String);

impl NodeUrl {
    pub async fn publish(&self, channel: &str, n: u64) -> Result<(String, u64), String> {
        let response = http()
            .post(format!("{}/publish", self.0))
            .header("X-Cascade-Api-Key", API_KEY)
            .json(&json!({"channel": channel, "data": {"n": n}}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(body["error"]["code"].as_str().unwrap_or("?").to_owned());
        }
        Ok((
            body["epoch"].as_str().unwrap().to_owned(),
            body["offset"].as_u64().unwrap(),
        ))
    }
}

/// What a subscriber saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Message { epoch: String, offset: u64, n: u64 },
    Gap { epoch: String, first: u64 },
}

/// Follows `channel` over WebSocket on `node` from `cursor` until `done` holds for what
/// it saw; resumes from its cursor when the gateway closes the stream (an engine outage).
/// Returns what it saw, how many times it resumed, and the longest wait between two
/// events.
pub async fn follow(
    node: &Node,
    channel: &str,
    mut cursor: String,
    done: impl Fn(&[Seen]) -> bool,
    on_stall: impl Fn() -> String,
) -> (Vec<Seen>, usize, Duration) {
    let mut seen = Vec::new();
    let started = Instant::now();
    let (mut last_event, mut longest) = (Instant::now(), Duration::ZERO);
    let mut connections = 0usize;
    'connect: while !done(&seen) {
        connections += 1;
        assert!(
            started.elapsed() < FAILOVER_DEADLINE * 2,
            "stream stalled after {} events",
            seen.len()
        );
        let mut ws = node.ws().await;
        ws.subscribe(&[channel], Some(&cursor)).await;
        while !done(&seen) {
            // Pings keep an idle stream busy: the deadline is on the whole stream.
            let stalled = |seen: &[Seen]| {
                let last = seen.last();
                format!(
                    "stream stalled after {} events, the last {last:?}",
                    seen.len()
                )
            };
            assert!(
                started.elapsed() < FAILOVER_DEADLINE * 2,
                "{}; {}",
                stalled(&seen),
                on_stall()
            );
            let frame = match tokio::time::timeout(FAILOVER_DEADLINE, ws.ws.next()).await {
                Ok(Some(Ok(WsMessage::Text(text)))) => {
                    serde_json::from_str::<Value>(&text).expect("json frame")
                }
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(_) => continue 'connect,
                Err(_) => panic!(
                    "no frame within {FAILOVER_DEADLINE:?}; saw {seen:?}; {}",
                    on_stall()
                ),
            };
            let epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
            if matches!(frame["op"].as_str(), Some("message" | "gap")) {
                longest = longest.max(last_event.elapsed());
                last_event = Instant::now();
            }
            match frame["op"].as_str() {
                Some("message") => {
                    let offset = frame["offset"].as_u64().unwrap();
                    cursor = format!("{channel}@{epoch}:{offset}");
                    let n = frame["data"]["n"].as_u64().unwrap();
                    seen.push(Seen::Message { epoch, offset, n });
                }
                Some("gap") => {
                    let first = frame["first"].as_u64().unwrap();
                    cursor = format!("{channel}@{epoch}:{}", first - 1);
                    seen.push(Seen::Gap { epoch, first });
                }
                _ => {
                    eprintln!("the stream ended with {frame}; resuming from {cursor}");
                    let _ = ws.ws.close(None).await;
                    continue 'connect;
                }
            }
        }
    }
    (seen, connections.saturating_sub(1), longest)
}

/// Checks the stream a subscriber saw against what was acknowledged: offsets advance one
/// at a time within an epoch, a jump or a new epoch only after a reported gap, no
/// duplicate, and every acknowledged message seen (with its data) unless a gap was
/// reported. Returns the gaps reported and the acknowledged messages they covered.
pub fn check(start: (String, u64), seen: &[Seen], acks: &[Ack]) -> (usize, usize) {
    let (mut epoch, mut offset) = start;
    let mut gaps = 0;
    let mut delivered = std::collections::HashMap::new();
    for event in seen {
        match event {
            Seen::Gap { epoch: e, first } => {
                gaps += 1;
                (epoch, offset) = (e.clone(), first - 1);
            }
            Seen::Message {
                epoch: e,
                offset: o,
                n,
            } => {
                assert_eq!(
                    (e, *o),
                    (&epoch, offset + 1),
                    "a silent jump, duplicate or epoch change in {seen:?}"
                );
                assert!(delivered.insert((e.clone(), *o), *n).is_none());
                offset = *o;
            }
        }
    }
    let mut covered = 0;
    for (epoch, offset, n) in acks {
        match delivered.get(&(epoch.clone(), *offset)) {
            Some(seen_n) => assert_eq!(seen_n, n, "offset {offset} carried other data"),
            None => {
                assert!(
                    gaps > 0,
                    "acknowledged {epoch}:{offset} (n={n}) missing without a gap"
                );
                covered += 1;
            }
        }
    }
    (gaps, covered)
}

/// The subscriber has seen the last acknowledged message, or moved past it: to a later
/// offset of its epoch, or on to a later epoch (a promotion starts one).
pub fn reached(seen: &[Seen], last: &Ack) -> bool {
    let epoch_of = |event: &Seen| match event {
        Seen::Message { epoch, .. } | Seen::Gap { epoch, .. } => epoch.clone(),
    };
    match seen.last() {
        None => false,
        Some(Seen::Message { epoch, offset, .. }) if epoch == &last.0 => *offset >= last.1,
        Some(Seen::Gap { epoch, first }) if epoch == &last.0 => *first > last.1,
        Some(_) => seen.iter().any(|event| epoch_of(event) == last.0),
    }
}

pub async fn subscribed_position(node: &Node, channel: &str) -> (String, u64) {
    let mut ws = node.ws().await;
    let reply = ws.subscribe(&[channel], None).await;
    let cursor = reply["cursor"].as_str().unwrap();
    let (epoch, offset) = cursor.split_once('@').unwrap().1.split_once(':').unwrap();
    (epoch.to_owned(), offset.parse().unwrap())
}

/// What a disrupted stream came to.
#[derive(Debug)]
pub struct Outcome {
    /// Gaps the subscriber was told of.
    pub gaps: usize,
    /// Acknowledged messages it did not get, each covered by a reported gap.
    pub covered: usize,
    /// Publishes refused (and retried) during the disruption.
    pub refused: usize,
    /// Times the subscriber had to reconnect and resume from its cursor.
    pub resumed: usize,
    /// Whether publishing went on after the disruption was over.
    pub outlived: bool,
    /// From the disruption's start to the first publish acknowledged after the longest
    /// pause between two acknowledgements (the publisher sends every 5 ms or so).
    pub publish_back: Duration,
    /// The longest the subscriber waited between two events: how long the disruption
    /// held the stream up.
    pub longest_wait: Duration,
}

/// Runs a publisher of `total` messages to `chat` on `nodes[0]` and a WebSocket subscriber
/// on `nodes[1]`, calls `disrupt` on `engine` (on a blocking thread) once `at` messages
/// are acknowledged, and checks what the subscriber saw against what was acknowledged.
/// `engine_state` describes the engine when the subscriber stalls.
pub async fn stream_through<E: Send + 'static>(
    test: &str,
    nodes: &[Node],
    (total, at): (u64, u64),
    engine: E,
    disrupt: impl FnOnce(&mut E) + Send + 'static,
    engine_state: impl Fn() -> String,
) -> (Outcome, E) {
    let node_log = || {
        for line in nodes[1].log().iter().filter(|l| l.contains("redis")) {
            eprintln!("node 1: {line}");
        }
    };
    let start = subscribed_position(&nodes[1], "chat").await;
    let cursor = format!("chat@{}:{}", start.0, start.1);
    let acked = Arc::new(AtomicU64::new(0));
    let last = Arc::new(OnceLock::new());
    let publisher = spawn_publisher(&nodes[0], "chat", total, acked.clone(), last.clone());
    let follower = follow(
        &nodes[1],
        "chat",
        cursor,
        |seen| last.get().is_some_and(|last| reached(seen, last)),
        || {
            node_log();
            engine_state()
        },
    );
    let disruption = async {
        eventually("the first acknowledgements", || async {
            acked.load(Ordering::Relaxed) >= at
        })
        .await;
        let began = Instant::now();
        let mut engine = engine;
        let engine = tokio::task::spawn_blocking(move || {
            disrupt(&mut engine);
            engine
        })
        .await
        .expect("disruption");
        (engine, began, acked.load(Ordering::Relaxed))
    };
    let ((seen, resumed, longest_wait), (engine, began, acked_by_then)) =
        tokio::join!(follower, disruption);
    let published = publisher.await.unwrap();
    let (gaps, covered) = check(start, &seen, &published.acks);
    let outcome = Outcome {
        gaps,
        covered,
        refused: published.refused,
        resumed,
        outlived: acked_by_then < total,
        publish_back: publish_back(test, &published.acked_at, began),
        longest_wait,
    };
    // Shown when a test fails: how the subscriber's node followed the engine.
    node_log();
    eprintln!("{test}: {} acknowledged, {outcome:?}", published.acks.len());
    (outcome, engine)
}

/// From `began` to the first acknowledgement after the longest pause between two (or
/// before the first); pauses over 200 ms are printed.
fn publish_back(test: &str, acked_at: &[Instant], began: Instant) -> Duration {
    let after: Vec<Instant> = acked_at.iter().copied().filter(|&t| t >= began).collect();
    let mut publish_back = after.first().map_or(Duration::ZERO, |t| *t - began);
    let mut longest_pause = publish_back;
    for pair in after.windows(2) {
        if pair[1] - pair[0] > Duration::from_millis(200) {
            eprintln!(
                "{test}: no acknowledgement from +{:?} to +{:?}",
                pair[0] - began,
                pair[1] - began
            );
        }
        if pair[1] - pair[0] > longest_pause {
            longest_pause = pair[1] - pair[0];
            publish_back = pair[1] - began;
        }
    }
    publish_back
}
