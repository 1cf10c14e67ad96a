mod support;

use std::net::SocketAddr;

use cascade::config::Transport;
use futures_util::SinkExt;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn errors_series(code: &str) -> String {
    format!(r#"cascade_errors_total{{code="{code}"}}"#)
}

/// Asserts a refused response: status, `{"error":{"code","message"}}` and JSON type.
async fn assert_refused(response: reqwest::Response, status: u16, code: &str, what: &str) {
    assert_eq!(response.status().as_u16(), status, "{what}");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"), "{what}");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        !message.is_empty(),
        "{what}: a message explains the error: {body}"
    );
}

/// Sends `request`, checks the refusal, and checks `cascade_errors_total{code}` moved by one.
async fn refused(
    server: &TestServer,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &str,
    what: &str,
) {
    let before = server.metric(&errors_series(code)).await;
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_refused(response, status, code, what).await;
    let after = server.metric(&errors_series(code)).await;
    assert_eq!(
        after,
        before + 1.0,
        "{what}: cascade_errors_total{{code={code}}}"
    );
}

async fn refused_get(server: &TestServer, path: &str, status: u16, code: &str) {
    refused(
        server,
        http().get(server.url(path)),
        status,
        code,
        &format!("GET {path}"),
    )
    .await;
}

async fn refused_publish(
    server: &TestServer,
    body: impl Into<reqwest::Body>,
    status: u16,
    code: &str,
    what: &str,
) {
    let request = http()
        .post(server.url("/publish"))
        .header("content-type", "application/json")
        .body(body);
    refused(server, request, status, code, what).await;
}

async fn assert_healthy(server: &TestServer) {
    let (status, body) = server.get_json("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
}

#[tokio::test]
async fn unknown_route_is_not_found() {
    let server = TestServer::default().await;
    for path in ["/nope", "/", "/ws/extra", "/poll/", "/PUBLISH"] {
        refused_get(&server, path, 404, "not_found").await;
    }
    refused(
        &server,
        http().post(server.url("/nope")),
        404,
        "not_found",
        "POST /nope",
    )
    .await;
}

#[tokio::test]
async fn wrong_method_names_the_allowed_one() {
    let server = TestServer::default().await;
    let cases = [
        (Method::POST, "/poll", "GET"),
        (Method::POST, "/longpoll", "GET"),
        (Method::DELETE, "/sse", "GET"),
        (Method::PUT, "/ws", "GET"),
        (Method::POST, "/negotiate", "GET"),
        (Method::POST, "/metrics", "GET, HEAD"),
        (Method::POST, "/healthz", "GET, HEAD"),
        (Method::GET, "/publish", "POST"),
        (Method::PUT, "/publish", "POST"),
    ];
    for (method, path, allow) in cases {
        let what = format!("{method} {path}");
        let before = server.metric(&errors_series("method_not_allowed")).await;
        let response = http()
            .request(method, server.url(path))
            .send()
            .await
            .expect("request");
        let header = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header.as_deref(), Some(allow), "{what}: Allow");
        assert_refused(response, 405, "method_not_allowed", &what).await;
        let after = server.metric(&errors_series("method_not_allowed")).await;
        assert_eq!(after, before + 1.0, "{what}");
    }
}

#[tokio::test]
async fn bad_channel_names_are_refused() {
    let server = TestServer::default().await;
    let long = "x".repeat(129);
    for route in ["/poll", "/longpoll", "/sse"] {
        for channels in ["a%40b", "", "a,,b", "a%20b", "%C3%A9", &long] {
            refused_get(
                &server,
                &format!("{route}?channels={channels}"),
                400,
                "bad_channel",
            )
            .await;
        }
    }
    // 128 characters is still a name.
    let (status, _) = server
        .get_json(&format!("/poll?channels={}", "x".repeat(128)))
        .await;
    assert_eq!(status, 200);

    for channel in ["a,b", "a@b", "", &long, "spa ce"] {
        let body = json!({"channel": channel, "data": 1}).to_string();
        refused_publish(
            &server,
            body,
            400,
            "bad_channel",
            &format!("publish to {channel:?}"),
        )
        .await;
    }
}

#[tokio::test]
async fn missing_channels_are_refused() {
    let server = TestServer::default().await;
    for path in [
        "/poll",
        "/poll?cursor=",
        "/longpoll",
        "/longpoll?timeout=1",
        "/sse",
        "/sse?other=1",
    ] {
        refused_get(&server, path, 400, "no_channels").await;
    }
}

#[tokio::test]
async fn too_many_channels_are_refused() {
    let server = TestServer::default().await;
    let list = |n: usize| {
        (0..n)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (status, body) = server
        .get_json(&format!("/poll?channels={}", list(128)))
        .await;
    assert_eq!(
        status, 200,
        "128 channels is the limit, not over it: {body}"
    );

    for route in ["/poll", "/longpoll", "/sse"] {
        refused_get(
            &server,
            &format!("{route}?channels={}", list(129)),
            400,
            "too_many_channels",
        )
        .await;
    }
    refused_get(
        &server,
        &format!("/poll?channels={}", list(10_000)),
        400,
        "too_many_channels",
    )
    .await;
    // A cursor is a channel list too.
    let cursor = (0..129)
        .map(|i| format!("c{i}@E1:0"))
        .collect::<Vec<_>>()
        .join(",");
    refused_get(
        &server,
        &format!("/poll?cursor={cursor}"),
        400,
        "too_many_channels",
    )
    .await;
    assert_healthy(&server).await;
}

#[tokio::test]
async fn malformed_cursors_are_refused() {
    let server = TestServer::default().await;
    let cursors = [
        "a@",
        "a@e1",
        "a@e1:",
        "a@e1:-1",
        "a@e1:%2B1",
        "a@e1:x",
        "a@e1:1.5",
        "a@e1:99999999999999999999999",
        "a@:1",
        "a@e%21:1",
        "a@aaaaaaaaaaaaaaaaa:1",
        "%40e1:1",
        "a,a",
        "a,",
        "%2Ca",
        "a@e1:1@e2:2",
        "a%20b@e1:1",
    ];
    for cursor in cursors {
        refused_get(
            &server,
            &format!("/poll?cursor={cursor}"),
            400,
            "bad_cursor",
        )
        .await;
        refused_get(
            &server,
            &format!("/longpoll?channels=a&cursor={cursor}"),
            400,
            "bad_cursor",
        )
        .await;
    }
    // On SSE the Last-Event-ID header is a cursor as well.
    let before = server.metric(&errors_series("bad_cursor")).await;
    let response = http()
        .get(server.url("/sse?channels=a"))
        .header("Last-Event-ID", "a@e1:nope")
        .send()
        .await
        .expect("sse");
    assert_refused(response, 400, "bad_cursor", "Last-Event-ID").await;
    assert_eq!(
        server.metric(&errors_series("bad_cursor")).await,
        before + 1.0
    );
}

#[tokio::test]
async fn bad_publish_bodies_are_refused() {
    let server = TestServer::default().await;
    for (body, what) in [
        ("{", "truncated JSON"),
        ("", "empty body"),
        ("not json", "not JSON"),
        ("[]", "not an object"),
        (r#"{"channel":"a","data":}"#, "data without a value"),
        (r#"{"channel":"a","data":1} trailing"#, "trailing garbage"),
        (r#"{"channel":1,"data":1}"#, "channel not a string"),
    ] {
        refused_publish(&server, body, 400, "bad_json", what).await;
    }
    refused_publish(
        &server,
        r#"{"channel":"a"}"#,
        400,
        "bad_json",
        "missing data",
    )
    .await;
    refused_publish(&server, r#"{"data":1}"#, 400, "bad_json", "missing channel").await;
    refused_publish(&server, vec![0xff, 0xfe, 0x00], 400, "bad_json", "binary").await;
    // Nothing was published by any of that.
    assert_eq!(
        server
            .metric(r#"cascade_messages_published_total{via="http"}"#)
            .await,
        0.0
    );
}

/// Error messages quote at most a cut of what the client sent, however much it sent: an
/// error is never a way to make the gateway echo a body back.
#[tokio::test]
async fn errors_do_not_echo_large_inputs() {
    let server = TestServer::default().await;
    let huge = json!("x".repeat(100 * 1024)).to_string();
    let before = server.metric(&errors_series("bad_json")).await;
    let response = http()
        .post(server.url("/publish"))
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status().as_u16(), 400);
    let body = response.bytes().await.expect("body");
    assert!(
        body.len() < 1024,
        "a 100 KiB string got a {} byte error",
        body.len()
    );
    let body: Value = serde_json::from_slice(&body).expect("error body is JSON");
    assert_eq!(body["error"]["code"], "bad_json", "{body}");
    assert_eq!(
        server.metric(&errors_series("bad_json")).await,
        before + 1.0
    );

    // Over WebSocket: a frame just under the frame limit, a JSON string of it.
    let mut ws = WsClient::connect(&server).await;
    let frame = json!("y".repeat(128 * 1024 - 2)).to_string();
    ws.ws.send(WsMessage::text(frame)).await.expect("send");
    let reply = within(futures_util::StreamExt::next(&mut ws.ws))
        .await
        .expect("a reply")
        .expect("a frame");
    let reply = reply.into_text().expect("a text frame");
    assert!(
        reply.len() < 1024,
        "a 128 KiB string got a {} byte error frame",
        reply.len()
    );
    let reply: Value = serde_json::from_str(&reply).expect("JSON frame");
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["code"], "bad_frame", "{reply}");
    assert_eq!(server.metric(&errors_series("bad_frame")).await, 1.0);
}

#[tokio::test]
async fn oversized_bodies_and_messages_are_refused() {
    let mut config = test_config();
    config.limits.max_body_bytes = 32 * 1024;
    config.limits.max_message_bytes = 8 * 1024;
    let server = TestServer::start(config).await;

    // Over the body limit.
    let body = json!({"channel": "big", "data": "x".repeat(40 * 1024)}).to_string();
    refused_publish(&server, body, 413, "body_too_large", "40 KiB body").await;

    // Under the body limit, but data over the message limit.
    let body = json!({"channel": "big", "data": "x".repeat(9 * 1024)}).to_string();
    assert!(body.len() < 32 * 1024);
    refused_publish(&server, body, 413, "message_too_large", "9 KiB data").await;

    // Just under both limits is fine (the quotes count toward the data size).
    let data = "x".repeat(8 * 1024 - 2);
    let (_, offset) = server.publish("big", json!(data)).await;
    assert_eq!(offset, 1);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn bad_params_are_refused() {
    let server = TestServer::default().await;
    for timeout in ["abc", "-1", "1.5", "", "99999999999999999999999", "1s"] {
        refused_get(
            &server,
            &format!("/longpoll?channels=a&timeout={timeout}"),
            400,
            "bad_param",
        )
        .await;
    }
    for failed in ["carrier-pigeon", "sse:Bad%20Reason", "websocket:", "sse:x!"] {
        refused_get(
            &server,
            &format!("/negotiate?failed={failed}"),
            400,
            "bad_param",
        )
        .await;
    }
}

#[tokio::test]
async fn plain_get_on_websocket_route_needs_upgrade() {
    let server = TestServer::default().await;
    refused_get(&server, "/ws", 426, "upgrade_required").await;
    // Half an upgrade is not enough either.
    let request = http()
        .get(server.url("/ws"))
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade");
    refused(
        &server,
        request,
        426,
        "upgrade_required",
        "upgrade without a key",
    )
    .await;
}

#[tokio::test]
async fn disabled_transport_is_not_found_and_not_offered() {
    let mut config = test_config();
    config.transports = vec![Transport::Websocket, Transport::Longpoll, Transport::Poll];
    let server = TestServer::start(config).await;
    refused_get(&server, "/sse?channels=a", 404, "transport_disabled").await;
    // Even a request that would otherwise be refused for its input.
    refused_get(&server, "/sse", 404, "transport_disabled").await;

    let (status, body) = server.get_json("/negotiate").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["transports"]
        .as_array()
        .expect("transports")
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["websocket", "longpoll", "poll"]);
    // The enabled ones still work.
    let (status, _) = server.get_json("/poll?channels=a").await;
    assert_eq!(status, 200);
}

/// Sends raw bytes as one HTTP/1.1 request and returns the response status.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = within(TcpStream::connect(addr)).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    within(stream.read_to_end(&mut response))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    status.parse().expect("numeric status")
}

#[tokio::test]
async fn garbage_query_strings_do_not_hurt_the_server() {
    let server = TestServer::default().await;
    let targets: Vec<Vec<u8>> = vec![
        b"/poll?channels=%FF%FE".to_vec(),
        b"/poll?channels=%C0%80".to_vec(),
        b"/poll?channels=%".to_vec(),
        b"/poll?channels=%zz".to_vec(),
        b"/poll?channels=a%00b".to_vec(),
        b"/poll?cursor=%FF@%FF:%FF".to_vec(),
        b"/poll?&&&==&=&channels".to_vec(),
        b"/longpoll?channels=a&timeout=%FF".to_vec(),
        b"/sse?channels=\xff\xfe".to_vec(),
        b"/poll?channels=\xc3\x28".to_vec(),
        b"/negotiate?failed=%FF:%FF".to_vec(),
        b"/poll?channels=\x01\x02".to_vec(),
        [b"/poll?".as_slice(), "é".repeat(2000).as_bytes()].concat(),
    ];
    for target in &targets {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let status = raw_status(server.addr, &request).await;
        assert!(
            (400..500).contains(&status),
            "{}: status {status}",
            String::from_utf8_lossy(target)
        );
        assert_healthy(&server).await;
    }
    // And a request line that is not HTTP at all.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"\x00\x01\x02 garbage\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = within(stream.read_to_end(&mut sink)).await;
    assert_healthy(&server).await;
}

#[tokio::test]
async fn websocket_bad_frames_get_error_frames_and_stay_open() {
    let server = TestServer::default().await;
    let mut ws = WsClient::connect(&server).await;

    // Invalid JSON.
    ws.ws
        .send(WsMessage::text("{not json"))
        .await
        .expect("send");
    let reply = ws.recv().await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["code"], "bad_json", "{reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Valid JSON, unknown op.
    ws.send(json!({"op": "dance", "channels": ["a"]})).await;
    let reply = ws.recv().await;
    assert_eq!(
        (reply["op"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_frame")),
        "{reply}"
    );

    // A binary frame.
    ws.ws
        .send(WsMessage::binary(b"{\"op\":\"subscribe\"}".to_vec()))
        .await
        .expect("send");
    let reply = ws.recv().await;
    assert_eq!(
        (reply["op"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_frame")),
        "{reply}"
    );

    // A publish to a bad channel echoes the frame's id.
    ws.send(json!({"op": "publish", "channel": "a,b", "data": 1, "id": 7}))
        .await;
    let reply = ws.recv().await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["code"], "bad_channel", "{reply}");
    assert_eq!(reply["id"], 7, "{reply}");

    // A malformed publish still echoes its id when one can be read.
    ws.send(json!({"op": "publish", "channel": "a", "id": 8}))
        .await;
    let reply = ws.recv().await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["id"], 8, "{reply}");

    // The connection is still usable: subscribe and receive.
    ws.subscribe(&["after-errors"], None).await;
    server.publish("after-errors", json!("still here")).await;
    let message = ws.recv().await;
    assert_eq!(message["op"], "message", "{message}");
    assert_eq!(message["data"], "still here");

    for (code, at_least) in [("bad_json", 1.0), ("bad_frame", 2.0), ("bad_channel", 1.0)] {
        assert!(
            server.metric(&errors_series(code)).await >= at_least,
            "cascade_errors_total{{code={code}}}"
        );
    }
    assert_eq!(server.metric(&errors_series("bad_json")).await, 1.0);
    assert_eq!(server.metric(&errors_series("bad_channel")).await, 1.0);
}

#[tokio::test]
async fn websocket_oversized_frame_closes_with_1009() {
    let mut config = test_config();
    config.websocket.max_frame_bytes = 1024;
    let server = TestServer::start(config).await;
    let mut ws = WsClient::connect(&server).await;
    // A frame within the limit is fine.
    ws.subscribe(&["small"], None).await;

    let data = "x".repeat(4096);
    ws.send(json!({"op": "publish", "channel": "small", "data": data}))
        .await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1009, "close reason {reason:?}");
    assert_eq!(
        server.metric(&errors_series("message_too_large")).await,
        1.0
    );
    // Nothing was published, and the server is fine.
    assert_eq!(
        server
            .metric(r#"cascade_messages_published_total{via="websocket"}"#)
            .await,
        0.0
    );
    assert_healthy(&server).await;
}

#[tokio::test]
async fn escaped_json_strings_are_not_refused() {
    let server = TestServer::default().await;
    // `"room\/1"` is valid JSON for "room/1", and how some encoders (PHP's json_encode by
    // default) write it; `\u0061` is "a".
    let response = http()
        .post(server.url("/publish"))
        .header("content-type", "application/json")
        .body(r#"{"channel":"room\/1","data":"line\nbreak"}"#)
        .send()
        .await
        .expect("publish");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel"], "room/1", "{body}");

    let mut ws = WsClient::connect(&server).await;
    ws.ws
        .send(WsMessage::text(
            r#"{"op":"subscribe","channels":["room\/1","\u0061"]}"#,
        ))
        .await
        .expect("send");
    let reply = ws.recv().await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    assert_eq!(reply["channels"], json!(["room/1", "a"]), "{reply}");
    for code in ["bad_json", "bad_frame"] {
        assert_eq!(server.metric(&errors_series(code)).await, 0.0, "{code}");
    }
}
