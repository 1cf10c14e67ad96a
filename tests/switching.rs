mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::task::JoinHandle;

/// Publishes `per_channel` messages to each channel, round robin, paced so that the
/// stream is still running while clients switch transports.
fn spawn_publisher(server: &TestServer, channels: &[&str], per_channel: u64) -> JoinHandle<()> {
    let (client, base) = (http(), server.url(""));
    let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    tokio::spawn(async move {
        for n in 1..=per_channel {
            for channel in &channels {
                assert_eq!(post(&client, &base, channel, n).await.1, n);
            }
            // Pacing, not waiting: the stream should outlast several transport hops.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// What a switching client holds: per channel, in subscription order, the epoch and the
/// offsets received. Every message must be the next offset of its channel.
struct Held {
    channels: Vec<(String, String, Vec<u64>)>,
}

impl Held {
    /// Starts from a cursor that gives every channel a position.
    fn from_cursor(cursor: &str) -> Self {
        let channels = cursor
            .split(',')
            .map(|entry| {
                let (channel, position) = entry.split_once('@').expect("entry with position");
                let (epoch, offset) = position.split_once(':').expect("epoch:offset");
                assert_eq!(offset, "0", "clients start before the first message");
                (channel.to_owned(), epoch.to_owned(), Vec::new())
            })
            .collect();
        Held { channels }
    }

    fn names(&self) -> Vec<&str> {
        self.channels.iter().map(|(c, _, _)| c.as_str()).collect()
    }

    fn total(&self) -> usize {
        self.channels.iter().map(|(_, _, o)| o.len()).sum()
    }

    /// The resume cursor built from the last message received on each channel.
    fn cursor(&self) -> String {
        self.channels
            .iter()
            .map(|(c, e, o)| format!("{c}@{e}:{}", o.last().copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Takes one message object (`channel`, `epoch`, `offset`, `data`), failing on any
    /// loss, duplicate or reordering.
    fn take(&mut self, message: &Value, via: &str) {
        let channel = message["channel"].as_str().expect("channel");
        let (_, epoch, offsets) = self
            .channels
            .iter_mut()
            .find(|(c, _, _)| c == channel)
            .unwrap_or_else(|| panic!("{via}: message on unrequested channel {channel}"));
        let offset = message["offset"].as_u64().expect("offset");
        let expected = offsets.last().copied().unwrap_or(0) + 1;
        assert_eq!(
            offset, expected,
            "{via}: {channel} offset {offset} where {expected} was next (loss or duplicate)"
        );
        assert_eq!(message["epoch"], epoch.as_str(), "{via}: epoch changed");
        assert_eq!(message["data"], json!({"n": offset}), "{via}: payload");
        offsets.push(offset);
    }
}

/// Reads `count` messages over a new WebSocket that resumes from the held cursor.
async fn ws_hop(server: &TestServer, held: &mut Held, count: usize) {
    let cursor = held.cursor();
    let mut ws = WsClient::connect(server).await;
    let reply = ws.subscribe(&held.names(), Some(&cursor)).await;
    assert_eq!(reply["cursor"], cursor.as_str(), "ws starts at the cursor");
    for _ in 0..count {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message", "ws: {frame}");
        held.take(&frame, "ws");
    }
    within(ws.ws.close(None)).await.expect("ws close");
}

/// Reads `count` messages over a new SSE stream that resumes from the held cursor; every
/// event id must be the cursor after that event.
async fn sse_hop(server: &TestServer, held: &mut Held, count: usize) {
    let cursor = held.cursor();
    let query = format!("channels={}&cursor={cursor}", held.names().join(","));
    let mut sse = SseClient::connect(server, &query, None).await;
    assert_eq!(sse.status, 200);
    let open = sse.next().await.expect("open event");
    assert_eq!(open.event, "open");
    assert_eq!(
        open.id.as_deref(),
        Some(cursor.as_str()),
        "sse starts at the cursor"
    );
    let mut read = 0;
    while read < count {
        let event = sse.next().await.expect("sse stream ended");
        assert_eq!(event.event, "message", "sse: {event:?}");
        held.take(&event.json(), "sse");
        assert_eq!(event.id, Some(held.cursor()), "sse id is the resume cursor");
        read += 1;
    }
}

/// Polls `route` (`longpoll` or `poll`) from the held cursor until at least `count`
/// messages arrived; the answered cursor must match the messages.
async fn poll_hop(server: &TestServer, held: &mut Held, route: &str, count: usize) {
    let client = http();
    let start = tokio::time::Instant::now();
    let mut read = 0;
    while read < count {
        assert!(start.elapsed() < DEADLINE, "{route}: too slow");
        let url = server.url(&format!(
            "/{route}?channels={}&cursor={}&timeout=2",
            held.names().join(","),
            held.cursor()
        ));
        let response = client.get(url).send().await.expect(route);
        assert_eq!(response.status(), 200, "{route}");
        let body: Value = response.json().await.expect("poll body");
        assert!(body.get("gaps").is_none(), "{route}: {body}");
        let messages = body["messages"].as_array().expect("messages");
        for message in messages {
            held.take(message, route);
        }
        read += messages.len();
        assert_eq!(body["cursor"], held.cursor().as_str(), "{route} cursor");
        if messages.is_empty() && route == "poll" {
            // The short-poll client's interval.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Long-polls from `cursor` until `total` messages arrived; returns them.
async fn collect_polls(server: &TestServer, route: &str, cursor: &str, total: usize) -> Vec<Value> {
    let mut held = Held::from_cursor(cursor);
    let client = http();
    let mut messages = Vec::new();
    let start = tokio::time::Instant::now();
    while messages.len() < total {
        assert!(start.elapsed() < DEADLINE, "{route}: too slow");
        let url = server.url(&format!("/{route}?cursor={}&timeout=2", held.cursor()));
        let body: Value = client
            .get(url)
            .send()
            .await
            .expect(route)
            .json()
            .await
            .expect("poll body");
        let batch = body["messages"].as_array().expect("messages").clone();
        for message in &batch {
            held.take(message, route);
        }
        if batch.is_empty() && route == "poll" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        messages.extend(batch);
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_delivers_the_same_sequence() {
    // The WebSocket is read only after all the publishes: on a loaded machine those can
    // outlast the tests' 500 ms ping cycle, whose unanswered ping would end it.
    let mut config = support::test_config();
    config.websocket.ping_interval_ms = 30_000;
    let server = TestServer::start(config).await;
    let total = 40usize;
    let mut ws = WsClient::connect(&server).await;
    let reply = ws.subscribe(&["chat"], None).await;
    let start = reply["cursor"].as_str().unwrap().to_owned();
    let mut sse = SseClient::connect(&server, "channels=chat", None).await;
    let open = sse.next().await.expect("open");
    assert_eq!(open.id.as_deref(), Some(start.as_str()));
    let (_, tail) = server.get_json("/poll?channels=chat").await;
    assert_eq!(tail["cursor"], start.as_str());

    let server = std::sync::Arc::new(server);
    let longpoll = tokio::spawn({
        let (server, start) = (server.clone(), start.clone());
        async move { collect_polls(&server, "longpoll", &start, total).await }
    });
    let poll = tokio::spawn({
        let (server, start) = (server.clone(), start.clone());
        async move { collect_polls(&server, "poll", &start, total).await }
    });
    let client = http();
    for n in 1..=total as u64 {
        post(&client, &server.url(""), "chat", n).await;
    }

    let mut held = Held::from_cursor(&start);
    let mut via_ws = Vec::new();
    for _ in 0..total {
        let mut frame = ws.recv().await;
        assert_eq!(frame["op"], "message");
        held.take(&frame, "ws");
        frame.as_object_mut().unwrap().remove("op");
        via_ws.push(frame);
    }
    let mut via_sse = Vec::new();
    for _ in 0..total {
        via_sse.push(sse.next_message().await.json());
    }
    let via_longpoll = within(longpoll).await.expect("longpoll task");
    let via_poll = within(poll).await.expect("poll task");

    // The very same message objects, timestamps included, on every transport.
    assert_eq!(via_sse, via_ws, "sse vs websocket");
    assert_eq!(via_longpoll, via_ws, "longpoll vs websocket");
    assert_eq!(via_poll, via_ws, "poll vs websocket");
    for transport in ["websocket", "sse", "longpoll", "poll"] {
        let delivered = server
            .metric(&format!(
                "cascade_messages_delivered_total{{transport=\"{transport}\"}}"
            ))
            .await;
        assert_eq!(delivered, total as f64, "{transport} delivered");
    }
}

/// websocket -> sse -> longpoll -> poll -> websocket -> ... while a publisher keeps
/// publishing; the client carries the cursor of the last message it got across every
/// hop and ends up with the published sequence exactly.
async fn switch_mid_stream(channels: &[&str], per_channel: u64, per_hop: usize) {
    let server = TestServer::default().await;
    let total = per_channel as usize * channels.len();

    // The first hop subscribes from now on, before anything is published.
    let mut ws = WsClient::connect(&server).await;
    let reply = ws.subscribe(channels, None).await;
    let mut held = Held::from_cursor(reply["cursor"].as_str().unwrap());
    let publisher = spawn_publisher(&server, channels, per_channel);
    for _ in 0..per_hop {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message", "ws: {frame}");
        held.take(&frame, "ws");
    }
    within(ws.ws.close(None)).await.expect("ws close");
    drop(ws);

    let hops = ["sse", "longpoll", "poll", "websocket"];
    let mut hop = 0;
    while held.total() < total {
        let count = per_hop.min(total - held.total());
        match hops[hop % hops.len()] {
            "sse" => sse_hop(&server, &mut held, count).await,
            "longpoll" => poll_hop(&server, &mut held, "longpoll", count).await,
            "poll" => poll_hop(&server, &mut held, "poll", count).await,
            _ => ws_hop(&server, &mut held, count).await,
        }
        hop += 1;
    }
    within(publisher).await.expect("publisher");
    assert!(
        hop >= 4,
        "the client went through every transport ({hop} hops)"
    );

    for (channel, _, offsets) in &held.channels {
        assert_eq!(
            *offsets,
            (1..=per_channel).collect::<Vec<u64>>(),
            "{channel} holds exactly the published sequence"
        );
    }
    // And nothing is left over after the last one.
    let (_, rest) = server
        .get_json(&format!("/poll?cursor={}", held.cursor()))
        .await;
    assert_eq!(rest["messages"], json!([]), "{rest}");
    assert_eq!(rest["cursor"], held.cursor().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_transports_mid_stream_loses_and_repeats_nothing() {
    switch_mid_stream(&["chat"], 200, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_transports_with_two_channels() {
    switch_mid_stream(&["left", "right"], 100, 20).await;
}

/// A cursor built from any message, on any transport, resumes exactly on every other one,
/// also when the resumed stream starts with retained history rather than live messages.
#[tokio::test]
async fn a_cursor_from_any_transport_resumes_on_every_other() {
    let server = TestServer::default().await;
    let client = http();
    let mut epoch = String::new();
    for n in 1..=30 {
        epoch = post(&client, &server.url(""), "chat", n).await.0;
    }
    // Each hop resumes from the held cursor, reads three retained messages and hands on;
    // SSE ids and poll cursors must track the replayed messages one by one.
    let mut held = Held::from_cursor(&format!("chat@{epoch}:0"));
    held.channels[0].2.extend(1..=3);
    sse_hop(&server, &mut held, 3).await;
    ws_hop(&server, &mut held, 3).await;
    sse_hop(&server, &mut held, 3).await;
    ws_hop(&server, &mut held, 3).await;
    // Polling answers everything retained after the cursor at once.
    poll_hop(&server, &mut held, "longpoll", 1).await;
    assert_eq!(held.total(), 30);
    for n in 31..=40 {
        post(&client, &server.url(""), "chat", n).await;
    }
    sse_hop(&server, &mut held, 3).await;
    poll_hop(&server, &mut held, "poll", 1).await;
    assert_eq!(held.channels[0].2, (1..=40).collect::<Vec<u64>>());
}
