//! Every route answered alike by the server's two HTTP/1 paths: each case's request is
//! sent once as the first request of a fresh connection, where the lean path takes it if
//! it is one of its routes, and once on a connection that first carried `GET /healthz`,
//! which the lean path never takes, so that hyper serves the connection from then on (the
//! README's "Known issues": "A connection that carried any other request is served by
//! hyper from then on"). The two answers must have the same status, the same headers
//! (but the few named below, each with its reason) and the same body.
//!
//! Which path served a connection is seen, not assumed: after the case's request the
//! connection asks for an SSE stream, which the lean path always takes, and which it
//! answers with `connection: close`, the stream having the connection to itself
//! (docs/PROTOCOL.md, `GET /sse`); hyper keeps the connection open. A connection only
//! ever moves from the lean path to hyper, never back (`server::serve`), so a lean probe
//! proves the case's request was answered lean; and a hyper probe that it was answered by
//! hyper, since had the lean path answered it, the connection would still be lean for the
//! probe. Where no probe can follow (an upgrade, a stream, an answer that closes the
//! connection), the stream's own head is the witness, or, for the others, the hand-off
//! rule alone: the first request of a connection is the lean path's when it is one of its
//! routes, and a connection that carried `GET /healthz` is hyper's for good.
//!
//! What may differ, and why, is named where it is allowed: the `date` (the second may
//! turn between the two answers; that both paths send one is a test of its own:
//! [`NOT_COMPARED`]); an SSE stream's
//! `connection: close` (see [`compared_headers`]); `connection` after a body over the
//! limit (`UNREAD`). Both paths frame alike (a length for every complete body, chunks for
//! a stream), so framing headers are compared as they are.
//!
//! Beyond single answers, a few tests compare what follows on the connection: an SSE
//! stream's events, a WebSocket's frames, and a long poll's kept subscription.
//!
//! The table of cases is at the end: a route is one line. Cases marked "once disagreed"
//! failed until the paths were made to agree; each guards its fix.

mod support;

use std::collections::BTreeMap;

use cascade::config::{Config, Transport};
use serde_json::{Value, json};
use support::TestServer;
use support::raw_http::{Answer, Ask, Conn, ask, get, handshake, head, post, preflight, upgrade};

/// The one origin the gateway's CORS allowlist names.
const ALLOWED: &str = "https://app.example.com";
/// An origin outside it.
const REFUSED: &str = "https://evil.example";
/// A backend's API key.
const KEY: &str = "both-paths-backend-key-0123456789";

/// The gateway most cases run against: publishing open to anyone (as in every test),
/// one allowed cross-origin caller (with credentials), a backend's API key, a token key,
/// and the demo's files on.
fn open() -> Config {
    let mut config = support::test_config();
    config.allowed_origins = vec![ALLOWED.into()];
    config.cors_credentials = true;
    config.api_keys = vec![KEY.into()];
    config.demo = true;
    config.token.hmac_secret = "both-paths-hmac-secret-0123456789".into();
    config
}

/// The built-in rules (publishing needs a token), the demo off and short polling
/// disabled.
fn secure() -> Config {
    let mut config = open();
    config.channels.publish = cascade::auth::rules::PublishRule::Token;
    config.demo = false;
    config.transports.retain(|t| *t != Transport::Poll);
    config
}

/// Behind a trusted proxy (the test's own address), whose forwarding headers count.
fn behind_proxy() -> Config {
    let mut config = open();
    config.trusted_proxies = vec!["127.0.0.1".into()];
    config
}

/// One publish a connection, and no more.
fn one_publish() -> Config {
    let mut config = open();
    config.limits.publish_rate_per_second = 1;
    config.limits.publish_burst = 1;
    config
}

/// Every transport but WebSocket.
fn without_websocket() -> Config {
    let mut config = open();
    config.transports.retain(|t| *t != Transport::Websocket);
    config
}

/// Long and short polling alone (the probe's SSE stream too is refused).
fn only_polls() -> Config {
    let mut config = open();
    config.transports = vec![Transport::Longpoll, Transport::Poll];
    config
}

/// Request bodies over 1 KiB are refused.
fn small_bodies() -> Config {
    let mut config = open();
    config.limits.max_body_bytes = 1024;
    config
}

/// Which path a connection was on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Lean,
    Hyper,
}
use Path::{Hyper, Lean};

/// One route's case: the request, what the lean path does with it on a fresh connection,
/// the status both paths must answer, and what may legitimately differ in the bodies.
struct Case {
    /// Which path takes the request as a connection's first.
    first: Path,
    setup: fn() -> Config,
    ask: Ask,
    status: u16,
    /// Published before either request: (channel, data).
    history: Vec<(&'static str, Value)>,
    /// Applied to both bodies before they are compared.
    normalise: fn(&mut Value),
    /// Headers the paths may legitimately send differently for this request, and why.
    differs: Vec<(&'static str, &'static str)>,
    /// Requests sent on the same connection before this one, their answers not compared.
    before: Vec<Ask>,
}

fn case(first: Path, setup: fn() -> Config, ask: Ask, status: u16) -> Case {
    Case {
        first,
        setup,
        ask,
        status,
        history: Vec::new(),
        normalise: |_| {},
        differs: Vec::new(),
        before: Vec::new(),
    }
}

impl Case {
    fn after_publishing(mut self, channel: &'static str, data: Value) -> Self {
        self.history.push((channel, data));
        self
    }

    fn normalised(mut self, normalise: fn(&mut Value)) -> Self {
        self.normalise = normalise;
        self
    }

    /// Sends `ask` on the connection first (after the hand-off's `/healthz` on hyper's).
    fn after(mut self, ask: Ask) -> Self {
        self.before.push(ask);
        self
    }

    /// `header` may differ between the paths, for the reason given.
    fn differs_in(mut self, header: &'static str, why: &'static str) -> Self {
        self.differs.push((header, why));
        self
    }
}

/// A publish's offset: each request publishes one more message to the same channel (same
/// epoch), so the second answer's offset is the first's plus one.
fn offset(body: &mut Value) {
    let offset = body["offset"].take();
    assert!(offset.as_u64().is_some_and(|n| n > 0), "an offset: {body}");
}

/// The offsets of a batch's results, likewise.
fn offsets(body: &mut Value) {
    for result in body["results"].as_array_mut().expect("results") {
        if result.get("offset").is_some() {
            offset(result);
        }
    }
}

/// A demo token carries its expiry, in seconds: two log-ins a second apart differ.
fn token(body: &mut Value) {
    let token = body["token"].take();
    let parts = token.as_str().map(|t| t.split('.').count());
    assert_eq!(parts, Some(3), "a JWT: {token}");
}

/// A connect ticket is signed with its issue time: two a second apart differ.
fn ticket(body: &mut Value) {
    let ticket = body["ticket"].take();
    assert!(ticket.is_string(), "a ticket: {ticket}");
}

/// The metrics' values change with every request (the two requests, the probes): the
/// series they describe must not.
fn metric_names(body: &mut Value) {
    let text = body.as_str().expect("metrics text");
    let described: Vec<&str> = text.lines().filter(|l| l.starts_with("# ")).collect();
    assert!(!described.is_empty(), "metrics described: {text}");
    *body = described.join("\n").into();
}

/// Which path `conn` is on now: it asks for an SSE stream, which the lean path always
/// takes and answers with `connection: close`, and hyper never does. `None` when the
/// gateway closed the connection instead, or has SSE disabled.
async fn probe(conn: &mut Conn) -> Option<Path> {
    let probe = b"GET /sse?channels=both-paths-probe HTTP/1.1\r\nhost: probe\r\n\r\n";
    let answer = conn.try_exchange(probe, "GET").await?;
    if answer.body["error"]["code"] == "transport_disabled" {
        return None;
    }
    assert_eq!(answer.status, 200, "the probe's stream: {answer:?}");
    assert!(answer.is_stream(), "the probe's stream: {answer:?}");
    Some(stream_path(&answer))
}

/// Opens a connection on `path`: a fresh one (the lean path's), or one that first carried
/// `GET /healthz` (hyper's).
async fn connection_on(server: &TestServer, path: Path) -> Conn {
    let mut conn = Conn::open(server).await;
    if path == Hyper {
        let health = conn
            .exchange(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n", "GET")
            .await;
        assert_eq!(health.status, 200, "{health:?}");
    }
    conn
}

/// The path that answered an SSE stream: the lean path gives a stream its connection to
/// itself and says so; hyper keeps the connection for another request.
fn stream_path(answer: &Answer) -> Path {
    if answer.closes() { Lean } else { Hyper }
}

/// Headers that may differ between the paths, and why.
const NOT_COMPARED: [(&str, &str); 1] = [(
    "date",
    "its second may turn between the two answers; that both send one is \
     `the_lean_path_dates_its_answers` below",
)];

/// Runs `case` through both paths and compares the answers.
async fn compare(case: Case) {
    let route = case.ask.line();
    let server = TestServer::start((case.setup)()).await;
    for (channel, data) in &case.history {
        server.publish(channel, data.clone()).await;
    }
    // What `{etag}` and `{token}` stand for in the case's headers.
    let vars = [
        ("etag", client_etag(&server).await),
        ("token", alice(&server)),
    ];
    let vars = vars.each_ref().map(|(name, value)| (*name, value.as_str()));
    let request = case.ask.bytes_with(&server, &vars);
    let before = async |conn: &mut Conn| {
        for ask in &case.before {
            let answer = conn
                .exchange(&ask.bytes_with(&server, &vars), ask.method)
                .await;
            assert!(
                !answer.last,
                "{}: the connection goes on: {answer:?}",
                ask.line()
            );
        }
    };

    // (a) The connection's first request (or after `before`, which the case makes lean
    // where it is): the lean path's if it is one of its routes.
    let mut fresh = connection_on(&server, Lean).await;
    before(&mut fresh).await;
    let first = fresh.exchange(&request, case.ask.method).await;
    let first_path = path_after(&mut fresh, &first).await;

    // (b) After `GET /healthz`, which the lean path never takes: hyper's.
    let mut handed = connection_on(&server, Hyper).await;
    before(&mut handed).await;
    let second = handed.exchange(&request, case.ask.method).await;
    let second_path = path_after(&mut handed, &second).await;

    // Each path is what the case says it is, where it can be seen; elsewhere the hand-off
    // rule (see the top of this file) decides it.
    if let Some(path) = first_path {
        assert_eq!(path, case.first, "{route}: the path of a fresh connection");
    }
    if let Some(path) = second_path {
        assert_eq!(path, Hyper, "{route}: the path after /healthz");
    }

    assert_eq!(
        (first.status, second.status),
        (case.status, case.status),
        "{route}: the statuses, on a fresh connection and after the hand-off\n\
         fresh: {first:?}\nhanded: {second:?}"
    );
    assert_eq!(
        compared_headers(&first, &case.differs),
        compared_headers(&second, &case.differs),
        "{route}: the headers, on a fresh connection (left) and after the hand-off (right)"
    );
    let (mut first_body, mut second_body) = (first.body, second.body);
    (case.normalise)(&mut first_body);
    (case.normalise)(&mut second_body);
    assert_eq!(
        first_body, second_body,
        "{route}: the body, on a fresh connection (left) and after the hand-off (right)"
    );
}

/// The path a connection is on after `answer`, if a probe can still ask: none after an
/// upgrade or an answer that closes the connection; a stream's own head tells.
async fn path_after(conn: &mut Conn, answer: &Answer) -> Option<Path> {
    if answer.is_stream() {
        return Some(stream_path(answer));
    }
    if answer.last {
        return None;
    }
    probe(conn).await
}

/// The headers both paths must send alike. An SSE stream's `connection: close` on the lean
/// path is the documented difference (the stream has the connection to itself), and the
/// probe's witness.
fn compared_headers(answer: &Answer, differs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    let mut headers = answer.headers.clone();
    for (name, _why) in NOT_COMPARED.iter().chain(differs) {
        headers.remove(*name);
    }
    if answer.is_stream() {
        headers.remove("connection");
    }
    headers
}

/// A token for `alice`, who may publish to `room:*`.
fn alice(server: &TestServer) -> String {
    let claims = cascade::auth::token::Claims {
        sub: "alice".into(),
        exp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 3600,
        channels: Vec::new(),
        publish: vec!["room:*".into()],
    };
    server.app.auth.sign(&claims).expect("a token")
}

/// The client script's `ETag`, asked on a connection of its own.
async fn client_etag(server: &TestServer) -> String {
    let mut conn = Conn::open(server).await;
    let answer = conn
        .exchange(b"GET /cascade.js HTTP/1.1\r\nhost: etag\r\n\r\n", "GET")
        .await;
    answer.header("etag").expect("an etag").to_owned()
}

/// Both paths date their answers: RFC 9110 §6.6.1 says an origin server with a clock
/// MUST send `Date` with 2xx, 3xx and 4xx answers. Once disagreed: the lean path sent
/// none (the date is left out of the table's comparison, as its second may turn).
#[tokio::test]
async fn the_lean_path_dates_its_answers() {
    let server = TestServer::start(open()).await;
    let request = get("/negotiate").bytes(&server);
    let mut fresh = connection_on(&server, Lean).await;
    let lean = fresh.exchange(&request, "GET").await;
    assert_eq!(probe(&mut fresh).await, Some(Lean));
    let mut handed = connection_on(&server, Hyper).await;
    let hyper = handed.exchange(&request, "GET").await;
    assert_eq!(probe(&mut handed).await, Some(Hyper));
    assert!(hyper.header("date").is_some(), "hyper dates: {hyper:?}");
    assert!(
        lean.header("date").is_some(),
        "the lean path dates: {lean:?}"
    );
}

/// A long poll's connection keeps its subscription for the next poll that resumes from
/// the returned cursor, so that what was published in between reaches it even when history
/// no longer retains it (docs/PROTOCOL.md, `GET /longpoll`: "On a keep-alive connection
/// the server keeps the poll's live subscription after the answer").
///
/// Once disagreed: hyper's connections kept nothing between requests, so on a connection
/// hyper served the next poll read history and got a gap where the lean path delivered
/// every message.
#[tokio::test]
async fn a_long_poll_goes_on_with_its_subscription_on_both_paths() {
    let mut config = open();
    config.history.max_messages = 1;
    let server = TestServer::start(config).await;
    let mut delivered = Vec::new();
    for path in [Lean, Hyper] {
        let channel = format!("kept-{path:?}");
        let mut conn = connection_on(&server, path).await;
        // Held (for its second), so that it subscribes: a poll that answers at once reads
        // history alone.
        let poll = get(&format!("/longpoll?channels={channel}&timeout=1"));
        let first = conn.exchange(&poll.bytes(&server), "GET").await;
        assert_eq!(first.status, 200, "{first:?}");
        let cursor = first.body["cursor"].as_str().expect("a cursor").to_owned();
        for n in 1..=3 {
            server.publish(&channel, json!(n)).await;
        }
        let resume = get(&format!("/longpoll?cursor={cursor}&timeout=0"));
        let next = conn.exchange(&resume.bytes(&server), "GET").await;
        assert_eq!(next.status, 200, "{next:?}");
        assert_eq!(probe(&mut conn).await, Some(path), "the connection's path");
        let data: Vec<Value> = next.body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["data"].clone())
            .collect();
        delivered.push((path, data, next.body.get("gaps").cloned()));
    }
    assert_eq!(
        delivered[0],
        (Lean, vec![json!(1), json!(2), json!(3)], None),
        "every message, no gap"
    );
    assert_eq!(
        (&delivered[0].1, &delivered[0].2),
        (&delivered[1].1, &delivered[1].2),
        "the same on a connection hyper serves: {delivered:?}"
    );
}

/// An SSE stream, once open, delivers the same events on both paths.
#[tokio::test]
async fn an_sse_stream_delivers_alike_on_both_paths() {
    let server = TestServer::start(open()).await;
    let request = get("/sse?channels=delivered").bytes(&server);
    let mut streams = Vec::new();
    for path in [Lean, Hyper] {
        let mut conn = connection_on(&server, path).await;
        let open = conn.exchange(&request, "GET").await;
        assert_eq!(stream_path(&open), path, "{open:?}");
        streams.push((conn, open.body));
    }
    assert_eq!(streams[0].1, streams[1].1, "the open events");
    server.publish("delivered", json!({"n": 1})).await;
    let lean = streams[0].0.next_event().await;
    let hyper = streams[1].0.next_event().await;
    assert_eq!(lean["data"]["data"], json!({"n": 1}), "{lean}");
    assert_eq!(
        lean, hyper,
        "the message events, lean (left) and hyper (right)"
    );
}

/// A WebSocket, once upgraded, speaks alike on both paths: the `subscribed` frame, and a
/// message published to it.
#[tokio::test]
async fn a_websocket_speaks_alike_on_both_paths() {
    let server = TestServer::start(open()).await;
    let request = upgrade("/ws").bytes(&server);
    let subscribe = json!({"op": "subscribe", "channels": ["spoken"]}).to_string();
    let mut sockets = Vec::new();
    for path in [Lean, Hyper] {
        let mut conn = connection_on(&server, path).await;
        let upgraded = conn.exchange(&request, "GET").await;
        assert_eq!(upgraded.status, 101, "{upgraded:?}");
        conn.send_text(&subscribe).await;
        let subscribed = conn.next_text().await;
        sockets.push((conn, subscribed));
    }
    assert_eq!(sockets[0].1["op"], "subscribed", "{}", sockets[0].1);
    assert_eq!(sockets[0].1, sockets[1].1, "the subscribed frames");
    server.publish("spoken", json!({"n": 1})).await;
    let lean = sockets[0].0.next_text().await;
    let hyper = sockets[1].0.next_text().await;
    assert_eq!(lean["data"], json!({"n": 1}), "{lean}");
    assert_eq!(
        lean, hyper,
        "the message frames, lean (left) and hyper (right)"
    );
}

/// One test per case, named for its route.
macro_rules! both_paths {
    ($($name:ident => $case:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                compare($case).await;
            }
        )*
    };
}

/// A publish of `n` bytes of data.
fn big(n: usize) -> String {
    format!(r#"{{"channel":"big","data":"{}"}}"#, "x".repeat(n))
}

/// Why the paths may disagree on `connection` after a body over the limit.
const UNREAD: &str = "the lean path refuses a body over the limit by its declared length, \
    before reading any of it, so it cannot go on with the connection and says \
    `connection: close`; hyper reads the body up to the limit and goes on when that was \
    all of it, else closes the connection without saying so";

const CHAT: &str = r#"{"channel":"chat","data":{"text":"hi"}}"#;

both_paths! {
    // GET /negotiate
    negotiate => case(Lean, open, get("/negotiate"), 200);
    negotiate_failed => case(Lean, open, get("/negotiate?failed=websocket:timeout,sse"), 200);
    negotiate_bad_failed => case(Lean, open, get("/negotiate?failed=carrier:pigeon"), 400);
    negotiate_bad_token => case(Lean, open, get("/negotiate").header("authorization", "Bearer nope"), 401);
    negotiate_token => case(Lean, open, get("/negotiate").header("authorization", "Bearer {token}"), 200).normalised(ticket);
    negotiate_close => case(Lean, open, get("/negotiate").header("connection", "close"), 200);
    negotiate_cross_origin => case(Lean, open, get("/negotiate").header("origin", ALLOWED), 200);
    negotiate_same_origin => case(Lean, open, get("/negotiate").header("origin", "http://{addr}"), 200);
    negotiate_head => case(Hyper, open, head("/negotiate"), 405);
    negotiate_post => case(Hyper, open, post("/negotiate", "{}"), 405);
    negotiate_http10 => case(Hyper, open, get("/negotiate").http10().without_host(), 200);
    // GET /poll
    poll_channels => case(Lean, open, get("/poll?channels=polled,other"), 200);
    poll_cursor => case(Lean, open, get("/poll?cursor=polled@x:0"), 200)
        .after_publishing("polled", json!({"n": 1}))
        .after_publishing("polled", json!({"n": 2}));
    poll_bad_cursor => case(Lean, open, get("/poll?cursor=polled@x:y"), 400);
    poll_no_channels => case(Lean, open, get("/poll"), 400);
    poll_refused_origin => case(Lean, open, get("/poll?channels=a").header("origin", REFUSED), 403);
    poll_refused_channel => case(Lean, open, get("/poll?channels=polled,user:bob"), 200);
    poll_only_refused_channels => case(Lean, open, get("/poll?channels=user:bob,user:carol"), 401);
    poll_bad_token => case(Lean, open, get("/poll?channels=a").header("authorization", "Bearer nope"), 401);
    poll_own_channel => case(Lean, open, get("/poll?channels=user:alice").header("authorization", "Bearer {token}"), 200);
    poll_token_in_query => case(Lean, open, get("/poll?channels=user:alice&token={token}"), 200);
    poll_backend => case(Lean, open, get("/poll?channels=user:bob").header("x-cascade-api-key", KEY), 200);
    poll_disabled => case(Lean, secure, get("/poll?channels=a"), 404);
    poll_head => case(Hyper, open, head("/poll?channels=a"), 405);
    poll_put => case(Hyper, open, ask("PUT", "/poll"), 405);
    // GET /longpoll
    longpoll => case(Lean, open, get("/longpoll?channels=held&timeout=0"), 200);
    longpoll_cursor => case(Lean, open, get("/longpoll?cursor=held@x:0&timeout=0"), 200)
        .after_publishing("held", json!("one"));
    longpoll_held => case(Lean, open, get("/longpoll?channels=held&timeout=1"), 200);
    longpoll_bad_timeout => case(Lean, open, get("/longpoll?channels=held&timeout=soon"), 400);
    // GET /sse: the head and the first (`open`) event.
    sse => case(Lean, open, get("/sse?channels=streamed"), 200);
    sse_cursor => case(Lean, open, get("/sse?channels=streamed&cursor=streamed@x:0"), 200)
        .after_publishing("streamed", json!(1));
    sse_last_event_id => case(Lean, open, get("/sse?channels=streamed").header("last-event-id", "streamed@x:0"), 200)
        .after_publishing("streamed", json!(1));
    sse_refused_channel => case(Lean, open, get("/sse?channels=streamed,user:bob"), 200);
    sse_only_refused_channels => case(Lean, open, get("/sse?channels=user:bob"), 401);
    sse_bad_cursor => case(Lean, open, get("/sse?cursor=streamed@@"), 400);
    sse_cross_origin => case(Lean, open, get("/sse?channels=streamed").header("origin", ALLOWED), 200);
    sse_disabled => case(Lean, only_polls, get("/sse?channels=a"), 404);
    sse_with_upgrade => case(Hyper, open, get("/sse?channels=a").header("connection", "Upgrade").header("upgrade", "websocket"), 200);
    // GET /ws: the handshake.
    ws => case(Lean, open, upgrade("/ws"), 101);
    ws_subprotocol => case(Lean, open, upgrade("/ws").header("sec-websocket-protocol", "chat"), 101);
    ws_extensions => case(Lean, open, upgrade("/ws").header("sec-websocket-extensions", "permessage-deflate"), 101);
    ws_as_firefox_asks => case(Lean, open, get("/ws").header("connection", "keep-alive, Upgrade").header("upgrade", "websocket").header("sec-websocket-version", "13").header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="), 101);
    ws_without_upgrade => case(Lean, open, get("/ws"), 426);
    ws_bad_key => case(Lean, open, handshake("/ws", "13", "short"), 400);
    ws_old_version => case(Lean, open, handshake("/ws", "8", "dGhlIHNhbXBsZSBub25jZQ=="), 426);
    // Both paths take the first of two (RFC 6455 §11.3.1 allows each only once).
    ws_two_keys => case(Lean, open, upgrade("/ws").header("sec-websocket-key", "c2Vjb25kIGtleSBoZXJlIQ=="), 101);
    ws_two_versions => case(Lean, open, upgrade("/ws").header("sec-websocket-version", "8"), 101);
    ws_refused_origin => case(Lean, open, upgrade("/ws").header("origin", REFUSED), 403);
    ws_disabled => case(Lean, without_websocket, upgrade("/ws"), 404);
    ws_head => case(Hyper, open, head("/ws"), 405);
    // POST /publish
    publish => case(Lean, open, post("/publish", CHAT), 200).normalised(offset);
    publish_backend => case(Lean, secure, post("/publish", CHAT).header("x-cascade-api-key", KEY), 200).normalised(offset);
    publish_token => case(Lean, secure, post("/publish", r#"{"channel":"room:1","data":1}"#).header("authorization", "Bearer {token}"), 200).normalised(offset);
    publish_cross_origin => case(Lean, open, post("/publish", CHAT).header("origin", ALLOWED), 200).normalised(offset);
    publish_over_budget => case(Lean, one_publish, post("/publish", CHAT), 429).after(post("/publish", CHAT));
    publish_budget_of_a_backend => case(Lean, one_publish, post("/publish", CHAT).header("x-cascade-api-key", KEY), 200).after(post("/publish", CHAT)).normalised(offset);
    publish_empty => case(Lean, open, post("/publish", "").header("content-length", "0"), 400);
    publish_bad_json => case(Lean, open, post("/publish", "{nope"), 400);
    publish_batch => case(Lean, open, post("/publish", format!("[{CHAT},{CHAT}]")).header("x-cascade-api-key", KEY), 200).normalised(offsets);
    publish_batch_anonymous => case(Lean, open, post("/publish", format!("[{CHAT}]")), 403);
    publish_too_large => case(Lean, small_bodies, post("/publish", big(1100)), 413).differs_in("connection", UNREAD);
    publish_far_too_large => case(Lean, small_bodies, post("/publish", big(200_000)), 413).differs_in("connection", UNREAD);
    publish_refused_origin => case(Lean, open, post("/publish", CHAT).header("origin", REFUSED), 403);
    publish_anonymous => case(Lean, secure, post("/publish", CHAT), 401);
    publish_forbidden => case(Lean, secure, post("/publish", CHAT).header("authorization", "Bearer {token}"), 403);
    publish_bad_key => case(Lean, open, post("/publish", CHAT).header("x-cascade-api-key", "nope"), 401);
    publish_without_length => case(Hyper, open, post("/publish", ""), 400);
    publish_chunked => case(Hyper, open, post("/publish", CHAT).chunked(), 200).normalised(offset);
    publish_expect_continue => case(Hyper, open, post("/publish", CHAT).header("expect", "100-continue"), 200).normalised(offset);
    publish_no_host => case(Hyper, open, post("/publish", CHAT).without_host(), 400);
    publish_get => case(Hyper, open, get("/publish"), 405);
    // CORS preflights (OPTIONS, any path)
    preflight_negotiate => case(Lean, open, preflight("/negotiate", ALLOWED), 204);
    preflight_publish => case(Lean, open, preflight("/publish", ALLOWED), 204);
    preflight_script => case(Lean, open, preflight("/cascade.js", ALLOWED), 204);
    preflight_ws => case(Lean, open, preflight("/ws", ALLOWED), 204);
    preflight_refused => case(Lean, open, preflight("/poll", REFUSED), 403);
    options_without_origin => case(Lean, open, ask("OPTIONS", "/poll"), 204);
    preflight_unknown => case(Hyper, open, preflight("/nowhere", ALLOWED), 204);
    preflight_healthz => case(Hyper, open, preflight("/healthz", ALLOWED), 204);
    // The client script and the demo's files
    script => case(Lean, open, get("/cascade.js"), 200);
    // Once disagreed: the lean path's 304 said `content-length: 0`, hyper's no length;
    // RFC 9110 §8.6 forbids a length in a 304 other than the 200's.
    script_fresh => case(Lean, open, get("/cascade.js").header("if-none-match", "{etag}"), 304);
    script_fresh_any => case(Lean, open, get("/cascade.js").header("if-none-match", "*"), 304);
    script_query => case(Lean, open, get("/cascade.js?v=2"), 200);
    script_cross_origin => case(Lean, open, get("/cascade.js").header("origin", ALLOWED), 200);
    script_refused_origin => case(Lean, open, get("/cascade.js").header("origin", REFUSED), 403);
    script_head => case(Hyper, open, head("/cascade.js"), 200);
    script_http10 => case(Hyper, open, get("/cascade.js").http10().without_host(), 200);
    script_delete => case(Hyper, open, ask("DELETE", "/cascade.js"), 405);
    demo_page => case(Lean, open, get("/"), 200);
    demo_script => case(Lean, open, get("/demo.js"), 200);
    demo_style => case(Lean, open, get("/demo.css"), 200);
    demo_page_head => case(Hyper, open, head("/"), 200);
    demo_page_off => case(Lean, secure, get("/"), 404);
    demo_off => case(Lean, secure, get("/demo.js"), 404);
    // POST /demo/login: hyper's on both connections.
    demo_login => case(Hyper, open, post("/demo/login", r#"{"name":"alice"}"#), 200).normalised(token);
    demo_login_get => case(Hyper, open, get("/demo/login"), 405);
    demo_login_off => case(Hyper, secure, post("/demo/login", r#"{"name":"alice"}"#), 404);
    // Health and metrics: hyper's on both connections.
    healthz => case(Hyper, open, get("/healthz"), 200);
    healthz_head => case(Hyper, open, head("/healthz"), 200);
    healthz_post => case(Hyper, open, ask("POST", "/healthz"), 405);
    readyz => case(Hyper, open, get("/readyz"), 200);
    readyz_head => case(Hyper, open, head("/readyz"), 200);
    metrics => case(Hyper, open, get("/metrics"), 200).normalised(metric_names);
    metrics_head => case(Hyper, open, head("/metrics"), 200);
    // Unknown paths, and heads without exactly one Host
    unknown => case(Hyper, open, get("/nowhere"), 404);
    no_host => case(Hyper, open, get("/poll?channels=a").without_host(), 400);
    two_hosts => case(Hyper, open, get("/negotiate").header("host", "again"), 400);
    // A page served by the proxy's host: its origin is the gateway's own when the proxy is
    // trusted, and refused when not.
    forwarded_host => case(Lean, behind_proxy, get("/negotiate").header("x-forwarded-for", "203.0.113.7").header("x-forwarded-host", "public.example, inner").header("origin", "https://public.example"), 200);
    forwarded_host_untrusted => case(Lean, open, get("/negotiate").header("x-forwarded-host", "public.example").header("origin", "https://public.example"), 403);
    // Request targets. Once disagreed (the first two): `"`, `<` and `>` are no URI
    // characters (RFC 3986); hyper refuses such a target with a bare 400 (no JSON) and
    // closes, and the lean path served it; it now hands such a head to hyper.
    target_quote => case(Lean, open, get("/negotiate?x=\"y\""), 400);
    target_angles => case(Lean, open, get("/poll?channels=<a>"), 400);
    target_backslash => case(Lean, open, get("/poll?channels=a\\b"), 400);
    target_caret => case(Lean, open, get("/poll?channels=a^b"), 400);
    target_backtick => case(Lean, open, get("/poll?channels=a`b"), 400);
    target_brace => case(Lean, open, get("/poll?channels=a{b"), 400);
    target_pipe => case(Lean, open, get("/poll?channels=a|b"), 400);
    target_utf8 => case(Lean, open, get("/poll?channels=aéb"), 400);
    target_fragment => case(Lean, open, get("/poll?channels=a#b"), 200);
    target_escaped_comma => case(Lean, open, get("/poll?channels=a%2Cb"), 200);
    target_del => case(Hyper, open, get("/poll?channels=a\x7fb"), 400);
    target_path_utf8 => case(Hyper, open, get("/pollé?channels=a"), 404);
    target_double_slash => case(Hyper, open, get("//poll?channels=a"), 404);
    target_asterisk => case(Hyper, open, ask("OPTIONS", "*"), 204);
    target_absolute => case(Hyper, open, get("http://example.com/poll?channels=a"), 200);
    // Heads the lean path leaves to hyper, or takes though they look unusual
    get_with_empty_length => case(Lean, open, get("/poll?channels=a").header("content-length", "0"), 200);
    get_with_body => case(Hyper, open, get("/poll?channels=a").body("hello"), 200);
    many_headers => case(Hyper, open, (0..70).fold(get("/poll?channels=a"), |a, i| a.header(&format!("x-{i}"), "v")), 200);
    h2c_upgrade => case(Hyper, open, get("/negotiate").header("connection", "Upgrade, HTTP2-Settings").header("upgrade", "h2c").header("http2-settings", ""), 200);
}
