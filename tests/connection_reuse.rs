//! One TCP connection carrying several requests: the server's lean path (`/sse`,
//! `/longpoll`, `/poll`, `/negotiate`, the `/ws` handshake) and hyper take turns without
//! losing a byte. Raw sockets, so that the test controls exactly what shares a connection.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{TestServer, eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 response read off a raw socket (`content-length` bodies only).
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response with a `content-length` body (or a `204` or `304`, which have none) from
/// `stream`, keeping any bytes that follow it in `rest`.
async fn read_answer(stream: &mut TcpStream, rest: &mut Vec<u8>) -> Answer {
    within(async {
        loop {
            if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(rest[..end].to_vec()).expect("utf-8 head");
                let status = head[9..12].parse().expect("status");
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().expect("length"))
                    })
                    .or((status == 204 || status == 304).then_some(0))
                    .expect("content-length");
                let start = end + 4;
                if rest.len() >= start + length {
                    let body = rest[start..start + length].to_vec();
                    rest.drain(..start + length);
                    return Answer { status, head, body };
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "connection closed mid-answer: {:?}",
                String::from_utf8_lossy(rest)
            );
            rest.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n")
}

/// Sends `GET path` on `stream` and reads its answer.
async fn ask(stream: &mut TcpStream, rest: &mut Vec<u8>, path: &str) -> Answer {
    stream.write_all(get(path).as_bytes()).await.unwrap();
    read_answer(stream, rest).await
}

fn json_body(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.body).expect("JSON body")
}

/// The resume cursor a 200 poll answer carries.
fn cursor_of(answer: &Answer) -> String {
    assert_eq!(answer.status, 200, "{}", answer.head);
    let body = json_body(answer);
    body["cursor"].as_str().expect("cursor").to_owned()
}

#[tokio::test]
async fn one_connection_alternates_between_long_polls_and_publishes() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();

    let first = ask(&mut stream, &mut rest, "/longpoll?channels=reuse&timeout=0").await;
    let cursor = cursor_of(&first);

    // A publish, with its body, on the same connection.
    let body = json!({"channel": "reuse", "data": {"n": 1}}).to_string();
    let publish = format!(
        "POST /publish HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(publish.as_bytes()).await.unwrap();
    let published = read_answer(&mut stream, &mut rest).await;
    assert_eq!(published.status, 200, "{}", published.head);

    // And a long poll again, still on the same socket.
    let polled = ask(
        &mut stream,
        &mut rest,
        &format!("/longpoll?cursor={cursor}&timeout=5"),
    )
    .await;
    assert_eq!(polled.status, 200, "{}", polled.head);
    let messages = json_body(&polled)["messages"].clone();
    assert_eq!(messages[0]["data"], json!({"n": 1}), "{messages}");
}

#[tokio::test]
async fn short_polls_keep_one_connection_and_see_every_message() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let empty = ask(&mut stream, &mut rest, "/poll?channels=short").await;
    let mut cursor = cursor_of(&empty);
    assert_eq!(json_body(&empty)["messages"], json!([]));

    // Published on other connections, polled on this one: each poll carries exactly what
    // came after its cursor.
    for n in 1..=3 {
        server.publish("short", json!({ "n": n })).await;
        let polled = ask(&mut stream, &mut rest, &format!("/poll?cursor={cursor}")).await;
        cursor = cursor_of(&polled);
        let body = json_body(&polled);
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(body["messages"][0]["data"], json!({ "n": n }), "{body}");
    }
    assert!(rest.is_empty(), "nothing beyond the answers");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let both = get("/longpoll?channels=pipe&timeout=0") + &get("/healthz");
    stream.write_all(both.as_bytes()).await.unwrap();

    let poll = read_answer(&mut stream, &mut rest).await;
    assert_eq!(poll.status, 200, "{}", poll.head);
    assert!(
        json_body(&poll)["cursor"].is_string(),
        "{:?}",
        json_body(&poll)
    );
    let health = read_answer(&mut stream, &mut rest).await;
    assert_eq!(health.status, 200, "{}", health.head);
    assert_eq!(json_body(&health)["status"], "ok");
}

#[tokio::test]
async fn errors_on_the_lean_path_keep_the_connection_usable() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let refused = ask(&mut stream, &mut rest, "/longpoll?channels=bad%20name").await;
    assert_eq!(refused.status, 400, "{}", refused.head);
    assert!(json_body(&refused)["error"]["code"].is_string());

    let answered = ask(&mut stream, &mut rest, "/longpoll?channels=fine&timeout=0").await;
    assert_eq!(answered.status, 200, "{}", answered.head);
}

/// Long polls in flight, from /metrics.
const OPEN_POLLS: &str = r#"cascade_connections{transport="longpoll"}"#;
/// SSE streams open, from /metrics.
const OPEN_STREAMS: &str = r#"cascade_connections{transport="sse"}"#;

/// Opens a connection whose request for `path` stays open in the server, once `series`
/// counts it.
async fn hold(server: &TestServer, path: &str, series: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(get(path).as_bytes()).await.unwrap();
    eventually(&format!("{path} is held"), || async {
        server.metric(series).await == 1.0
    })
    .await;
    stream
}

/// Waits until `series` counts nothing open.
async fn released(server: &TestServer, series: &str) {
    eventually(&format!("{series} falls to 0"), || async {
        server.metric(series).await == 0.0
    })
    .await;
}

/// Opens a connection whose long poll on `channel` is parked in the server.
async fn park_poll(server: &TestServer, channel: &str) -> TcpStream {
    let path = format!("/longpoll?channels={channel}&timeout=30");
    hold(server, &path, OPEN_POLLS).await
}

async fn polls_released(server: &TestServer) {
    released(server, OPEN_POLLS).await;
}

#[tokio::test]
async fn a_client_leaving_a_parked_long_poll_frees_it() {
    let server = TestServer::default().await;
    let stream = park_poll(&server, "leave").await;
    drop(stream);
    polls_released(&server).await;
}

#[tokio::test]
async fn a_websocket_frame_sent_with_the_handshake_is_not_lost() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let handshake = "GET /ws HTTP/1.1\r\nhost: test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
                     sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let subscribe = json!({"op": "subscribe", "channels": ["eager"]}).to_string();
    let mut bytes = handshake.as_bytes().to_vec();
    bytes.extend(masked_text_frame(subscribe.as_bytes()));
    stream.write_all(&bytes).await.unwrap();

    let mut read = Vec::new();
    let reply = within(async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&read));
            read.extend_from_slice(&chunk[..n]);
            let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            assert!(
                read.starts_with(b"HTTP/1.1 101"),
                "{:?}",
                String::from_utf8_lossy(&read)
            );
            let frame = &read[end + 4..];
            // An unmasked text frame with a short length.
            if frame.len() >= 2 && frame.len() >= 2 + (frame[1] & 0x7f) as usize {
                assert_eq!(frame[0], 0x81, "a final text frame");
                let len = (frame[1] & 0x7f) as usize;
                break serde_json::from_slice::<Value>(&frame[2..2 + len]).expect("JSON frame");
            }
        }
    })
    .await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    assert_eq!(reply["channels"], json!(["eager"]), "{reply}");
}

/// A client's text frame (masked, as RFC 6455 requires), payload under 126 bytes.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Sends `bytes` on a fresh connection and reads one answer.
async fn exchange(server: &TestServer, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(bytes).await.unwrap();
    read_answer(&mut stream, &mut Vec::new()).await
}

#[tokio::test]
async fn heads_the_lean_path_does_not_take_are_still_answered() {
    let server = TestServer::default().await;
    // A control byte in a header value: hyper refuses it.
    let bad_value = exchange(
        &server,
        b"GET /sse?channels=a HTTP/1.1\r\nhost: t\r\nx-bad: a\x01b\r\n\r\n",
    )
    .await;
    assert_eq!(bad_value.status, 400, "{}", bad_value.head);
    // A head longer than the lean path reads: hyper serves it.
    let long = format!(
        "GET /longpoll?channels=a&timeout=0 HTTP/1.1\r\nhost: t\r\nx-long: {}\r\n\r\n",
        "v".repeat(20 * 1024)
    );
    let answered = exchange(&server, long.as_bytes()).await;
    assert_eq!(answered.status, 200, "{}", answered.head);
    // HTTP/1.0 and a chunked GET body go to hyper too.
    let old = exchange(
        &server,
        b"GET /longpoll?channels=a&timeout=0 HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(old.status, 200, "{}", old.head);
    let chunked = exchange(
        &server,
        b"GET /longpoll?channels=a&timeout=0 HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(chunked.status, 200, "{}", chunked.head);
    // A publish with a chunked body, and one with two lengths: hyper's to serve or refuse.
    let body = br#"{"channel":"chunked","data":1}"#;
    let mut publish =
        b"POST /publish HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    publish.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    publish.extend_from_slice(body);
    publish.extend_from_slice(b"\r\n0\r\n\r\n");
    let published = exchange(&server, &publish).await;
    assert_eq!(published.status, 200, "{}", published.head);
    assert_eq!(json_body(&published)["channel"], "chunked");
    let twice = exchange(
        &server,
        b"POST /publish HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
    )
    .await;
    assert_eq!(twice.status, 400, "{}", twice.head);
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_head_trickled_byte_by_byte_is_served() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // One segment per byte: the server sees the head arrive in many partial reads.
    stream.set_nodelay(true).unwrap();
    for byte in get("/longpoll?channels=slow&timeout=0").as_bytes() {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let answer = read_answer(&mut stream, &mut Vec::new()).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
}

/// A client that pipelines far more than a head behind a parked poll is slowed down by its
/// own socket, not cut off: the poll it sent whole is still answered, and nothing more
/// than a head is buffered for it.
#[tokio::test]
async fn a_client_flooding_a_parked_poll_still_gets_its_answer_and_others_are_unharmed() {
    let server = TestServer::default().await;
    let mut flooder = park_poll(&server, "flood").await;
    let junk = vec![b'x'; 64 * 1024];
    within(flooder.write_all(&junk))
        .await
        .expect("the socket takes it");
    server.publish("flood", json!({"n": 1})).await;
    let answered = read_answer(&mut flooder, &mut Vec::new()).await;
    assert_eq!(answered.status, 200, "{}", answered.head);
    assert_eq!(json_body(&answered)["messages"][0]["data"], json!({"n": 1}));
    let overflow = r#"cascade_errors_total{code="pipeline_overflow"}"#;
    assert_eq!(server.metric(overflow).await, 0.0);
    let answered = exchange(
        &server,
        get("/longpoll?channels=other&timeout=0").as_bytes(),
    )
    .await;
    assert_eq!(answered.status, 200, "{}", answered.head);
}

/// A parked poll and, in the same write, a publish with a body over the head limit behind
/// it: both are answered in order, and the publish is stored.
#[tokio::test]
async fn a_large_publish_pipelined_behind_a_parked_poll_is_answered() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let body = json!({"channel": "behind", "data": "x".repeat(16_500)}).to_string();
    let both = get("/longpoll?channels=parked&timeout=1") + &post_publish(&body, "");
    stream.write_all(both.as_bytes()).await.unwrap();
    let polled = read_answer(&mut stream, &mut rest).await;
    assert_eq!(polled.status, 200, "{}", polled.head);
    let published = read_answer(&mut stream, &mut rest).await;
    assert_eq!(published.status, 200, "{}", published.head);
    assert_eq!(json_body(&published)["offset"], 1);
    let epoch = json_body(&published)["epoch"].as_str().unwrap().to_owned();
    let (_, stored) = server
        .get_json(&format!("/poll?cursor=behind@{epoch}:0"))
        .await;
    assert_eq!(
        stored["messages"][0]["data"].as_str().map(str::len),
        Some(16_500)
    );
}

/// On an engine whose publish waits (Redis), a publish followed in the same write by a
/// second one whose body is over the head limit: the first is answered and stored, then
/// the second. The pipelined bytes once made the gateway drop the connection, and the
/// first publish with it.
#[tokio::test]
async fn a_large_publish_pipelined_behind_a_pending_publish_is_answered_on_redis() {
    let mut config = support::test_config();
    config.engine = cascade::config::EngineKind::Redis;
    config.redis_url = std::env::var("CASCADE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    config.redis_prefix = format!("test-pipelined-{}", std::process::id());
    let server = TestServer::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let first = json!({"channel": "pipelined", "data": {"n": 1}}).to_string();
    let second = json!({"channel": "pipelined", "data": "x".repeat(16_460)}).to_string();
    assert!(second.len() >= 16_470, "{}", second.len());
    let both = post_publish(&first, "") + &post_publish(&second, "");
    stream.write_all(both.as_bytes()).await.unwrap();
    let mut epoch = String::new();
    for offset in [1, 2] {
        let published = read_answer(&mut stream, &mut rest).await;
        assert_eq!(published.status, 200, "{}", published.head);
        assert_eq!(json_body(&published)["offset"], offset);
        epoch = json_body(&published)["epoch"].as_str().unwrap().to_owned();
    }
    let cursor = format!("pipelined@{epoch}:0");
    let (_, stored) = server.get_json(&format!("/poll?cursor={cursor}")).await;
    assert_eq!(stored["messages"][0]["data"], json!({"n": 1}));
}

#[tokio::test]
async fn a_head_trickled_past_the_deadline_is_dropped_and_counted() {
    let mut config = support::test_config();
    config.limits.header_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /longpoll?channels=slowloris HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    let mut rest = [0u8; 64];
    let read = within(stream.read(&mut rest)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the server closes: {read:?}"
    );
    let timeouts = r#"cascade_errors_total{code="request_timeout"}"#;
    assert_eq!(server.metric(timeouts).await, 1.0);
}

/// Nothing is written to an idle stream, so only its read side can tell that the client
/// has gone.
#[tokio::test]
async fn a_client_leaving_an_idle_sse_stream_frees_it() {
    let server = TestServer::default().await;
    let stream = hold(&server, "/sse?channels=quiet", OPEN_STREAMS).await;
    drop(stream);
    released(&server, OPEN_STREAMS).await;
}

#[tokio::test]
async fn a_client_flooding_an_sse_stream_is_dropped_and_counted() {
    let server = TestServer::default().await;
    let mut flooder = hold(&server, "/sse?channels=flood", OPEN_STREAMS).await;
    let junk = vec![b'x'; 64 * 1024];
    let _ = flooder.write_all(&junk).await;
    released(&server, OPEN_STREAMS).await;
    let overflow = r#"cascade_errors_total{code="pipeline_overflow"}"#;
    assert_eq!(server.metric(overflow).await, 1.0);
}

/// A connection reuses one timer for the hold of a poll and the head of the next request:
/// a hold longer than the head's deadline is not cut by it, and a head after a poll that
/// was answered early, well before its hold's end, still gets its own, shorter deadline.
#[tokio::test]
async fn a_head_after_a_long_poll_still_has_its_own_deadline() {
    let mut config = support::test_config();
    config.limits.header_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let first = ask(&mut stream, &mut rest, "/longpoll?channels=hold&timeout=0").await;
    let held = Instant::now();
    let path = format!(
        "/longpoll?channels=hold&cursor={}&timeout=1",
        cursor_of(&first)
    );
    let empty = ask(&mut stream, &mut rest, &path).await;
    assert!(
        held.elapsed() >= Duration::from_millis(900),
        "held for its timeout, not the head's deadline: {:?}",
        held.elapsed()
    );
    assert_eq!(json_body(&empty)["messages"], json!([]));
    // A poll that may be held for 30 s, answered at once by a publish.
    let path = format!(
        "/longpoll?channels=hold&cursor={}&timeout=30",
        cursor_of(&empty)
    );
    stream.write_all(get(&path).as_bytes()).await.unwrap();
    server.publish("hold", json!({"n": 1})).await;
    let answered = read_answer(&mut stream, &mut rest).await;
    assert_eq!(json_body(&answered)["messages"][0]["data"], json!({"n": 1}));
    // A trickled head on the same connection is cut at the head's deadline.
    stream
        .write_all(b"GET /longpoll?channels=hold HTTP/1.1\r\n")
        .await
        .unwrap();
    let cut = Instant::now();
    let mut byte = [0u8; 1];
    let read = within(stream.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the server closes: {read:?}"
    );
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "cut at the head's deadline, not the hold's: {:?}",
        cut.elapsed()
    );
    let timeouts = r#"cascade_errors_total{code="request_timeout"}"#;
    assert_eq!(server.metric(timeouts).await, 1.0);
}

/// A client asks `/negotiate` and then opens its rung on the same keep-alive connection,
/// as a browser's pool does: the stream is still served on the lean path, which gives an
/// SSE stream the connection to itself (`connection: close`) and writes it express.
#[tokio::test]
async fn a_stream_opened_after_negotiating_on_the_same_connection_stays_lean() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let ladder = ask(&mut stream, &mut rest, "/negotiate").await;
    assert_eq!(ladder.status, 200, "{}", ladder.head);
    assert!(json_body(&ladder)["transports"].is_array());
    let polled = ask(&mut stream, &mut rest, "/longpoll?channels=rung&timeout=0").await;
    assert_eq!(polled.status, 200, "{}", polled.head);
    open_lean_stream(&mut stream, &mut rest, &get("/sse?channels=rung")).await;
    server.publish("rung", json!({"n": 1})).await;
    read_until(&mut stream, &mut rest, br#""n":1"#).await;
}

/// Sends `request` (an SSE request) and checks that the stream opens on the lean path,
/// which gives a stream its connection to itself (`connection: close`); hyper does not.
async fn open_lean_stream(stream: &mut TcpStream, rest: &mut Vec<u8>, request: &str) {
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_until(stream, rest, b"event: open").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "served by the lean path: {head}"
    );
}

/// Reads from `stream` into `rest` until `wanted` appears; returns what was read as text.
async fn read_until(stream: &mut TcpStream, rest: &mut Vec<u8>, wanted: &[u8]) -> String {
    within(async {
        while !rest.windows(wanted.len()).any(|w| w == wanted) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(wanted));
            rest.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(rest).into_owned()
}

/// A page of another origin that sends its token in a header asks a CORS preflight
/// before `/negotiate`: the preflight is answered on the lean path as hyper would, and the
/// stream the page then opens on the same connection stays lean.
#[tokio::test]
async fn a_preflight_before_negotiating_keeps_the_connection_on_the_lean_path() {
    let mut config = support::test_config();
    config.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let origin = "origin: https://app.example.com\r\n";
    let preflight = format!(
        "OPTIONS /negotiate HTTP/1.1\r\nhost: test\r\n{origin}\
         access-control-request-method: GET\r\n\
         access-control-request-headers: authorization\r\n\r\n"
    );
    stream.write_all(preflight.as_bytes()).await.unwrap();
    let answered = read_answer(&mut stream, &mut rest).await;
    assert_eq!(answered.status, 204, "{}", answered.head);
    let head = answered.head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-origin: https://app.example.com"),
        "{head}"
    );
    assert!(head.contains("access-control-allow-headers:"), "{head}");
    // No body, and no length for one (RFC 9110, 8.6), as hyper answers it.
    assert!(!head.contains("content-length"), "{head}");
    let negotiate = format!("GET /negotiate HTTP/1.1\r\nhost: test\r\n{origin}\r\n");
    stream.write_all(negotiate.as_bytes()).await.unwrap();
    let ladder = read_answer(&mut stream, &mut rest).await;
    assert_eq!(ladder.status, 200, "{}", ladder.head);
    let sse = format!("GET /sse?channels=after-preflight HTTP/1.1\r\nhost: test\r\n{origin}\r\n");
    open_lean_stream(&mut stream, &mut rest, &sse).await;
}

/// `POST /publish` with `body`, as a browser client sends it.
fn post_publish(body: &str, extra: &str) -> String {
    format!(
        "POST /publish HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// A browser client that is not on a WebSocket publishes on the connections it polls on:
/// a publish is served on the lean path, a request pipelined right behind its body is
/// answered next, and a stream opened on the connection afterwards is still lean.
#[tokio::test]
async fn a_publish_keeps_the_connection_on_the_lean_path() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let body = json!({"channel": "posted", "data": {"n": 1}}).to_string();
    let both = post_publish(&body, "") + &get("/longpoll?channels=posted&timeout=0");
    stream.write_all(both.as_bytes()).await.unwrap();
    let published = read_answer(&mut stream, &mut rest).await;
    assert_eq!(published.status, 200, "{}", published.head);
    assert_eq!(json_body(&published)["offset"], 1);
    let polled = read_answer(&mut stream, &mut rest).await;
    assert!(
        cursor_of(&polled).ends_with(":1"),
        "{:?}",
        json_body(&polled)
    );
    open_lean_stream(&mut stream, &mut rest, &get("/sse?channels=posted")).await;
}

/// A publish whose declared body is over the limit is refused before any of it is read,
/// counted, and its connection closed after the answer.
#[tokio::test]
async fn a_publish_body_over_the_limit_is_refused_and_the_connection_closed() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let head = "POST /publish HTTP/1.1\r\nhost: test\r\ncontent-length: 10000000\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.unwrap();
    let refused = read_answer(&mut stream, &mut rest).await;
    assert_eq!(refused.status, 413, "{}", refused.head);
    assert_eq!(json_body(&refused)["error"]["code"], "body_too_large");
    assert!(
        refused
            .head
            .to_ascii_lowercase()
            .contains("connection: close")
    );
    closed(&mut stream).await;
    let counted = r#"cascade_errors_total{code="body_too_large"}"#;
    assert_eq!(server.metric(counted).await, 1.0);
}

/// A publish is refused for its credentials or its connection's budget before any of its
/// body is read, as on hyper's path: the answer comes with the head alone, long before
/// the body's deadline. The body, once it comes, is skipped, and the connection carries
/// the next request.
#[tokio::test]
async fn a_publish_refused_by_its_head_is_answered_before_its_body() {
    let mut config = support::test_config();
    config.limits.body_read_timeout_ms = 600_000;
    config.limits.publish_rate_per_second = 1;
    config.limits.publish_burst = 1;
    let server = TestServer::start(config).await;
    let body = json!({"channel": "refused", "data": "x".repeat(5000)}).to_string();
    let head_alone = |extra: &str| {
        let request = post_publish(&body, extra);
        request[..request.len() - body.len()].to_string()
    };

    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let head = head_alone("x-cascade-api-key: not-a-key\r\n");
    let (polled, refused) = refused_before_body(&mut stream, &mut rest, &head, &body).await;
    assert_eq!(refused.status, 401, "{}", refused.head);
    assert_eq!(json_body(&refused)["error"]["code"], "token_invalid");
    assert_eq!(
        json_body(&polled)["messages"],
        json!([]),
        "nothing published"
    );

    // The connection's one publish, then one over its budget.
    stream
        .write_all(post_publish(&body, "").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut stream, &mut rest).await.status, 200);
    let (polled, refused) =
        refused_before_body(&mut stream, &mut rest, &head_alone(""), &body).await;
    assert_eq!(refused.status, 429, "{}", refused.head);
    assert_eq!(json_body(&refused)["error"]["code"], "rate_limited");
    assert!(
        cursor_of(&polled).ends_with(":1"),
        "{:?}",
        json_body(&polled)
    );
}

/// A refused publish whose body never comes is dropped at the body's deadline and
/// counted, as a body that stops short is.
#[tokio::test]
async fn a_refused_publish_whose_body_never_comes_is_dropped_at_its_deadline() {
    let mut config = support::test_config();
    config.limits.body_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let head = "POST /publish HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\
                x-cascade-api-key: not-a-key\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let refused = read_answer(&mut stream, &mut rest).await;
    assert_eq!(refused.status, 401, "{}", refused.head);
    closed(&mut stream).await;
    let counted = r#"cascade_errors_total{code="request_timeout"}"#;
    assert_eq!(server.metric(counted).await, 1.0);
}

/// Sends a publish's `head` and reads its answer, then sends its `body` and a long poll
/// of its channel on the same connection, which must be answered: the poll's answer and
/// the publish's.
async fn refused_before_body(
    stream: &mut TcpStream,
    rest: &mut Vec<u8>,
    head: &str,
    body: &str,
) -> (Answer, Answer) {
    stream.write_all(head.as_bytes()).await.unwrap();
    let refused = read_answer(stream, rest).await;
    stream.write_all(body.as_bytes()).await.unwrap();
    let polled = ask(stream, rest, "/longpoll?channels=refused&timeout=0").await;
    assert_eq!(
        polled.status, 200,
        "the connection goes on: {}",
        polled.head
    );
    (polled, refused)
}

/// A publish whose body stops short is answered at its deadline, counted, and its
/// connection closed.
#[tokio::test]
async fn a_publish_body_that_stops_short_is_refused_at_its_deadline() {
    let mut config = support::test_config();
    config.limits.body_read_timeout_ms = 300;
    let server = TestServer::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let body = json!({"channel": "slow", "data": 1}).to_string();
    let request = post_publish(&body, "");
    let short = &request[..request.len() - 5];
    stream.write_all(short.as_bytes()).await.unwrap();
    let refused = read_answer(&mut stream, &mut rest).await;
    assert_eq!(refused.status, 408, "{}", refused.head);
    assert_eq!(json_body(&refused)["error"]["code"], "request_timeout");
    closed(&mut stream).await;
}

/// Waits for the server to close `stream`.
async fn closed(stream: &mut TcpStream) {
    within(async {
        let mut chunk = [0u8; 1024];
        while stream.read(&mut chunk).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

/// A page loads the client's script from the gateway, and the browser's pool reuses that
/// connection for the client's stream: the script (and its `304` on a revalidation) is
/// answered on the lean path, and the stream after it stays lean.
#[tokio::test]
async fn a_stream_opened_after_loading_the_client_script_stays_lean() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let script = ask(&mut stream, &mut rest, "/cascade.js").await;
    assert_eq!(script.status, 200, "{}", script.head);
    assert_eq!(
        script.body,
        include_bytes!("../client/cascade.js"),
        "the whole script"
    );
    let etag = script
        .head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an etag")
        .to_owned();
    let revalidate =
        format!("GET /cascade.js HTTP/1.1\r\nhost: test\r\nif-none-match: {etag}\r\n\r\n");
    stream.write_all(revalidate.as_bytes()).await.unwrap();
    let fresh = read_answer(&mut stream, &mut rest).await;
    assert_eq!(fresh.status, 304, "{}", fresh.head);
    assert!(fresh.body.is_empty());
    open_lean_stream(&mut stream, &mut rest, &get("/sse?channels=script")).await;
    server.publish("script", json!({"n": 1})).await;
    read_until(&mut stream, &mut rest, br#""n":1"#).await;
}
