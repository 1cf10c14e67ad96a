//! Connect tickets: traded for a bearer token at `/negotiate`, used once in a WebSocket or
//! SSE URL instead of the long-lived token.

use std::time::Duration;

use cascade::auth::token::now_secs;
use serde_json::Value;

use super::support::{SseClient, TestServer, within};
use super::*;

/// `/negotiate` with `request`'s credentials; the ticket, if one was issued.
async fn negotiate(request: reqwest::RequestBuilder) -> Option<String> {
    let response = served(request, "negotiate").await;
    let body: Value = response.json().await.expect("json");
    assert!(body["transports"].is_array(), "{body}");
    body.get("ticket")
        .map(|t| t.as_str().expect("ticket is text").to_owned())
}

#[tokio::test]
async fn negotiate_issues_a_ticket_only_for_a_bearer_token() {
    let mut config = secure_config();
    config.api_keys = vec!["backend-key-0123456789".into()];
    let alice = token(&config, "alice", &[], &[], 60);
    let server = TestServer::start(config).await;
    assert_eq!(
        negotiate(get(&server, "/negotiate")).await,
        None,
        "anonymous"
    );
    let by_query = get(&server, &format!("/negotiate?token={alice}"));
    assert_eq!(
        negotiate(by_query).await,
        None,
        "a token in the URL is not traded"
    );
    let by_key = get(&server, "/negotiate").header("x-cascade-api-key", "backend-key-0123456789");
    assert_eq!(negotiate(by_key).await, None, "backends need no ticket");
    let ticket = negotiate(get(&server, "/negotiate").bearer_auth(&alice))
        .await
        .expect("a bearer token gets a ticket");
    assert_eq!(ticket.split('.').count(), 3, "a signed JWT");
    assert_ne!(ticket, alice);
    // The ticket lives for ticket_ttl_ms, not for the token's hour.
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&ticket).expect("claims");
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(
        exp <= now_secs() + 30,
        "ticket exp {exp} within ticket_ttl_ms (30 s)"
    );
}

#[tokio::test]
async fn a_ticket_opens_a_websocket_once() {
    let config = secure_config();
    let alice = token(&config, "alice", &[], &[], 60);
    let server = TestServer::start(config).await;
    let ticket = negotiate(get(&server, "/negotiate").bearer_auth(&alice))
        .await
        .expect("ticket");
    let mut ws = ws_open(&server, &format!("ticket={ticket}"), &[])
        .await
        .expect("ws");
    // The ticket carries alice's identity: her personal channel is hers.
    ws_subscribed(&mut ws, "user:alice").await;
    ws_refused(
        &server,
        &format!("ticket={ticket}"),
        &[],
        4001,
        "token_invalid",
    )
    .await;
    let sse = get(&server, &format!("/sse?channels=news&ticket={ticket}"));
    refused(
        &server,
        sse,
        401,
        "token_invalid",
        "a used ticket, on another transport",
    )
    .await;
}

#[tokio::test]
async fn a_ticket_opens_an_sse_stream_once() {
    let config = secure_config();
    let alice = token(&config, "alice", &[], &[], 60);
    let server = TestServer::start(config).await;
    let ticket = negotiate(get(&server, "/negotiate").bearer_auth(&alice))
        .await
        .expect("ticket");
    let query = format!("channels=user:alice&ticket={ticket}");
    let mut sse = SseClient::connect(&server, &query, None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next().await.expect("open").event, "open");
    let again = get(&server, &format!("/sse?{query}"));
    refused(&server, again, 401, "token_invalid", "second use").await;
    ws_refused(
        &server,
        &format!("ticket={ticket}"),
        &[],
        4001,
        "token_invalid",
    )
    .await;
}

#[tokio::test]
async fn a_ticket_is_not_a_token_and_a_token_is_not_a_ticket() {
    let config = secure_config();
    let alice = token(&config, "alice", &[], &[], 60);
    let server = TestServer::start(config).await;
    let ticket = negotiate(get(&server, "/negotiate").bearer_auth(&alice))
        .await
        .expect("ticket");
    let request = get(
        &server,
        &format!("/poll?channels=user:alice&token={ticket}"),
    );
    refused(&server, request, 401, "token_invalid", "ticket as ?token=").await;
    let request = get(&server, "/poll?channels=user:alice").bearer_auth(&ticket);
    refused(&server, request, 401, "token_invalid", "ticket as bearer").await;
    let request = get(
        &server,
        &format!("/poll?channels=user:alice&ticket={alice}"),
    );
    refused(&server, request, 401, "token_invalid", "token as ?ticket=").await;
    // A bad token gets no ticket.
    let expired = token(&secure_config(), "alice", &[], &[], -10);
    let request = get(&server, "/negotiate").bearer_auth(&expired);
    refused(&server, request, 401, "token_expired", "expired token").await;
    let request = get(&server, "/negotiate").bearer_auth("nonsense");
    refused(&server, request, 401, "token_invalid", "bad token").await;
}

#[tokio::test]
async fn an_expired_ticket_is_refused() {
    let mut config = secure_config();
    config.token.ticket_ttl_ms = 1_000;
    let alice = token(&config, "alice", &[], &[], 3600);
    let server = TestServer::start(config).await;
    let first = negotiate(get(&server, "/negotiate").bearer_auth(&alice))
        .await
        .expect("ticket");
    let second = negotiate(get(&server, "/negotiate").bearer_auth(&alice))
        .await
        .expect("ticket");
    let exp = [&first, &second]
        .iter()
        .map(|t| {
            let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(t).expect("claims");
            claims["exp"].as_u64().expect("exp")
        })
        .max()
        .expect("two");
    assert!(exp <= now_secs() + 1, "a 1 s ticket");
    // Wait out the ticket's own lifetime, no longer.
    within(async {
        while now_secs() <= exp {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let sse = get(&server, &format!("/sse?channels=user:alice&ticket={first}"));
    refused(&server, sse, 401, "token_expired", "expired ticket on /sse").await;
    ws_refused(
        &server,
        &format!("ticket={second}"),
        &[],
        4002,
        "token_expired",
    )
    .await;
}

#[tokio::test]
async fn nodes_sharing_a_secret_accept_each_others_tickets() {
    let mut config = secure_config();
    config.token.ticket_secret = "cluster-ticket-secret-0123456789".into();
    let alice = token(&config, "alice", &[], &[], 60);
    let a = TestServer::start(config.clone()).await;
    let b = TestServer::start(config.clone()).await;
    let mut other = config.clone();
    other.token.ticket_secret = "another-cluster-secret-0123456789".into();
    let c = TestServer::start(other).await;

    let ticket = negotiate(get(&a, "/negotiate").bearer_auth(&alice))
        .await
        .expect("ticket");
    let request = get(&c, &format!("/poll?channels=user:alice&ticket={ticket}"));
    refused(
        &c,
        request,
        401,
        "token_invalid",
        "a node with another ticket_secret",
    )
    .await;
    let mut ws = ws_open(&b, &format!("ticket={ticket}"), &[])
        .await
        .expect("ws on node b");
    ws_subscribed(&mut ws, "user:alice").await;
}

/// The origin is checked before anything else on both HTTP paths: a cross-origin publish
/// that carries a ticket is refused without spending it (on the lean path, identifying the
/// caller once came first and claimed the single-use ticket).
#[tokio::test]
async fn a_cross_origin_publish_does_not_spend_a_ticket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = secure_config();
    let alice = token(&config, "alice", &[], &["chat"], 60);
    let server = TestServer::start(config).await;
    let ticket = negotiate(get(&server, "/negotiate").bearer_auth(&alice))
        .await
        .expect("ticket");
    let body = r#"{"channel":"chat","data":1}"#;
    let request = format!(
        "POST /publish?ticket={ticket} HTTP/1.1\r\nHost: gateway\r\nOrigin: http://evil.example\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer))
        .await
        .expect("answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("origin_not_allowed"), "{answer}");
    // Still unused: it opens a WebSocket.
    let mut ws = ws_open(&server, &format!("ticket={ticket}"), &[])
        .await
        .expect("ws");
    ws_subscribed(&mut ws, "user:alice").await;
}
