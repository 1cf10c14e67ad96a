//! The backend hooks over real sockets: a gateway (memory engine, and redis for the
//! cross-node session) calling a real HTTP backend on 127.0.0.1 that checks every call's
//! signature. Each hook on each transport, refusals, a backend that is down, slow or
//! answers garbage, and the session a polling client carries.

mod support;

use std::time::Duration;

use cascade::config::{Config, HookEvent};
use serde_json::{Value, json};
use support::backend::{Backend, Reply, SECRET};
use support::{SseClient, TestServer, WsClient, eventually, http, test_config, within};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A config whose hooks call `backend` for `events`, with short timeouts.
fn hooked(backend: &Backend, events: &[HookEvent]) -> Config {
    let mut config = test_config();
    config.hooks.url = backend.url();
    config.hooks.events = events.to_vec();
    config.hooks.secret = SECRET.into();
    config.hooks.timeout_ms = 500;
    config.hooks.poll_idle_ms = 400;
    config
}

/// A backend that accepts every connect as alice with `room:granted`, allows every
/// subscribe but `secret`, prefixes published text, and answers `echo` calls.
async fn app_backend() -> Backend {
    Backend::start(|event, body| match event {
        "connect" => Reply::result(json!({
            "user": "alice", "channels": ["room:granted"], "meta": {"name": "Alice"}
        })),
        "subscribe" if body["channel"] == "secret" => Reply::error("no_entry", "not for you"),
        "publish" if body["data"]["text"] == "bad" => Reply::error("rude", "mind your words"),
        "publish" => Reply::result(json!({"data": {"text": format!("[{}] {}", body["user"].as_str().unwrap_or("?"), body["data"]["text"].as_str().unwrap_or(""))}})),
        "rpc" => Reply::result(json!({"method": body["method"], "params": body["params"], "user": body["user"]})),
        _ => Reply::result(Value::Null),
    })
    .await
}

const ALL: [HookEvent; 5] = HookEvent::ALL;

async fn ws_with_cookie(server: &TestServer, query: &str) -> WsClient {
    let mut request = format!("{}?{query}", server.ws_url())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", "sid=abc123".parse().unwrap());
    let (ws, _) = within(tokio_tungstenite::connect_async(request))
        .await
        .expect("websocket connect");
    WsClient { ws }
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = http()
        .get(server.url(path))
        .header("cookie", "sid=abc123")
        .header("user-agent", "hooks-test")
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn connect_begins_a_session_on_every_transport_and_the_user_acts_as_a_tokens_sub() {
    let backend = app_backend().await;
    let server = TestServer::start(hooked(&backend, &ALL)).await;

    // WebSocket: the session frame first; the user's personal channel is readable.
    let mut ws = ws_with_cookie(&server, "channels=x").await;
    let session = ws.recv().await;
    assert_eq!(session["op"], "session", "{session}");
    assert_eq!(session["client"].as_str().unwrap().len(), 22);
    // The connect hook's channels are subscribed without the client asking.
    let granted = ws.recv().await;
    assert_eq!(
        (&granted["op"], &granted["channels"], &granted["server"]),
        (&json!("subscribed"), &json!(["room:granted"]), &json!(true)),
        "{granted}"
    );
    let reply = ws.subscribe(&["user:alice", "room:granted"], None).await;
    assert!(reply.get("refused").is_none(), "{reply}");
    let connect = &backend.calls("connect")[0];
    assert!(connect.signed, "the call is signed");
    assert_eq!(connect.body["transport"], "websocket");
    assert_eq!(connect.body["client"], session["client"]);
    assert_eq!(connect.body["headers"]["cookie"], "sid=abc123");
    assert_eq!(connect.body["query"]["channels"], "x");

    // SSE: the open event names the session, and the channels subscribed for it.
    let mut sse = SseClient::connect(&server, "channels=user:alice", None).await;
    assert_eq!(sse.status, 200);
    let open = sse.next().await.unwrap().json();
    assert!(
        open["session"].is_string() && open["client"].is_string(),
        "{open}"
    );
    assert_eq!(open["subscribed"], json!(["room:granted"]), "{open}");
    assert!(
        open["cursor"].as_str().unwrap().contains("room:granted@"),
        "{open}"
    );

    // Long poll and short poll: the first answer carries the session, at once.
    for (path, transport) in [("/longpoll", "longpoll"), ("/poll", "poll")] {
        let (status, body) = get(&server, &format!("{path}?channels=user:alice")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["session"].is_string(), "{path}: {body}");
        assert_eq!(
            body["subscribed"],
            json!(["room:granted"]),
            "{path}: {body}"
        );
        let last = backend.calls("connect").pop().unwrap();
        assert_eq!(last.body["transport"], transport);
        assert_eq!(last.body["headers"]["user-agent"], "hooks-test");
        assert_eq!(last.body["client"], body["client"]);
        assert!(last.signed);
    }
    assert_eq!(backend.count("connect"), 4);
}

#[tokio::test]
async fn a_polling_session_costs_one_connect_call_not_one_per_poll() {
    let backend = app_backend().await;
    let mut config = hooked(&backend, &ALL);
    config.longpoll.timeout_ms = 50;
    let server = TestServer::start(config).await;
    let (_, first) = get(&server, "/longpoll?channels=user:alice").await;
    let session = first["session"].as_str().unwrap().to_owned();
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    const POLLS: usize = 20;
    for _ in 0..POLLS {
        let (status, body) = get(
            &server,
            &format!("/longpoll?cursor={cursor}&session={session}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("session").is_none(), "no new session: {body}");
        cursor = body["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(backend.count("connect"), 1, "one connect for 21 polls");
    // A forged session is no session: the client is connected again.
    let (_, body) = get(&server, "/poll?channels=user:alice&session=forged.value.x").await;
    assert!(body["session"].is_string(), "{body}");
    assert_eq!(backend.count("connect"), 2);
}

#[tokio::test]
async fn a_refused_connect_reaches_the_client_with_the_backends_code() {
    let backend = Backend::start(|event, _| match event {
        "connect" => Reply::error("banned", "you are banned"),
        _ => Reply::result(Value::Null),
    })
    .await;
    let server = TestServer::start(hooked(&backend, &[HookEvent::Connect])).await;
    for path in [
        "/longpoll?channels=a",
        "/poll?channels=a",
        "/sse?channels=a",
    ] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "banned", "{path}");
        assert_eq!(body["error"]["message"], "you are banned");
    }
    let mut ws = ws_with_cookie(&server, "").await;
    assert_eq!(ws.closed().await, (4003, "banned".into()));
    assert!(
        server
            .metric("cascade_errors_total{code=\"backend_refused\"}")
            .await
            >= 4.0
    );
    assert_eq!(
        server
            .metric("cascade_hook_requests_total{event=\"connect\",result=\"refused\"}")
            .await,
        4.0
    );

    // A code outside a-z 0-9 _ becomes forbidden.
    let odd = Backend::start(|_, _| Reply::error("Not Allowed!", "no")).await;
    let server = TestServer::start(hooked(&odd, &[HookEvent::Connect])).await;
    let (status, body) = get(&server, "/poll?channels=a").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("forbidden"))
    );
}

#[tokio::test]
async fn a_backend_down_slow_or_talking_nonsense_is_backend_unavailable_at_connect() {
    let slow =
        Backend::start(|_, _| Reply::Slow(Duration::from_secs(2), r#"{"result":{}}"#.into())).await;
    let garbage = Backend::start(|_, _| Reply::Json("<html>oops</html>".into())).await;
    let failing = Backend::start(|_, _| Reply::Status(500)).await;
    // Nothing listens on a port just freed.
    let down_url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hooks", listener.local_addr().unwrap())
    };
    for (what, url) in [
        ("slow", slow.url()),
        ("garbage", garbage.url()),
        ("500", failing.url()),
        ("down", down_url),
    ] {
        let mut config = test_config();
        config.hooks.url = url;
        config.hooks.events = vec![HookEvent::Connect];
        config.hooks.timeout_ms = 300;
        let server = TestServer::start(config).await;
        let started = std::time::Instant::now();
        let (status, body) = get(&server, "/longpoll?channels=a").await;
        assert_eq!(status, 503, "{what}: {body}");
        assert_eq!(body["error"]["code"], "backend_unavailable", "{what}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: bounded by the timeout"
        );
        let mut ws = WsClient::connect(&server).await;
        assert_eq!(
            ws.closed().await,
            (4013, "backend_unavailable".into()),
            "{what}"
        );
        // The rest of the node is not slowed: the health check answers at once.
        let (status, _) = server.get_json("/healthz").await;
        assert_eq!(status, 200);
    }
    let server = TestServer::start(hooked(&garbage, &[HookEvent::Connect])).await;
    get(&server, "/poll?channels=a").await;
    assert_eq!(
        server
            .metric("cascade_hook_requests_total{event=\"connect\",result=\"invalid\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_subscribe_hook_decides_each_channel_on_every_transport() {
    let backend = app_backend().await;
    let server = TestServer::start(hooked(&backend, &ALL)).await;
    let expect_refused = |body: &Value| {
        assert_eq!(
            body["refused"],
            json!([{"channel": "secret", "code": "no_entry"}]),
            "{body}"
        );
    };
    let mut ws = ws_with_cookie(&server, "").await;
    ws.recv().await;
    ws.recv().await; // room:granted, subscribed for it by the connect hook
    let reply = ws.subscribe(&["open", "secret"], None).await;
    assert_eq!(reply["channels"], json!(["open"]));
    expect_refused(&reply);
    ws.send(json!({"op": "subscribe", "channels": ["secret"]}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["op"].as_str(), error["code"].as_str()),
        (Some("error"), Some("no_entry"))
    );

    let mut sse = SseClient::connect(&server, "channels=open,secret", None).await;
    expect_refused(&sse.next().await.unwrap().json());
    for path in ["/longpoll", "/poll"] {
        let (status, body) = get(&server, &format!("{path}?channels=open,secret")).await;
        assert_eq!(status, 200);
        expect_refused(&body);
        let (status, body) = get(&server, &format!("{path}?channels=secret")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("no_entry"))
        );
    }
    // Granted by the connect hook: never asked.
    let asked: Vec<Value> = backend
        .calls("subscribe")
        .into_iter()
        .map(|c| c.body)
        .collect();
    assert!(asked.iter().all(|b| b["channel"] != "room:granted"));
    let first = &asked[0];
    assert_eq!(first["user"], "alice");
    assert_eq!(first["meta"], json!({"name": "Alice"}));
    assert!(first["client"].is_string());
    let mut ws = ws_with_cookie(&server, "").await;
    ws.recv().await;
    let granted = ws.recv().await;
    assert_eq!(granted["server"], json!(true), "{granted}");
    ws.subscribe(&["room:granted"], None).await;
    assert!(
        backend
            .calls("subscribe")
            .iter()
            .all(|c| c.body["channel"] != "room:granted")
    );
}

#[tokio::test]
async fn a_poller_is_asked_about_a_channel_once_per_session() {
    let backend = app_backend().await;
    let server = TestServer::start(hooked(&backend, &ALL)).await;
    let (_, first) = get(&server, "/poll?channels=news,sport").await;
    assert_eq!(backend.count("subscribe"), 2);
    let mut session = first["session"].as_str().unwrap().to_owned();
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let (status, body) =
            get(&server, &format!("/poll?cursor={cursor}&session={session}")).await;
        assert_eq!(status, 200, "{body}");
        if let Some(newer) = body["session"].as_str() {
            session = newer.to_owned();
        }
        cursor = body["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(
        backend.count("subscribe"),
        2,
        "remembered in the session value"
    );
    // A new channel is asked about once, and remembered too.
    for _ in 0..3 {
        let (_, body) = get(
            &server,
            &format!("/longpoll?channels=news,weather&session={session}&timeout=0"),
        )
        .await;
        if let Some(newer) = body["session"].as_str() {
            session = newer.to_owned();
        }
    }
    assert_eq!(backend.count("subscribe"), 3);
    assert_eq!(backend.count("connect"), 1);
}

#[tokio::test]
async fn the_publish_hook_replaces_or_refuses_a_clients_publish() {
    let backend = app_backend().await;
    let mut config = hooked(&backend, &ALL);
    config.api_keys = vec!["an-api-key-for-the-tests".into()];
    let server = TestServer::start(config).await;
    let mut reader = ws_with_cookie(&server, "").await;
    reader.recv().await;
    reader.recv().await; // room:granted, subscribed for it by the connect hook
    reader.subscribe(&["chat"], None).await;

    // WebSocket: replaced data is what subscribers get; a refusal is an error frame.
    let mut ws = ws_with_cookie(&server, "").await;
    ws.recv().await;
    ws.recv().await; // room:granted, subscribed for it by the connect hook
    ws.send(json!({"op": "publish", "channel": "chat", "data": {"text": "hi"}, "id": 1}))
        .await;
    assert_eq!(ws.recv().await["op"], "ack");
    assert_eq!(reader.recv().await["data"], json!({"text": "[alice] hi"}));
    ws.send(json!({"op": "publish", "channel": "chat", "data": {"text": "bad"}, "id": 2}))
        .await;
    let refused = ws.recv().await;
    assert_eq!(
        (
            refused["code"].as_str(),
            refused["id"].as_u64(),
            refused["message"].as_str()
        ),
        (Some("rude"), Some(2), Some("mind your words"))
    );

    // HTTP, with the session a poller got: same.
    let (_, first) = get(&server, "/poll?channels=chat").await;
    let session = first["session"].as_str().unwrap();
    let publish = |text: &str| {
        http()
            .post(server.url(&format!("/publish?session={session}")))
            .json(&json!({"channel": "chat", "data": {"text": text}}))
            .send()
    };
    assert_eq!(publish("yo").await.unwrap().status(), 200);
    assert_eq!(reader.recv().await["data"], json!({"text": "[alice] yo"}));
    let response = publish("bad").await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rude");
    let published = backend.calls("publish");
    assert!(
        published
            .iter()
            .all(|c| c.signed && c.body["client"].is_string())
    );

    // A backend's own publish (its API key) is not asked about.
    let before = backend.count("publish");
    let response = http()
        .post(server.url("/publish"))
        .header("x-cascade-api-key", "an-api-key-for-the-tests")
        .json(&json!({"channel": "chat", "data": {"text": "from the backend"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        reader.recv().await["data"],
        json!({"text": "from the backend"})
    );
    assert_eq!(backend.count("publish"), before);
}

#[tokio::test]
async fn rpc_over_websocket_and_post_rpc() {
    let backend = app_backend().await;
    let server = TestServer::start(hooked(&backend, &ALL)).await;
    let mut ws = ws_with_cookie(&server, "").await;
    let session = ws.recv().await;
    ws.recv().await; // room:granted, subscribed for it by the connect hook
    ws.send(json!({"op": "rpc", "id": 7, "method": "login", "params": {"name": "alice"}}))
        .await;
    let answer = ws.recv().await;
    assert_eq!(
        answer,
        json!({"op": "rpc_result", "id": 7, "result": {
            "method": "login", "params": {"name": "alice"}, "user": "alice"}})
    );
    let call = backend.calls("rpc").pop().unwrap();
    assert!(call.signed);
    assert_eq!(call.body["client"], session["client"]);

    let response = http()
        .post(server.url(&format!(
            "/rpc?session={}",
            session["session"].as_str().unwrap()
        )))
        .json(&json!({"method": "echo", "params": [1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["params"], json!([1, 2]));
    assert_eq!(body["result"]["user"], "alice");

    // Bad calls: a method outside the alphabet, params over the message limit.
    ws.send(json!({"op": "rpc", "id": 8, "method": "no spaces"}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("bad_param"), Some(8))
    );
    let big = "x".repeat(70 * 1024);
    ws.send(json!({"op": "rpc", "id": 9, "method": "m", "params": big}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("message_too_large"), Some(9))
    );
}

#[tokio::test]
async fn rpc_failures_and_the_in_flight_bound() {
    let backend = Backend::start(|event, body| match (event, body["method"].as_str()) {
        ("rpc", Some("slow")) => Reply::Slow(Duration::from_millis(1500), r#"{"result":1}"#.into()),
        ("rpc", Some("garbage")) => Reply::Json(r#"{"result":1,"extra":2}"#.into()),
        ("rpc", Some("refuse")) => Reply::error("nope", "not today"),
        _ => Reply::result(json!("ok")),
    })
    .await;
    let mut config = hooked(&backend, &[HookEvent::Rpc]);
    config.hooks.max_rpc_in_flight = 2;
    let server = TestServer::start(config).await;
    let mut ws = WsClient::connect(&server).await;
    ws.recv().await;
    for (id, method) in [(1, "slow"), (2, "slow"), (3, "fast")] {
        ws.send(json!({"op": "rpc", "id": id, "method": method}))
            .await;
    }
    // The third is refused at once; the first two time out at 500 ms.
    let third = ws.recv().await;
    assert_eq!(
        (third["id"].as_u64(), third["code"].as_str()),
        (Some(3), Some("rate_limited"))
    );
    // Deliveries go on while calls are out.
    server.publish("news", json!(1)).await;
    let mut timed_out = Vec::new();
    for _ in 0..2 {
        let frame = ws.recv().await;
        assert_eq!(frame["code"], "backend_timeout", "{frame}");
        timed_out.push(frame["id"].as_u64().unwrap());
    }
    timed_out.sort();
    assert_eq!(timed_out, [1, 2]);
    for (method, code) in [("garbage", "backend_invalid"), ("refuse", "nope")] {
        ws.send(json!({"op": "rpc", "id": 4, "method": method}))
            .await;
        assert_eq!(ws.recv().await["code"], code);
    }
    assert_eq!(
        server
            .metric("cascade_hook_requests_total{event=\"rpc\",result=\"timeout\"}")
            .await,
        2.0
    );
    // Not enabled: POST /rpc is 404, the frame a bad_frame.
    let off = TestServer::start(hooked(&backend, &[HookEvent::Connect])).await;
    let response = http()
        .post(off.url("/rpc"))
        .json(&json!({"method": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn disconnect_is_told_when_a_session_ends_on_every_transport() {
    let backend = app_backend().await;
    let server = TestServer::start(hooked(&backend, &ALL)).await;
    let mut ws = ws_with_cookie(&server, "").await;
    let session = ws.recv().await;
    ws.ws.close(None).await.unwrap();
    let client = session["client"].clone();
    let told = |client: Value| {
        let backend = &backend;
        async move {
            backend
                .calls("disconnect")
                .iter()
                .any(|c| c.body["client"] == client && c.signed)
        }
    };
    eventually("websocket disconnect", || told(client.clone())).await;

    let mut sse = SseClient::connect(&server, "channels=a", None).await;
    let client = sse.next().await.unwrap().json()["client"].clone();
    drop(sse);
    eventually("sse disconnect", || told(client.clone())).await;

    // A poller is gone once it has not polled for hooks.poll_idle_ms (400 here).
    let (_, body) = get(&server, "/poll?channels=a").await;
    let client = body["client"].clone();
    eventually("poll idle disconnect", || told(client.clone())).await;
    let reason = backend
        .calls("disconnect")
        .into_iter()
        .find(|c| c.body["client"] == client)
        .unwrap()
        .body["reason"]
        .clone();
    assert_eq!(reason, "idle");
    assert_eq!(backend.calls("disconnect")[0].body["user"], "alice");
}

#[tokio::test]
async fn hooks_metrics_are_exported() {
    let backend = app_backend().await;
    let server = TestServer::start(hooked(&backend, &ALL)).await;
    get(&server, "/poll?channels=a").await;
    let metrics = server.metrics().await;
    assert!(metrics.contains("cascade_hook_requests_total{event=\"connect\",result=\"ok\"} 1"));
    assert!(metrics.contains("cascade_hook_duration_seconds_count{event=\"connect\"} 1"));
}

fn redis_url() -> String {
    std::env::var("CASCADE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Two nodes on one Redis: a session begun on one is carried to the other by its value,
/// with no second connect call and no sticky sessions; hooks work on the redis engine.
#[tokio::test]
async fn on_redis_a_session_moves_between_nodes_without_another_connect() {
    let backend = app_backend().await;
    let prefix = format!("hooks-{}-{}", std::process::id(), fastrand::u32(..));
    let node = |backend: &Backend| {
        let mut config = hooked(backend, &ALL);
        config.engine = cascade::config::EngineKind::Redis;
        config.redis_url = redis_url();
        config.redis_prefix = prefix.clone();
        // The nodes of a cluster share the secret that signs sessions.
        config
    };
    let (a, b) = (
        TestServer::start(node(&backend)).await,
        TestServer::start(node(&backend)).await,
    );
    for server in [&a, &b] {
        eventually("redis up", || async {
            server.get_json("/readyz").await.0 == 200
        })
        .await;
    }
    let (_, first) = get(&a, "/longpoll?channels=chat").await;
    let session = first["session"].as_str().unwrap().to_owned();
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let poll = tokio::spawn({
        let url = b.url(&format!(
            "/longpoll?cursor={cursor}&session={session}&timeout=5"
        ));
        async move {
            http()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    // Published on node A by the client itself (the publish hook runs there).
    eventually("the poll on b parked", || async {
        b.metric("cascade_connections{transport=\"longpoll\"}")
            .await
            == 1.0
    })
    .await;
    let response = http()
        .post(a.url(&format!("/publish?session={session}")))
        .json(&json!({"channel": "chat", "data": {"text": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = within(poll).await.unwrap();
    assert_eq!(answer["messages"][0]["data"], json!({"text": "[alice] hi"}));
    assert_eq!(backend.count("connect"), 1, "one connect across both nodes");
}

/// The RPC round trip with a backend on the same machine, over WebSocket and over
/// `POST /rpc` (one keep-alive connection each, calls one after another): a measurement,
/// not a check; run with
/// `cargo test --release --test hooks -- --ignored --nocapture measure_rpc_round_trip`.
#[tokio::test]
#[ignore = "a measurement: run it by name"]
async fn measure_rpc_round_trip() {
    const CALLS: u64 = 2000;
    let backend = Backend::start(|_, body| Reply::result(body["params"].clone())).await;
    let mut config = hooked(&backend, &[HookEvent::Rpc]);
    config.hooks.max_rpc_in_flight = 1;
    let server = TestServer::start(config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let report = |what: &str, histogram: &hdrhistogram::Histogram<u64>| {
        println!(
            "{what}: {} calls, p50 {} us, p99 {} us, max {} us",
            histogram.len(),
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.max()
        );
    };

    let mut ws = WsClient::connect(&server).await;
    ws.recv().await;
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for id in 0..CALLS {
        let started = std::time::Instant::now();
        ws.send(json!({"op": "rpc", "id": id, "method": "echo", "params": {"n": id}}))
            .await;
        let answer = ws.recv().await;
        assert_eq!(answer["id"], id);
        histogram
            .record(started.elapsed().as_micros() as u64)
            .unwrap();
        if std::time::Instant::now() > deadline {
            break;
        }
    }
    report("rpc over websocket", &histogram);
    let mut calls = histogram.len();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = server.url("/rpc");
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for id in 0..CALLS {
        let started = std::time::Instant::now();
        let response = client
            .post(&url)
            .json(&json!({"method": "echo", "params": {"n": id}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let _: Value = response.json().await.unwrap();
        histogram
            .record(started.elapsed().as_micros() as u64)
            .unwrap();
        if std::time::Instant::now() > deadline {
            break;
        }
    }
    report("rpc over POST /rpc", &histogram);
    calls += histogram.len();
    assert_eq!(backend.count("rpc") as u64, calls);
}
