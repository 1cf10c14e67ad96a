//! Several gateway processes on one Redis: any node serves any request, a cursor means the
//! same thing everywhere, a node crash or a Redis restart loses nothing acknowledged.
//!
//! Needs `redis-server` on PATH and a Redis at `CASCADE_TEST_REDIS_URL` (default
//! 127.0.0.1:6379); every test uses its own key prefix, and the restart test its own
//! redis-server on a free port.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::nodes::{Node, RedisServer};
// Publishers are backends: they authenticate with an API key, as in production.
use support::stream::{API_KEY, NodeUrl};
use support::*;

fn redis_url() -> String {
    std::env::var("CASCADE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("test-{test}-{}-{nanos}", std::process::id())
}

fn nodes(count: usize, url: &str, prefix: &str) -> Vec<Node> {
    let env = [
        ("CASCADE_ENGINE", "redis"),
        ("CASCADE_REDIS_URL", url),
        ("CASCADE_REDIS_PREFIX", prefix),
        ("CASCADE_LONGPOLL_TIMEOUT_MS", "1000"),
        ("CASCADE_API_KEYS", API_KEY),
    ];
    (0..count).map(|_| Node::spawn(&env)).collect()
}

/// Publishes `{"n": n}` to `channel` on `node`; returns the acknowledged offset, or the
/// error code when the gateway refused.
async fn publish(node: &Node, channel: &str, n: u64) -> Result<(String, u64), String> {
    NodeUrl(node.url("")).publish(channel, n).await
}

/// Publishes 1..=total to `chat` on `node` in the background, pausing 2 ms after every
/// `pause_every` messages so that subscribers read while it runs.
fn spawn_publisher(node: &Node, total: u64, pause_every: u64) -> tokio::task::JoinHandle<()> {
    let url = node.url("/publish");
    tokio::spawn(async move {
        for n in 1..=total {
            let response = http()
                .post(&url)
                .header("X-Cascade-Api-Key", API_KEY)
                .json(&json!({"channel": "chat", "data": {"n": n}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            if n % pause_every == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    })
}

/// What a client saw: (offset, n) per message, in arrival order.
fn entry(message: &Value) -> (u64, u64) {
    (
        message["offset"].as_u64().expect("offset"),
        message["data"]["n"].as_u64().expect("n"),
    )
}

fn expected(total: u64) -> Vec<(u64, u64)> {
    (1..=total).map(|n| (n, n)).collect()
}

async fn ws_collect(ws: &mut WsClient, seen: &mut Vec<(u64, u64)>, until: usize) -> String {
    let mut cursor = String::new();
    while seen.len() < until {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message", "{frame}");
        seen.push(entry(&frame));
        cursor = format!(
            "chat@{}:{}",
            frame["epoch"].as_str().unwrap(),
            frame["offset"]
        );
    }
    cursor
}

async fn sse_collect(sse: &mut SseClient, seen: &mut Vec<(u64, u64)>, until: usize) -> String {
    let mut id = String::new();
    while seen.len() < until {
        let event = sse.next_message().await;
        seen.push(entry(&event.json()));
        id = event.id.expect("id");
    }
    id
}

/// Polls `path_of(i)` (the i-th request) from `cursor` until `total` messages arrived.
async fn poll_collect(
    path_of: impl Fn(usize, &str) -> String,
    mut cursor: String,
    total: usize,
) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    let mut request = 0;
    while seen.len() < total {
        assert!(
            started.elapsed() < DEADLINE * 3,
            "polling took too long: {seen:?}"
        );
        let response = http()
            .get(path_of(request, &cursor))
            .send()
            .await
            .expect("poll");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("poll body");
        assert!(body.get("gaps").is_none(), "unexpected gap: {body}");
        seen.extend(body["messages"].as_array().unwrap().iter().map(entry));
        cursor = body["cursor"].as_str().unwrap().to_owned();
        request += 1;
        if body["messages"].as_array().unwrap().is_empty() {
            // Short polls answer at once; pace them like a client would.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_one_sequence_on_every_transport() {
    let nodes = nodes(3, &redis_url(), &unique_prefix("three"));
    let mut ws = nodes[1].ws().await;
    let subscribed = ws.subscribe(&["chat"], None).await;
    let start = subscribed["cursor"].as_str().unwrap().to_owned();
    let mut sse = nodes[2].sse(&format!("cursor={start}"), None).await;
    assert_eq!(sse.next().await.unwrap().event, "open");

    let total = 100;
    for n in 1..=total {
        let (_, offset) = publish(&nodes[0], "chat", n).await.expect("publish");
        assert_eq!(offset, n);
    }

    let mut over_ws = Vec::new();
    ws_collect(&mut ws, &mut over_ws, total as usize).await;
    let mut over_sse = Vec::new();
    sse_collect(&mut sse, &mut over_sse, total as usize).await;
    let long = poll_collect(
        |_, c| nodes[1].url(&format!("/longpoll?cursor={c}&timeout=1")),
        start.clone(),
        total as usize,
    )
    .await;
    let short = poll_collect(
        |_, c| nodes[2].url(&format!("/poll?cursor={c}")),
        start,
        total as usize,
    )
    .await;
    for (name, seen) in [
        ("websocket", over_ws),
        ("sse", over_sse),
        ("longpoll", long),
        ("poll", short),
    ] {
        assert_eq!(seen, expected(total), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_round_robin_across_nodes_needs_no_sticky_sessions() {
    let nodes = nodes(3, &redis_url(), &unique_prefix("roundrobin"));
    let (status, body) = {
        let response = http()
            .get(nodes[0].url("/poll?channels=chat"))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    let start = body["cursor"].as_str().unwrap().to_owned();
    let total = 120u64;
    let publisher = spawn_publisher(&nodes[0], total, 10);
    let long = poll_collect(
        |i, c| nodes[i % 3].url(&format!("/longpoll?cursor={c}&timeout=1")),
        start.clone(),
        total as usize,
    );
    let short = poll_collect(
        |i, c| nodes[(i + 1) % 3].url(&format!("/poll?cursor={c}")),
        start,
        total as usize,
    );
    let (long, short) = tokio::join!(long, short);
    publisher.await.unwrap();
    assert_eq!(long, expected(total), "longpoll");
    assert_eq!(short, expected(total), "poll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_another_without_loss() {
    let mut nodes = nodes(3, &redis_url(), &unique_prefix("kill"));
    let mut ws = nodes[1].ws().await;
    let start = ws.subscribe(&["chat"], None).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sse = nodes[1].sse(&format!("cursor={start}"), None).await;
    assert_eq!(sse.next().await.unwrap().event, "open");

    let total = 200u64;
    let publisher = spawn_publisher(&nodes[0], total, 1);

    let mut over_ws = Vec::new();
    let ws_cursor = ws_collect(&mut ws, &mut over_ws, 40).await;
    let mut over_sse = Vec::new();
    let sse_id = sse_collect(&mut sse, &mut over_sse, 40).await;
    nodes[1].kill();
    drop((ws, sse));

    let mut ws = nodes[2].ws().await;
    ws.subscribe(&["chat"], Some(&ws_cursor)).await;
    let mut sse = nodes[2].sse("channels=chat", Some(&sse_id)).await;
    assert_eq!(sse.next().await.unwrap().event, "open");
    ws_collect(&mut ws, &mut over_ws, total as usize).await;
    sse_collect(&mut sse, &mut over_sse, total as usize).await;
    publisher.await.unwrap();
    assert_eq!(over_ws, expected(total), "websocket");
    assert_eq!(over_sse, expected(total), "sse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_fails_publishes_cleanly_and_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start();
    let nodes = nodes(2, &redis.url(), &unique_prefix("restart"));
    let mut sse = nodes[1].sse("channels=chat", None).await;
    let open = sse.next().await.unwrap();
    assert_eq!(open.event, "open");

    let mut acknowledged = Vec::new();
    for n in 1..=30 {
        acknowledged.push(publish(&nodes[0], "chat", n).await.expect("publish").1);
    }
    redis.stop();
    let refused = publish(&nodes[0], "chat", 999).await;
    assert_eq!(refused, Err("engine_unavailable".to_owned()));
    eventually("readyz reports the engine down", || async {
        http()
            .get(nodes[0].url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;

    redis.restart();
    for node in &nodes {
        eventually("readyz after redis is back", || async {
            http()
                .get(node.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    // A publish may still meet the connection Redis dropped; a client retries those.
    let mut n = 31;
    let started = std::time::Instant::now();
    while n <= 60 {
        assert!(started.elapsed() < DEADLINE, "publishes did not resume");
        if let Ok((_, offset)) = publish(&nodes[0], "chat", n).await {
            acknowledged.push(offset);
            n += 1;
        }
    }
    assert_eq!(
        acknowledged,
        (1..=60).collect::<Vec<u64>>(),
        "offsets continue"
    );

    let mut seen = Vec::new();
    sse_collect(&mut sse, &mut seen, 60).await;
    assert_eq!(seen, expected(60));
    let (_, ready) = {
        let r = http().get(nodes[1].url("/healthz")).send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(ready["engine"], "redis");
}

/// A message whose pub/sub announcement never arrived leaves a hole; the next live
/// message reveals it, and the WebSocket subscriber gets the missing one from Redis's
/// history first. The history read takes several polls of the connection's task, so this
/// also checks that the loop keeps the read alive across wake-ups.
#[tokio::test]
async fn a_lost_announcement_is_filled_from_history_over_websocket() {
    let url = redis_url();
    let prefix = unique_prefix("hole");
    let node = nodes(1, &url, &prefix).remove(0);
    let mut ws = node.ws().await;
    let reply = ws.subscribe(&["hole"], None).await;
    let cursor = reply["cursor"].as_str().expect("cursor").to_owned();
    let epoch = cursor
        .split_once('@')
        .unwrap()
        .1
        .split_once(':')
        .unwrap()
        .0
        .to_owned();
    assert_eq!(publish(&node, "hole", 1).await.unwrap().1, 1);
    assert_eq!(ws.recv().await["offset"], 1);

    // Offset 2 as the publish script would write it, minus its PUBLISH.
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let meta = format!("{prefix}:{{hole}}:meta");
    let log = format!("{prefix}:{{hole}}:log");
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let head: u64 = redis::cmd("HINCRBY")
        .arg(&meta)
        .arg("head")
        .arg(1)
        .query_async(&mut redis)
        .await
        .expect("HINCRBY");
    assert_eq!(head, 2);
    let json =
        format!(r#"{{"channel":"hole","epoch":"{epoch}","offset":2,"ts":{ts},"data":{{"n":2}}}}"#);
    let _: u64 = redis::cmd("RPUSH")
        .arg(&log)
        .arg(json)
        .query_async(&mut redis)
        .await
        .expect("RPUSH");

    assert_eq!(publish(&node, "hole", 3).await.unwrap().1, 3);
    for offset in [2, 3] {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message", "{frame}");
        assert_eq!(frame["offset"], offset, "{frame}");
        assert_eq!(frame["data"]["n"], offset, "{frame}");
    }
}
