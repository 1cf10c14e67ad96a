//! An Engine.IO 4 client by hand, over reqwest and tokio-tungstenite: enough of the
//! protocol to drive a socket's polls and its upgrade from a test, request by request,
//! on whichever node the test names.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::{TestServer, http, within};

/// A WebSocket of an Engine.IO session.
pub type SioWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn url(server: &TestServer, query: &str) -> String {
    server.url(&format!("/socket.io/?EIO=4&transport=polling{query}"))
}

/// Opens a polling session on `server`; its sid.
pub async fn open(server: &TestServer) -> String {
    let text = http()
        .get(url(server, ""))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: Value =
        serde_json::from_str(text.strip_prefix('0').expect("an open packet")).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

/// `POST`s `body` to session `sid` on `server`; the status.
pub async fn post(server: &TestServer, sid: &str, body: &str) -> u16 {
    let response = http()
        .post(url(server, &format!("&sid={sid}")))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// One poll of session `sid` on `server`: its status and body.
pub async fn poll(server: &TestServer, sid: &str) -> (u16, String) {
    let response = http()
        .get(url(server, &format!("&sid={sid}")))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Connects session `sid` to `/` through `server` and reads the answer there: the
/// socket's id (the hooks' `client`).
pub async fn connect(server: &TestServer, sid: &str) -> String {
    assert_eq!(post(server, sid, "40").await, 200);
    let (status, answer) = poll(server, sid).await;
    assert_eq!(status, 200, "{answer}");
    let first = answer.split('\u{1e}').next().unwrap();
    let connected: Value =
        serde_json::from_str(first.strip_prefix("40").expect("a connect answer")).unwrap();
    connected["sid"].as_str().unwrap().to_owned()
}

/// Upgrades session `sid` to a WebSocket on `server`: the probe, then the upgrade packet.
pub async fn upgrade(server: &TestServer, sid: &str) -> SioWs {
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        server.addr
    );
    let (mut ws, _) = within(tokio_tungstenite::connect_async(url))
        .await
        .expect("websocket");
    ws.send(Frame::text("2probe")).await.unwrap();
    loop {
        match within(ws.next()).await {
            Some(Ok(Frame::Text(text))) if text.as_str() == "3probe" => break,
            Some(Ok(Frame::Text(_))) => {}
            other => panic!("no probe answer: {other:?}"),
        }
    }
    ws.send(Frame::text("5")).await.unwrap();
    ws
}

/// Answers the WebSocket's pings for `long`; panics if it closes meanwhile.
pub async fn answer_pings(ws: &mut SioWs, long: std::time::Duration) {
    let until = tokio::time::Instant::now() + long;
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            () = tokio::time::sleep_until(until) => return,
        };
        match frame {
            Some(Ok(Frame::Text(text))) if text.as_str() == "2" => {
                ws.send(Frame::text("3")).await.unwrap();
            }
            Some(Ok(_)) => {}
            other => panic!("the upgraded socket closed: {other:?}"),
        }
    }
}
