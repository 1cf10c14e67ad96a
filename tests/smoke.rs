mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn every_transport_sees_one_publish() {
    let server = TestServer::default().await;
    let mut ws = WsClient::connect(&server).await;
    ws.subscribe(&["chat"], None).await;
    let mut sse = SseClient::connect(&server, "channels=chat", None).await;
    assert_eq!(sse.next().await.unwrap().event, "open");
    let (_, start) = server.get_json("/poll?channels=chat").await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();

    let (epoch, offset) = server.publish("chat", json!({"text": "hi"})).await;
    assert_eq!(offset, 1);

    let m = ws.recv().await;
    assert_eq!(
        (m["op"].as_str(), m["offset"].as_u64()),
        (Some("message"), Some(1))
    );
    let e = sse.next_message().await;
    assert_eq!(e.json()["data"]["text"], "hi");
    assert_eq!(e.id.unwrap(), format!("chat@{epoch}:1"));
    let (status, body) = server.get_json(&format!("/longpoll?cursor={cursor}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["offset"], 1);
    assert_eq!(body["cursor"], format!("chat@{epoch}:1"));
}
