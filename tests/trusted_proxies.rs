//! Behind a load balancer every client arrives from the balancer's address. With
//! `trusted_proxies`, the gateway takes the client from the balancer's `Forwarded` /
//! `X-Forwarded-For` (and the host from `X-Forwarded-Host`) for its per-IP limit, its
//! publish budget and its same-origin check; from any other peer those headers are
//! ignored. The tests' own address, 127.0.0.1, plays the balancer.

mod support;

use serde_json::{Value, json};
use support::{TestServer, test_config, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(trusted: &[&str]) -> cascade::config::Config {
    let mut config = test_config();
    config.trusted_proxies = trusted.iter().map(|p| p.to_string()).collect();
    config
}

/// Opens an SSE stream with `headers`; the status of its answer and the connection, kept
/// open so that it holds its slot.
async fn stream(server: &TestServer, headers: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!("GET /sse?channels=proxied HTTP/1.1\r\nHost: gw\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    within(stream.read_exact(&mut head))
        .await
        .expect("status line");
    let status = std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap();
    (status, stream)
}

#[tokio::test]
async fn the_per_ip_limit_counts_the_client_a_trusted_proxy_names() {
    let mut config = config(&["127.0.0.0/8"]);
    config.limits.max_connections_per_ip = 2;
    let server = TestServer::start(config).await;
    let alice = "X-Forwarded-For: 203.0.113.7\r\n";
    let (first, _a1) = stream(&server, alice).await;
    let (second, _a2) = stream(&server, alice).await;
    assert_eq!((first, second), (200, 200));
    let (third, _a3) = stream(&server, alice).await;
    assert_eq!(third, 503, "alice is at her limit");
    // The balancer's own address is not: another client still gets in, twice.
    let bob = "Forwarded: for=198.51.100.9;proto=https\r\n";
    let (first, _b1) = stream(&server, bob).await;
    let (second, _b2) = stream(&server, bob).await;
    assert_eq!((first, second), (200, 200));
    let refused = r#"cascade_errors_total{code="too_many_connections"}"#;
    assert_eq!(server.metric(refused).await, 1.0);
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let mut config = config(&["10.0.0.0/8"]);
    config.limits.max_connections_per_ip = 2;
    let server = TestServer::start(config).await;
    let (first, _c1) = stream(&server, "X-Forwarded-For: 203.0.113.1\r\n").await;
    let (second, _c2) = stream(&server, "X-Forwarded-For: 203.0.113.2\r\n").await;
    assert_eq!((first, second), (200, 200));
    // Refused at the accept: 127.0.0.1 is at its limit, whatever the header claims.
    let (third, _c3) = stream(&server, "X-Forwarded-For: 203.0.113.3\r\n").await;
    assert_eq!(third, 503);
}

/// Publishes one message with `forwarded_for` over `client`'s keep-alive connection.
async fn publish_as(server: &TestServer, client: &reqwest::Client, forwarded_for: &str) -> u16 {
    client
        .post(server.url("/publish"))
        .header("X-Forwarded-For", forwarded_for)
        .json(&json!({"channel": "budget", "data": 1}))
        .send()
        .await
        .expect("publish")
        .status()
        .as_u16()
}

#[tokio::test]
async fn each_client_behind_a_trusted_proxy_has_its_own_publish_budget() {
    for (trusted, bob_after_alice) in [(&["127.0.0.1"][..], 200), (&[][..], 429)] {
        let mut config = config(trusted);
        config.limits.publish_rate_per_second = 1;
        config.limits.publish_burst = 2;
        let server = TestServer::start(config).await;
        // One pooled connection carries both clients, as a balancer's does.
        let balancer = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        for _ in 0..2 {
            assert_eq!(publish_as(&server, &balancer, "203.0.113.7").await, 200);
        }
        assert_eq!(publish_as(&server, &balancer, "203.0.113.7").await, 429);
        assert_eq!(
            publish_as(&server, &balancer, "203.0.113.8").await,
            bob_after_alice,
            "trusted: {trusted:?}"
        );
    }
}

/// The page's origin is the host the browser asked the balancer for, which the gateway
/// learns from `X-Forwarded-Host`; only a trusted proxy may say so.
#[tokio::test]
async fn the_same_origin_check_sees_the_forwarded_host_from_a_trusted_proxy() {
    for (trusted, status) in [(&["127.0.0.1"][..], 200), (&[][..], 403)] {
        let server = TestServer::start(config(trusted)).await;
        for path in ["/negotiate", "/healthz"] {
            let response = reqwest::Client::new()
                .get(server.url(path))
                .header("Host", "gateway.internal:8080")
                .header("X-Forwarded-Host", "app.example.com")
                .header("Origin", "https://app.example.com")
                .send()
                .await
                .expect("request");
            assert_eq!(
                response.status().as_u16(),
                status,
                "{path}, trusted: {trusted:?}"
            );
            if status == 403 {
                let body: Value = response.json().await.expect("body");
                assert_eq!(body["error"]["code"], "origin_not_allowed");
            }
        }
    }
}

#[test]
fn a_bad_trusted_proxy_entry_stops_start_up() {
    let err = cascade::config::Config::from_sources(
        "",
        vec![(
            "CASCADE_TRUSTED_PROXIES".to_owned(),
            "10.0.0.0/8,proxy.lan".to_owned(),
        )],
    )
    .expect_err("refused");
    assert!(err.to_string().contains("trusted_proxies"), "{err}");
}
