//! Client tokens: each claim, malformed and expired tokens on every transport, and tokens
//! that expire while a stream is open.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cascade::auth::rules::{NamespaceConfig, PublishRule, SubscribeRule};
use cascade::auth::token::now_secs;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::support::{SseClient, TestServer, within};
use super::*;

fn namespace(subscribe: SubscribeRule, publish: PublishRule) -> NamespaceConfig {
    NamespaceConfig {
        subscribe,
        publish,
        history_max_messages: None,
        history_max_age_ms: None,
        ..NamespaceConfig::default()
    }
}

/// Unix time with sub-second precision.
fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[tokio::test]
async fn claims_sub_channels_and_publish_decide_access() {
    let mut config = secure_config();
    config.namespaces.insert(
        "vip".into(),
        namespace(SubscribeRule::Token, PublishRule::Token),
    );
    let alice = token(&config, "alice", &["vip:gold*"], &["room:*"], 60);
    let everything = token(&config, "eve", &["*"], &[], 60);
    let server = TestServer::start(config).await;
    let poll = |channel: &str, token: &str| {
        get(&server, &format!("/poll?channels={channel}")).bearer_auth(token)
    };

    // channels: patterns with '*' wildcards.
    served(poll("vip:gold", &alice), "channels claim vip:gold*").await;
    served(poll("vip:golden", &alice), "wildcard matches a longer name").await;
    refused(
        &server,
        poll("vip:silver", &alice),
        403,
        "forbidden",
        "no matching claim",
    )
    .await;
    // sub: the personal channel, whatever the channels claim says.
    served(poll("user:alice", &alice), "own personal channel").await;
    refused(
        &server,
        poll("user:bob", &alice),
        403,
        "forbidden",
        "someone else's",
    )
    .await;
    refused(
        &server,
        poll("user:bob", &everything),
        403,
        "forbidden",
        "'*' is not ownership",
    )
    .await;
    served(poll("vip:x", &everything), "'*' matches any shared channel").await;
    // publish: patterns too; the default namespace needs a matching claim.
    served(
        publish(&server, "room:lobby", 1).bearer_auth(&alice),
        "publish claim room:*",
    )
    .await;
    refused(
        &server,
        publish(&server, "news", 1).bearer_auth(&alice),
        403,
        "forbidden",
        "no publish claim",
    )
    .await;
    refused(
        &server,
        publish(&server, "room:lobby", 1).bearer_auth(&everything),
        403,
        "forbidden",
        "channels claim is not a publish claim",
    )
    .await;

    // The same decisions over the other transports.
    let sse = |channel: &str| get(&server, &format!("/sse?channels={channel}")).bearer_auth(&alice);
    served(sse("vip:gold"), "sse").await;
    refused(&server, sse("vip:silver"), 403, "forbidden", "sse").await;
    let longpoll = get(&server, "/longpoll?channels=vip:silver&timeout=0").bearer_auth(&alice);
    refused(&server, longpoll, 403, "forbidden", "longpoll").await;
    let mut ws = ws_open(&server, &format!("token={alice}"), &[])
        .await
        .expect("ws");
    ws_subscribed(&mut ws, "vip:gold").await;
    ws_subscribed(&mut ws, "user:alice").await;
    ws_error(
        &server,
        &mut ws,
        json!({"op":"subscribe","channels":["vip:silver"]}),
        "forbidden",
    )
    .await;
    ws_error(
        &server,
        &mut ws,
        json!({"op":"subscribe","channels":["user:bob"]}),
        "forbidden",
    )
    .await;
    ws.send(json!({"op":"publish","channel":"room:x","data":1,"id":1}))
        .await;
    assert_eq!(ws.recv().await["op"], "ack");
    let reply = ws_error(
        &server,
        &mut ws,
        json!({"op":"publish","channel":"news","data":1,"id":2}),
        "forbidden",
    )
    .await;
    assert_eq!(reply["id"], 2, "the refused publish's id is echoed");
    // Refusals leave the connection open and its subscriptions live.
    ws.send(json!({"op":"publish","channel":"room:x","data":2,"id":3}))
        .await;
    assert_eq!(ws.recv().await["op"], "ack");
}

/// A token signed with `key` over arbitrary claims, for shapes `Claims` cannot express.
fn raw_token(claims: serde_json::Value, algorithm: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).expect("encode")
}

#[tokio::test]
async fn malformed_tokens_are_invalid() {
    let config = secure_config();
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    let exp = now_secs() + 60;
    let unsigned = {
        use std::io::Write as _;
        // alg "none": header and claims, no signature.
        let mut out = Vec::new();
        let b64 = |v: &serde_json::Value| {
            let text = v.to_string();
            base64_url(text.as_bytes())
        };
        write!(
            out,
            "{}.{}.",
            b64(&json!({"alg":"none","typ":"JWT"})),
            b64(&json!({"sub":"alice","exp":exp}))
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    };
    let other_secret =
        EncodingKey::from_secret(b"another-secret-of-more-than-16-bytes").expect("key");
    let cases: Vec<(&str, String)> = vec![
        (
            "no exp",
            raw_token(json!({"sub":"alice"}), Algorithm::HS256, &key),
        ),
        (
            "no sub",
            raw_token(json!({"exp":exp}), Algorithm::HS256, &key),
        ),
        (
            "exp as text",
            raw_token(
                json!({"sub":"alice","exp":exp.to_string()}),
                Algorithm::HS256,
                &key,
            ),
        ),
        (
            "channels not a list",
            raw_token(
                json!({"sub":"alice","exp":exp,"channels":"*"}),
                Algorithm::HS256,
                &key,
            ),
        ),
        (
            "HS384 with the right secret",
            raw_token(json!({"sub":"alice","exp":exp}), Algorithm::HS384, &key),
        ),
        (
            "another secret",
            raw_token(
                json!({"sub":"alice","exp":exp}),
                Algorithm::HS256,
                &other_secret,
            ),
        ),
        ("alg none", unsigned),
        ("garbage", "not-a-token".into()),
        ("two segments", "a.b".into()),
        (
            "over 8 KiB",
            format!(
                "{}.{}.{}",
                "a".repeat(3000),
                "b".repeat(3000),
                "c".repeat(3000)
            ),
        ),
    ];
    let server = TestServer::start(config).await;
    for (what, bad) in &cases {
        let request = get(&server, "/poll?channels=news").bearer_auth(bad);
        refused(&server, request, 401, "token_invalid", what).await;
        let request = get(&server, &format!("/poll?channels=news&token={bad}"));
        refused(&server, request, 401, "token_invalid", what).await;
    }
    // Authorization must be a bearer token; anything else is refused, not ignored.
    for header in ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Token abc", "bearer"] {
        let request = get(&server, "/poll?channels=news").header("authorization", header);
        refused(&server, request, 401, "token_invalid", header).await;
    }
}

/// Unpadded base64url, for hand-built tokens.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn tokens_are_refused_when_no_key_is_configured() {
    let mut config = secure_config();
    let valid = token(&config, "alice", &[], &[], 60);
    config.token.hmac_secret = "".into();
    let server = TestServer::start(config).await;
    served(
        get(&server, "/poll?channels=news"),
        "anonymous reads need no key",
    )
    .await;
    let request = get(&server, "/poll?channels=news").bearer_auth(&valid);
    refused(
        &server,
        request,
        401,
        "token_invalid",
        "no key to verify with",
    )
    .await;
    ws_refused(
        &server,
        &format!("token={valid}"),
        &[],
        4001,
        "token_invalid",
    )
    .await;
}

/// Every transport refuses `token` with `status`/`close` and `code`.
async fn refused_everywhere(server: &TestServer, token: &str, status: u16, close: u16, code: &str) {
    for path in [
        "/poll?channels=news",
        "/longpoll?channels=news&timeout=0",
        "/sse?channels=news",
        "/negotiate",
    ] {
        let request = get(server, path).bearer_auth(token);
        refused(
            server,
            request,
            status,
            code,
            &format!("{path} with Bearer"),
        )
        .await;
        let sep = if path.contains('?') { '&' } else { '?' };
        let request = get(server, &format!("{path}{sep}token={token}"));
        refused(
            server,
            request,
            status,
            code,
            &format!("{path} with ?token="),
        )
        .await;
    }
    let request = publish(server, "news", 1).bearer_auth(token);
    refused(server, request, status, code, "/publish with Bearer").await;
    ws_refused(server, &format!("token={token}"), &[], close, code).await;
    let auth = bearer(token);
    ws_refused(server, "", &[(auth.0, &auth.1)], close, code).await;
}

#[tokio::test]
async fn expired_tokens_are_refused_on_every_transport() {
    let config = secure_config();
    let expired = token(&config, "alice", &["*"], &["*"], -10);
    let server = TestServer::start(config).await;
    refused_everywhere(&server, &expired, 401, 4002, "token_expired").await;
}

#[tokio::test]
async fn badly_signed_tokens_are_refused_on_every_transport() {
    let config = secure_config();
    let mut forged = token(&config, "alice", &["*"], &["*"], 60);
    // Flip one character of the signature.
    let last = forged.pop().expect("non-empty");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let server = TestServer::start(config).await;
    refused_everywhere(&server, &forged, 401, 4001, "token_invalid").await;
}

/// A token for alice that expires two seconds from now, and its `exp`.
fn short_lived(config: &Config) -> (String, u64) {
    let exp = now_secs() + 2;
    (token_until(config, "alice", &[], &[], exp), exp)
}

#[tokio::test]
async fn a_websocket_closes_with_4002_when_its_token_expires() {
    let config = secure_config();
    let (token, exp) = short_lived(&config);
    let server = TestServer::start(config).await;
    let mut by_token = ws_open(&server, &format!("token={token}"), &[])
        .await
        .expect("ws");
    ws_subscribed(&mut by_token, "user:alice").await;
    // A connect ticket carries the token's expiry, not its own.
    let response = served(get(&server, "/negotiate").bearer_auth(&token), "negotiate").await;
    let body: serde_json::Value = response.json().await.expect("json");
    let ticket = body["ticket"].as_str().expect("ticket").to_owned();
    let mut by_ticket = ws_open(&server, &format!("ticket={ticket}"), &[])
        .await
        .expect("ws");
    ws_subscribed(&mut by_ticket, "user:alice").await;

    for ws in [&mut by_token, &mut by_ticket] {
        let (code, reason) = ws.closed().await;
        assert_eq!((code, reason.as_str()), (4002, "token_expired"));
        assert!(now_f64() >= exp as f64, "closed before the token's exp");
    }
}

#[tokio::test]
async fn an_sse_stream_ends_with_token_expired_when_its_token_expires() {
    let config = secure_config();
    let (token, exp) = short_lived(&config);
    let server = TestServer::start(config).await;
    let mut sse =
        SseClient::connect(&server, &format!("channels=user:alice&token={token}"), None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next().await.expect("open").event, "open");
    let error = loop {
        let event = sse
            .next()
            .await
            .expect("the stream reports the expiry before ending");
        if event.event != "message" {
            break event;
        }
    };
    assert_eq!(error.event, "error");
    assert_eq!(error.json()["code"], "token_expired");
    assert!(now_f64() >= exp as f64, "ended before the token's exp");
    assert!(
        sse.next().await.is_none(),
        "the stream ends after the error event"
    );
}

/// Expiry is checked before the subscription on every turn: a stream with a backlog
/// still ends when its token does, not when the backlog is written.
#[tokio::test]
async fn an_sse_stream_with_a_backlog_still_ends_when_its_token_expires() {
    const BACKLOG: usize = 4000;
    let mut config = secure_config();
    config.limits.subscriber_queue = 10_000;
    let (token, exp) = short_lived(&config);
    let server = TestServer::start(config).await;
    let mut sse =
        SseClient::connect(&server, &format!("channels=user:alice&token={token}"), None).await;
    assert_eq!(sse.next().await.expect("open").event, "open");
    // 16 MB, published in-process in well under the token's two seconds.
    let channel = cascade::protocol::Channel::parse("user:alice").expect("channel");
    let data = bytes::Bytes::from(format!(r#"{{"pad":"{}"}}"#, "z".repeat(4096)));
    for _ in 0..BACKLOG {
        server
            .app
            .bus
            .publish(&channel, data.clone())
            .await
            .expect("publish");
    }
    // A slow reader: the server's writes keep finding more queued.
    let mut read = 0;
    let error = loop {
        let event = sse.next().await.expect("the stream reports the expiry");
        if event.event != "message" {
            break event;
        }
        read += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert_eq!(error.json()["code"], "token_expired", "{error:?}");
    assert!(now_f64() >= exp as f64, "ended before the token's exp");
    assert!(
        read < BACKLOG,
        "the stream outlived its token until all {BACKLOG} messages were written"
    );
}

#[tokio::test]
async fn a_long_poll_is_held_no_longer_than_its_token() {
    let mut config = secure_config();
    config.longpoll.timeout_ms = 30_000;
    let (token, exp) = short_lived(&config);
    let server = TestServer::start(config).await;
    let started = Instant::now();
    let response = served(
        get(&server, "/longpoll?channels=user:alice&timeout=30").bearer_auth(&token),
        "long poll",
    )
    .await;
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["messages"], json!([]));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held {:?}, past the token's expiry",
        started.elapsed()
    );
    // The next poll with the same token is refused as expired.
    within(async {
        while now_secs() <= exp {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let request = get(&server, "/longpoll?channels=user:alice").bearer_auth(&token);
    refused(&server, request, 401, "token_expired", "the next poll").await;
}

/// Expiry while a stream is open ends it with `token_expired`; operators should see that
/// in `cascade_errors_total` as they do for tokens that arrive expired.
#[tokio::test]
async fn expiry_mid_stream_is_counted_in_errors_total() {
    let config = secure_config();
    let (token, _) = short_lived(&config);
    let server = TestServer::start(config).await;
    let before = errors(&server, "token_expired").await;
    let mut ws = ws_open(&server, &format!("token={token}"), &[])
        .await
        .expect("ws");
    let mut sse =
        SseClient::connect(&server, &format!("channels=user:alice&token={token}"), None).await;
    assert_eq!(ws.closed().await.0, 4002);
    while let Some(event) = sse.next().await {
        if event.event == "error" {
            break;
        }
    }
    let after = errors(&server, "token_expired").await;
    assert_eq!(
        after,
        before + 2.0,
        "a WebSocket closed with 4002 and an SSE stream ended with token_expired are counted"
    );
}

#[tokio::test]
async fn the_token_subcommand_mints_tokens_the_gateway_accepts() {
    let run = |secret: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
            .env_remove("CASCADE_CONFIG")
            .env("CASCADE_TOKEN_HMAC_SECRET", secret)
            .env("CASCADE_LOG", "error")
            .arg("token")
            .args(args)
            .output()
            .expect("run cascade token")
    };
    let output = run(
        SECRET,
        &[
            "--sub",
            "alice",
            "--channels",
            "vip:*",
            "--publish",
            "room:*,news",
            "--ttl",
            "2m",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let minted = String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    let claims = Auth::from_config(&secure_config())
        .expect("auth")
        .verify_token(&minted)
        .expect("the gateway verifies what the subcommand signs");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.channels, vec!["vip:*"]);
    assert_eq!(claims.publish, vec!["room:*", "news"]);
    assert!(
        (now_secs() + 110..=now_secs() + 120).contains(&claims.exp),
        "ttl 2m"
    );
    let server = TestServer::start(secure_config()).await;
    served(
        publish(&server, "news", 1).bearer_auth(&minted),
        "minted token publishes",
    )
    .await;

    let no_secret = run("", &["--sub", "alice"]);
    assert!(!no_secret.status.success(), "no secret, no token");
    let short = run("short", &["--sub", "alice"]);
    assert!(
        !short.status.success(),
        "a secret under 16 bytes is refused"
    );
    let bad_ttl = run(SECRET, &["--sub", "alice", "--ttl", "1y"]);
    assert!(!bad_ttl.status.success(), "unknown ttl unit");
}
