//! The fan-out backlog over real sockets: an HTTP publish's answer waits while the node's
//! queued deliveries are over `limits.publish_backlog`, briefly when nobody takes them,
//! and the count goes back to zero whichever way the deliveries leave.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

/// Each message's padding: big enough to fill a stalled reader's socket in a few.
const PAD_BYTES: usize = 16 * 1024;

/// Bounds of the publishing loops.
const MAX_MESSAGES: u64 = 400;
const MAX_LOAD_TIME: Duration = Duration::from_secs(20);

/// Publishes `{"n": n, "pad": ..}` to `chat` over one keep-alive connection; returns how
/// long the answer took.
async fn publish(client: &reqwest::Client, server: &TestServer, n: u64, pad: &str) -> Duration {
    let sent = Instant::now();
    let response = client
        .post(server.url("/publish"))
        .json(&json!({"channel": "chat", "data": {"n": n, "pad": pad}}))
        .send()
        .await
        .expect("publish request");
    assert_eq!(response.status(), 200, "publish {n}");
    let body: Value = response.json().await.expect("publish body");
    assert_eq!(body["offset"], n, "one publisher, consecutive offsets");
    sent.elapsed()
}

async fn backlog(server: &TestServer) -> f64 {
    server.metric("cascade_fanout_backlog").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_nobody_takes_holds_publishes_briefly_and_is_counted_back_when_they_go() {
    let mut config = test_config();
    config.limits.publish_backlog = 20;
    config.limits.subscriber_queue = 256;
    // The stalled clients never answer pings; they must stay for the test.
    config.websocket.ping_interval_ms = 60_000;
    let server = TestServer::start(config).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut raw = raw_ws::connect(server.addr, Some(4096)).await;
        raw.send_text(r#"{"op":"subscribe","channels":["chat"]}"#)
            .await;
        assert_eq!(raw.recv_json().await["op"], "subscribed");
        stalled.push(raw);
    }

    let client = http();
    let pad = "x".repeat(PAD_BYTES);
    let start = Instant::now();
    let mut n = 0;
    let mut slowest = Duration::ZERO;
    while server.metric("cascade_publish_waits_total").await == 0.0 {
        assert!(
            n < MAX_MESSAGES && start.elapsed() < MAX_LOAD_TIME,
            "no publish waited after {n} messages; backlog {}",
            backlog(&server).await
        );
        n += 1;
        slowest = slowest.max(publish(&client, &server, n, &pad).await);
    }
    // A few more over the limit: each waits only until the backlog is seen not to move.
    for _ in 0..5 {
        n += 1;
        slowest = slowest.max(publish(&client, &server, n, &pad).await);
    }
    assert!(backlog(&server).await > 20.0, "the stalled readers hold it");
    assert!(
        slowest < Duration::from_millis(500),
        "a backlog nobody takes held a publish {slowest:?}"
    );
    let waited = server.metric("cascade_publish_wait_seconds_total").await;
    assert!(waited > 0.0 && waited < 5.0, "waited {waited} s in all");

    // Their queues leave with them, and the count with the queues.
    drop(stalled);
    eventually("the backlog back to 0", || async {
        backlog(&server).await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_on_every_transport_get_everything_and_take_the_backlog_back_to_zero() {
    let mut config = test_config();
    config.limits.publish_backlog = 16;
    let server = TestServer::start(config).await;
    let mut websockets = Vec::new();
    for _ in 0..8 {
        let mut ws = WsClient::connect(&server).await;
        ws.subscribe(&["chat"], None).await;
        websockets.push(ws);
    }
    let mut sse = SseClient::connect(&server, "channels=chat", None).await;
    assert_eq!(sse.status, 200);
    eventually("9 streams open", || async {
        server
            .metric(r#"cascade_connections{transport="websocket"}"#)
            .await
            == 8.0
            && server
                .metric(r#"cascade_connections{transport="sse"}"#)
                .await
                == 1.0
    })
    .await;

    let messages = 300;
    let readers: Vec<_> = websockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for n in 1..=messages {
                    let frame = ws.recv().await;
                    assert_eq!(frame["op"], "message", "{frame}");
                    assert_eq!(frame["data"]["n"], n, "in order, none lost");
                }
            })
        })
        .collect();
    let sse_reader = tokio::spawn(async move {
        for n in 1..=messages {
            let event = sse.next_message().await;
            assert_eq!(event.json()["data"]["n"], n, "in order, none lost");
        }
    });
    // Long polls take from the queue of a subscription made per request.
    let (_, start_at) = server.get_json("/poll?channels=chat").await;
    let poller = {
        let url = server.url("/longpoll");
        let mut cursor = start_at["cursor"].as_str().expect("cursor").to_owned();
        tokio::spawn(async move {
            let client = http();
            let mut got = 0;
            let start = Instant::now();
            while got < messages && start.elapsed() < MAX_LOAD_TIME {
                let request = client.get(&url).query(&[("cursor", cursor.as_str())]);
                let body: Value = request.send().await.expect("poll").json().await.unwrap();
                for message in body["messages"].as_array().into_iter().flatten() {
                    got += 1;
                    assert_eq!(message["data"]["n"], got, "in order, none lost");
                }
                cursor = body["cursor"].as_str().unwrap_or_default().to_owned();
            }
            got
        })
    };

    let client = http();
    let start = Instant::now();
    for n in 1..=messages {
        assert!(start.elapsed() < MAX_LOAD_TIME, "publishing took too long");
        publish(&client, &server, n, "small").await;
    }
    for reader in readers {
        within(reader).await.expect("websocket reader");
    }
    within(sse_reader).await.expect("sse reader");
    assert_eq!(within(poller).await.expect("poller"), messages);
    eventually("the backlog back to 0", || async {
        backlog(&server).await == 0.0
    })
    .await;
}
