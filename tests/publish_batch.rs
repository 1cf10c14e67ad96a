//! A backend's batch publish: `POST /publish` with an array of messages, published in
//! order and answered each in its place, over real sockets.

mod support;

use serde_json::{Value, json};
use support::{TestServer, WsClient, http, test_config};

const KEY: &str = "batch-test-key";

/// A gateway whose backends publish with [`KEY`].
async fn server() -> TestServer {
    let mut config = test_config();
    config.api_keys = vec![KEY.into()];
    TestServer::start(config).await
}

/// `POST /publish` of `body`, with the backend's key when `keyed`: (status, JSON answer).
async fn post(server: &TestServer, body: &str, keyed: bool) -> (u16, Value) {
    let mut request = http()
        .post(server.url("/publish"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if keyed {
        request = request.header("x-cascade-api-key", KEY);
    }
    let response = request.send().await.expect("publish");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

#[tokio::test]
async fn a_batch_is_published_in_order_and_each_message_answered_in_its_place() {
    let server = server().await;
    let mut ws = WsClient::connect(&server).await;
    ws.subscribe(&["a", "b"], None).await;
    let published = r#"cascade_messages_published_total{via="http"}"#;
    let refused = r#"cascade_errors_total{code="bad_channel"}"#;
    let (published_before, refused_before) =
        (server.metric(published).await, server.metric(refused).await);

    let batch = json!([
        {"channel": "a", "data": {"n": 1}},
        {"channel": "b", "data": {"n": 2}},
        {"channel": "not a channel", "data": {"n": 0}},
        {"channel": "a", "data": {"n": 3}},
    ]);
    let (status, answer) = post(&server, &batch.to_string(), true).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "{answer}");
    assert_eq!(
        (&results[0]["channel"], &results[0]["offset"]),
        (&json!("a"), &json!(1))
    );
    assert_eq!(
        (&results[1]["channel"], &results[1]["offset"]),
        (&json!("b"), &json!(1))
    );
    assert_eq!(results[2]["error"]["code"], "bad_channel", "{answer}");
    assert_eq!(
        (&results[3]["channel"], &results[3]["offset"]),
        (&json!("a"), &json!(2))
    );

    // The subscriber gets them in the batch's order; the refused one is not there.
    let mut got = Vec::new();
    while got.len() < 3 {
        let frame = ws.recv().await;
        if frame["op"] == "message" {
            got.push((frame["channel"].clone(), frame["data"]["n"].clone()));
        }
    }
    assert_eq!(
        got,
        [
            (json!("a"), json!(1)),
            (json!("b"), json!(2)),
            (json!("a"), json!(3))
        ]
    );
    assert_eq!(server.metric(published).await, published_before + 3.0);
    assert_eq!(server.metric(refused).await, refused_before + 1.0);
}

#[tokio::test]
async fn a_batch_needs_a_backend_key_and_a_list_of_messages() {
    let server = server().await;
    let one = json!([{"channel": "a", "data": 1}]).to_string();
    // A user's publish budget counts requests: many messages on one would slip past it.
    let (status, answer) = post(&server, &one, false).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (403, &json!("forbidden"))
    );
    for bad in [
        "[]",
        r#"[{"channel":"a"}]"#,
        r#"[{"channel":"a","data":1},7]"#,
        "[{",
    ] {
        let (status, answer) = post(&server, bad, true).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!("bad_json")),
            "{bad}: {answer}"
        );
    }
    // Nothing of the refused batches was published.
    let (status, answer) = post(&server, &one, true).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["offset"], 1, "{answer}");
}
