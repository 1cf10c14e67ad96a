//! Refused channels: a subscribing request on any transport is served with the channels
//! the rules allow and names the ones they refuse; only a request left with none is
//! refused, and its error names them all. Each refused channel is counted once.

use serde_json::{Value, json};

use super::support::{SseClient, TestServer, http, within};
use super::*;

const KEY: &str = "refusals-backend-key-0123456789";

/// Secure defaults (`user:*` readable by its owner only) and a backend key to publish.
async fn server() -> (TestServer, String) {
    let mut config = secure_config();
    config.api_keys = vec![KEY.into()];
    let alice = token(&config, "alice", &[], &[], 600);
    (TestServer::start(config).await, alice)
}

/// Publishes `{"n":n}` to `channel` as the backend.
async fn publish_as_backend(server: &TestServer, channel: &str, n: u64) {
    let response = http()
        .post(server.url("/publish"))
        .header("x-cascade-api-key", KEY)
        .json(&json!({"channel": channel, "data": {"n": n}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 200, "publish to {channel}");
}

fn refusal(channel: &str, code: &str) -> Value {
    json!({"channel": channel, "code": code})
}

/// A poll (`/poll` or `/longpoll`) for `chat` and `user:bob`: 200 for `chat` alone,
/// naming `user:bob`, and the message published to `chat` arrives on the next poll.
async fn poll_leaves_out_the_refused_channel(path: &str) {
    let (server, alice) = server().await;
    let before = errors(&server, "forbidden").await;
    let (status, body) = server
        .get_json(&format!(
            "{path}?channels=chat,user:bob&timeout=0&token={alice}"
        ))
        .await;
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["refused"], json!([refusal("user:bob", "forbidden")]));
    let cursor = body["cursor"].as_str().expect("cursor").to_owned();
    assert!(cursor.starts_with("chat@"), "{cursor}");
    assert!(!cursor.contains("user:bob"), "{cursor}");
    assert_eq!(errors(&server, "forbidden").await, before + 1.0);

    publish_as_backend(&server, "user:bob", 0).await;
    publish_as_backend(&server, "chat", 1).await;
    // Still naming user:bob (as a client that did not drop it would): served the same way.
    let (status, body) = server
        .get_json(&format!(
            "{path}?channels=chat,user:bob&cursor={cursor}&timeout=5&token={alice}"
        ))
        .await;
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["messages"][0]["channel"], "chat");
    assert_eq!(body["messages"][0]["data"]["n"], 1);
    assert_eq!(body["refused"], json!([refusal("user:bob", "forbidden")]));
    // A poll for the allowed channels alone names nothing.
    let next = body["cursor"].as_str().expect("cursor");
    let (status, body) = server
        .get_json(&format!("{path}?cursor={next}&timeout=0&token={alice}"))
        .await;
    assert_eq!(status, 200, "{path}: {body}");
    assert!(body.get("refused").is_none(), "{path}: {body}");
}

#[tokio::test]
async fn a_poll_is_served_without_its_forbidden_channel() {
    poll_leaves_out_the_refused_channel("/poll").await;
}

#[tokio::test]
async fn a_long_poll_is_served_without_its_forbidden_channel() {
    poll_leaves_out_the_refused_channel("/longpoll").await;
}

/// A long poll that leaves a channel out answers at once instead of holding: the client
/// learns of the refusal before it waits.
#[tokio::test]
async fn a_long_poll_that_refuses_a_channel_answers_at_once() {
    let (server, alice) = server().await;
    let started = std::time::Instant::now();
    let (status, body) = server
        .get_json(&format!(
            "/longpoll?channels=chat,user:bob&timeout=30&token={alice}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "held"
    );
    assert_eq!(body["messages"], json!([]));
    assert_eq!(body["refused"], json!([refusal("user:bob", "forbidden")]));
    // Once the client asks for the allowed channels alone, the poll is held as usual, and
    // a message published meanwhile wakes it.
    let cursor = body["cursor"].as_str().expect("cursor").to_owned();
    let url = server.url(&format!(
        "/longpoll?cursor={cursor}&timeout=10&token={alice}"
    ));
    let poll = tokio::spawn(async move { http().get(url).send().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the poll is held");
    publish_as_backend(&server, "chat", 7).await;
    let response = within(poll).await.expect("task").expect("long poll");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["messages"][0]["data"]["n"], 7, "{body}");
    assert!(body.get("refused").is_none(), "{body}");
}

#[tokio::test]
async fn an_sse_stream_opens_without_its_forbidden_channel_and_names_it() {
    let (server, alice) = server().await;
    let before = errors(&server, "forbidden").await;
    let mut sse = SseClient::connect(
        &server,
        &format!("channels=chat,user:bob&token={alice}"),
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    let open = sse.next().await.expect("open");
    assert_eq!(open.event, "open");
    let data = open.json();
    assert_eq!(data["refused"], json!([refusal("user:bob", "forbidden")]));
    let id = open.id.expect("id");
    assert_eq!(data["cursor"], id.as_str());
    assert!(id.starts_with("chat@") && !id.contains("user:bob"), "{id}");
    assert_eq!(errors(&server, "forbidden").await, before + 1.0);
    publish_as_backend(&server, "user:bob", 0).await;
    publish_as_backend(&server, "chat", 1).await;
    let message = sse.next_message().await.json();
    assert_eq!(
        (&message["channel"], &message["data"]["n"]),
        (&json!("chat"), &json!(1))
    );
}

#[tokio::test]
async fn a_websocket_subscribe_follows_the_allowed_channels_and_names_the_others() {
    let (server, alice) = server().await;
    let mut ws = ws_open(&server, &format!("token={alice}"), &[])
        .await
        .expect("ws");
    let before = errors(&server, "forbidden").await;
    ws.send(json!({"op": "subscribe", "channels": ["chat", "user:bob"]}))
        .await;
    let reply = ws.recv().await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    assert_eq!(reply["channels"], json!(["chat"]));
    assert_eq!(reply["refused"], json!([refusal("user:bob", "forbidden")]));
    assert!(!reply["cursor"].as_str().unwrap().contains("user:bob"));
    assert_eq!(errors(&server, "forbidden").await, before + 1.0);
    publish_as_backend(&server, "user:bob", 0).await;
    publish_as_backend(&server, "chat", 1).await;
    let message = ws.recv().await;
    assert_eq!(
        (&message["op"], &message["channel"]),
        (&json!("message"), &json!("chat"))
    );
    assert_eq!(message["data"]["n"], 1);
}

/// Without a token, a channel that needs one is refused as `token_invalid`, alone.
#[tokio::test]
async fn an_anonymous_request_is_served_without_the_channels_that_need_a_token() {
    let (server, _) = server().await;
    let before = errors(&server, "token_invalid").await;
    let (status, body) = server.get_json("/poll?channels=chat,user:bob,news").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["refused"],
        json!([refusal("user:bob", "token_invalid")])
    );
    let cursor = body["cursor"].as_str().unwrap();
    assert!(
        cursor.starts_with("chat@") && cursor.contains(",news@"),
        "{cursor}"
    );
    assert_eq!(errors(&server, "token_invalid").await, before + 1.0);
}

/// A request left with no channel is refused as before, and its error names each one,
/// each counted.
#[tokio::test]
async fn a_request_refused_for_every_channel_names_them_all() {
    let (server, alice) = server().await;
    let both = json!([
        refusal("user:bob", "forbidden"),
        refusal("user:eve", "forbidden")
    ]);
    for path in ["/poll", "/longpoll", "/sse"] {
        let before = errors(&server, "forbidden").await;
        let response = get(
            &server,
            &format!("{path}?channels=user:bob,user:eve&timeout=0&token={alice}"),
        )
        .send()
        .await
        .expect(path);
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "forbidden", "{path}: {body}");
        assert_eq!(body["refused"], both, "{path}");
        assert_eq!(errors(&server, "forbidden").await, before + 2.0, "{path}");
    }
    let mut ws = ws_open(&server, &format!("token={alice}"), &[])
        .await
        .expect("ws");
    let before = errors(&server, "forbidden").await;
    ws.send(json!({"op": "subscribe", "channels": ["user:bob", "user:eve"]}))
        .await;
    let reply = ws.recv().await;
    assert_eq!(
        (&reply["op"], &reply["code"]),
        (&json!("error"), &json!("forbidden"))
    );
    assert_eq!(reply["refused"], both);
    assert_eq!(errors(&server, "forbidden").await, before + 2.0);
    // The connection goes on: an allowed subscribe is served.
    ws_subscribed(&mut ws, "chat").await;
    // Anonymous: 401 token_invalid, naming the channel.
    let (status, body) = server.get_json("/poll?channels=user:bob").await;
    assert_eq!(status, 401);
    assert_eq!(
        body["refused"],
        json!([refusal("user:bob", "token_invalid")])
    );
}

/// Other errors still refuse the whole request, and name no channel.
#[tokio::test]
async fn other_errors_still_refuse_the_whole_request() {
    let (server, _) = server().await;
    for (query, status, code) in [
        ("channels=chat,user:bob&cursor=chat@", 400, "bad_cursor"),
        ("channels=chat,a%20b,user:bob", 400, "bad_channel"),
        (
            "channels=chat,user:bob&token=nonsense",
            401,
            "token_invalid",
        ),
    ] {
        let (got, body) = server.get_json(&format!("/poll?{query}")).await;
        assert_eq!(got, status, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}");
        assert!(body.get("refused").is_none(), "{query}: {body}");
    }
}
