//! The WebSocket contract over real sockets, on every wire a client may come by: plain
//! `ws://`, `wss://` on HTTP/1.1, and RFC 8441 extended CONNECT on an HTTP/2 stream over
//! TLS. Each test is written once, taking its [`Wire`], and run on each wire by
//! [`on_every_wire!`] as `plain::name`, `wss_h1::name` and `h2::name`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::wire::{Gateway, Io, Wire, Ws};
use support::*;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Runs the tests on one wire, in a module of their own:
/// `wire_tests!(Plain, plain: #[tokio::test] name; ...)` makes `plain::name`, which calls
/// `name(Wire::Plain)`.
macro_rules! wire_tests {
    ($wire:ident, $module:ident: $(#[$attr:meta] $name:ident;)*) => {
        mod $module {
            use super::Wire;
            $(
                #[$attr]
                async fn $name() {
                    super::$name(Wire::$wire).await
                }
            )*
        }
    };
}

/// Runs the tests of `every` on each wire, and those of `http1` on the HTTP/1.1 wires only
/// (each says why it cannot hold on HTTP/2).
macro_rules! on_every_wire {
    (every: {$($every:tt)*} http1: {$($http1:tt)*}) => {
        wire_tests!(Plain, plain: $($every)* $($http1)*);
        wire_tests!(TlsH1, wss_h1: $($every)* $($http1)*);
        wire_tests!(TlsH2, h2: $($every)*);
    };
}

on_every_wire! {
    every: {
        #[tokio::test] messages_arrive_in_order_with_their_offsets;
        #[tokio::test] publish_with_an_id_is_acked_and_without_one_is_not;
        #[tokio::test] subscribe_with_a_cursor_replays_history_then_goes_live;
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        subscribe_with_a_cursor_during_publishing_has_no_seam;
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        resuming_after_a_disconnect_loses_and_repeats_nothing;
        #[tokio::test] a_cursor_outside_retained_history_yields_a_gap_then_continues;
        #[tokio::test] unsubscribe_stops_delivery_for_that_channel_only;
        #[tokio::test] one_connection_follows_several_channels;
        #[tokio::test] the_server_pings;
        #[tokio::test] a_client_that_answers_pings_stays_connected;
        #[tokio::test] a_silent_client_is_dropped_after_two_ping_intervals;
        #[tokio::test] a_client_frame_is_answered_while_a_backlog_is_being_written;
        #[tokio::test] large_messages_to_a_client_that_reads_late_arrive_whole_and_in_order;
        #[tokio::test] pongs_and_messages_interleave_as_whole_frames;
        #[tokio::test] subscribing_again_reports_the_position_after_messages_already_delivered;
        #[tokio::test] subscribing_again_reports_each_channel_after_messages_already_delivered;
        #[tokio::test] pings_meeting_a_part_written_message_are_answered_after_it;
        #[tokio::test] a_late_reader_of_two_channels_gets_every_message_whole_and_once;
    }
    http1: {
        // About HTTP/1.1's connection hand-off from the lean path to hyper, which HTTP/2
        // has not: every h2 stream is hyper's, and every h2 WebSocket of this suite is
        // already opened on a connection that carried a request first (`GET /healthz`).
        #[tokio::test] a_websocket_opened_after_another_request_is_served_through_hyper;
    }
}

/// The next frame, which must be a message; returns (channel, epoch, offset, data.n).
async fn recv_message(ws: &mut Ws) -> (String, String, u64, u64) {
    let frame = ws.recv().await;
    assert_eq!(frame["op"], "message", "{frame}");
    (
        frame["channel"].as_str().expect("channel").to_owned(),
        frame["epoch"].as_str().expect("epoch").to_owned(),
        frame["offset"].as_u64().expect("offset"),
        frame["data"]["n"].as_u64().expect("data.n"),
    )
}

/// Reads messages of `channel` and asserts they are exactly `range`, in order, each
/// carrying `{"n": offset}` (the publishers here publish n at offset n).
async fn expect_offsets(
    ws: &mut Ws,
    channel: &str,
    epoch: &str,
    range: std::ops::RangeInclusive<u64>,
) {
    for expected in range {
        let (c, e, offset, n) = recv_message(ws).await;
        assert_eq!(
            (c.as_str(), e.as_str(), offset, n),
            (channel, epoch, expected, expected),
            "expected {channel}@{epoch}:{expected}"
        );
    }
}

/// The epoch of a one-channel cursor `chan@epoch:offset`.
fn epoch_of(cursor: &str) -> String {
    let (_, position) = cursor.split_once('@').expect("cursor has a position");
    position.split_once(':').expect("epoch:offset").0.to_owned()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn messages_arrive_in_order_with_their_offsets(wire: Wire) {
    let server = Gateway::default(wire).await;
    let mut ws = server.ws().await;
    let reply = ws.subscribe(&["chat"], None).await;
    assert_eq!(reply["channels"], json!(["chat"]));
    let start = reply["cursor"].as_str().expect("cursor").to_owned();
    assert!(
        start.starts_with("chat@") && start.ends_with(":0"),
        "a fresh channel starts at offset 0: {start}"
    );
    let epoch = epoch_of(&start);

    for n in 1..=20 {
        let (e, offset) = server.publish("chat", json!({"n": n})).await;
        assert_eq!((e.as_str(), offset), (epoch.as_str(), n));
    }
    for n in 1..=20u64 {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message");
        assert_eq!(frame["channel"], "chat");
        assert_eq!(frame["epoch"], epoch.as_str());
        assert_eq!(frame["offset"], n);
        assert_eq!(frame["data"], json!({"n": n}));
        let ts = frame["ts"].as_u64().expect("ts in unix ms");
        assert!(ts.abs_diff(now_ms()) < 60_000, "ts {ts} is not now");
    }
}

async fn publish_with_an_id_is_acked_and_without_one_is_not(wire: Wire) {
    let server = Gateway::default(wire).await;
    let mut subscriber = server.ws().await;
    let reply = subscriber.subscribe(&["chat"], None).await;
    let epoch = epoch_of(reply["cursor"].as_str().unwrap());
    let mut publisher = server.ws().await;

    publisher
        .send(json!({"op": "publish", "channel": "chat", "data": {"n": 1}, "id": 7}))
        .await;
    let ack = publisher.recv().await;
    assert_eq!(
        ack,
        json!({"op": "ack", "id": 7, "channel": "chat", "epoch": epoch, "offset": 1})
    );

    // Frames are handled in order, so an ack for the id-less publish would arrive before
    // the ack for id 8.
    publisher
        .send(json!({"op": "publish", "channel": "chat", "data": {"n": 2}}))
        .await;
    publisher
        .send(json!({"op": "publish", "channel": "chat", "data": {"n": 3}, "id": 8}))
        .await;
    let ack = publisher.recv().await;
    assert_eq!(
        ack,
        json!({"op": "ack", "id": 8, "channel": "chat", "epoch": epoch, "offset": 3}),
        "no ack for a publish without id"
    );

    // All three were published, with the offsets the acks reported.
    expect_offsets(&mut subscriber, "chat", &epoch, 1..=3).await;
    assert_eq!(
        server
            .metric(r#"cascade_messages_published_total{via="websocket"}"#)
            .await,
        3.0
    );
}

async fn subscribe_with_a_cursor_replays_history_then_goes_live(wire: Wire) {
    let server = Gateway::default(wire).await;
    let mut epoch = String::new();
    for n in 1..=10 {
        epoch = server.publish("chat", json!({"n": n})).await.0;
    }
    let mut ws = server.ws().await;
    let cursor = format!("chat@{epoch}:4");
    let reply = ws.subscribe(&["chat"], Some(&cursor)).await;
    assert_eq!(
        reply["cursor"],
        cursor.as_str(),
        "delivery starts at the cursor"
    );

    expect_offsets(&mut ws, "chat", &epoch, 5..=10).await;
    for n in 11..=15 {
        server.publish("chat", json!({"n": n})).await;
    }
    expect_offsets(&mut ws, "chat", &epoch, 11..=15).await;
    // Nothing was repeated or held back: the next frame is the next publish.
    server.publish("chat", json!({"n": 16})).await;
    expect_offsets(&mut ws, "chat", &epoch, 16..=16).await;
}

/// Subscribing from a position while a publisher races must give every message after the
/// position exactly once, whether it came from history or live.
async fn subscribe_with_a_cursor_during_publishing_has_no_seam(wire: Wire) {
    let server = Gateway::default(wire).await;
    let http = server.http();
    for round in 0..4u64 {
        let channel = format!("race{round}");
        let total = 150u64;
        let (epoch, _) = http.publish(&channel, json!({"n": 1})).await;
        let published = Arc::new(AtomicU64::new(1));
        let publisher = tokio::spawn({
            let (http, channel, published) = (http.clone(), channel.clone(), published.clone());
            async move {
                for n in 2..=total {
                    assert_eq!(http.publish(&channel, json!({"n": n})).await.1, n);
                    published.store(n, Ordering::SeqCst);
                    if n % 4 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        // Join at a different point of the stream each round.
        let join_at = 10 + round * 25;
        eventually("the publisher to get going", || {
            let published = published.clone();
            async move { published.load(Ordering::SeqCst) >= join_at }
        })
        .await;
        let from = join_at - 5;
        let mut ws = server.ws().await;
        let cursor = format!("{channel}@{epoch}:{from}");
        let reply = ws.subscribe(&[&channel], Some(&cursor)).await;
        assert_eq!(reply["cursor"], cursor.as_str());
        expect_offsets(&mut ws, &channel, &epoch, from + 1..=total).await;
        within(publisher).await.expect("publisher");
        http.publish(&channel, json!({"n": total + 1})).await;
        expect_offsets(&mut ws, &channel, &epoch, total + 1..=total + 1).await;
    }
}

async fn resuming_after_a_disconnect_loses_and_repeats_nothing(wire: Wire) {
    let server = Gateway::default(wire).await;
    let total = 120u64;
    let mut first = server.ws().await;
    let reply = first.subscribe(&["chat"], None).await;
    let epoch = epoch_of(reply["cursor"].as_str().unwrap());

    let publisher = tokio::spawn({
        let http = server.http();
        async move {
            for n in 1..=total {
                http.publish("chat", json!({"n": n})).await;
                if n % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });

    let mut last = 0;
    for _ in 0..30 {
        let (_, e, offset, _) = recv_message(&mut first).await;
        assert_eq!((e.as_str(), offset), (epoch.as_str(), last + 1));
        last = offset;
    }
    within(first.ws.close(None)).await.expect("close");
    drop(first);

    // Messages keep being published while no connection is open.
    let mut second = server.ws().await;
    let cursor = format!("chat@{epoch}:{last}");
    let reply = second.subscribe(&["chat"], Some(&cursor)).await;
    assert_eq!(reply["cursor"], cursor.as_str());
    expect_offsets(&mut second, "chat", &epoch, last + 1..=total).await;
    within(publisher).await.expect("publisher");
    server.publish("chat", json!({"n": total + 1})).await;
    expect_offsets(&mut second, "chat", &epoch, total + 1..=total + 1).await;
}

/// With only 5 messages retained, a position before them or from another epoch is
/// answered with a gap at the first retained offset, then history, then live messages.
async fn a_cursor_outside_retained_history_yields_a_gap_then_continues(wire: Wire) {
    let mut config = test_config();
    config.history.max_messages = 5;
    let server = Gateway::start(wire, config).await;
    let mut epoch = String::new();
    for n in 1..=20 {
        epoch = server.publish("chat", json!({"n": n})).await.0;
    }
    let old = format!("chat@{epoch}:3");
    let wrong_epoch = "chat@Bogus1:19".to_owned();
    // Each round publishes one more live message: the next offset is 21, then 22.
    for (next, cursor) in (21u64..).zip([old, wrong_epoch]) {
        let mut ws = server.ws().await;
        let reply = ws.subscribe(&["chat"], Some(&cursor)).await;
        let first_retained = next - 5;
        assert_eq!(
            reply["cursor"],
            format!("chat@{epoch}:{}", first_retained - 1),
            "delivery starts just before the first retained message ({cursor})"
        );
        let gap = ws.recv().await;
        assert_eq!(
            gap,
            json!({"op": "gap", "channel": "chat", "epoch": epoch, "first": first_retained}),
            "{cursor}"
        );
        expect_offsets(&mut ws, "chat", &epoch, first_retained..=next - 1).await;
        server.publish("chat", json!({"n": next})).await;
        expect_offsets(&mut ws, "chat", &epoch, next..=next).await;
    }
    assert_eq!(
        server
            .metric(r#"cascade_gaps_total{transport="websocket"}"#)
            .await,
        2.0
    );
}

async fn unsubscribe_stops_delivery_for_that_channel_only(wire: Wire) {
    let server = Gateway::default(wire).await;
    let mut ws = server.ws().await;
    let reply = ws.subscribe(&["a", "b"], None).await;
    assert_eq!(reply["channels"], json!(["a", "b"]));
    let (ea, _) = server.publish("a", json!({"n": 1})).await;
    let (eb, _) = server.publish("b", json!({"n": 1})).await;
    expect_offsets(&mut ws, "a", &ea, 1..=1).await;
    expect_offsets(&mut ws, "b", &eb, 1..=1).await;

    ws.send(json!({"op": "unsubscribe", "channels": ["a"]}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"op": "unsubscribed", "channels": ["a"]})
    );
    // Each publish to `a` precedes one to `b`: had it been delivered, it would come first.
    for n in 2..=4 {
        server.publish("a", json!({"n": n})).await;
        server.publish("b", json!({"n": n})).await;
        expect_offsets(&mut ws, "b", &eb, n..=n).await;
    }
}

async fn one_connection_follows_several_channels(wire: Wire) {
    let server = Gateway::default(wire).await;
    let mut ws = server.ws().await;
    let reply = ws.subscribe(&["x", "y"], None).await;
    assert_eq!(reply["channels"], json!(["x", "y"]));
    let cursor = reply["cursor"].as_str().unwrap();
    let entries: Vec<&str> = cursor.split(',').collect();
    assert_eq!(entries.len(), 2, "{cursor}");
    assert!(entries[0].starts_with("x@") && entries[1].starts_with("y@"));
    // A second subscribe adds a channel to the same connection.
    let reply = ws.subscribe(&["z"], None).await;
    assert_eq!(reply["channels"], json!(["z"]));

    let channels = ["x", "y", "z"];
    let mut published = Vec::new();
    for i in 0..30u64 {
        let channel = channels[(i % 3) as usize];
        let n = i / 3 + 1;
        let (epoch, offset) = server.publish(channel, json!({"n": n})).await;
        assert_eq!(offset, n);
        published.push((channel.to_owned(), epoch, n, n));
    }
    // One connection, one queue: messages come in publish order across channels.
    let mut received = Vec::new();
    for _ in 0..30 {
        received.push(recv_message(&mut ws).await);
    }
    assert_eq!(received, published);
}

async fn the_server_pings(wire: Wire) {
    let server = Gateway::default(wire).await;
    let interval = Duration::from_millis(server.config().websocket.ping_interval_ms);
    let mut ws = server.ws().await.ws;
    let start = Instant::now();
    let ping = tokio::time::timeout(interval * 6, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Ping(payload))) => return payload,
                Some(Ok(_)) => continue,
                other => panic!("connection ended before a ping: {other:?}"),
            }
        }
    })
    .await
    .expect("a ping within a few intervals");
    assert!(ping.len() <= 125);
    assert!(
        start.elapsed() >= interval / 2,
        "the first ping comes after an interval, not at once"
    );
}

/// tokio-tungstenite answers pings while it is being read, so a reading client stays
/// connected well past two ping intervals.
async fn a_client_that_answers_pings_stays_connected(wire: Wire) {
    let server = Gateway::default(wire).await;
    let interval = Duration::from_millis(server.config().websocket.ping_interval_ms);
    let mut ws = server.ws().await;
    let start = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        match within(ws.ws.next()).await {
            Some(Ok(WsMessage::Ping(_))) => pings += 1,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            other => panic!("dropped after {pings} pings: {other:?}"),
        }
    }
    assert!(start.elapsed() > interval * 3);
    let reply = ws.subscribe(&["chat"], None).await;
    let epoch = epoch_of(reply["cursor"].as_str().unwrap());
    server.publish("chat", json!({"n": 1})).await;
    expect_offsets(&mut ws, "chat", &epoch, 1..=1).await;
    assert_eq!(
        server
            .metric(r#"cascade_connections{transport="websocket"}"#)
            .await,
        1.0
    );
}

/// A client that completes the upgrade and then never sends a byte (not even a pong) is
/// dropped once it has been silent for two ping intervals.
async fn a_silent_client_is_dropped_after_two_ping_intervals(wire: Wire) {
    let server = Gateway::default(wire).await;
    let interval = Duration::from_millis(server.config().websocket.ping_interval_ms);
    // Before the handshake: the server's silence clock starts when it answers it, which a
    // loaded machine may show the client much later (an h2 stream's 200 above all).
    let start = Instant::now();
    let mut raw = server.raw_ws().await;
    eventually("the connection to be counted", || async {
        server
            .metric(r#"cascade_connections{transport="websocket"}"#)
            .await
            == 1.0
    })
    .await;

    let mut pings = 0;
    loop {
        match within(raw.read_frame()).await {
            Some((raw_ws::PING, _)) => pings += 1,
            // A close frame before the drop is acceptable; the TCP close (on HTTP/2, the
            // stream's end) must follow.
            Some((raw_ws::CLOSE, _)) => {}
            Some((opcode, payload)) => panic!(
                "unexpected frame {opcode:#x}: {}",
                String::from_utf8_lossy(&payload)
            ),
            None => break,
        }
    }
    let elapsed = start.elapsed();
    assert!(pings >= 1, "the server pinged before giving up");
    assert!(
        elapsed >= interval * 2,
        "dropped after {elapsed:?}, before two silent intervals"
    );
    assert!(
        elapsed <= interval * 6,
        "dropped only after {elapsed:?} (ping interval {interval:?})"
    );
    eventually("the connection gauge to drop", || async {
        server
            .metric(r#"cascade_connections{transport="websocket"}"#)
            .await
            == 0.0
    })
    .await;
}

/// A client's frame is read as soon as it arrives, even while the server is still
/// writing a backlog: deliveries never starve the socket's read side.
async fn a_client_frame_is_answered_while_a_backlog_is_being_written(wire: Wire) {
    const BACKLOG: u64 = 5000;
    let mut config = test_config();
    config.limits.subscriber_queue = 10_000;
    // The client reads nothing while the backlog is published: no ping timeout meanwhile,
    // and no write timeout either, however long a busy machine takes to publish it (the
    // default 10 s was reached with the whole suite running beside a profiler).
    config.websocket.ping_interval_ms = 30_000;
    config.limits.write_timeout_ms = 120_000;
    let server = Gateway::start(wire, config).await;
    let mut ws = server.ws().await;
    ws.subscribe(&["firehose"], None).await;
    // 20 MB, far more than the loopback socket buffers hold: the server is still writing
    // when the client's frame arrives.
    let pad = "x".repeat(4096);
    for n in 1..=BACKLOG {
        server
            .publish("firehose", json!({"n": n, "pad": pad}))
            .await;
    }
    ws.send(json!({"op": "publish", "channel": "side", "data": {"n": 1}, "id": 99}))
        .await;
    let mut next = 1;
    loop {
        let frame = ws.recv().await;
        match frame["op"].as_str() {
            Some("message") => {
                assert_eq!(frame["data"]["n"], next, "in order, none lost");
                next += 1;
            }
            Some("ack") => {
                assert_eq!(frame["id"], 99);
                break;
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    assert!(
        next <= BACKLOG,
        "the ack waited for the whole backlog of {BACKLOG} messages"
    );
    while next <= BACKLOG {
        let (_, _, _, n) = recv_message(&mut ws).await;
        assert_eq!(n, next, "in order, none lost");
        next += 1;
    }
}

/// Messages go straight to the socket while it has room; one that finds it nearly full is
/// written in part and finished before anything else, and one that finds it full waits in
/// tungstenite. Whichever way each took, the client reads whole frames, in order.
async fn large_messages_to_a_client_that_reads_late_arrive_whole_and_in_order(wire: Wire) {
    const MESSAGES: u64 = 200;
    let mut config = test_config();
    config.websocket.ping_interval_ms = 30_000;
    let server = Gateway::start(wire, config).await;
    let mut ws = server.ws().await;
    ws.subscribe(&["big"], None).await;
    // 12 MB, one message at a time: more than the loopback socket buffers hold, so the
    // writes meet a socket with less room than a frame.
    let pad = "y".repeat(60 * 1024);
    for n in 1..=MESSAGES {
        server.publish("big", json!({"n": n, "pad": pad})).await;
    }
    for n in 1..=MESSAGES {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message", "{frame}");
        assert_eq!(frame["data"]["n"], n, "in order, none lost");
        assert_eq!(frame["data"]["pad"].as_str().map(str::len), Some(pad.len()));
    }
    // Each counted once, whichever way it went out.
    let delivered = r#"cascade_messages_delivered_total{transport="websocket"}"#;
    assert_eq!(server.metric(delivered).await, MESSAGES as f64);
}

/// Sends a ping whose payload is `n`.
async fn ping(ws: &mut Ws, n: u64) {
    use futures_util::SinkExt;
    let payload = n.to_be_bytes().to_vec();
    ws.ws
        .send(WsMessage::Ping(payload.into()))
        .await
        .expect("ping");
}

/// Reads messages `{"n": 1..=messages}` and the pongs to pings 1..=`pongs`, interleaved
/// in any way, asserting that each kind arrives whole and in order; `pad`, if given, is
/// the length of every message's `pad`.
async fn read_messages_and_pongs(ws: &mut Ws, messages: u64, pongs: u64, pad: Option<usize>) {
    let (mut next, mut pong) = (1, 1);
    while next <= messages || pong <= pongs {
        match within(ws.ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).expect("json");
                assert_eq!(frame["data"]["n"], next, "in order, none lost");
                if let Some(pad) = pad {
                    assert_eq!(frame["data"]["pad"].as_str().map(str::len), Some(pad));
                }
                next += 1;
            }
            Some(Ok(WsMessage::Pong(payload))) => {
                assert_eq!(payload.as_ref(), pong.to_be_bytes(), "pongs in order");
                pong += 1;
            }
            Some(Ok(WsMessage::Ping(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The server answers pings (through tungstenite) in the middle of a stream of messages
/// (written straight to the socket): neither ever cuts into the other's frames.
async fn pongs_and_messages_interleave_as_whole_frames(wire: Wire) {
    const MESSAGES: u64 = 300;
    const EVERY: u64 = 6;
    let server = Gateway::default(wire).await;
    let mut ws = server.ws().await;
    ws.subscribe(&["mixed"], None).await;
    for n in 1..=MESSAGES {
        server.publish("mixed", json!({"n": n})).await;
        if n % EVERY == 0 {
            ping(&mut ws, n / EVERY).await;
        }
    }
    read_messages_and_pongs(&mut ws, MESSAGES, MESSAGES / EVERY, None).await;
}

/// Messages the fan-out wrote to an idle socket itself, without waking the connection,
/// still move the connection's position: subscribing again to the channel reports it.
async fn subscribing_again_reports_the_position_after_messages_already_delivered(wire: Wire) {
    let server = Gateway::default(wire).await;
    let mut ws = server.ws().await;
    let first = ws.subscribe(&["tally"], None).await;
    let epoch = epoch_of(first["cursor"].as_str().expect("cursor"));
    for n in 1..=3 {
        server.publish("tally", json!({"n": n})).await;
    }
    expect_offsets(&mut ws, "tally", &epoch, 1..=3).await;
    let again = ws.subscribe(&["tally"], None).await;
    assert_eq!(again["cursor"], format!("tally@{epoch}:3"));
    server.publish("tally", json!({"n": 4})).await;
    expect_offsets(&mut ws, "tally", &epoch, 4..=4).await;
}

/// The same for a client of several channels, whose messages the fan-out writes express
/// too: subscribing again reports each channel where its last message left it, and after
/// an unsubscribe the other channel's messages still come and the dropped one's do not.
async fn subscribing_again_reports_each_channel_after_messages_already_delivered(wire: Wire) {
    let server = Gateway::default(wire).await;
    let mut ws = server.ws().await;
    let first = ws.subscribe(&["left", "right"], None).await;
    let cursor = first["cursor"].as_str().expect("cursor").to_owned();
    let (left, right) = cursor.split_once(',').expect("two channels");
    let (left, right) = (epoch_of(left), epoch_of(right));
    for (channel, n) in [("left", 1), ("right", 1), ("left", 2)] {
        server.publish(channel, json!({"n": n})).await;
    }
    expect_offsets(&mut ws, "left", &left, 1..=1).await;
    expect_offsets(&mut ws, "right", &right, 1..=1).await;
    expect_offsets(&mut ws, "left", &left, 2..=2).await;
    let again = ws.subscribe(&["left", "right"], None).await;
    assert_eq!(again["cursor"], format!("left@{left}:2,right@{right}:1"));
    ws.send(json!({"op": "unsubscribe", "channels": ["right"]}))
        .await;
    assert_eq!(ws.recv().await["op"], "unsubscribed");
    server.publish("right", json!({"n": 2})).await;
    server.publish("left", json!({"n": 3})).await;
    expect_offsets(&mut ws, "left", &left, 3..=3).await;
}

/// A client that reads late and pings before every message: the fan-out writes large
/// messages to its socket until one is taken only in part, which the connection must
/// finish before it writes anything else, a pong included. Every frame arrives whole,
/// messages and pongs each in order. (Which ping meets a part-written message, if any, is
/// up to the scheduler: the test checks the stream, not the race.)
async fn pings_meeting_a_part_written_message_are_answered_after_it(wire: Wire) {
    const MESSAGES: u64 = 120;
    let mut config = test_config();
    config.websocket.ping_interval_ms = 30_000;
    let server = Gateway::start(wire, config).await;
    let mut ws = server.ws().await;
    ws.subscribe(&["heavy"], None).await;
    // 7 MB: the loopback socket fills long before the client starts reading.
    let pad = "z".repeat(60 * 1024);
    for n in 1..=MESSAGES {
        ping(&mut ws, n).await;
        server.publish("heavy", json!({"n": n, "pad": pad})).await;
    }
    read_messages_and_pongs(&mut ws, MESSAGES, MESSAGES, Some(pad.len())).await;
    let delivered = r#"cascade_messages_delivered_total{transport="websocket"}"#;
    assert_eq!(server.metric(delivered).await, MESSAGES as f64);
}

/// A client of two channels that reads only at the end: the fan-out writes to it express
/// until a message is taken only in part, which must leave the connection's position where
/// it was, so that the connection still delivers that message, whole and once.
async fn a_late_reader_of_two_channels_gets_every_message_whole_and_once(wire: Wire) {
    const MESSAGES: u64 = 120;
    // The client reads nothing until all is published: no ping timeout meanwhile, and no
    // write timeout either, however long a loaded machine takes to publish it (the test
    // config's 500 ms pings cut it off when a CI build ran beside the suite).
    let mut config = test_config();
    config.websocket.ping_interval_ms = 30_000;
    config.limits.write_timeout_ms = 120_000;
    let server = Gateway::start(wire, config).await;
    let mut ws = server.ws().await;
    ws.subscribe(&["wide", "quiet"], None).await;
    // 7 MB: the loopback socket fills long before the client starts reading.
    let pad = "z".repeat(60 * 1024);
    for n in 1..=MESSAGES {
        server.publish("wide", json!({"n": n, "pad": pad})).await;
    }
    read_messages_and_pongs(&mut ws, MESSAGES, 0, Some(pad.len())).await;
    let delivered = r#"cascade_messages_delivered_total{transport="websocket"}"#;
    assert_eq!(server.metric(delivered).await, MESSAGES as f64);
}

/// A connection that carried another request first is hyper's: its WebSocket handshake is
/// answered there, and the socket hyper switches carries the same protocol.
async fn a_websocket_opened_after_another_request_is_served_through_hyper(wire: Wire) {
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let server = Gateway::default(wire).await;
    let mut stream = server.http1_connection().await;
    // Not a lean route: the connection goes to hyper for good.
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut seen = Vec::new();
    let read_head = async |stream: &mut Box<dyn Io>, seen: &mut Vec<u8>| {
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                seen.drain(..end + 4);
                return head;
            }
            let mut chunk = [0u8; 4096];
            let n = within(stream.read(&mut chunk)).await.expect("read");
            assert!(n > 0, "closed");
            seen.extend_from_slice(&chunk[..n]);
        }
    };
    let head = read_head(&mut stream, &mut seen).await;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    while seen.len() < length {
        let mut chunk = [0u8; 65536];
        let n = within(stream.read(&mut chunk)).await.expect("read");
        seen.extend_from_slice(&chunk[..n]);
    }
    seen.drain(..length);
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let head = read_head(&mut stream, &mut seen).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(seen.is_empty(), "nothing after the 101 yet");
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    ws.send(WsMessage::text(
        json!({"op": "subscribe", "channels": ["via-hyper"]}).to_string(),
    ))
    .await
    .unwrap();
    let reply = within(ws.next()).await.expect("a frame").expect("ok");
    let reply: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["op"], "subscribed", "{reply}");
    server.publish("via-hyper", json!({"n": 1})).await;
    let message = within(ws.next()).await.expect("a frame").expect("ok");
    let message: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(message["data"], json!({"n": 1}), "{message}");
}
