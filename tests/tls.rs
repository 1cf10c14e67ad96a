//! TLS termination over real sockets: HTTP/1.1 and HTTP/2 clients with ALPN, two
//! WebSockets as streams of one HTTP/2 connection (RFC 8441), the certificate reloaded
//! under load, and hostile clients dropped within the deadlines. The whole WebSocket
//! contract runs over `wss://` and over HTTP/2 in tests/websocket.rs.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::tls::{self, Alpn, H2, TestCert};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A metric's value, read over HTTP/1.1 on TLS.
async fn metric(server: &TestServer, cert: &TestCert, series: &str) -> f64 {
    let (status, body) = tls::https1_get(server.addr, &cert.der, "/metrics").await;
    assert_eq!(status, 200);
    metric_value(std::str::from_utf8(&body).expect("utf-8"), series)
}

/// POSTs a message to `/publish` on an HTTP/2 connection; its offset.
async fn publish_h2(h2: &mut H2, channel: &str, data: Value) -> u64 {
    let body = json!({"channel": channel, "data": data}).to_string();
    let req = hyper::Request::post("https://localhost/publish")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = h2.send(req).await;
    assert_eq!(response.status(), 200, "publish over h2");
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let ack: Value = serde_json::from_slice(&body).expect("json");
    ack["offset"].as_u64().expect("offset")
}

#[tokio::test]
async fn http1_and_h2_clients_are_served_over_tls_by_their_alpn() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |_| {}).await;

    let (status, body) = tls::https1_get(server.addr, &cert.der, "/healthz").await;
    assert_eq!(status, 200, "{body:?}");
    let mut h2 = H2::connect(server.addr, &cert.der).await;
    let (status, body) = h2.get("/healthz").await;
    assert_eq!(status, 200, "{body:?}");
    // The static client too.
    let (status, body) = h2.get("/cascade.js").await;
    assert_eq!(status, 200);
    assert!(!body.is_empty());

    // A short poll, and an SSE stream and a long poll as streams of one connection.
    publish_h2(&mut h2, "news", json!({"n": 1})).await;
    let (status, body) = h2.get("/poll?channels=news").await;
    assert_eq!(status, 200, "{body:?}");
    let sse_req = hyper::Request::get("https://localhost/sse?channels=news")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let sse = h2.send(sse_req).await;
    assert_eq!(sse.status(), 200);
    let mut sse_body = sse.into_body();
    let cursor = {
        let (_, body) = h2.get("/poll?channels=news").await;
        let answer: Value = serde_json::from_slice(&body).expect("json");
        answer["cursor"].as_str().expect("cursor").to_owned()
    };
    let mut h2b = H2::connect(server.addr, &cert.der).await;
    let long_poll = tokio::spawn(async move {
        h2b.get(&format!("/longpoll?channels=news&cursor={cursor}"))
            .await
    });
    eventually("a parked long poll", || async {
        metric(
            &server,
            &cert,
            r#"cascade_connections{transport="longpoll"}"#,
        )
        .await
            == 1.0
    })
    .await;
    assert_eq!(
        metric(&server, &cert, r#"cascade_connections{transport="sse"}"#).await,
        1.0,
        "an h2 stream is counted as its transport"
    );
    publish_h2(&mut h2, "news", json!({"n": 2})).await;
    let (status, body) = within(long_poll).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains(r#""n":2"#),
        "{body:?}"
    );
    let mut seen = String::new();
    while !seen.contains(r#""n":2"#) {
        let frame = within(sse_body.frame())
            .await
            .expect("sse open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    for transport in ["sse", "longpoll", "poll"] {
        let served = format!(r#"cascade_connections_total{{transport="{transport}"}}"#);
        assert!(
            metric(&server, &cert, &served).await >= 1.0,
            "{transport} served over h2 is counted"
        );
    }
    let handshakes = r#"cascade_tls_handshakes_total{alpn="h2"}"#;
    assert_eq!(metric(&server, &cert, handshakes).await, 2.0);
    let handshakes = r#"cascade_tls_handshakes_total{alpn="http/1.1"}"#;
    assert!(metric(&server, &cert, handshakes).await >= 1.0);
}

/// Pings every 2 s: the contract's late reader reads nothing for a while, and would be
/// dropped for missing pongs at the test config's 500 ms.
fn slow_pings(config: &mut cascade::config::Config) {
    config.websocket.ping_interval_ms = 2_000;
}

/// The WebSocket contract's core on two clients of one wire (tests/websocket.rs runs all of
/// it on every wire, one connection per client): `subscriber` and `publisher`.
async fn websocket_contract<A, B>(subscriber: &mut WsClient<A>, publisher: &mut WsClient<B>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reply = subscriber.subscribe(&["chat", "side"], None).await;
    let cursor = reply["cursor"].as_str().expect("cursor").to_owned();
    assert!(cursor.contains("chat@"), "{cursor}");

    // Acks carry the offsets; messages arrive in order.
    for n in 1..=10u64 {
        let frame = json!({"op": "publish", "channel": "chat", "data": {"n": n}, "id": n});
        publisher.send(frame).await;
        let ack = publisher.recv().await;
        assert_eq!(
            (ack["op"].as_str(), ack["offset"].as_u64()),
            (Some("ack"), Some(n))
        );
    }
    for n in 1..=10u64 {
        let frame = subscriber.recv().await;
        assert_eq!(frame["op"], "message", "{frame}");
        assert_eq!(
            (frame["offset"].as_u64(), frame["data"]["n"].as_u64()),
            (Some(n), Some(n))
        );
    }

    // Large messages to a subscriber that reads late: the TLS session and the socket
    // fill, and every message still arrives whole and in order.
    let pad = "x".repeat(60 * 1024);
    for n in 11..=40u64 {
        let frame = json!({"op": "publish", "channel": "chat", "data": {"n": n, "pad": pad}});
        publisher.send(frame).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 11..=40u64 {
        let frame = subscriber.recv().await;
        assert_eq!(frame["data"]["n"].as_u64(), Some(n), "message {n}");
        assert_eq!(frame["data"]["pad"].as_str().map(str::len), Some(pad.len()));
    }

    // Unsubscribing stops that channel only.
    subscriber
        .send(json!({"op": "unsubscribe", "channels": ["chat"]}))
        .await;
    let reply = subscriber.recv().await;
    assert_eq!(reply["op"], "unsubscribed", "{reply}");
    for channel in ["chat", "side"] {
        let frame = json!({"op": "publish", "channel": channel, "data": {"n": 0}, "id": 1});
        publisher.send(frame).await;
        assert_eq!(publisher.recv().await["op"], "ack");
    }
    let frame = subscriber.recv().await;
    assert_eq!(
        (frame["op"].as_str(), frame["channel"].as_str()),
        (Some("message"), Some("side"))
    );

    // The server pings.
    let pinged = within(async {
        loop {
            match subscriber.ws.next().await {
                Some(Ok(WsMessage::Ping(_))) => return true,
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    })
    .await;
    assert!(pinged, "a ping over the wire");
}

#[tokio::test]
async fn the_websocket_contract_holds_over_http2_extended_connect() {
    let cert = TestCert::new();
    let server = tls::start(&cert, slow_pings).await;
    let mut h2 = H2::connect(server.addr, &cert.der).await;
    // SETTINGS_ENABLE_CONNECT_PROTOCOL comes in the server's first SETTINGS, which a
    // first answer has surely followed.
    assert_eq!(h2.get("/healthz").await.0, 200);
    // Both WebSockets are streams of one connection.
    let mut subscriber = h2.websocket().await;
    let mut publisher = h2.websocket().await;
    websocket_contract(&mut subscriber, &mut publisher).await;
    assert_eq!(
        metric(
            &server,
            &cert,
            r#"cascade_connections{transport="websocket"}"#
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&server, &cert, r#"cascade_tls_handshakes_total{alpn="h2"}"#).await,
        1.0,
        "one connection carried both"
    );
}

#[tokio::test]
async fn an_http2_websocket_outlives_the_connections_idle_deadline() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |c| c.limits.http2_idle_timeout_ms = 200).await;
    let mut h2 = H2::connect(server.addr, &cert.der).await;
    assert_eq!(h2.get("/healthz").await.0, 200);
    let mut ws = h2.websocket().await;
    ws.subscribe(&["chat"], None).await;
    // Well past the idle deadline: the WebSocket's stream keeps its connection.
    tokio::time::sleep(Duration::from_millis(800)).await;
    ws.send(json!({"op": "publish", "channel": "chat", "data": {"n": 1}, "id": 1}))
        .await;
    assert_eq!(ws.recv().await["op"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_served_without_dropping_a_connection() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |c| c.tls.reload_check_ms = 50).await;
    let first = cert.der.clone();
    const CLIENTS: usize = 20;
    const MESSAGES: u64 = 100;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = tls::wss(server.addr, &first).await;
        ws.subscribe(&["load"], None).await;
        // Each reads (and answers pings) throughout, and must see every message.
        clients.push(tokio::spawn(async move {
            for n in 1..=MESSAGES {
                let frame = ws.recv().await;
                assert_eq!(frame["data"]["n"].as_u64(), Some(n), "{frame}");
            }
        }));
    }
    let mut h2 = H2::connect(server.addr, &first).await;
    // Publishing throughout; the certificate is renewed halfway.
    let cert = {
        let mut cert = Some(cert);
        for n in 1..=MESSAGES {
            publish_h2(&mut h2, "load", json!({"n": n})).await;
            if n == MESSAGES / 2 {
                cert = Some(cert.take().unwrap().renew());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cert.unwrap()
    };
    assert_ne!(cert.der, first);
    for client in clients {
        within(client)
            .await
            .expect("every message, on a connection never dropped");
    }
    // New connections get the new certificate (a client that trusts only it connects).
    let presented = tls::presented(server.addr, &cert.der).await;
    assert_eq!(presented.as_ref(), Some(&cert.der));

    // A broken pair keeps the good one, logged and counted.
    tls::write_atomically(&cert.cert_file, b"not a certificate");
    eventually("the failed reload counted", || async {
        metric(
            &server,
            &cert,
            r#"cascade_errors_total{code="tls_reload_failed"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    let presented = tls::presented(server.addr, &cert.der).await;
    assert_eq!(presented.as_ref(), Some(&cert.der));
    assert_eq!(
        publish_h2(&mut h2, "load", json!({"n": 0})).await,
        MESSAGES + 1
    );
}

/// Reads until the server closes the connection; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .expect("the server closed the connection in time");
    start.elapsed()
}

#[tokio::test]
async fn hostile_handshakes_are_dropped_within_the_deadline_and_counted() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |c| c.tls.handshake_timeout_ms = 1000).await;

    let start = Instant::now();
    // Connected, and silent.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // The start of a ClientHello's record, and no more.
    let mut trickle = TcpStream::connect(server.addr).await.unwrap();
    trickle
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // Plain HTTP instead of a ClientHello.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let limit = Duration::from_secs(3);
    // Garbage at once, well before the deadline; the others at it.
    closed_within(&mut garbage, limit).await;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(500), "{took:?}");
    for stream in [&mut silent, &mut trickle] {
        closed_within(stream, limit).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(950),
            "dropped at the deadline, not before: {took:?}"
        );
    }
    assert_eq!(
        metric(
            &server,
            &cert,
            r#"cascade_errors_total{code="tls_handshake_timeout"}"#
        )
        .await,
        2.0
    );
    assert!(
        metric(
            &server,
            &cert,
            r#"cascade_errors_total{code="tls_handshake_failed"}"#
        )
        .await
            >= 1.0
    );
}

/// An HPACK header block of a `GET` for `path`, every field literal (RFC 7541 §6.2.2).
fn get_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
    for (index, value) in [(4u8, path), (1u8, "localhost")] {
        block.push(index); // literal without indexing, name from the static table
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn an_h2_client_that_opens_every_stream_and_reads_nothing_is_dropped() {
    let cert = TestCert::new();
    const STREAMS: u32 = 16;
    let server = tls::start(&cert, |c| {
        c.limits.http2_max_concurrent_streams = STREAMS;
        c.limits.http2_keepalive_ms = 300;
    })
    .await;
    let mut tls = tls::connect(server.addr, &cert.der, Alpn::H2).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS, empty
    // Every stream it may open, and more: SSE streams, each sent events it never reads.
    for i in 0..STREAMS + 4 {
        let block = get_headers("/sse?channels=flood");
        out.extend(frame(0x1, 0x4 | 0x1, 1 + 2 * i, &block)); // HEADERS, END_HEADERS|END_STREAM
    }
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    eventually("the streams open", || async {
        metric(&server, &cert, r#"cascade_connections{transport="sse"}"#).await
            == f64::from(STREAMS)
    })
    .await;
    // Published to while it reads nothing; its PING goes unanswered too.
    let mut h2 = H2::connect(server.addr, &cert.der).await;
    let pad = "x".repeat(16 * 1024);
    for n in 0..20 {
        publish_h2(&mut h2, "flood", json!({"n": n, "pad": pad})).await;
    }
    // Dropped within two keep-alive periods and some scheduling slack, and every stream
    // with it.
    eventually("the streams closed", || async {
        metric(&server, &cert, r#"cascade_connections{transport="sse"}"#).await == 0.0
    })
    .await;
    let mut buf = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server closed the connection");
}

#[tokio::test]
async fn a_gateway_without_a_certificate_is_plain_http_and_half_a_pair_is_refused() {
    let server = TestServer::default().await;
    assert_eq!(server.get_json("/healthz").await.0, 200);
    let mut config = test_config();
    config.tls.cert_file = "/nowhere/cert.pem".into();
    assert!(
        cascade::config::Config::from_sources(
            "[tls]\ncert_file = \"/x.pem\"\n",
            Vec::<(String, String)>::new()
        )
        .is_err(),
        "a certificate without a key"
    );
    config.tls.key_file = "/nowhere/key.pem".into();
    let err = cascade::app::App::new(config)
        .err()
        .expect("missing files refused");
    assert!(err.to_string().contains("/nowhere/cert.pem"), "{err}");
}

#[tokio::test]
async fn an_h2_request_from_the_gateways_own_origin_is_allowed() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |_| {}).await;
    let mut h2 = H2::connect(server.addr, &cert.der).await;
    // HTTP/2 has no Host header: the same-origin check reads `:authority`.
    for (origin, status) in [
        ("https://localhost", 200),
        ("https://elsewhere.example", 403),
    ] {
        let req = hyper::Request::get("https://localhost/poll?channels=news")
            .header("origin", origin)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(h2.send(req).await.status(), status, "{origin}");
    }
}

#[tokio::test]
async fn an_sse_stream_over_https1_delivers_large_messages_to_a_late_reader_whole() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |_| {}).await;
    let tls = tls::connect(server.addr, &cert.der, Alpn::Http1).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/sse?channels=big")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within(sender.send_request(req)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // The stream is open (its first event) before anything is published.
    let first = within(body.frame()).await.unwrap().unwrap();
    assert!(first.is_data());
    // Written by the hub (express) and the stream's own task into a TLS session whose
    // socket fills while the client reads nothing.
    let mut h2 = H2::connect(server.addr, &cert.der).await;
    let pad = "y".repeat(60 * 1024);
    const MESSAGES: u64 = 30;
    for n in 1..=MESSAGES {
        publish_h2(&mut h2, "big", json!({"n": n, "pad": pad})).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut text = String::new();
    let mut seen = 0;
    while seen < MESSAGES {
        let frame = within(body.frame())
            .await
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).expect("utf-8"));
        }
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let message: Value = serde_json::from_str(data).expect("json event");
            if message["data"]["pad"].is_string() {
                seen += 1;
                assert_eq!(message["data"]["n"].as_u64(), Some(seen), "in order");
                assert_eq!(
                    message["data"]["pad"].as_str().map(str::len),
                    Some(pad.len())
                );
            }
        }
    }
}

#[tokio::test]
async fn an_http2_connection_that_sends_no_request_is_dropped_at_the_header_deadline() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |c| c.limits.header_read_timeout_ms = 300).await;
    let start = Instant::now();
    let mut tls = tls::connect(server.addr, &cert.der, Alpn::H2).await;
    // The preface and SETTINGS, and then nothing.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "dropped");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    assert!(
        metric(
            &server,
            &cert,
            r#"cascade_errors_total{code="request_timeout"}"#
        )
        .await
            >= 1.0
    );
}

/// The gateway binary, killed by its PID when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_in_the_running_binary() {
    let cert = TestCert::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CASCADE_")) {
        command.env_remove(key);
    }
    let child = command
        .env("CASCADE_LISTEN", addr.to_string())
        .env("CASCADE_LOG", "warn")
        .env("CASCADE_TLS_CERT_FILE", &cert.cert_file)
        .env("CASCADE_TLS_KEY_FILE", &cert.key_file)
        // Only the signal reloads within this test.
        .env("CASCADE_TLS_RELOAD_CHECK_MS", "3600000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cascade");
    let child = Child(child);
    let first = cert.der.clone();
    eventually("the gateway serves", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert_eq!(tls::presented(addr, &first).await.as_ref(), Some(&first));
    let cert = cert.renew();
    let pid = i32::try_from(child.0.id()).unwrap();
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    eventually("the new certificate", || async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        // Trusting only the new certificate: the handshake succeeds once it is served.
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        #[allow(deprecated)]
        let provider = tokio_rustls::rustls::crypto::ring::default_provider();
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .is_ok()
    })
    .await;
    drop(child);
}

#[tokio::test]
async fn an_rsa_certificate_is_served_over_http1_and_h2() {
    let cert = TestCert::rsa();
    assert!(
        std::fs::read_to_string(&cert.key_file)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let server = tls::start(&cert, |_| {}).await;
    assert_eq!(
        tls::presented(server.addr, &cert.der).await.as_ref(),
        Some(&cert.der)
    );
    assert_eq!(
        tls::https1_get(server.addr, &cert.der, "/healthz").await.0,
        200
    );
    let mut h2 = H2::connect(server.addr, &cert.der).await;
    assert_eq!(h2.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_client_over_the_connection_limit_is_closed_before_its_handshake() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |c| c.limits.max_connections = 1).await;
    // The one connection allowed, held open.
    let _held = tls::connect(server.addr, &cert.der, Alpn::Http1).await;
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    // A ClientHello's first bytes: the gateway reads none of it.
    let _ = refused.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05]).await;
    closed_within(&mut refused, Duration::from_secs(2)).await;
    drop(_held);
    // The gateway lets go of the held connection's slot when it sees the close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually("the refusal counted", || async {
        // The held connection is gone: this metrics request is the one allowed now.
        let (status, body) = tls::https1_get(server.addr, &cert.der, "/metrics").await;
        status == 200
            && metric_value(
                std::str::from_utf8(&body).unwrap(),
                r#"cascade_errors_total{code="too_many_connections"}"#,
            ) >= 1.0
    })
    .await;
}

#[tokio::test]
async fn draining_tells_tls_clients_to_come_back_on_both_protocols() {
    let cert = TestCert::new();
    let server = tls::start(&cert, |_| {}).await;
    let mut wss = tls::wss(server.addr, &cert.der).await;
    wss.subscribe(&["chat"], None).await;
    let mut h2 = H2::connect(server.addr, &cert.der).await;
    assert_eq!(h2.get("/healthz").await.0, 200);
    let mut ws_h2 = h2.websocket().await;
    ws_h2.subscribe(&["chat"], None).await;
    let sse = h2
        .send(
            hyper::Request::get("https://localhost/sse?channels=chat")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    let mut sse = sse.into_body();
    let drained = tokio::spawn(server.shutdown());
    // WebSockets on both protocols close with 1012 (service restart), the SSE stream on
    // the HTTP/2 connection says `reconnect`, and the drain finishes.
    assert_eq!(wss.closed().await.0, 1012);
    assert_eq!(ws_h2.closed().await.0, 1012);
    let mut text = String::new();
    while !text.contains("event: reconnect") {
        match within(sse.frame()).await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            other => panic!("the stream ended without reconnect: {text:?} {other:?}"),
        }
    }
    within(drained).await.expect("drained");
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_served() {
    use tokio_rustls::rustls::{self, ProtocolVersion};
    let cert = TestCert::new();
    let server = tls::start(&cert, |_| {}).await;
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = within(
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
        )
        .await
        .expect("handshake");
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
    }
}
