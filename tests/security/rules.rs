//! Channel rules: every namespace rule for publish and subscribe, personal channels, API
//! keys, the secure defaults of a gateway without a config file, and the env overrides.

use cascade::auth::rules::{NamespaceConfig, PublishRule, SubscribeRule};
use serde_json::{Value, json};

use super::support::{TestServer, http};
use super::*;

const KEY_OLD: &str = "backend-key-old-0123456789";
const KEY_NEW: &str = "backend-key-new-0123456789";

fn namespace(subscribe: SubscribeRule, publish: PublishRule) -> NamespaceConfig {
    NamespaceConfig {
        subscribe,
        publish,
        history_max_messages: None,
        history_max_age_ms: None,
        ..NamespaceConfig::default()
    }
}

/// Who is asking, as request headers.
#[derive(Clone, Copy, Debug)]
enum Who<'a> {
    Anonymous,
    Token(&'a str),
    Key(&'a str),
}

impl Who<'_> {
    fn apply(self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Who::Anonymous => request,
            Who::Token(token) => request.bearer_auth(token),
            Who::Key(key) => request.header("x-cascade-api-key", key),
        }
    }

    fn headers(self) -> Vec<(&'static str, String)> {
        match self {
            Who::Anonymous => vec![],
            Who::Token(token) => vec![bearer(token)],
            Who::Key(key) => vec![("x-cascade-api-key", key.to_owned())],
        }
    }
}

/// `None` for allowed, or the refusal `(status, code)`.
type Expect = Option<(u16, &'static str)>;
const OK: Expect = None;
const NEEDS_TOKEN: Expect = Some((401, "token_invalid"));
const FORBIDDEN: Expect = Some((403, "forbidden"));

async fn check_publish(server: &TestServer, who: Who<'_>, channel: &str, expect: Expect) {
    let what = format!("{who:?} publishes to {channel}");
    let request = who.apply(publish(server, channel, 1));
    match expect {
        None => drop(served(request, &what).await),
        Some((status, code)) => drop(refused(server, request, status, code, &what).await),
    }
    // The same decision over a WebSocket publish frame (API keys included).
    let headers = who.headers();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut ws = ws_open(server, "", &headers).await.expect("ws");
    let frame = json!({"op": "publish", "channel": channel, "data": 1, "id": 5});
    match expect {
        None => {
            ws.send(frame).await;
            assert_eq!(ws.recv().await["op"], "ack", "{what} over ws");
        }
        Some((_, code)) => drop(ws_error(server, &mut ws, frame, code).await),
    }
}

async fn check_subscribe(server: &TestServer, who: Who<'_>, channel: &str, expect: Expect) {
    let what = format!("{who:?} subscribes to {channel}");
    for path in ["/poll", "/sse", "/longpoll"] {
        let request = who.apply(get(server, &format!("{path}?channels={channel}&timeout=0")));
        match expect {
            None => drop(served(request, &format!("{what} via {path}")).await),
            Some((status, code)) => {
                drop(refused(server, request, status, code, &format!("{what} via {path}")).await)
            }
        }
    }
    let headers = who.headers();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut ws = ws_open(server, "", &headers).await.expect("ws");
    match expect {
        None => ws_subscribed(&mut ws, channel).await,
        Some((_, code)) => {
            let frame = json!({"op": "subscribe", "channels": [channel]});
            drop(ws_error(server, &mut ws, frame, code).await)
        }
    }
}

#[tokio::test]
async fn publish_rules_per_namespace() {
    let mut config = secure_config();
    config.api_keys = vec![KEY_NEW.into()];
    for (name, rule) in [
        ("pa", PublishRule::Anyone),
        ("pu", PublishRule::Authenticated),
        ("pt", PublishRule::Token),
        ("po", PublishRule::Owner),
        ("ps", PublishRule::Server),
    ] {
        config
            .namespaces
            .insert(name.into(), namespace(SubscribeRule::Anyone, rule));
    }
    let alice = token(&config, "alice", &["*"], &[], 60);
    let carol = token(&config, "carol", &[], &["pt:*", "po:*", "ps:*"], 60);
    let server = TestServer::start(config).await;
    let (anon, alice, carol, key) = (
        Who::Anonymous,
        Who::Token(&alice),
        Who::Token(&carol),
        Who::Key(KEY_NEW),
    );
    let table: Vec<(Who, &str, Expect)> = vec![
        // anyone
        (anon, "pa:x", OK),
        (alice, "pa:x", OK),
        // authenticated: any valid token
        (anon, "pu:x", NEEDS_TOKEN),
        (alice, "pu:x", OK),
        // token: a matching publish claim
        (anon, "pt:x", NEEDS_TOKEN),
        (alice, "pt:x", FORBIDDEN),
        (carol, "pt:x", OK),
        // owner: the user named after the namespace, or a matching publish claim
        (anon, "po:alice", NEEDS_TOKEN),
        (alice, "po:alice", OK),
        (alice, "po:bob", FORBIDDEN),
        (alice, "po:alice:extra", FORBIDDEN),
        (carol, "po:bob", OK),
        // server: API keys only, whatever the token says
        (anon, "ps:x", NEEDS_TOKEN),
        (alice, "ps:x", FORBIDDEN),
        (carol, "ps:x", FORBIDDEN),
        (key, "ps:x", OK),
        // the default namespace (no ':' or no configured namespace): token
        (anon, "news", NEEDS_TOKEN),
        (alice, "other:x", FORBIDDEN),
        (key, "news", OK),
    ];
    for (who, channel, expect) in table {
        check_publish(&server, who, channel, expect).await;
    }
}

#[tokio::test]
async fn subscribe_rules_per_namespace() {
    let mut config = secure_config();
    config.api_keys = vec![KEY_NEW.into()];
    for (name, rule) in [
        ("sa", SubscribeRule::Anyone),
        ("su", SubscribeRule::Authenticated),
        ("st", SubscribeRule::Token),
        ("so", SubscribeRule::Owner),
    ] {
        config
            .namespaces
            .insert(name.into(), namespace(rule, PublishRule::Server));
    }
    let alice = token(&config, "alice", &[], &["*"], 60);
    let carol = token(&config, "carol", &["st:gold", "so:*"], &[], 60);
    let server = TestServer::start(config).await;
    let (anon, alice, carol, key) = (
        Who::Anonymous,
        Who::Token(&alice),
        Who::Token(&carol),
        Who::Key(KEY_NEW),
    );
    let table: Vec<(Who, &str, Expect)> = vec![
        (anon, "sa:x", OK),
        (anon, "su:x", NEEDS_TOKEN),
        (alice, "su:x", OK),
        (anon, "st:gold", NEEDS_TOKEN),
        (alice, "st:gold", FORBIDDEN),
        (carol, "st:gold", OK),
        (carol, "st:silver", FORBIDDEN),
        (anon, "so:alice", NEEDS_TOKEN),
        (alice, "so:alice", OK),
        (alice, "so:bob", FORBIDDEN),
        // Owner means ownership; a channels claim does not stand in for it.
        (carol, "so:alice", FORBIDDEN),
        (key, "so:alice", OK),
        (key, "st:silver", OK),
    ];
    for (who, channel, expect) in table {
        check_subscribe(&server, who, channel, expect).await;
    }
}

#[tokio::test]
async fn personal_channels_are_readable_only_by_their_owner() {
    let mut config = secure_config();
    config.api_keys = vec![KEY_NEW.into()];
    // Even configured as open, user:* stays owner-only to read.
    config.namespaces.insert(
        "user".into(),
        namespace(SubscribeRule::Anyone, PublishRule::Token),
    );
    config.channels = namespace(SubscribeRule::Anyone, PublishRule::Anyone);
    let alice = token(&config, "alice", &["*", "user:*"], &[], 60);
    let bob = token(&config, "bob", &[], &[], 60);
    let server = TestServer::start(config.clone()).await;
    let (anon, alice_who, bob_who) = (Who::Anonymous, Who::Token(&alice), Who::Token(&bob));
    check_subscribe(&server, alice_who, "user:alice", OK).await;
    check_subscribe(&server, bob_who, "user:alice", FORBIDDEN).await;
    check_subscribe(&server, alice_who, "user:bob", FORBIDDEN).await;
    check_subscribe(&server, anon, "user:alice", NEEDS_TOKEN).await;
    check_subscribe(&server, Who::Key(KEY_NEW), "user:alice", OK).await;
    // Publish on user:* follows [namespaces.user] publish: token by default.
    check_publish(&server, alice_who, "user:alice", FORBIDDEN).await;
    check_publish(&server, Who::Key(KEY_NEW), "user:alice", OK).await;
    drop(server);

    // `[namespaces.user] publish = "owner"` from a file, and the same from the environment.
    let file = "[namespaces.user]\npublish = \"owner\"\n";
    let env = [(
        "CASCADE_NAMESPACES_USER_PUBLISH".to_owned(),
        "owner".to_owned(),
    )];
    for (toml, env) in [(file, vec![]), ("", env.to_vec())] {
        let loaded = Config::from_sources(toml, env).expect("config");
        assert_eq!(loaded.namespaces["user"].publish, PublishRule::Owner);
        let mut config = secure_config();
        config.namespaces = loaded.namespaces;
        let server = TestServer::start(config).await;
        check_publish(&server, alice_who, "user:alice", OK).await;
        check_publish(&server, bob_who, "user:alice", FORBIDDEN).await;
        check_publish(&server, anon, "user:alice", NEEDS_TOKEN).await;
        // A [namespaces.user] section that leaves subscribe out still reads as owner.
        check_subscribe(&server, bob_who, "user:alice", FORBIDDEN).await;
    }
}

#[tokio::test]
async fn api_keys_rotate_and_unknown_keys_are_refused() {
    // Rotation: the gateway accepts both keys while backends move to the new one...
    let mut both = secure_config();
    both.api_keys = vec![KEY_OLD.into(), KEY_NEW.into()];
    both.channels = namespace(SubscribeRule::Anyone, PublishRule::Server);
    let server = TestServer::start(both.clone()).await;
    for key in [KEY_OLD, KEY_NEW] {
        check_publish(&server, Who::Key(key), "news", OK).await;
        check_subscribe(&server, Who::Key(key), "user:alice", OK).await;
    }
    // ...then drops the old one.
    let mut rotated = both.clone();
    rotated.api_keys = vec![KEY_NEW.into()];
    let server = TestServer::start(rotated).await;
    check_publish(&server, Who::Key(KEY_NEW), "news", OK).await;
    let request = publish(&server, "news", 1).header("x-cascade-api-key", KEY_OLD);
    refused(&server, request, 401, "token_invalid", "the retired key").await;

    // An unknown key is an error everywhere, never anonymous access.
    for bad in [
        "",
        "backend-key-new-012345678",
        "backend-key-new-01234567890",
        "BACKEND-KEY-NEW-0123456789",
    ] {
        let request = publish(&server, "pa", 1).header("x-cascade-api-key", bad);
        refused(
            &server,
            request,
            401,
            "token_invalid",
            &format!("key {bad:?}"),
        )
        .await;
        let request = get(&server, "/poll?channels=news").header("x-cascade-api-key", bad);
        refused(
            &server,
            request,
            401,
            "token_invalid",
            &format!("key {bad:?}"),
        )
        .await;
        ws_refused(
            &server,
            "",
            &[("x-cascade-api-key", bad)],
            4001,
            "token_invalid",
        )
        .await;
    }
    // A key is a header of its own: not a bearer token, not a query parameter.
    let request = publish(&server, "news", 1).bearer_auth(KEY_NEW);
    refused(&server, request, 401, "token_invalid", "key as bearer").await;
    let request = http()
        .post(server.url(&format!("/publish?api_key={KEY_NEW}&key={KEY_NEW}")))
        .json(&json!({"channel": "news", "data": 1}));
    refused(&server, request, 401, "token_invalid", "key in the query").await;

    // CASCADE_API_KEYS is comma-separated.
    let env = [(
        "CASCADE_API_KEYS".to_owned(),
        format!("{KEY_OLD}, {KEY_NEW}"),
    )];
    let config = Config::from_sources("", env).expect("config");
    let keys: Vec<&str> = config.api_keys.iter().map(|k| k.expose()).collect();
    assert_eq!(keys, [KEY_OLD, KEY_NEW]);
    assert!(
        !format!("{config:?}").contains(KEY_OLD),
        "keys never show in Debug output"
    );
}

#[tokio::test]
async fn secure_defaults_without_a_config_file() {
    let env = vec![("CASCADE_TOKEN_HMAC_SECRET".to_owned(), SECRET.to_owned())];
    let mut config = Config::from_sources("", env).expect("defaults");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    assert_eq!(config.channels.subscribe, SubscribeRule::Anyone);
    assert_eq!(config.channels.publish, PublishRule::Token);
    assert_eq!(config.namespaces["user"].subscribe, SubscribeRule::Owner);
    assert_eq!(config.namespaces["user"].publish, PublishRule::Token);
    assert!(config.api_keys.is_empty() && config.allowed_origins.is_empty());
    assert!(!config.cors_credentials && !config.demo);
    let limits = &config.limits;
    assert_eq!(
        (limits.max_connections, limits.max_connections_per_ip),
        (50_000, 1000)
    );
    assert_eq!(
        (limits.publish_rate_per_second, limits.publish_burst),
        (20, 50)
    );
    assert_eq!(
        (limits.header_read_timeout_ms, limits.body_read_timeout_ms),
        (10_000, 10_000)
    );
    assert_eq!(
        (
            limits.max_body_bytes,
            limits.max_message_bytes,
            limits.max_channels
        ),
        (128 * 1024, 64 * 1024, 128)
    );
    assert_eq!(config.websocket.max_frame_bytes, 128 * 1024);
    assert_eq!(config.token.ticket_ttl_ms, 30_000);

    let alice = token(&config, "alice", &[], &["room:*"], 60);
    let server = TestServer::start(config).await;
    check_subscribe(&server, Who::Anonymous, "news", OK).await;
    check_subscribe(&server, Who::Anonymous, "room:lobby", OK).await;
    check_subscribe(&server, Who::Anonymous, "user:alice", NEEDS_TOKEN).await;
    check_subscribe(&server, Who::Token(&alice), "user:alice", OK).await;
    check_publish(&server, Who::Anonymous, "news", NEEDS_TOKEN).await;
    check_publish(&server, Who::Token(&alice), "news", FORBIDDEN).await;
    check_publish(&server, Who::Token(&alice), "room:lobby", OK).await;
    let request = publish(&server, "news", 1).header("x-cascade-api-key", "any-key-0123456789");
    refused(
        &server,
        request,
        401,
        "token_invalid",
        "no API key is configured",
    )
    .await;
    let request = get(&server, "/poll?channels=news").header("origin", "https://elsewhere.example");
    refused(
        &server,
        request,
        403,
        "origin_not_allowed",
        "no origin is allowed by default",
    )
    .await;
}

#[tokio::test]
async fn namespaces_override_history_retention() {
    let mut config = secure_config();
    config.api_keys = vec![KEY_NEW.into()];
    config.namespaces.insert(
        "brief".into(),
        NamespaceConfig {
            history_max_messages: Some(2),
            ..namespace(SubscribeRule::Anyone, PublishRule::Server)
        },
    );
    let server = TestServer::start(config).await;
    let mut epochs = Vec::new();
    for channel in ["brief:x", "long:x"] {
        for n in 1..=5 {
            let request = publish(&server, channel, n).header("x-cascade-api-key", KEY_NEW);
            let body: Value = served(request, "publish").await.json().await.expect("ack");
            epochs.push(body["epoch"].as_str().expect("epoch").to_owned());
        }
    }
    let history =
        |channel: &str, epoch: &str| get(&server, &format!("/poll?cursor={channel}@{epoch}:0"));
    let brief: Value = served(history("brief:x", &epochs[0]), "poll")
        .await
        .json()
        .await
        .expect("json");
    let long: Value = served(history("long:x", &epochs[5]), "poll")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        brief["messages"].as_array().expect("messages").len(),
        2,
        "{brief}"
    );
    assert_eq!(brief["gaps"].as_array().map(Vec::len), Some(1), "{brief}");
    assert_eq!(
        long["messages"].as_array().expect("messages").len(),
        5,
        "{long}"
    );
}

#[test]
fn every_security_key_has_an_environment_override() {
    let env: Vec<(String, String)> = [
        ("CASCADE_TOKEN_HMAC_SECRET", SECRET),
        ("CASCADE_TOKEN_ALGORITHM", "HS256"),
        ("CASCADE_TOKEN_PUBLIC_KEY_FILE", ""),
        ("CASCADE_TOKEN_TICKET_SECRET", "ticket-secret-0123456789"),
        ("CASCADE_TOKEN_TICKET_TTL_MS", "5000"),
        ("CASCADE_API_KEYS", "k1,k2"),
        (
            "CASCADE_ALLOWED_ORIGINS",
            "https://a.example,https://b.example",
        ),
        ("CASCADE_CORS_CREDENTIALS", "true"),
        ("CASCADE_CHANNELS_SUBSCRIBE", "authenticated"),
        ("CASCADE_CHANNELS_PUBLISH", "server"),
        ("CASCADE_NAMESPACES_USER_PUBLISH", "anyone"),
        ("CASCADE_LIMITS_MAX_CONNECTIONS", "10"),
        ("CASCADE_LIMITS_MAX_CONNECTIONS_PER_IP", "3"),
        ("CASCADE_LIMITS_PUBLISH_RATE_PER_SECOND", "7"),
        ("CASCADE_LIMITS_PUBLISH_BURST", "9"),
        ("CASCADE_LIMITS_HEADER_READ_TIMEOUT_MS", "1500"),
        ("CASCADE_LIMITS_BODY_READ_TIMEOUT_MS", "2500"),
        ("CASCADE_LIMITS_MAX_BODY_BYTES", "4096"),
        ("CASCADE_LIMITS_MAX_MESSAGE_BYTES", "2048"),
        ("CASCADE_LIMITS_MAX_CHANNELS", "16"),
        ("CASCADE_WEBSOCKET_MAX_FRAME_BYTES", "8192"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = Config::from_sources("", env).expect("config");
    assert_eq!(c.token.hmac_secret.expose(), SECRET);
    assert_eq!(c.token.ticket_secret.expose(), "ticket-secret-0123456789");
    assert_eq!(c.token.ticket_ttl_ms, 5000);
    assert_eq!(c.api_keys.len(), 2);
    assert_eq!(
        c.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    assert!(c.cors_credentials);
    assert_eq!(c.channels.subscribe, SubscribeRule::Authenticated);
    assert_eq!(c.channels.publish, PublishRule::Server);
    assert_eq!(c.namespaces["user"].publish, PublishRule::Anyone);
    let l = &c.limits;
    assert_eq!((l.max_connections, l.max_connections_per_ip), (10, 3));
    assert_eq!((l.publish_rate_per_second, l.publish_burst), (7, 9));
    assert_eq!(
        (l.header_read_timeout_ms, l.body_read_timeout_ms),
        (1500, 2500)
    );
    assert_eq!(
        (l.max_body_bytes, l.max_message_bytes, l.max_channels),
        (4096, 2048, 16)
    );
    assert_eq!(c.websocket.max_frame_bytes, 8192);
    assert!(
        Config::from_sources("", [("CASCADE_CHANNELS_PUBLISH".into(), "everyone".into())]).is_err()
    );
}

/// A security setting in the environment that the gateway cannot apply must stop it, as an
/// unknown key in the file does, rather than leave the setting silently unapplied.
#[test]
fn security_env_vars_are_never_silently_ignored() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut all = vec![
            // Read by main.rs, not config keys: always fine.
            ("CASCADE_CONFIG".to_owned(), "/etc/cascade.toml".to_owned()),
            ("CASCADE_LOG".to_owned(), "info".to_owned()),
            ("CASCADE_LOG_FORMAT".to_owned(), "json".to_owned()),
        ];
        all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        all
    };
    assert!(Config::from_sources("", env(&[])).is_ok());
    // A namespace other than `user` (lock room:* to backends).
    let room = Config::from_sources("", env(&[("CASCADE_NAMESPACES_ROOM_PUBLISH", "server")]));
    // Refusing it loudly (Err) is fine; accepting it means applying it.
    if let Ok(config) = room {
        assert_eq!(
            config.namespaces.get("room").map(|ns| ns.publish),
            Some(PublishRule::Server),
            "CASCADE_NAMESPACES_ROOM_PUBLISH=server was accepted but not applied"
        );
    }
    // A misspelt limit.
    let typo = Config::from_sources("", env(&[("CASCADE_LIMITS_MAX_CONECTIONS", "5")]));
    assert!(
        typo.is_err(),
        "CASCADE_LIMITS_MAX_CONECTIONS (typo) is silently ignored; `max_conections = 5` in the file is an error"
    );
}
