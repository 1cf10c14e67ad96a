//! The disconnect hook for Socket.IO sockets over real sockets, with a real backend that
//! checks every call's signature: a polling socket that goes quiet is told once
//! (`reason: "idle"`) when its Engine.IO session expires, and its sid is then unknown; a
//! socket that upgraded is told by its WebSocket alone; on two nodes sharing Redis, a
//! socket polled on both is told once, and one still polling on one node is not told by
//! the other.
//!
//! The Redis runs need a Redis at `CASCADE_TEST_REDIS_URL` (default 127.0.0.1:6379).

mod support;

use std::time::{Duration, Instant};

use cascade::config::{Config, EngineKind, HookEvent};
use serde_json::{Value, json};
use support::backend::{Backend, Call, Reply, SECRET};
use support::socketio::{answer_pings, connect, open, poll, upgrade};
use support::{TestServer, eventually, test_config};

/// Engine.IO's `pingInterval` and `pingTimeout` here: a session expires 500 ms after its
/// last poll.
const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 300;
const EXPIRY: Duration = Duration::from_millis(INTERVAL_MS + TIMEOUT_MS);

/// A backend that accepts every socket as alice, in room `news`.
async fn backend() -> Backend {
    Backend::start(|event, _| match event {
        "connect" => Reply::result(json!({"user": "alice", "channels": ["news"]})),
        _ => Reply::result(Value::Null),
    })
    .await
}

fn config(backend: &Backend, engine: EngineKind, prefix: &str) -> Config {
    let mut config = test_config();
    config.hooks.url = backend.url();
    config.hooks.events = vec![HookEvent::Connect, HookEvent::Disconnect];
    config.hooks.secret = SECRET.into();
    // Cascade's own polls: not what is tested, and far from the sessions' expiry.
    config.hooks.poll_idle_ms = 60_000;
    config.socketio.ping_interval_ms = INTERVAL_MS;
    config.socketio.ping_timeout_ms = TIMEOUT_MS;
    config.engine = engine;
    config.redis_prefix = prefix.into();
    config.redis_url = std::env::var("CASCADE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    config
}

/// Two gateways sharing one Redis prefix.
async fn two_nodes(backend: &Backend) -> (TestServer, TestServer) {
    let prefix = format!("test-siodisc-{}", cascade::protocol::Epoch::random());
    let a = TestServer::start(config(backend, EngineKind::Redis, &prefix)).await;
    let b = TestServer::start(config(backend, EngineKind::Redis, &prefix)).await;
    for node in [&a, &b] {
        eventually("the gateway is ready", || async {
            node.get_json("/readyz").await.0 == 200
        })
        .await;
    }
    (a, b)
}

/// The disconnect calls told for socket `client`.
fn told(backend: &Backend, client: &str) -> Vec<Call> {
    backend
        .calls("disconnect")
        .into_iter()
        .filter(|c| c.body["client"] == client)
        .collect()
}

/// Waits until `client` is told, then long enough for any second telling (three
/// lifetimes of its session, many sweeps of every node); the one call, and how long the
/// first took to come.
async fn told_once(backend: &Backend, client: &str) -> (Call, Duration) {
    let started = Instant::now();
    eventually("the disconnect hook told", || async {
        !told(backend, client).is_empty()
    })
    .await;
    let waited = started.elapsed();
    tokio::time::sleep(EXPIRY * 3).await;
    let calls = told(backend, client);
    assert_eq!(calls.len(), 1, "told once: {calls:?}");
    (calls.into_iter().next().unwrap(), waited)
}

#[tokio::test]
async fn a_quiet_polling_socket_is_told_once_when_its_session_expires() {
    let backend = backend().await;
    let server = TestServer::start(config(&backend, EngineKind::Memory, "unused")).await;
    let sid = open(&server).await;
    let client = connect(&server, &sid).await;
    // Polled for a while, longer than a session lifetime: not told meanwhile, and still
    // the socket the backend accepted, in its room.
    let started = Instant::now();
    while started.elapsed() < EXPIRY * 3 {
        assert_eq!(poll(&server, &sid).await.0, 200);
    }
    assert!(told(&backend, &client).is_empty(), "told while polling");
    server.publish("news", json!({"n": 1})).await;
    let (status, got) = poll(&server, &sid).await;
    assert!(
        status == 200 && got.starts_with(r#"42["message",{"n":1}"#),
        "{status} {got}"
    );
    let (call, waited) = told_once(&backend, &client).await;
    // Its session expires EXPIRY after its last poll's answer was written; the sweep
    // looks eight times per EXPIRY.
    assert!(
        waited >= EXPIRY - Duration::from_millis(50) && waited < EXPIRY * 3,
        "told {waited:?} after its last poll"
    );
    assert_eq!(
        call.body,
        json!({"user": "alice", "client": client, "reason": "idle"})
    );
    assert!(call.signed, "signed as every hook call");
    // Its session is over: a late poll finds it unknown, as Engine.IO answers a session
    // that timed out.
    let (status, answer) = poll(&server, &sid).await;
    assert_eq!(status, 400, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer, json!({"code": 1, "message": "Session ID unknown"}));
}

#[tokio::test]
async fn an_upgraded_socket_is_told_by_its_websocket_alone() {
    let backend = backend().await;
    let server = TestServer::start(config(&backend, EngineKind::Memory, "unused")).await;
    let sid = open(&server).await;
    let client = connect(&server, &sid).await;
    let mut ws = upgrade(&server, &sid).await;
    // Its polls stopped: the session's polling state expires meanwhile, many times over.
    answer_pings(&mut ws, EXPIRY * 4).await;
    assert!(
        told(&backend, &client).is_empty(),
        "told while its WebSocket is open: {:?}",
        told(&backend, &client)
    );
    drop(ws);
    let (call, _) = told_once(&backend, &client).await;
    assert_eq!(call.body["reason"], "client_closed");
    assert_eq!(call.body["user"], "alice");
}

#[tokio::test]
async fn on_two_nodes_a_socket_polled_on_both_is_told_once() {
    let backend = backend().await;
    let (a, b) = two_nodes(&backend).await;
    let sid = open(&a).await;
    let client = connect(&b, &sid).await;
    for round in 0..6 {
        let node = if round % 2 == 0 { &a } else { &b };
        assert_eq!(poll(node, &sid).await.0, 200);
    }
    assert!(told(&backend, &client).is_empty(), "told while polling");
    let (call, _) = told_once(&backend, &client).await;
    assert_eq!(
        call.body,
        json!({"user": "alice", "client": client, "reason": "idle"})
    );
    for node in [&a, &b] {
        assert_eq!(
            poll(node, &sid).await.0,
            400,
            "the session is over everywhere"
        );
    }
}

#[tokio::test]
async fn on_two_nodes_a_socket_polling_on_one_is_not_told_by_the_other() {
    let backend = backend().await;
    let (a, b) = two_nodes(&backend).await;
    // Opened, connected and polled on A, which then sees no more of it...
    let sid = open(&a).await;
    let client = connect(&a, &sid).await;
    assert_eq!(poll(&a, &sid).await.0, 200);
    // ...while it polls steadily on B, for many of its lifetimes and A's sweeps.
    let started = Instant::now();
    while started.elapsed() < EXPIRY * 4 {
        assert_eq!(poll(&b, &sid).await.0, 200);
    }
    assert!(
        told(&backend, &client).is_empty(),
        "told while polling on B: {:?}",
        told(&backend, &client)
    );
    // Quiet at last: told once, by one of them.
    let (call, _) = told_once(&backend, &client).await;
    assert_eq!(call.body["reason"], "idle");
}
