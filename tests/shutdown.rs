mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Parses the `retry_ms=<N>` reason of a 1012 close.
fn retry_from_reason(reason: &str) -> u64 {
    reason
        .strip_prefix("retry_ms=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("close reason {reason:?} is not retry_ms=<N>"))
}

/// Begins the drain in the background; resolves to how long the server took to finish.
fn drain(server: TestServer) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let start = Instant::now();
        server.shutdown().await;
        start.elapsed()
    })
}

async fn assert_refused(addr: std::net::SocketAddr) {
    let outcome = within(TcpStream::connect(addr)).await;
    let err = outcome.expect_err("the listener must be closed after shutdown");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_tells_every_transport_to_come_back() {
    let server = TestServer::default().await;
    let window = server.app.config.shutdown.reconnect_window_ms;
    let drain_deadline = Duration::from_millis(server.app.config.shutdown.drain_deadline_ms);
    let addr = server.addr;

    let mut ws = WsClient::connect(&server).await;
    ws.subscribe(&["chat"], None).await;
    let mut sse = SseClient::connect(&server, "channels=chat", None).await;
    assert_eq!(sse.next().await.expect("open").event, "open");
    // A long poll on its own channel, held far longer than the test runs.
    let parked = tokio::spawn({
        let url = server.url("/longpoll?channels=parked&timeout=30");
        async move {
            let response = http().get(url).send().await.expect("long poll");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.expect("long poll body"),
            )
        }
    });
    // Parked: the long poll has registered as a live subscriber of its channel.
    eventually("the long poll to park", || async {
        server.metric("cascade_active_channels").await == 2.0
            && server
                .metric(r#"cascade_connections{transport="longpoll"}"#)
                .await
                == 1.0
    })
    .await;

    let drained = drain(server);

    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1012, "service restart");
    let retry = retry_from_reason(&reason);
    assert!(retry <= window, "ws retry_ms {retry} > window {window}");

    let event = sse.next().await.expect("a reconnect event");
    assert_eq!(event.event, "reconnect", "{event:?}");
    let retry = event.retry.expect("a retry: line");
    assert!(retry <= window, "sse retry {retry} > window {window}");
    assert_eq!(event.json(), json!({"retry_ms": retry}));
    assert!(
        sse.next().await.is_none(),
        "the stream ends after reconnect"
    );

    let (status, body) = within(parked).await.expect("long poll task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"], json!([]), "{body}");
    let retry = body["retry_ms"].as_u64().expect("retry_ms when draining");
    assert!(
        retry <= window,
        "long poll retry_ms {retry} > window {window}"
    );
    let cursor = body["cursor"].as_str().expect("cursor");
    assert!(
        cursor.starts_with("parked@") && cursor.ends_with(":0"),
        "{cursor}"
    );

    let took = within(drained).await.expect("drain task");
    assert!(
        took < drain_deadline,
        "drain took {took:?}: it waited for the deadline ({drain_deadline:?}) instead of finishing"
    );
    assert_refused(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_delays_are_spread_over_the_window() {
    let server = TestServer::default().await;
    let window = server.app.config.shutdown.reconnect_window_ms;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut ws = WsClient::connect(&server).await;
        ws.subscribe(&["chat"], None).await;
        clients.push(ws);
    }
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut sse = SseClient::connect(&server, "channels=chat", None).await;
        assert_eq!(sse.next().await.expect("open").event, "open");
        streams.push(sse);
    }
    let drained = drain(server);

    let mut ws_delays = Vec::new();
    for ws in &mut clients {
        let (code, reason) = ws.closed().await;
        assert_eq!(code, 1012);
        ws_delays.push(retry_from_reason(&reason));
    }
    let mut sse_delays = Vec::new();
    for sse in &mut streams {
        let event = sse.next().await.expect("reconnect event");
        assert_eq!(event.event, "reconnect", "{event:?}");
        sse_delays.push(event.retry.expect("retry"));
    }
    for delay in ws_delays.iter().chain(&sse_delays) {
        assert!(
            *delay <= window,
            "retry {delay} outside the window {window}"
        );
    }
    let distinct: BTreeSet<u64> = ws_delays.iter().copied().collect();
    assert!(
        distinct.len() >= 2,
        "8 websocket clients were all told the same delay: {ws_delays:?}"
    );
    let all: BTreeSet<u64> = ws_delays.iter().chain(&sse_delays).copied().collect();
    assert!(
        all.len() >= 3,
        "delays are not jittered: {ws_delays:?} {sse_delays:?}"
    );
    within(drained).await.expect("drain task");
}

/// Polling answers carry `retry_ms` while draining, and idle keep-alive connections left
/// by polling clients do not hold the drain up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_do_not_hold_up_the_drain() {
    let server = TestServer::default().await;
    let drain_deadline = Duration::from_millis(server.app.config.shutdown.drain_deadline_ms);
    let addr = server.addr;
    // This client keeps its pooled connection open after each answer.
    let client = http();
    for route in ["poll", "longpoll"] {
        let response = client
            .get(server.url(&format!("/{route}?channels=chat&timeout=0")))
            .send()
            .await
            .expect(route);
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("body");
        assert!(body.get("retry_ms").is_none(), "not draining yet: {body}");
    }
    let took = within(drain(server)).await.expect("drain task");
    assert!(took < drain_deadline, "drain took {took:?}");
    assert_refused(addr).await;
    drop(client);
}

/// A client stuck half-way through sending a request cannot keep the process alive past
/// the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_bounds_a_stuck_client() {
    let mut config = test_config();
    config.shutdown.drain_deadline_ms = 1_000;
    let server = TestServer::start(config).await;
    let addr = server.addr;
    let mut stuck = TcpStream::connect(addr).await.expect("connect");
    stuck
        .write_all(b"GET /poll?channels=chat HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request");
    // Connections are accepted in order, so once a later request is answered the stuck
    // connection is in the server's hands.
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
    let took = within(drain(server)).await.expect("drain task");
    assert!(
        took < Duration::from_millis(1_000) + Duration::from_secs(2),
        "the drain outlived its deadline: {took:?}"
    );
    assert_refused(addr).await;
    drop(stuck);
}

/// HTTP clients open spare connections that may never carry a request (hyper's pool
/// races a new connection against the wait for an idle one); the drain does not wait
/// out their first-bytes deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_sent_a_request_do_not_hold_up_the_drain() {
    let server = TestServer::default().await;
    let drain_deadline = Duration::from_millis(server.app.config.shutdown.drain_deadline_ms);
    assert!(
        Duration::from_millis(server.app.config.limits.header_read_timeout_ms) > drain_deadline,
        "the first-bytes deadline must outlast the drain for this test to tell"
    );
    let addr = server.addr;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(within(TcpStream::connect(addr)).await.expect("connect"));
    }
    let limiter = server.app.connections.clone();
    eventually("the server holds the silent connections", || {
        let open = limiter.open();
        async move { open == 3 }
    })
    .await;
    let took = within(drain(server)).await.expect("drain task");
    assert!(took < drain_deadline, "drain took {took:?}");
    assert_refused(addr).await;
    drop(silent);
}
