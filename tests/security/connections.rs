//! Connection limits (total and per IP), and that refused or misbehaving clients never
//! disturb the deliveries of the clients being served.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::limits::{
    KEY, closed_by_server, connect_from, open_connections, raw_publish, read_response,
};
use super::support::{SseClient, TestServer, WsClient, http, within};
use super::*;

fn connection_config(total: usize, per_ip: usize) -> Config {
    let mut config = secure_config();
    config.api_keys = vec![KEY.into()];
    config.limits.max_connections = total;
    config.limits.max_connections_per_ip = per_ip;
    config
}

/// Connects and expects the raw 503 refusal, then the close.
async fn expect_refused(mut stream: TcpStream, reason: &str) {
    let (status, body) = read_response(&mut stream)
        .await
        .expect("a 503 before the close");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains(reason), "{message}");
    assert!(
        closed_by_server(&mut stream, Duration::from_secs(3)).await,
        "closed after the 503"
    );
}

#[tokio::test]
async fn connections_over_the_total_limit_get_503() {
    let server = TestServer::start(connection_config(3, 0)).await;
    let before = errors(&server, "too_many_connections").await;
    open_connections(&server, 0).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    open_connections(&server, 3).await;
    let extra = TcpStream::connect(server.addr).await.expect("connect");
    expect_refused(extra, "the gateway is at its connection limit").await;
    // A held slot still serves its own requests.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut held[0]).await.expect("response").0, 200);
    drop(held);
    open_connections(&server, 0).await;
    assert_eq!(errors(&server, "too_many_connections").await, before + 1.0);
}

/// A gateway at its connection limit is alive: a liveness probe still gets its 200 (an
/// orchestrator that saw it refused would restart the gateway and drop every connection),
/// while any other request is refused, and counted, as before.
#[tokio::test]
async fn a_liveness_probe_is_answered_at_the_connection_limit() {
    let server = TestServer::start(connection_config(2, 0)).await;
    open_connections(&server, 0).await;
    // Read while a slot is free: at the limit, /metrics is refused like any request.
    let before = errors(&server, "too_many_connections").await;
    open_connections(&server, 0).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    open_connections(&server, 2).await;
    for request in [
        &b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"[..],
        b"GET /healthz?probe=1 HTTP/1.1\r\nHost: gw\r\n\r\n",
    ] {
        let mut probe = TcpStream::connect(server.addr).await.expect("connect");
        probe.write_all(request).await.expect("write");
        let (status, body) = read_response(&mut probe).await.expect("an answer");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ok", "{body}");
    }
    let mut head = TcpStream::connect(server.addr).await.expect("connect");
    head.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    within(tokio::io::AsyncReadExt::read_to_end(&mut head, &mut answer))
        .await
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer}");
    // Anything else, /readyz included, is refused.
    for request in [
        &b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n"[..],
        b"GET /healthzz HTTP/1.1\r\nHost: gw\r\n\r\n",
    ] {
        let mut other = TcpStream::connect(server.addr).await.expect("connect");
        other.write_all(request).await.expect("write");
        let (status, body) = read_response(&mut other).await.expect("an answer");
        assert_eq!(status, 503, "{body}");
    }
    drop(held);
    open_connections(&server, 0).await;
    assert_eq!(errors(&server, "too_many_connections").await, before + 2.0);
}

#[tokio::test]
async fn connections_over_the_per_ip_limit_get_503() {
    let server = TestServer::start(connection_config(100, 2)).await;
    open_connections(&server, 0).await;
    let before = errors(&server, "too_many_connections").await;
    open_connections(&server, 0).await;
    // An upgraded WebSocket keeps its slot for as long as it is open.
    let mut ws = ws_open(&server, "", &[]).await.expect("ws");
    ws_subscribed(&mut ws, "news").await;
    let held = connect_from([127, 0, 0, 1], server.addr).await;
    open_connections(&server, 2).await;
    let extra = connect_from([127, 0, 0, 1], server.addr).await;
    expect_refused(extra, "this address is at its connection limit").await;
    // Another address is not affected.
    let mut other = connect_from([127, 0, 0, 2], server.addr).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut other).await.expect("response").0, 200);
    drop(other);
    // Closing the WebSocket frees its slot.
    ws.ws.close(None).await.expect("close");
    drop(ws);
    drop(held);
    open_connections(&server, 0).await;
    assert_eq!(errors(&server, "too_many_connections").await, before + 1.0);
    served(get(&server, "/healthz"), "slots are free again").await;
}

/// A real HTTP client sends its request as soon as it connects; it must still read the
/// 503, not a connection reset. (Any request but a liveness probe, which is answered.)
#[tokio::test]
async fn a_real_client_over_the_limit_reads_the_503() {
    let server = TestServer::start(connection_config(100, 1)).await;
    open_connections(&server, 0).await;
    let _held = connect_from([127, 0, 0, 1], server.addr).await;
    open_connections(&server, 1).await;
    let mut failures = Vec::new();
    for _ in 0..20 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        match client.get(server.url("/negotiate")).send().await {
            Ok(response) => {
                assert_eq!(response.status().as_u16(), 503);
                let body: serde_json::Value = response.json().await.expect("json");
                assert_eq!(body["error"]["code"], "too_many_connections");
            }
            Err(err) => failures.push(format!("{err:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20 refused clients got an error instead of the 503, e.g. {}",
        failures.len(),
        failures[0]
    );
}

/// A WebSocket client on a socket bound to `ip`.
async fn ws_from(
    ip: [u8; 4],
    server: &TestServer,
    query: &str,
) -> Result<WsClient, tungstenite::Error> {
    let stream = connect_from(ip, server.addr).await;
    let url = format!("{}?{query}", server.ws_url());
    let (ws, _) = within(tokio_tungstenite::client_async(
        url,
        MaybeTlsStream::Plain(stream),
    ))
    .await?;
    Ok(WsClient { ws })
}

#[tokio::test]
async fn refused_clients_never_affect_other_clients_deliveries() {
    let mut config = connection_config(1000, 40);
    config.limits.publish_rate_per_second = 1;
    config.limits.publish_burst = 2;
    config.limits.header_read_timeout_ms = 300;
    config.websocket.max_frame_bytes = 4096;
    config.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(config).await;
    const N: u64 = 200;

    let mut ws = ws_open(&server, "", &[]).await.expect("ws subscriber");
    ws_subscribed(&mut ws, "feed").await;
    let mut sse = SseClient::connect(&server, "channels=feed", None).await;
    assert_eq!(sse.next().await.expect("open").event, "open");

    let publisher = {
        let url = server.url("/publish");
        tokio::spawn(async move {
            let client = http();
            for n in 1..=N {
                let response = client
                    .post(&url)
                    .header("x-cascade-api-key", KEY)
                    .json(&json!({"channel": "feed", "data": {"n": n}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(response.status().as_u16(), 200);
                if n % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    // The misbehaving crowd, all at once, from 127.0.0.2 where they can hit their limit.
    let attacker = [127, 0, 0, 2];
    let addr = server.addr;
    let alice = token(&secure_config(), "alice", &["*"], &["flood"], 60);
    let crowd = async {
        // Over the per-IP limit: 40 held, 10 refused.
        let mut held = Vec::new();
        for _ in 0..40 {
            // Each holds an SSE stream: an idle socket that never sends a request is
            // dropped after header_read_timeout_ms and would free its slot.
            let mut stream = connect_from(attacker, addr).await;
            stream
                .write_all(b"GET /sse?channels=held HTTP/1.1\r\nHost: gw\r\n\r\n")
                .await
                .expect("write");
            held.push(stream);
        }
        for _ in 0..10 {
            expect_refused(connect_from(attacker, addr).await, "address").await;
        }
        drop(held);
    };
    let noise = async {
        let slowloris = async {
            let mut stream = connect_from([127, 0, 0, 3], addr).await;
            let _ = stream.write_all(b"GET /healthz HTT").await;
            closed_by_server(&mut stream, Duration::from_secs(5)).await
        };
        let flood = async {
            let mut conn = connect_from([127, 0, 0, 3], addr).await;
            let header = format!("Authorization: Bearer {alice}\r\n");
            let mut limited = 0;
            for _ in 0..20 {
                conn.write_all(&raw_publish("flood", &header))
                    .await
                    .expect("write");
                if read_response(&mut conn).await.expect("response").0 == 429 {
                    limited += 1;
                }
            }
            limited
        };
        let bad_tokens = async {
            for _ in 0..10 {
                let mut bad = ws_from([127, 0, 0, 3], &server, "token=forged")
                    .await
                    .expect("upgrade");
                assert_eq!(bad.closed().await.0, 4001);
            }
        };
        let foreign = async {
            for _ in 0..10 {
                let request =
                    get(&server, "/sse?channels=feed").header("origin", "https://evil.example");
                assert_eq!(request.send().await.expect("send").status().as_u16(), 403);
            }
        };
        let oversized = async {
            let mut big = ws_from([127, 0, 0, 3], &server, "").await.expect("ws");
            big.ws
                .send(WsMessage::text("x".repeat(10_000)))
                .await
                .expect("send");
            big.closed().await.0
        };
        let channels = async {
            let list: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
            let request = get(&server, &format!("/poll?channels={}", list.join(",")));
            request.send().await.expect("send").status().as_u16()
        };
        tokio::join!(slowloris, flood, bad_tokens, foreign, oversized, channels)
    };
    let ((), (slowloris, limited, (), (), oversized, channels)) =
        within(async { tokio::join!(crowd, noise) }).await;
    assert!(slowloris, "the slowloris client was dropped");
    assert!(limited > 0, "the flood was rate limited");
    assert_eq!(oversized, 1009);
    assert_eq!(channels, 400);

    // Every message reached both subscribers, in order, with nothing missing.
    for n in 1..=N {
        let frame = ws.recv().await;
        assert_eq!(
            (frame["op"].as_str(), frame["offset"].as_u64()),
            (Some("message"), Some(n)),
            "{frame}"
        );
        let event = sse.next_message().await;
        assert_eq!(event.json()["offset"], n);
    }
    within(publisher).await.expect("publisher");
    ws_subscribed(&mut ws, "feed-2").await;
}
