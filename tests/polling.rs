mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// GETs a polling route and returns its body, asserting a 200.
async fn poll(server: &TestServer, path: &str) -> Value {
    let (status, body) = server.get_json(path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// The `cursor` of a polling answer.
fn cursor(body: &Value) -> String {
    body["cursor"].as_str().expect("cursor").to_owned()
}

/// `(channel, offset, data)` of every message in a polling answer.
fn messages(body: &Value) -> Vec<(String, u64, Value)> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().expect("channel").to_owned(),
                m["offset"].as_u64().expect("offset"),
                m["data"].clone(),
            )
        })
        .collect()
}

fn offsets(body: &Value) -> Vec<u64> {
    messages(body).into_iter().map(|(_, o, _)| o).collect()
}

/// The starting cursor of `channel` ("from now on"), as a poll reports it.
async fn tail(server: &TestServer, channel: &str) -> String {
    cursor(&poll(server, &format!("/poll?channels={channel}")).await)
}

#[tokio::test]
async fn short_poll_delivers_in_order_with_offsets() {
    let server = TestServer::default().await;
    let start = tail(&server, "sp").await;
    let mut epoch = String::new();
    for i in 1..=5u64 {
        let (e, offset) = server.publish("sp", json!({"n": i})).await;
        assert_eq!(offset, i);
        epoch = e;
    }
    let body = poll(&server, &format!("/poll?cursor={start}")).await;
    let got = messages(&body);
    assert_eq!(got.len(), 5, "{body}");
    for (i, (channel, offset, data)) in got.iter().enumerate() {
        assert_eq!(channel, "sp");
        assert_eq!(*offset, i as u64 + 1);
        assert_eq!(data["n"], i as u64 + 1);
    }
    for m in body["messages"].as_array().unwrap() {
        assert_eq!(m["epoch"], epoch.as_str());
        assert!(m["ts"].as_u64().unwrap() > 0);
    }
    assert_eq!(cursor(&body), format!("sp@{epoch}:5"));
    assert!(body.get("gaps").is_none(), "{body}");

    // The returned cursor is the new position: polling with it yields nothing.
    let again = poll(&server, &format!("/poll?cursor={}", cursor(&body))).await;
    assert!(offsets(&again).is_empty(), "{again}");
    assert_eq!(cursor(&again), cursor(&body));
}

#[tokio::test]
async fn long_poll_delivers_in_order_with_offsets() {
    let server = TestServer::default().await;
    let start = tail(&server, "lp").await;
    let mut epoch = String::new();
    for i in 1..=5u64 {
        epoch = server.publish("lp", json!(i)).await.0;
    }
    let begun = Instant::now();
    let body = poll(&server, &format!("/longpoll?cursor={start}&timeout=30")).await;
    // Messages already exist after the cursor: the answer is immediate.
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "{:?}",
        begun.elapsed()
    );
    let got = messages(&body);
    assert_eq!(
        got,
        (1..=5u64)
            .map(|i| ("lp".to_owned(), i, json!(i)))
            .collect::<Vec<_>>()
    );
    assert_eq!(cursor(&body), format!("lp@{epoch}:5"));

    // A held long poll from that cursor gets exactly the next message.
    let next = cursor(&body);
    let url = server.url(&format!("/longpoll?cursor={next}&timeout=30"));
    let held = tokio::spawn(async move {
        let response = http().get(url).send().await.expect("longpoll");
        response.json::<Value>().await.expect("longpoll body")
    });
    eventually("the long poll to park", || async {
        server
            .metric(r#"cascade_connections{transport="longpoll"}"#)
            .await
            == 1.0
    })
    .await;
    server.publish("lp", json!(6)).await;
    let body = within(held).await.expect("longpoll task");
    assert_eq!(offsets(&body), vec![6]);
    assert_eq!(cursor(&body), format!("lp@{epoch}:6"));
}

#[tokio::test]
async fn poll_resumes_from_cursor_after_disconnect() {
    let server = TestServer::default().await;
    let start = tail(&server, "resume").await;
    for i in 1..=3 {
        server.publish("resume", json!(i)).await;
    }
    // Every `get_json` uses a fresh client, so each poll is a new connection.
    let first = poll(&server, &format!("/poll?cursor={start}")).await;
    assert_eq!(offsets(&first), vec![1, 2, 3]);
    let saved = cursor(&first);

    for i in 4..=6 {
        server.publish("resume", json!(i)).await;
    }
    let second = poll(&server, &format!("/poll?channels=resume&cursor={saved}")).await;
    assert_eq!(
        offsets(&second),
        vec![4, 5, 6],
        "nothing lost, nothing repeated"
    );
    let datas: Vec<Value> = messages(&second).into_iter().map(|m| m.2).collect();
    assert_eq!(datas, vec![json!(4), json!(5), json!(6)]);

    // The same cursor on the long-poll rung gives the same answer: cursors are shared.
    let long = poll(&server, &format!("/longpoll?cursor={saved}")).await;
    assert_eq!(offsets(&long), vec![4, 5, 6]);
    assert_eq!(cursor(&long), cursor(&second));
}

#[tokio::test]
async fn old_offset_outside_history_yields_gap() {
    let mut config = test_config();
    config.history.max_messages = 3;
    let server = TestServer::start(config).await;
    let mut epoch = String::new();
    for i in 1..=10 {
        epoch = server.publish("old", json!(i)).await.0;
    }
    for route in ["/poll", "/longpoll"] {
        let body = poll(&server, &format!("{route}?cursor=old@{epoch}:1")).await;
        assert_eq!(
            body["gaps"],
            json!([{"channel": "old", "epoch": epoch, "first": 8}]),
            "{route}: {body}"
        );
        assert_eq!(offsets(&body), vec![8, 9, 10], "{route}: {body}");
        assert_eq!(cursor(&body), format!("old@{epoch}:10"));
    }
    assert_eq!(
        server
            .metric(r#"cascade_gaps_total{transport="poll"}"#)
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric(r#"cascade_gaps_total{transport="longpoll"}"#)
            .await,
        1.0
    );

    // The oldest retained position itself is not a gap.
    let body = poll(&server, &format!("/poll?cursor=old@{epoch}:7")).await;
    assert!(body.get("gaps").is_none(), "{body}");
    assert_eq!(offsets(&body), vec![8, 9, 10]);
}

#[tokio::test]
async fn wrong_epoch_yields_gap() {
    let server = TestServer::default().await;
    let mut epoch = String::new();
    for i in 1..=3 {
        epoch = server.publish("ep", json!(i)).await.0;
    }
    // Real epochs are eight characters, so this one cannot match.
    let body = poll(&server, "/poll?cursor=ep@Wrong1:2").await;
    assert_eq!(
        body["gaps"],
        json!([{"channel": "ep", "epoch": epoch, "first": 1}]),
        "{body}"
    );
    assert_eq!(offsets(&body), vec![1, 2, 3]);
    assert_eq!(cursor(&body), format!("ep@{epoch}:3"));

    // An offset beyond the head of the right epoch is not retained either; the gap puts
    // the reader at the head without replaying what it claims to hold.
    let body = poll(&server, &format!("/poll?cursor=ep@{epoch}:99")).await;
    assert_eq!(
        body["gaps"],
        json!([{"channel": "ep", "epoch": epoch, "first": 4}]),
        "{body}"
    );
    assert_eq!(offsets(&body), Vec::<u64>::new());
    assert_eq!(cursor(&body), format!("ep@{epoch}:3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_promptly_on_publish() {
    let server = TestServer::default().await;
    let start = tail(&server, "wake").await;
    let url = server.url(&format!("/longpoll?cursor={start}&timeout=30"));
    let held = tokio::spawn(async move {
        let response = http().get(url).send().await.expect("longpoll");
        let answered = Instant::now();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.expect("body"),
            answered,
        )
    });
    eventually("the long poll to park", || async {
        server
            .metric(r#"cascade_connections{transport="longpoll"}"#)
            .await
            == 1.0
    })
    .await;
    let published = Instant::now();
    let (epoch, _) = server.publish("wake", json!("now")).await;
    let (status, body, answered) = within(held).await.expect("longpoll task");
    let lag = answered.saturating_duration_since(published);
    assert_eq!(status, 200);
    assert!(
        lag < Duration::from_millis(500),
        "long poll answered {lag:?} after the publish"
    );
    assert_eq!(messages(&body), vec![("wake".to_owned(), 1, json!("now"))]);
    assert_eq!(cursor(&body), format!("wake@{epoch}:1"));
    eventually("the long poll to finish", || async {
        server
            .metric(r#"cascade_connections{transport="longpoll"}"#)
            .await
            == 0.0
    })
    .await;
}

#[tokio::test]
async fn long_poll_times_out_empty_with_same_cursor() {
    let server = TestServer::default().await;
    server.publish("quiet", json!(1)).await;
    let start = tail(&server, "quiet").await;
    let begun = Instant::now();
    let body = poll(&server, &format!("/longpoll?cursor={start}&timeout=1")).await;
    let held = begun.elapsed();
    assert_eq!(body["messages"], json!([]), "{body}");
    assert!(body.get("gaps").is_none(), "{body}");
    assert_eq!(cursor(&body), start);
    assert!(held >= Duration::from_millis(900), "held only {held:?}");
    assert!(held < Duration::from_secs(5), "held {held:?}");
}

/// Polls back to back while a publisher races; the union must be exactly 1..=N.
async fn back_to_back(route: &'static str) {
    const N: u64 = 150;
    let server = Arc::new(TestServer::default().await);
    let mut position = tail(&server, "race").await;
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                server.publish("race", json!(i)).await;
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut polls = 0;
    within(async {
        while seen.last() != Some(&N) {
            let body = poll(&server, &format!("{route}?cursor={position}&timeout=5")).await;
            assert!(body.get("gaps").is_none(), "{body}");
            for (channel, offset, data) in messages(&body) {
                assert_eq!(channel, "race");
                assert_eq!(data, json!(offset), "data follows offset");
                seen.push(offset);
            }
            position = cursor(&body);
            polls += 1;
        }
    })
    .await;
    within(publisher).await.expect("publisher");
    assert_eq!(seen, (1..=N).collect::<Vec<_>>(), "after {polls} polls");
    // Nothing more is waiting after the last message.
    let rest = poll(&server, &format!("/poll?cursor={position}")).await;
    assert!(offsets(&rest).is_empty(), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_short_polls_lose_nothing() {
    back_to_back("/poll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_long_polls_lose_nothing() {
    back_to_back("/longpoll").await;
}

#[tokio::test]
async fn poll_without_cursor_starts_at_tail() {
    let server = TestServer::default().await;
    let mut epoch = String::new();
    for i in 1..=3 {
        epoch = server.publish("tail", json!(i)).await.0;
    }
    let body = poll(&server, "/poll?channels=tail").await;
    assert_eq!(
        body["messages"],
        json!([]),
        "history is not replayed: {body}"
    );
    assert!(body.get("gaps").is_none(), "{body}");
    assert_eq!(cursor(&body), format!("tail@{epoch}:3"));

    server.publish("tail", json!(4)).await;
    let next = poll(&server, &format!("/poll?cursor={}", cursor(&body))).await;
    assert_eq!(offsets(&next), vec![4]);

    // A channel nobody published to starts at offset 0 of a fresh epoch.
    let fresh = poll(&server, "/poll?channels=fresh").await;
    let fresh_cursor = cursor(&fresh);
    let (name, position) = fresh_cursor.split_once('@').expect("position");
    assert_eq!(name, "fresh");
    assert!(position.ends_with(":0"), "{fresh_cursor}");
}

#[tokio::test]
async fn multi_channel_poll() {
    let server = TestServer::default().await;
    let start = cursor(&poll(&server, "/poll?channels=alpha,beta,gamma").await);
    assert_eq!(start.split(',').count(), 3, "{start}");
    let (ea, _) = server.publish("alpha", json!("a1")).await;
    let (eb, _) = server.publish("beta", json!("b1")).await;
    server.publish("alpha", json!("a2")).await;
    server.publish("beta", json!("b2")).await;
    server.publish("beta", json!("b3")).await;
    let gamma_position = start
        .split(',')
        .find_map(|e| e.strip_prefix("gamma@"))
        .expect("gamma entry")
        .to_owned();

    for route in ["/poll", "/longpoll"] {
        let body = poll(&server, &format!("{route}?cursor={start}")).await;
        let got = messages(&body);
        let of = |channel: &str| -> Vec<(u64, Value)> {
            got.iter()
                .filter(|(c, _, _)| c == channel)
                .map(|(_, o, d)| (*o, d.clone()))
                .collect()
        };
        assert_eq!(of("alpha"), vec![(1, json!("a1")), (2, json!("a2"))]);
        assert_eq!(
            of("beta"),
            vec![(1, json!("b1")), (2, json!("b2")), (3, json!("b3"))]
        );
        assert_eq!(got.len(), 5, "{body}");
        assert_eq!(
            cursor(&body),
            format!("alpha@{ea}:2,beta@{eb}:3,gamma@{gamma_position}")
        );
    }

    // `channels=` picks a subset; cursor entries for other channels are ignored.
    let body = poll(&server, &format!("/poll?channels=beta&cursor={start}")).await;
    assert_eq!(offsets(&body), vec![1, 2, 3]);
    assert_eq!(cursor(&body), format!("beta@{eb}:3"));
}

/// One keep-alive connection spoken to by hand, so that its polls surely share it.
struct KeepAlive {
    stream: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl KeepAlive {
    async fn open(server: &TestServer) -> Self {
        let stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        KeepAlive {
            stream,
            read: Vec::new(),
        }
    }

    /// GETs `path` and returns the JSON body of its `200`.
    async fn get(&mut self, path: &str) -> Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("send");
        loop {
            let text = String::from_utf8_lossy(&self.read).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = &text[..end];
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("content-length")
                    .parse()
                    .expect("length");
                if self.read.len() >= end + 4 + length {
                    let body: Vec<u8> = self.read.drain(..end + 4 + length).skip(end + 4).collect();
                    return serde_json::from_slice(&body).expect("json body");
                }
            }
            let mut chunk = [0u8; 4096];
            let n = within(self.stream.read(&mut chunk)).await.expect("read");
            assert!(n > 0, "the gateway closed the connection");
            self.read.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test]
async fn a_keep_alive_connection_keeps_its_poll_subscription() {
    // History keeps one message, so only a subscription kept between polls can hand
    // out the two published while no poll was waiting.
    let mut config = test_config();
    config.history.max_messages = 1;
    let server = TestServer::start(config).await;
    let start = tail(&server, "kept").await;
    let (epoch, _) = server.publish("kept", json!(1)).await;
    let mut conn = KeepAlive::open(&server).await;
    let first = conn
        .get(&format!("/longpoll?cursor={start}&timeout=5"))
        .await;
    assert_eq!(offsets(&first), vec![1], "{first}");
    let resume = cursor(&first);
    server.publish("kept", json!(2)).await;
    server.publish("kept", json!(3)).await;

    let kept = conn
        .get(&format!("/longpoll?cursor={resume}&timeout=5"))
        .await;
    assert_eq!(offsets(&kept), vec![2, 3], "{kept}");
    assert!(kept.get("gaps").is_none(), "{kept}");
    assert_eq!(cursor(&kept), format!("kept@{epoch}:3"));

    // Another connection has no such subscription: history reports the gap.
    let elsewhere = poll(&server, &format!("/longpoll?cursor={resume}&timeout=5")).await;
    assert_eq!(offsets(&elsewhere), vec![3], "{elsewhere}");
    assert_eq!(elsewhere["gaps"][0]["first"], json!(3), "{elsewhere}");

    // A poll that does not resume where the last answer ended starts afresh, on the
    // same connection too.
    let stale = conn
        .get(&format!("/longpoll?cursor={resume}&timeout=5"))
        .await;
    assert_eq!(offsets(&stale), vec![3], "{stale}");
    assert_eq!(stale["gaps"][0]["first"], json!(3), "{stale}");
}

#[tokio::test]
async fn json_answers_carry_their_type_and_are_never_cached() {
    let server = TestServer::default().await;
    // /poll is served by the lean path, /negotiate by hyper: both write the same headers.
    for path in ["/poll?channels=h", "/negotiate"] {
        let response = http().get(server.url(path)).send().await.expect(path);
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/json"),
            "{path}"
        );
        assert_eq!(
            header("cache-control").as_deref(),
            Some("no-store"),
            "{path}"
        );
    }
}
