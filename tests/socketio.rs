//! `/socket.io/` over real sockets, without a Socket.IO library: Engine.IO's own answers
//! to bad input (each counted, none costing another session anything), the handshake's
//! fields, and a polling session's connect and delivery on the memory engine. The real
//! clients (socket.io-client, python-socketio) are driven from tests/browser/.

mod support;

use serde_json::{Value, json};
use support::*;

fn url(server: &TestServer, query: &str) -> String {
    server.url(&format!("/socket.io/?{query}"))
}

/// Opens a polling session; its sid.
async fn handshake(server: &TestServer) -> String {
    let text = get_text(&url(server, "EIO=4&transport=polling")).await;
    let open: Value =
        serde_json::from_str(text.strip_prefix('0').expect("an open packet")).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["pingTimeout"], 1000);
    assert_eq!(open["maxPayload"], 4096);
    open["sid"].as_str().unwrap().to_owned()
}

async fn post(server: &TestServer, sid: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    http()
        .post(url(server, &format!("EIO=4&transport=polling&sid={sid}")))
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn poll(server: &TestServer, sid: &str) -> String {
    get_text(&url(server, &format!("EIO=4&transport=polling&sid={sid}"))).await
}

async fn start() -> TestServer {
    let mut config = test_config();
    config.socketio.ping_interval_ms = 300;
    config.socketio.ping_timeout_ms = 1000;
    config.socketio.max_payload_bytes = 4096;
    TestServer::start(config).await
}

/// A bad request: method, query, body, status, Engine.IO code, message, metric label.
type Case = (
    reqwest::Method,
    &'static str,
    &'static [u8],
    u16,
    u64,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn bad_input_gets_engine_io_answers_and_is_counted() {
    let server = start().await;
    let good = handshake(&server).await;
    let cases: [Case; 7] = [
        (
            reqwest::Method::GET,
            "EIO=3&transport=polling",
            b"",
            400,
            5,
            "Unsupported protocol version",
            "socketio_unsupported_protocol_version",
        ),
        (
            reqwest::Method::GET,
            "EIO=4&transport=carrier-pigeon",
            b"",
            400,
            0,
            "Transport unknown",
            "socketio_transport_unknown",
        ),
        (
            reqwest::Method::POST,
            "EIO=4&transport=polling",
            b"40",
            400,
            2,
            "Bad handshake method",
            "socketio_bad_handshake_method",
        ),
        (
            reqwest::Method::GET,
            "EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAAAA",
            b"",
            400,
            1,
            "Session ID unknown",
            "socketio_session_unknown",
        ),
        (
            reqwest::Method::GET,
            "EIO=4&transport=polling&sid=../etc",
            b"",
            400,
            1,
            "Session ID unknown",
            "socketio_session_unknown",
        ),
        (
            reqwest::Method::GET,
            "EIO=4&transport=websocket",
            b"",
            400,
            3,
            "Bad request",
            "socketio_bad_request",
        ),
        (
            reqwest::Method::PUT,
            "EIO=4&transport=polling",
            b"",
            405,
            0,
            "",
            "method_not_allowed",
        ),
    ];
    for (method, query, body, status, code, message, label) in cases {
        let before = server
            .metric(&format!(r#"cascade_errors_total{{code="{label}"}}"#))
            .await;
        let response = http()
            .request(method.clone(), url(&server, query))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {query}");
        if status == 400 {
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer, json!({"code": code, "message": message}), "{query}");
        }
        let after = server
            .metric(&format!(r#"cascade_errors_total{{code="{label}"}}"#))
            .await;
        assert_eq!(after, before + 1.0, "{label} counted");
    }
    // Bad packets and a payload over maxPayload: Bad request, and the session they
    // named is not harmed for it.
    let bad_bodies: [&[u8]; 5] = [b"bAAAA", b"7", b"4x", b"42[1]", &[b'4'; 5000]];
    for body in bad_bodies {
        let response = post(&server, &good, body.to_vec()).await;
        assert_eq!(response.status().as_u16(), 400);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["code"], 3);
    }
    let other = handshake(&server).await;
    assert_eq!(post(&server, &other, "40").await.status().as_u16(), 200);
    assert!(poll(&server, &other).await.starts_with("40{"));
    assert_eq!(post(&server, &good, "40").await.status().as_u16(), 200);
    assert!(poll(&server, &good).await.starts_with("40{"));
}

#[tokio::test]
async fn a_polling_session_connects_and_receives_events_with_offsets() {
    let server = start().await;
    let sid = handshake(&server).await;
    // Nothing pending: held, then a ping.
    let started = std::time::Instant::now();
    assert_eq!(poll(&server, &sid).await, "2");
    assert!(started.elapsed().as_millis() >= 250);
    assert_eq!(post(&server, &sid, "3").await.text().await.unwrap(), "ok");
    // A connect to a namespace not served, then to `/`, in one payload.
    assert_eq!(
        post(&server, &sid, "40/admin,\u{1e}40")
            .await
            .status()
            .as_u16(),
        200
    );
    let answer = poll(&server, &sid).await;
    let packets: Vec<&str> = answer.split('\u{1e}').collect();
    assert_eq!(packets[0], r#"44/admin,{"message":"Invalid namespace"}"#);
    let connected: Value = serde_json::from_str(packets[1].strip_prefix("40").unwrap()).unwrap();
    assert!(connected["sid"].as_str().is_some() && connected["pid"].as_str().is_some());
    // Without hooks there is no backend to call: an emit that asks for an ack gets the
    // error as its argument.
    assert_eq!(
        post(&server, &sid, r#"421["hello",1]"#)
            .await
            .status()
            .as_u16(),
        200
    );
    let ack = poll(&server, &sid).await;
    assert!(ack.starts_with("431[{\"error\""), "{ack}");
    let polling = r#"cascade_connections_total{transport="socketio-polling"}"#;
    assert!(server.metric(polling).await >= 5.0);
}

/// Connects session `sid` with `auth`; the CONNECT answer's object.
async fn connect(server: &TestServer, sid: &str, auth: &Value) -> Value {
    assert_eq!(
        post(server, sid, format!("40{auth}"))
            .await
            .status()
            .as_u16(),
        200
    );
    let answer = poll(server, sid).await;
    let first = answer.split('\u{1e}').next().unwrap();
    serde_json::from_str(first.strip_prefix("40").expect("a connect answer")).unwrap()
}

#[tokio::test]
async fn recovery_holds_after_a_short_disconnect_and_not_after_a_long_one() {
    let mut config = test_config();
    config.socketio.ping_interval_ms = 300;
    config.socketio.ping_timeout_ms = 300;
    config.socketio.recovery_ms = 300;
    // Without hooks the socket is granted no room; the offset names `chat`, which the
    // rules let anyone read, and is checked like any cursor a client sends.
    let server = TestServer::start(config).await;
    let sid = handshake_with(&server, 300, 300).await;
    let first = connect(&server, &sid, &json!({})).await;
    let pid = first["pid"].as_str().unwrap().to_owned();
    let (epoch, offset) = server.publish("chat", json!({"n": 1})).await;
    let offset_text = format!("chat@{epoch}:{offset}");
    // Missed while away: delivered on recovery, in order, after the answer.
    server.publish("chat", json!({"n": 2})).await;
    let again = handshake_with(&server, 300, 300).await;
    let auth = json!({"pid": pid, "offset": offset_text});
    assert_eq!(
        post(&server, &again, format!("40{auth}"))
            .await
            .status()
            .as_u16(),
        200
    );
    let answer = poll(&server, &again).await;
    let packets: Vec<&str> = answer.split('\u{1e}').collect();
    let recovered: Value = serde_json::from_str(packets[0].strip_prefix("40").unwrap()).unwrap();
    assert_eq!(recovered["pid"], pid.as_str(), "recovered: the same pid");
    assert_eq!(recovered["sid"], first["sid"], "the same socket id");
    let missed = if packets.len() > 1 {
        packets[1].to_owned()
    } else {
        poll(&server, &again).await
    };
    assert!(
        missed.starts_with(r#"42["message",{"n":2},"chat@"#),
        "{missed}"
    );
    // Long after its last sign of life: a new socket, not recovered.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let late = handshake_with(&server, 300, 300).await;
    let answer = connect(&server, &late, &json!({"pid": pid, "offset": offset_text})).await;
    assert_ne!(answer["pid"], pid.as_str(), "not recovered");
    assert_ne!(answer["sid"], first["sid"]);
}

/// Opens a polling session on a server with these ping settings; its sid.
async fn handshake_with(server: &TestServer, interval: u64, timeout: u64) -> String {
    let text = get_text(&url(server, "EIO=4&transport=polling")).await;
    let open: Value = serde_json::from_str(text.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(
        (open["pingInterval"].as_u64(), open["pingTimeout"].as_u64()),
        (Some(interval), Some(timeout))
    );
    open["sid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_publishs_event_reaches_cascades_own_clients_too() {
    let server = start().await;
    let (_, before) = server.get_json("/poll?channels=chat").await;
    let cursor = before["cursor"].as_str().unwrap().to_owned();
    let publish = |body: Value| http().post(server.url("/publish")).json(&body).send();
    let response = publish(json!({"channel": "chat", "event": "news", "data": {"n": 1}}));
    assert_eq!(response.await.unwrap().status().as_u16(), 200);
    let (_, body) = server.get_json(&format!("/poll?cursor={cursor}")).await;
    let message = &body["messages"][0];
    assert_eq!(message["event"], "news", "{body}");
    assert_eq!(message["data"], json!({"n": 1}));
    let bad = publish(json!({"channel": "chat", "event": "no spaces", "data": 1}));
    let bad = bad.await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let answer: Value = bad.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "bad_param");
}

#[tokio::test]
async fn a_socket_follows_the_channels_its_auth_asks_for_where_the_rules_allow() {
    let server = start().await;
    let sid = handshake(&server).await;
    let answer = connect(&server, &sid, &json!({"channels": ["chat", "user:bob"]})).await;
    assert!(answer["pid"].is_string(), "{answer}");
    server.publish("chat", json!({"n": 1})).await;
    let mut got = String::new();
    while !got.contains("42[") {
        got = poll(&server, &sid).await;
    }
    assert!(got.starts_with(r#"42["message",{"n":1},"chat@"#), "{got}");
    // Nothing allowed: the connect is refused, with the code.
    let other = handshake(&server).await;
    assert_eq!(
        post(&server, &other, r#"40{"channels":["user:bob"]}"#)
            .await
            .status()
            .as_u16(),
        200
    );
    let refused = poll(&server, &other).await;
    let error: Value = serde_json::from_str(refused.strip_prefix("44").unwrap()).unwrap();
    assert!(error["data"]["code"].is_string(), "{refused}");
}

#[tokio::test]
async fn a_websocket_that_answers_no_ping_is_closed_and_one_that_does_stays() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Frame;
    let server = start().await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let started = std::time::Instant::now();
    let (mut silent, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut polite, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut pings = 0;
    // The polite one answers every ping for 2 s; the silent one is closed meanwhile,
    // after the ping interval (300 ms) and timeout (1000 ms).
    let mut silent_closed = None;
    while started.elapsed() < std::time::Duration::from_secs(2) {
        tokio::select! {
            frame = silent.next(), if silent_closed.is_none() => {
                if !matches!(frame, Some(Ok(Frame::Text(_)))) {
                    silent_closed = Some(started.elapsed());
                }
            }
            frame = polite.next() => {
                let Some(Ok(Frame::Text(text))) = frame else { panic!("polite closed: {frame:?}") };
                if text.as_str() == "2" {
                    pings += 1;
                    polite.send(Frame::text("3")).await.unwrap();
                }
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
    }
    let closed = silent_closed.expect("the silent client is closed");
    assert!(
        closed >= std::time::Duration::from_millis(1200),
        "{closed:?}"
    );
    assert!(pings >= 4, "{pings} pings answered");
}

#[tokio::test]
async fn no_client_reads_or_writes_a_session_mailbox() {
    let server = start().await;
    let sid = handshake(&server).await;
    let (status, body) = server.get_json(&format!("/poll?channels=sio:{sid}")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let response = http()
        .post(server.url("/publish"))
        .json(&json!({"channel": format!("sio:{sid}"), "data": "40{}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
}
