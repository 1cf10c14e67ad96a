mod support;

use std::time::Duration;

use cascade::config::{Config, Transport};
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

/// Payload size of each load message: big enough to fill socket buffers quickly.
const PAD_BYTES: usize = 16 * 1024;
/// Messages published between two reads of the healthy client; well below the queue.
const WINDOW: u64 = 8;
/// Per-subscriber queue in these tests.
const QUEUE: usize = 16;
/// Bounds of every load loop: at most this many messages (16 MiB of payload)...
const MAX_MESSAGES: u64 = 1024;
/// ...and at most this long.
const MAX_LOAD_TIME: Duration = Duration::from_secs(20);
/// How much the process may grow over one test, in KiB.
const MAX_RSS_GROWTH_KIB: u64 = 200 * 1024;

fn config() -> Config {
    let mut config = test_config();
    config.limits.subscriber_queue = QUEUE;
    // A stalled raw client never answers pings; it must be cut for being slow, not silent.
    config.websocket.ping_interval_ms = 60_000;
    config
}

/// Publishes padded messages over one keep-alive HTTP connection.
struct Load {
    client: reqwest::Client,
    url: String,
    pad: String,
    published: u64,
}

impl Load {
    fn new(server: &TestServer) -> Self {
        Load {
            client: http(),
            url: server.url("/publish"),
            pad: "x".repeat(PAD_BYTES),
            published: 0,
        }
    }

    /// Publishes the next `{"n": n, "pad": ".."}` to `channel`; n is its offset.
    async fn publish(&mut self, channel: &str) -> u64 {
        self.published += 1;
        let n = self.published;
        let response = self
            .client
            .post(&self.url)
            .json(&json!({"channel": channel, "data": {"n": n, "pad": self.pad}}))
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 200, "publish {n}");
        let body: Value = response.json().await.expect("publish body");
        assert_eq!(body["offset"], n, "single publisher, consecutive offsets");
        n
    }
}

/// The resident set size of this test process (server included), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn slow_consumers(server: &TestServer, transport: Transport) -> u64 {
    server.app.metrics.transport(transport).slow_consumers.get()
}

async fn wait_for_connections(server: &TestServer, transport: &str, count: f64) {
    let series = format!("cascade_connections{{transport=\"{transport}\"}}");
    eventually(&format!("{series} == {count}"), || async {
        server.metric(&series).await == count
    })
    .await;
}

/// A WebSocket subscriber on `chat` that never reads: a raw socket with a tiny receive
/// buffer, so that the server's writes to it stall after a few messages.
async fn stalled_websocket(server: &TestServer) -> raw_ws::RawWs {
    let mut raw = raw_ws::connect(server.addr, Some(4096)).await;
    raw.send_text(r#"{"op":"subscribe","channels":["chat"]}"#)
        .await;
    let reply = raw.recv_json().await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    raw
}

/// Reads what a cut-off raw client was sent, up to the end of the connection: messages
/// in order from offset 1, then at most a close frame 4008 `slow_consumer`. Returns how
/// many messages it got.
async fn drain_cut_websocket(raw: &mut raw_ws::RawWs) -> u64 {
    let mut got = 0;
    let mut closed = false;
    loop {
        match within(raw.read_frame()).await {
            Some((raw_ws::TEXT, payload)) => {
                assert!(!closed, "data after the close frame");
                let frame: Value = serde_json::from_slice(&payload).expect("json");
                assert_eq!(frame["op"], "message", "{frame}");
                assert_eq!(frame["offset"], got + 1, "a slow client still gets order");
                got += 1;
            }
            Some((raw_ws::CLOSE, payload)) => {
                assert!(payload.len() >= 2, "close frame with a code");
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                assert_eq!((code, reason.as_str()), (4008, "slow_consumer"));
                closed = true;
            }
            Some((opcode, _)) => panic!("unexpected frame {opcode:#x}"),
            None => return got,
        }
    }
}

/// Publishes in windows of [`WINDOW`] to `chat`, checking after each window that
/// `healthy` got exactly those messages, until `done` holds (bounded in count and time).
async fn load_until<H, F>(load: &mut Load, healthy: &mut H, mut done: F) -> u64
where
    H: HealthyReader,
    F: FnMut() -> bool,
{
    let start = Instant::now();
    while !done() {
        assert!(
            load.published < MAX_MESSAGES && start.elapsed() < MAX_LOAD_TIME,
            "no cut-off after {} messages in {:?}",
            load.published,
            start.elapsed()
        );
        publish_window(load, healthy).await;
    }
    load.published
}

async fn publish_window(load: &mut Load, healthy: &mut impl HealthyReader) {
    let first = load.published + 1;
    for _ in 0..WINDOW {
        load.publish("chat").await;
    }
    for expected in first..=load.published {
        let message = healthy.next_message().await;
        assert_eq!(message["offset"], expected, "healthy client order");
        assert_eq!(message["data"]["n"], expected);
    }
}

/// A client that keeps up; yields message objects.
trait HealthyReader {
    async fn next_message(&mut self) -> Value;
}

impl HealthyReader for WsClient {
    async fn next_message(&mut self) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["op"], "message", "{frame}");
        frame
    }
}

impl HealthyReader for SseClient {
    async fn next_message(&mut self) -> Value {
        let event = self.next().await.expect("healthy sse stream ended");
        assert_eq!(event.event, "message", "{event:?}");
        event.json()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stops_reading_is_cut_off_alone() {
    let server = TestServer::start(config()).await;
    let rss_before = rss_kib();
    let mut slow = stalled_websocket(&server).await;
    let mut healthy = WsClient::connect(&server).await;
    healthy.subscribe(&["chat"], None).await;
    wait_for_connections(&server, "websocket", 2.0).await;

    let mut load = Load::new(&server);
    let published = load_until(&mut load, &mut healthy, || {
        slow_consumers(&server, Transport::Websocket) > 0
    })
    .await;
    // The healthy client goes on receiving after the cut.
    for _ in 0..3 {
        publish_window(&mut load, &mut healthy).await;
    }

    assert_eq!(
        server
            .metric(r#"cascade_slow_consumers_total{transport="websocket"}"#)
            .await,
        1.0
    );
    wait_for_connections(&server, "websocket", 1.0).await;
    let got = drain_cut_websocket(&mut slow).await;
    assert!(
        got < published,
        "the stalled client got {got} of {published} messages, yet was cut"
    );
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(growth < MAX_RSS_GROWTH_KIB, "RSS grew by {growth} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_reader_that_stops_reading_is_cut_off_alone() {
    let server = TestServer::start(config()).await;
    let rss_before = rss_kib();
    // Headers arrive once the subscription exists; the body is then never read.
    let slow = reqwest::Client::new()
        .get(server.url("/sse?channels=chat"))
        .send()
        .await
        .expect("sse connect");
    assert_eq!(slow.status(), 200);
    let mut healthy = SseClient::connect(&server, "channels=chat", None).await;
    assert_eq!(healthy.next().await.expect("open").event, "open");
    wait_for_connections(&server, "sse", 2.0).await;

    let mut load = Load::new(&server);
    let published = load_until(&mut load, &mut healthy, || {
        slow_consumers(&server, Transport::Sse) > 0
    })
    .await;
    for _ in 0..3 {
        publish_window(&mut load, &mut healthy).await;
    }

    assert_eq!(
        server
            .metric(r#"cascade_slow_consumers_total{transport="sse"}"#)
            .await,
        1.0
    );
    wait_for_connections(&server, "sse", 1.0).await;

    // What the stalled reader was sent is in order, and then its stream ends.
    let mut body = slow.bytes_stream();
    let mut text = Vec::new();
    while let Some(Ok(chunk)) = within(body.next()).await {
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&text);
    let mut got = 0;
    for event in text.split("\n\n").filter(|e| e.ends_with('}')) {
        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        let json: Value = serde_json::from_str(data).expect("event data");
        if json.get("offset").is_some() {
            assert_eq!(json["offset"], got + 1, "a slow reader still gets order");
            got += 1;
        }
    }
    assert!(
        got < published,
        "the stalled reader got {got} of {published} messages, yet was cut"
    );
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(growth < MAX_RSS_GROWTH_KIB, "RSS grew by {growth} KiB");
}

/// Several stalled clients of both kinds at once are all cut off, while one healthy
/// client of each kind keeps every message; the gateway gives back their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stalled_clients_are_all_cut_off_and_memory_stays_bounded() {
    let server = TestServer::start(config()).await;
    let rss_before = rss_kib();
    let mut stalled_ws = Vec::new();
    for _ in 0..4 {
        stalled_ws.push(stalled_websocket(&server).await);
    }
    let mut stalled_sse = Vec::new();
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .get(server.url("/sse?channels=chat"))
            .send()
            .await
            .expect("sse connect");
        assert_eq!(response.status(), 200);
        stalled_sse.push(response);
    }
    let mut healthy_ws = WsClient::connect(&server).await;
    healthy_ws.subscribe(&["chat"], None).await;
    let mut healthy_sse = SseClient::connect(&server, "channels=chat", None).await;
    assert_eq!(healthy_sse.next().await.expect("open").event, "open");
    wait_for_connections(&server, "websocket", 5.0).await;
    wait_for_connections(&server, "sse", 3.0).await;

    let mut load = Load::new(&server);
    let start = Instant::now();
    while slow_consumers(&server, Transport::Websocket) < 4
        || slow_consumers(&server, Transport::Sse) < 2
    {
        assert!(
            load.published < MAX_MESSAGES && start.elapsed() < MAX_LOAD_TIME,
            "not all stalled clients were cut off after {} messages",
            load.published
        );
        let first = load.published + 1;
        publish_window(&mut load, &mut healthy_ws).await;
        for expected in first..=load.published {
            assert_eq!(
                HealthyReader::next_message(&mut healthy_sse).await["offset"],
                expected
            );
        }
    }

    let metrics = server.metrics().await;
    for (transport, cut) in [("websocket", 4.0), ("sse", 2.0)] {
        let series = format!("cascade_slow_consumers_total{{transport=\"{transport}\"}}");
        assert_eq!(metric_value(&metrics, &series), cut, "{series}");
    }
    wait_for_connections(&server, "websocket", 1.0).await;
    wait_for_connections(&server, "sse", 1.0).await;
    for raw in &mut stalled_ws {
        drain_cut_websocket(raw).await;
    }
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(growth < MAX_RSS_GROWTH_KIB, "RSS grew by {growth} KiB");
}

/// The resident set size, and its peak, of process `pid`, in KiB.
fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect(name)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Pings as fast as the socket takes them, 125 bytes each, never reading: one pong owed
/// per ping. Stops when the server closes the connection, after `max` pings, or at the
/// load deadline; returns how many pings were written.
async fn ping_flood(mut raw: support::raw_ws::RawWs, max: u64) -> u64 {
    use tokio::io::AsyncWriteExt;
    // Many pings per write: the flood is bounded by the server, not by system calls.
    const BATCH: usize = 64;
    let mut batch = Vec::with_capacity(BATCH * 131);
    for _ in 0..BATCH {
        batch.extend_from_slice(&[0x80 | support::raw_ws::PING, 0x80 | 125, 0, 0, 0, 0]);
        batch.extend_from_slice(&[b'p'; 125]);
    }
    let start = Instant::now();
    let mut sent = 0;
    while sent < max && start.elapsed() < MAX_LOAD_TIME {
        let write = tokio::time::timeout(Duration::from_secs(1), raw.stream.write_all(&batch));
        match write.await {
            Ok(Ok(())) => sent += BATCH as u64,
            // The server closed (reset) the connection.
            Ok(Err(_)) => break,
            // The server stopped reading: go on trying until it closes or the deadline.
            Err(_) => {}
        }
    }
    sent
}

/// A client that pings without ever reading its socket makes the gateway owe it a pong
/// per ping. They are bounded: the gateway cuts such a client off as a slow consumer and
/// its memory stays flat (a probe once grew it by 270 MB per connection in two seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_flooding_pings_without_reading_are_cut_off_and_memory_stays_flat() {
    const CLIENTS: usize = 4;
    const MAX_PINGS: u64 = 2_000_000;
    const MAX_GROWTH_KIB: u64 = 4 * 1024;
    let node = support::nodes::Node::spawn(&[("CASCADE_WEBSOCKET_PING_INTERVAL_MS", "60000")]);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(support::raw_ws::connect(node.addr, Some(4096)).await);
    }
    let (before, peak_before) = rss_of(node.pid());
    let floods: Vec<_> = clients
        .into_iter()
        .map(|raw| tokio::spawn(ping_flood(raw, MAX_PINGS)))
        .collect();
    for flood in floods {
        let sent = flood.await.expect("flood task");
        assert!(
            sent < MAX_PINGS,
            "cut off before the flood's end ({sent} pings)"
        );
    }
    let (after, peak) = rss_of(node.pid());
    eprintln!("gateway RSS {before} KiB -> {after} KiB, peak {peak_before} -> {peak} KiB");
    assert!(
        peak.saturating_sub(before.max(peak_before)) < MAX_GROWTH_KIB,
        "the gateway grew from {before} KiB to a peak of {peak} KiB"
    );
    // A flooder sees its connection reset a moment before the gateway's task for it ends
    // and counts it.
    let series = r#"cascade_slow_consumers_total{transport="websocket"}"#;
    eventually("each flooder counted as a slow consumer", || async {
        metric_value(&get_text(&node.url("/metrics")).await, series) == CLIENTS as f64
    })
    .await;
}
