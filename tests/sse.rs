mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;

/// Connects and reads the `open` event, asserting its shape; returns the client and the
/// cursor the stream starts from.
async fn open(
    server: &TestServer,
    query: &str,
    last_event_id: Option<&str>,
) -> (SseClient, String) {
    let mut sse = SseClient::connect(server, query, last_event_id).await;
    assert_eq!(sse.status, 200, "GET /sse?{query}");
    let event = sse.next().await.expect("open event");
    assert_eq!(event.event, "open", "{event:?}");
    let id = event.id.clone().expect("open carries an id");
    assert_eq!(event.json(), json!({"cursor": id}), "{event:?}");
    (sse, id)
}

/// Reads `n` message events, returning (id, message json).
async fn read_messages(sse: &mut SseClient, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let event = sse.next_message().await;
        out.push((event.id.clone().expect("message id"), event.json()));
    }
    out
}

/// The epoch of `channel`'s entry in a cursor.
fn epoch_in(cursor: &str, channel: &str) -> String {
    let entry = cursor
        .split(',')
        .find_map(|e| e.strip_prefix(&format!("{channel}@")))
        .unwrap_or_else(|| panic!("no {channel} entry in {cursor}"));
    entry.split_once(':').expect("epoch:offset").0.to_owned()
}

/// Parses a cursor into `channel -> "epoch:offset"`.
fn positions(cursor: &str) -> BTreeMap<String, String> {
    cursor
        .split(',')
        .map(|entry| {
            let (channel, position) = entry.split_once('@').expect("entry with a position");
            (channel.to_owned(), position.to_owned())
        })
        .collect()
}

/// The resume invariant: every message's id is the cursor holding exactly what the stream
/// has delivered so far, starting from `start` (no more, or a resume would skip messages;
/// no less, or it would repeat them).
fn assert_ids_track_deliveries(start: &str, delivered: &[(String, Value)]) {
    let mut held = positions(start);
    for (id, message) in delivered {
        let channel = message["channel"].as_str().expect("channel");
        let position = format!(
            "{}:{}",
            message["epoch"].as_str().unwrap(),
            message["offset"]
        );
        held.insert(channel.to_owned(), position);
        assert_eq!(
            positions(id),
            held,
            "id {id} of {channel} offset {} must be the cursor after it",
            message["offset"]
        );
    }
}

#[tokio::test]
async fn messages_arrive_in_order_with_offsets_and_ids() {
    let server = TestServer::default().await;
    let (mut sse, start) = open(&server, "channels=ord", None).await;
    let epoch = epoch_in(&start, "ord");
    assert_eq!(start, format!("ord@{epoch}:0"));
    for i in 1..=10u64 {
        let (e, offset) = server.publish("ord", json!({"i": i})).await;
        assert_eq!((e.as_str(), offset), (epoch.as_str(), i));
    }
    let got = read_messages(&mut sse, 10).await;
    for (i, (id, message)) in got.iter().enumerate() {
        let offset = i as u64 + 1;
        assert_eq!(id, &format!("ord@{epoch}:{offset}"));
        assert_eq!(message["channel"], "ord");
        assert_eq!(message["epoch"], epoch.as_str());
        assert_eq!(message["offset"], offset);
        assert_eq!(message["data"], json!({"i": offset}));
    }
}

#[tokio::test]
async fn response_headers_disable_caching_and_buffering() {
    let server = TestServer::default().await;
    let sse = SseClient::connect(&server, "channels=hdr", None).await;
    assert_eq!(sse.status, 200);
    let header = |name: &str| {
        sse.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .expect("ascii header")
            .to_ascii_lowercase()
    };
    assert!(
        header("content-type").starts_with("text/event-stream"),
        "{}",
        header("content-type")
    );
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-accel-buffering"), "no");
    // The stream keeps its connection to itself, and closes it when it ends.
    assert_eq!(header("connection"), "close");
}

#[tokio::test]
async fn open_event_carries_retry_and_starting_cursor() {
    let server = TestServer::default().await;
    let (epoch, _) = server.publish("op", json!(1)).await;
    server.publish("op", json!(2)).await;

    // From now on: the cursor is the current head.
    let mut sse = SseClient::connect(&server, "channels=op", None).await;
    let event = sse.next().await.expect("open");
    assert_eq!(event.event, "open");
    assert_eq!(event.retry, Some(2000), "the configured sse.retry_ms");
    assert_eq!(event.id.as_deref(), Some(format!("op@{epoch}:2").as_str()));
    assert_eq!(event.json(), json!({"cursor": format!("op@{epoch}:2")}));

    // From a cursor: the open id is that cursor, and history follows it.
    let given = format!("op@{epoch}:1");
    let mut sse = SseClient::connect(&server, &format!("cursor={given}"), None).await;
    let event = sse.next().await.expect("open");
    assert_eq!(event.event, "open");
    assert!(event.retry.is_some(), "{event:?}");
    assert_eq!(event.id.as_deref(), Some(given.as_str()));
    let next = sse.next_message().await;
    assert_eq!(next.json()["offset"], 2);
    assert_eq!(next.id.as_deref(), Some(format!("op@{epoch}:2").as_str()));
}

#[tokio::test]
async fn last_event_id_resumes_exactly() {
    let server = TestServer::default().await;
    let (mut sse, start) = open(&server, "channels=lei", None).await;
    let epoch = epoch_in(&start, "lei");
    for i in 1..=5 {
        server.publish("lei", json!(i)).await;
    }
    let first = read_messages(&mut sse, 3).await;
    let last_id = first.last().unwrap().0.clone();
    assert_eq!(last_id, format!("lei@{epoch}:3"));
    drop(sse);

    for i in 6..=8 {
        server.publish("lei", json!(i)).await;
    }
    // The header wins over a stale `cursor=` in the query, as a browser reconnect sends.
    let (mut sse, resumed) = open(
        &server,
        &format!("channels=lei&cursor=lei@{epoch}:0"),
        Some(&last_id),
    )
    .await;
    assert_eq!(resumed, last_id);
    let rest = read_messages(&mut sse, 5).await;
    for (k, (id, message)) in rest.iter().enumerate() {
        let offset = 4 + k as u64;
        assert_eq!(message["offset"], offset, "{message}");
        assert_eq!(message["data"], json!(offset));
        assert_eq!(
            id,
            &format!("lei@{epoch}:{offset}"),
            "id of offset {offset}"
        );
    }
    // Nothing else was queued: the next message is the one published now.
    server.publish("lei", json!("sentinel")).await;
    let next = sse.next_message().await;
    assert_eq!(next.json()["data"], "sentinel");
    assert_eq!(next.json()["offset"], 9);
}

#[tokio::test]
async fn cursor_query_param_resumes() {
    let server = TestServer::default().await;
    let (epoch, _) = server.publish("cq", json!(1)).await;
    for i in 2..=4 {
        server.publish("cq", json!(i)).await;
    }
    let (mut sse, start) = open(&server, &format!("cursor=cq@{epoch}:2"), None).await;
    assert_eq!(start, format!("cq@{epoch}:2"));
    let got = read_messages(&mut sse, 2).await;
    assert_eq!(
        got.iter()
            .map(|(_, m)| m["offset"].clone())
            .collect::<Vec<_>>(),
        vec![json!(3), json!(4)]
    );
    assert_eq!(
        got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        vec![format!("cq@{epoch}:3"), format!("cq@{epoch}:4")]
    );
    server.publish("cq", json!(5)).await;
    let next = sse.next_message().await;
    assert_eq!(next.json()["offset"], 5);
    assert_eq!(next.id.as_deref(), Some(format!("cq@{epoch}:5").as_str()));
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive() {
    let server = TestServer::default().await;
    // Read raw bytes: heartbeats are comments, which an EventSource never surfaces.
    let response = reqwest::Client::new()
        .get(server.url("/sse?channels=hb"))
        .send()
        .await
        .expect("connect");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let begun = Instant::now();
    let mut text = String::new();
    within(async {
        while text.matches(": heartbeat\n\n").count() < 3 {
            let chunk = stream.next().await.expect("stream open").expect("chunk");
            text.push_str(std::str::from_utf8(&chunk).expect("utf8"));
        }
    })
    .await;
    // The configured interval is 200 ms; the third heartbeat cannot come before 600 ms.
    assert!(
        begun.elapsed() >= Duration::from_millis(400),
        "heartbeats too fast: {:?}",
        begun.elapsed()
    );
    assert!(text.starts_with("retry: "), "{text:?}");
    assert!(text.contains("event: open\n"), "{text:?}");
    assert!(
        !text.contains("data: {\"channel\""),
        "no messages: {text:?}"
    );

    // The same comments are counted, and skipped, by an EventSource-style parser.
    let (mut sse, _) = open(&server, "channels=hb", None).await;
    within(async {
        while sse.comments < 2 {
            // Heartbeats end no event, so `next` only returns on a real event; bound each
            // read instead (nothing but comments is in flight, so no event is cut in half).
            match tokio::time::timeout(Duration::from_millis(50), sse.next()).await {
                Err(_) => {}
                Ok(Some(event)) => panic!("unexpected event on an idle stream: {event:?}"),
                Ok(None) => panic!("stream ended"),
            }
        }
    })
    .await;
    server.publish("hb", json!("after")).await;
    let message = sse.next_message().await;
    assert_eq!(message.json()["data"], "after");
    assert!(sse.comments >= 2, "{} comments", sse.comments);
}

#[tokio::test]
async fn expired_cursor_gets_gap_event() {
    let mut config = test_config();
    config.history.max_messages = 3;
    let server = TestServer::start(config).await;
    let mut epoch = String::new();
    for i in 1..=10 {
        epoch = server.publish("gap", json!(i)).await.0;
    }
    for (query, what) in [
        (format!("cursor=gap@{epoch}:1"), "old offset"),
        ("cursor=gap@Wrong1:1".to_owned(), "wrong epoch"),
    ] {
        let mut sse = SseClient::connect(&server, &query, None).await;
        assert_eq!(sse.next().await.expect("open").event, "open", "{what}");
        let gap = sse.next().await.expect("gap event");
        assert_eq!(gap.event, "gap", "{what}: {gap:?}");
        assert_eq!(
            gap.json(),
            json!({"channel": "gap", "epoch": epoch, "first": 8}),
            "{what}"
        );
        assert_eq!(
            gap.id.as_deref(),
            Some(format!("gap@{epoch}:7").as_str()),
            "{what}: a gap's id resumes right before the first retained message"
        );
        let rest = read_messages(&mut sse, 3).await;
        for (k, (id, message)) in rest.iter().enumerate() {
            let offset = 8 + k as u64;
            assert_eq!(message["offset"], offset, "{what}");
            assert_eq!(id, &format!("gap@{epoch}:{offset}"), "{what}");
        }
    }
    assert_eq!(
        server
            .metric(r#"cascade_gaps_total{transport="sse"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn multi_channel_ids_are_full_cursors() {
    let server = TestServer::default().await;
    let (mut sse, start) = open(&server, "channels=ma,mb", None).await;
    let (ea, eb) = (epoch_in(&start, "ma"), epoch_in(&start, "mb"));
    assert_eq!(start, format!("ma@{ea}:0,mb@{eb}:0"));

    server.publish("ma", json!("a1")).await;
    server.publish("mb", json!("b1")).await;
    server.publish("ma", json!("a2")).await;
    server.publish("mb", json!("b2")).await;
    let got = read_messages(&mut sse, 4).await;
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            format!("ma@{ea}:1,mb@{eb}:0"),
            format!("ma@{ea}:1,mb@{eb}:1"),
            format!("ma@{ea}:2,mb@{eb}:1"),
            format!("ma@{ea}:2,mb@{eb}:2"),
        ]
    );
    drop(sse);

    // Resume from the second id: exactly a2 and b2 follow, then live messages.
    let (mut sse, resumed) = open(&server, "channels=ma,mb", Some(&got[1].0)).await;
    assert_eq!(resumed, got[1].0);
    let rest = read_messages(&mut sse, 2).await;
    let mut datas: Vec<Value> = rest.iter().map(|(_, m)| m["data"].clone()).collect();
    datas.sort_by_key(|d| d.to_string());
    assert_eq!(datas, vec![json!("a2"), json!("b2")]);
    assert_ids_track_deliveries(&resumed, &rest);
    server.publish("mb", json!("b3")).await;
    let (id, message) = read_messages(&mut sse, 1).await.remove(0);
    assert_eq!(message["data"], "b3");
    assert_eq!(id, format!("ma@{ea}:2,mb@{eb}:3"));

    // Ids also resume through `cursor=` alone (no channels= list).
    let (mut sse, resumed) = open(&server, &format!("cursor={}", got[0].0), None).await;
    assert_eq!(resumed, got[0].0);
    let rest = read_messages(&mut sse, 4).await;
    assert_ids_track_deliveries(&resumed, &rest);
    assert_eq!(rest.last().unwrap().0, format!("ma@{ea}:2,mb@{eb}:3"));
}

/// Events written while the client does not read (the server's writes stall and resume
/// part-way through a chunk) arrive whole and in order once it reads again.
#[tokio::test]
async fn a_stalled_reader_gets_every_event_whole_once_it_reads_again() {
    const EVENTS: u64 = 600;
    let server = TestServer::default().await;
    let (mut sse, _) = open(&server, "channels=big", None).await;
    // About 5 MB, more than the loopback socket buffers hold; small and large events
    // alternate, as the server writes them differently.
    let pad = |n: u64| "y".repeat(if n % 2 == 0 { 500 } else { 16 * 1024 });
    for n in 1..=EVENTS {
        server.publish("big", json!({"n": n, "pad": pad(n)})).await;
    }
    let delivered = read_messages(&mut sse, EVENTS as usize).await;
    for (n, (_, message)) in (1..=EVENTS).zip(&delivered) {
        assert_eq!(message["data"]["n"], n, "in order, none lost");
        assert_eq!(message["data"]["pad"], pad(n).as_str(), "event {n} whole");
    }
    // Each counted once, whether the fan-out wrote it whole, or in part and the stream's
    // connection the rest, or the stream itself.
    let delivered = r#"cascade_messages_delivered_total{transport="sse"}"#;
    assert_eq!(server.metric(delivered).await, EVENTS as f64);
}

/// The same for a stream of two channels, whose events the fan-out builds for it alone
/// (their ids are its whole cursor): each arrives whole, in order, with its own id.
#[tokio::test]
async fn a_stalled_reader_of_two_channels_gets_every_event_whole_with_its_cursor() {
    const EVENTS: u64 = 600;
    let server = TestServer::default().await;
    let (mut sse, start) = open(&server, "channels=wide,quiet", None).await;
    let (wide, quiet) = (epoch_in(&start, "wide"), epoch_in(&start, "quiet"));
    // About 5 MB, more than the loopback socket buffers hold.
    let pad = |n: u64| "w".repeat(if n % 2 == 0 { 500 } else { 16 * 1024 });
    for n in 1..=EVENTS {
        server.publish("wide", json!({"n": n, "pad": pad(n)})).await;
    }
    let delivered = read_messages(&mut sse, EVENTS as usize).await;
    for (n, (id, message)) in (1..=EVENTS).zip(&delivered) {
        assert_eq!(message["data"]["n"], n, "in order, none lost");
        assert_eq!(message["data"]["pad"], pad(n).as_str(), "event {n} whole");
        assert_eq!(id, &format!("wide@{wide}:{n},quiet@{quiet}:0"));
    }
    let delivered = r#"cascade_messages_delivered_total{transport="sse"}"#;
    assert_eq!(server.metric(delivered).await, EVENTS as f64);
}
