//! Issue 23's server side over real sockets, on the memory engine, on Redis and on a
//! Redis Cluster (two gateways sharing one): the trusted sender `from`, `exclude_client`,
//! presence and the server API (`POST /subscribe`, `/unsubscribe`, `/disconnect`).
//!
//! The Redis runs need a Redis at `CASCADE_TEST_REDIS_URL` (default 127.0.0.1:6379); the
//! Redis Cluster runs start a local cluster (`redis-server` on PATH), one for all of them.

mod support;

use std::sync::{Arc, Mutex, Weak};

use cascade::auth::Auth;
use cascade::auth::token::Claims;
use cascade::config::{Config, EngineKind};
use serde_json::{Value, json};
use support::*;

const API_KEY: &str = "presence-test-key";
const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// Sessions on (a backend URL that no enabled event calls), tokens, an API key, and
/// presence with join/leave events in the `room` namespace.
fn config(engine: EngineKind, prefix: &str) -> Config {
    let mut config = test_config();
    config.hooks.url = "http://127.0.0.1:9".into();
    config.token.hmac_secret = SECRET.into();
    config.api_keys = vec![API_KEY.into()];
    let room = cascade::auth::rules::NamespaceConfig {
        presence: true,
        join_leave: true,
        ..Default::default()
    };
    config.namespaces.insert("room".into(), room);
    config.engine = engine;
    config.redis_prefix = prefix.into();
    if let Ok(url) = std::env::var("CASCADE_TEST_REDIS_URL") {
        config.redis_url = url;
    }
    config
}

/// The local Redis Cluster of the cluster runs: started by the first that needs it,
/// stopped (by PID) when the last gateway pair using it is gone.
fn shared_cluster() -> Arc<support::redis_cluster::RedisCluster> {
    static CLUSTER: Mutex<Weak<support::redis_cluster::RedisCluster>> = Mutex::new(Weak::new());
    let mut shared = CLUSTER.lock().unwrap();
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(tokio::task::block_in_place(
        support::redis_cluster::RedisCluster::start,
    ));
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// Two gateways on one Redis prefix; the memory engine is one node, so its runs use one
/// gateway for both.
async fn gateways(engine: EngineKind) -> Gateways {
    let prefix = format!("test-presence-{}", cascade::protocol::Epoch::random());
    let cluster = matches!(engine, EngineKind::RedisCluster).then(shared_cluster);
    let config = || {
        let mut config = config(engine, &prefix);
        if let Some(cluster) = &cluster {
            config.redis_url = cluster.url();
        }
        config
    };
    let a = Arc::new(TestServer::start(config()).await);
    let b = match engine {
        EngineKind::Memory => a.clone(),
        EngineKind::Redis | EngineKind::RedisCluster => Arc::new(TestServer::start(config()).await),
    };
    // A cluster engine connects in the background; the test starts once both are ready.
    for node in [&a, &b] {
        eventually("the gateway is ready", || async {
            node.get_json("/readyz").await.0 == 200
        })
        .await;
    }
    Gateways {
        nodes: (a, b),
        _cluster: cluster,
    }
}

/// Two gateways, and the cluster they share, if any (kept until the test ends).
struct Gateways {
    nodes: (Arc<TestServer>, Arc<TestServer>),
    _cluster: Option<Arc<support::redis_cluster::RedisCluster>>,
}

fn token(config: &Config, user: &str) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: 4_000_000_000,
        channels: vec!["*".into()],
        publish: vec!["*".into()],
    };
    Auth::from_config(config).unwrap().sign(&claims).unwrap()
}

/// A WebSocket of `user` (anonymous with `None`); returns it and its client id.
async fn ws(server: &TestServer, user: Option<&str>) -> (WsClient, String) {
    let mut url = server.ws_url();
    if let Some(user) = user {
        url = format!("{url}?token={}", token(&server.app.config, user));
    }
    let (ws, _) = within(tokio_tungstenite::connect_async(url))
        .await
        .expect("connect");
    let mut client = WsClient { ws };
    let session = client.recv().await;
    assert_eq!(session["op"], "session", "{session}");
    let id = session["client"].as_str().unwrap().to_owned();
    (client, id)
}

/// The next frame that is not a presence event.
async fn next_message(client: &mut WsClient) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["presence"].is_null() {
            return frame;
        }
    }
}

async fn api(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(server.url(path))
        .header("X-Cascade-Api-Key", API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn sender_and_exclusion_reach_every_transport(engine: EngineKind) {
    let gateways = gateways(engine).await;
    let (node_a, node_b) = gateways.nodes.clone();
    let (mut alice, alice_id) = ws(&node_a, Some("alice")).await;
    let (mut bob, _) = ws(&node_b, Some("bob")).await;
    alice.subscribe(&["chat"], None).await;
    let start = bob.subscribe(&["chat"], None).await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sse = SseClient::connect(&node_b, "channels=chat", None).await;

    // A client's publish that names its own sender is refused, on both entry points.
    alice
        .send(json!({"op":"publish","channel":"chat","data":1,"from":{"user":"eve"},"id":9}))
        .await;
    let refused = alice.recv().await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_u64()),
        (Some("from_not_allowed"), Some(9))
    );
    let forged = http()
        .post(node_a.url("/publish"))
        .header(
            "Authorization",
            format!("Bearer {}", token(&node_a.app.config, "eve")),
        )
        .json(&json!({"channel":"chat","data":1,"from":{"user":"alice"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    let body: Value = forged.json().await.unwrap();
    assert_eq!(body["error"]["code"], "from_not_allowed");

    // Everyone but the sender: Bob and the SSE reader get it with its sender.
    alice
        .send(json!({"op":"publish","channel":"chat","data":{"t":"hi"},"exclude_client":alice_id,"id":1}))
        .await;
    assert_eq!(alice.recv().await["op"], "ack");
    let got = next_message(&mut bob).await;
    assert_eq!(got["data"], json!({"t":"hi"}));
    assert_eq!(got["from"], json!({"user":"alice","client":alice_id}));
    let event = sse.next_message().await.json();
    assert_eq!(event["from"]["client"], alice_id.as_str());

    // A backend's publish carries no sender; Alice's next message is it, with no gap.
    let (status, _) = api(
        &node_a,
        "/publish",
        json!({"channel":"chat","data":{"t":"backend"}}),
    )
    .await;
    assert_eq!(status, 200);
    let next = next_message(&mut alice).await;
    assert_eq!(
        (next["op"].as_str(), &next["data"]),
        (Some("message"), &json!({"t":"backend"}))
    );
    assert!(next.get("from").is_none(), "{next}");
    assert_eq!(next_message(&mut bob).await["data"], json!({"t":"backend"}));

    let _ = start;
}

async fn a_poll_is_left_out_of_its_own_broadcast(engine: EngineKind) {
    let gateways = gateways(engine).await;
    let (node_a, node_b) = gateways.nodes.clone();
    let token = token(&node_a.app.config, "carol");
    let (_, first) = node_a
        .get_json(&format!("/poll?channels=chat&token={token}"))
        .await;
    let (session, client) = (
        first["session"].as_str().unwrap().to_owned(),
        first["client"].as_str().unwrap().to_owned(),
    );
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let (status, _) = api(
        &node_a,
        "/publish",
        json!([{"channel":"chat","data":1,"exclude_client":client},{"channel":"chat","data":2}]),
    )
    .await;
    assert_eq!(status, 200);
    // Both long poll and short poll, on the other node, in Carol's session.
    for path in ["/poll", "/longpoll"] {
        let (status, body) = node_b
            .get_json(&format!(
                "{path}?cursor={cursor}&token={token}&session={session}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let data: Vec<&Value> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["data"])
            .collect();
        assert_eq!(data, vec![&json!(2)], "{path}: {body}");
        assert!(body.get("gaps").is_none(), "{body}");
        assert!(body["cursor"].as_str().unwrap().ends_with(":2"), "{body}");
    }
    // Anyone else's poll gets both.
    let (_, body) = node_b.get_json(&format!("/poll?cursor={cursor}")).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 2, "{body}");
}

async fn presence_is_the_same_on_every_node(engine: EngineKind) {
    let gateways = gateways(engine).await;
    let (node_a, node_b) = gateways.nodes.clone();
    let (mut watcher, _) = ws(&node_b, Some("watcher")).await;
    watcher.subscribe(&["room:1"], None).await;
    let (mut alice, alice_id) = ws(&node_a, Some("alice")).await;
    alice.subscribe(&["room:1"], None).await;

    // The watcher sees the joins, its own first, in order with the channel's messages.
    let mut joined = Vec::new();
    while joined.len() < 2 {
        let frame = watcher.recv().await;
        assert_eq!(frame["presence"], "join", "{frame}");
        joined.push(frame["from"]["user"].as_str().unwrap().to_owned());
    }
    assert_eq!(joined, ["watcher", "alice"]);

    for node in [&*node_a, &*node_b] {
        let clients = eventually_present(node, 2).await;
        assert!(
            clients.iter().any(|c| c["client"] == alice_id.as_str()
                && c["user"] == "alice"
                && c["transport"] == "websocket"),
            "{clients:?}"
        );
    }
    // A client asks over its socket.
    alice
        .send(json!({"op":"presence","id":3,"channel":"room:1"}))
        .await;
    let answer = next_message(&mut alice).await;
    assert_eq!(
        (answer["op"].as_str(), answer["id"].as_u64()),
        (Some("presence"), Some(3))
    );
    assert_eq!(answer["clients"].as_array().unwrap().len(), 2, "{answer}");
    // Not where the namespace keeps none.
    alice
        .send(json!({"op":"presence","id":4,"channel":"chat"}))
        .await;
    let refused = next_message(&mut alice).await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_u64()),
        (Some("forbidden"), Some(4))
    );

    drop(alice);
    let leave = watcher.recv().await;
    assert_eq!(
        (leave["presence"].as_str(), leave["from"]["client"].as_str()),
        (Some("leave"), Some(alice_id.as_str()))
    );
    eventually_present(&node_b, 1).await;
}

/// `GET /presence?channel=room:1` with the API key, once it lists `count` clients.
async fn eventually_present(node: &TestServer, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = http()
            .get(node.url("/presence?channel=room:1"))
            .header("X-Cascade-Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["channel"], "room:1");
        let clients = body["clients"].as_array().unwrap().clone();
        if clients.len() == count {
            return clients;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence stuck at {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn the_server_api_reaches_every_session_of_a_user(engine: EngineKind) {
    let gateways = gateways(engine).await;
    let (node_a, node_b) = gateways.nodes.clone();
    let (mut ws_alice, _) = ws(&node_a, Some("dave")).await;
    ws_alice.subscribe(&["lobby"], None).await;
    let token = token(&node_b.app.config, "dave");
    let mut sse = SseClient::connect(&node_b, &format!("channels=lobby&token={token}"), None).await;

    // Not without the API key.
    let anonymous = http()
        .post(node_a.url("/subscribe"))
        .json(&json!({"user":"dave","channel":"news"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 403);

    let (status, body) = api(
        &node_a,
        "/subscribe",
        json!({"user":"dave","channel":"news"}),
    )
    .await;
    assert_eq!((status, &body), (200, &json!({"ok":true})));
    let frame = ws_alice.recv().await;
    assert_eq!(
        (frame["op"].as_str(), &frame["channels"], &frame["server"]),
        (Some("subscribed"), &json!(["news"]), &json!(true))
    );
    let event = loop {
        let event = sse.next().await.expect("sse event");
        if event.event == "subscribed" {
            break event;
        }
    };
    assert_eq!(event.json()["channels"], json!(["news"]));
    let (status, _) = api(
        &node_b,
        "/publish",
        json!({"channel":"news","data":"extra"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut ws_alice).await["data"], "extra");
    assert_eq!(sse.next_message().await.json()["data"], "extra");

    let (status, _) = api(
        &node_b,
        "/unsubscribe",
        json!({"user":"dave","channel":"news"}),
    )
    .await;
    assert_eq!(status, 200);
    let frame = ws_alice.recv().await;
    assert_eq!(
        (frame["op"].as_str(), &frame["channels"]),
        (Some("unsubscribed"), &json!(["news"]))
    );

    let (status, _) = api(&node_b, "/disconnect", json!({"user":"dave"})).await;
    assert_eq!(status, 200);
    assert_eq!(ws_alice.closed().await, (4009, "disconnected".to_owned()));
    let last = loop {
        match sse.next().await {
            Some(event) if event.event == "error" => break event,
            Some(_) => continue,
            None => panic!("the stream ended without an error event"),
        }
    };
    assert_eq!(last.json()["code"], "disconnected");
    // Its polls, on either node, are refused for a while.
    let (status, body) = node_a
        .get_json(&format!("/poll?channels=lobby&token={token}"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("disconnected"))
    );
}

/// A long poll parked when the backend subscribes its user answers at once, naming the
/// channel, from where the channel stood when the backend asked: a message published
/// right after the call is the first the client reads of it.
async fn a_parked_long_poll_learns_a_server_subscription_at_once(engine: EngineKind) {
    let gateways = gateways(engine).await;
    let (node_a, node_b) = gateways.nodes.clone();
    let token = token(&node_a.app.config, "erin");
    let (_, first) = node_a
        .get_json(&format!("/longpoll?channels=lobby&token={token}&timeout=0"))
        .await;
    let session = first["session"].as_str().unwrap().to_owned();
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let parked_path =
        format!("/longpoll?cursor={cursor}&token={token}&session={session}&timeout=20");
    let node = node_a.clone();
    let parked = tokio::spawn(async move { node.get_json(&parked_path).await });
    let series = r#"cascade_connections{transport="longpoll"}"#;
    eventually("the long poll is parked", || async {
        node_a.metric(series).await >= 1.0
    })
    .await;
    let (status, _) = api(
        &node_b,
        "/subscribe",
        json!({"user":"erin","channel":"news"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = api(
        &node_b,
        "/publish",
        json!({"channel":"news","data":"first"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(10), parked)
        .await
        .expect("answered long before its 20 s hold")
        .unwrap();
    assert_eq!(
        (status, &body["subscribed"]),
        (200, &json!(["news"])),
        "{body}"
    );
    let next = body["cursor"].as_str().unwrap();
    assert!(next.contains("news@"), "{body}");
    // The answer may carry the message already (it was published while the poll took
    // the command in); else the next poll from its cursor reads it.
    let (_, then) = node_b
        .get_json(&format!(
            "/poll?cursor={next}&token={token}&session={session}"
        ))
        .await;
    let data: Vec<&Value> = [&body, &then]
        .into_iter()
        .flat_map(|b| b["messages"].as_array().unwrap())
        .map(|m| &m["data"])
        .collect();
    assert_eq!(data, vec![&json!("first")], "{body} then {then}");
}

macro_rules! engines {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(cascade::config::EngineKind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(cascade::config::EngineKind::Redis).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(cascade::config::EngineKind::RedisCluster).await
                }
            )*
        }
    };
}

engines!(
    sender_and_exclusion_reach_every_transport,
    a_poll_is_left_out_of_its_own_broadcast,
    presence_is_the_same_on_every_node,
    the_server_api_reaches_every_session_of_a_user,
    a_parked_long_poll_learns_a_server_subscription_at_once,
);
