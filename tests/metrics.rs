mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::*;

/// One sample line of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses one sample line `name{k="v",...} value [timestamp]`; `None` if malformed.
fn parse_sample(line: &str) -> Option<Sample> {
    let is_name_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if !name.starts_with(is_name_start) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let label = &rest[..eq];
            if label.is_empty()
                || !label.starts_with(is_name_start)
                || !label.chars().all(is_name_char)
            {
                return None;
            }
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(label.to_owned(), value);
            rest = &rest[close + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut fields = rest.strip_prefix(' ')?.split(' ');
    let value = match fields.next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Every sample of the exposition, asserting that each non-comment line parses.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("malformed sample line {line:?}")))
        .collect()
}

/// The value of `name` with exactly `labels` (in any order); 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == wanted)
        .map_or(0.0, |s| s.value)
}

async fn transport_value(server: &TestServer, name: &str, transport: &str) -> f64 {
    sample(&server.metrics().await, name, &[("transport", transport)])
}

const TRANSPORTS: [&str; 4] = ["websocket", "sse", "longpoll", "poll"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_counted_per_transport() {
    let server = TestServer::default().await;
    let mut ws = WsClient::connect(&server).await;
    ws.subscribe(&["m"], None).await;
    let mut sse = SseClient::connect(&server, "channels=m", None).await;
    assert_eq!(sse.next().await.expect("open").event, "open");
    let (_, start) = server.get_json("/poll?channels=m").await;
    let cursor = start["cursor"].as_str().expect("cursor").to_owned();

    // A long poll parked before the publish.
    let url = server.url(&format!("/longpoll?cursor={cursor}&timeout=30"));
    let held = tokio::spawn(async move {
        http()
            .get(url)
            .send()
            .await
            .expect("longpoll")
            .json::<Value>()
            .await
            .expect("longpoll body")
    });
    eventually("the long poll to park", || async {
        transport_value(&server, "cascade_connections", "longpoll").await == 1.0
    })
    .await;
    for transport in TRANSPORTS {
        assert_eq!(
            transport_value(&server, "cascade_messages_delivered_total", transport).await,
            0.0,
            "{transport} before the publish"
        );
    }

    server.publish("m", json!({"text": "counted"})).await;

    let ws_frame = ws.recv().await;
    assert_eq!(ws_frame["op"], "message");
    let sse_event = sse.next_message().await;
    let long = within(held).await.expect("longpoll task");
    assert_eq!(long["messages"].as_array().map(Vec::len), Some(1), "{long}");
    let (_, short) = server.get_json(&format!("/poll?cursor={cursor}")).await;
    assert_eq!(
        short["messages"].as_array().map(Vec::len),
        Some(1),
        "{short}"
    );

    // Bytes are those of the delivered JSON: the SSE data line is the message object,
    // the WebSocket frame is that object with an "op" in front.
    let message_bytes = sse_event.data.len() as f64;
    assert_eq!(message_bytes, short["messages"][0].to_string().len() as f64);
    let ws_bytes = ws_frame.to_string().len() as f64;
    let text = server.metrics().await;
    for transport in TRANSPORTS {
        let labels = [("transport", transport)];
        assert_eq!(
            sample(&text, "cascade_messages_delivered_total", &labels),
            1.0,
            "{transport} delivered"
        );
        let expected_bytes = if transport == "websocket" {
            ws_bytes
        } else {
            message_bytes
        };
        assert_eq!(
            sample(&text, "cascade_delivered_bytes_total", &labels),
            expected_bytes,
            "{transport} bytes"
        );
        assert_eq!(
            sample(&text, "cascade_delivery_lag_seconds_count", &labels),
            1.0,
            "{transport} lag observed once"
        );
    }
    assert_eq!(
        sample(
            &text,
            "cascade_messages_published_total",
            &[("via", "http")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_gauges_follow_open_streams() {
    let server = TestServer::default().await;
    for transport in TRANSPORTS {
        assert_eq!(
            transport_value(&server, "cascade_connections", transport).await,
            0.0
        );
    }
    let mut ws = WsClient::connect(&server).await;
    ws.subscribe(&["g"], None).await;
    let mut sse = SseClient::connect(&server, "channels=g", None).await;
    assert_eq!(sse.next().await.expect("open").event, "open");

    eventually("websocket and sse to be counted", || async {
        let text = server.metrics().await;
        sample(&text, "cascade_connections", &[("transport", "websocket")]) == 1.0
            && sample(&text, "cascade_connections", &[("transport", "sse")]) == 1.0
    })
    .await;
    let text = server.metrics().await;
    for transport in ["websocket", "sse"] {
        assert_eq!(
            sample(
                &text,
                "cascade_connections_total",
                &[("transport", transport)]
            ),
            1.0,
            "{transport} accepted once"
        );
    }
    assert_eq!(sample(&text, "cascade_active_channels", &[]), 1.0);

    // A second SSE stream on another channel.
    let mut sse2 = SseClient::connect(&server, "channels=g2", None).await;
    assert_eq!(sse2.next().await.expect("open").event, "open");
    assert_eq!(
        transport_value(&server, "cascade_connections", "sse").await,
        2.0
    );
    assert_eq!(
        sample(&server.metrics().await, "cascade_active_channels", &[]),
        2.0
    );

    ws.ws.close(None).await.expect("close");
    drop(ws);
    eventually("the websocket gauge to drop", || async {
        transport_value(&server, "cascade_connections", "websocket").await == 0.0
    })
    .await;
    drop(sse);
    eventually("the first sse stream to be released", || async {
        transport_value(&server, "cascade_connections", "sse").await == 1.0
    })
    .await;
    drop(sse2);
    eventually("the sse gauge to drop", || async {
        transport_value(&server, "cascade_connections", "sse").await == 0.0
    })
    .await;
    eventually("no channel to be active", || async {
        sample(&server.metrics().await, "cascade_active_channels", &[]) == 0.0
    })
    .await;
    let text = server.metrics().await;
    assert_eq!(
        sample(&text, "cascade_connections_total", &[("transport", "sse")]),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "cascade_connections_total",
            &[("transport", "websocket")]
        ),
        1.0
    );

    // Polls are counted per request and leave nothing open.
    for _ in 0..3 {
        let (status, _) = server.get_json("/poll?channels=g").await;
        assert_eq!(status, 200);
    }
    let (status, _) = server.get_json("/longpoll?channels=g&timeout=0").await;
    assert_eq!(status, 200);
    let text = server.metrics().await;
    assert_eq!(
        sample(&text, "cascade_connections_total", &[("transport", "poll")]),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "cascade_connections_total",
            &[("transport", "longpoll")]
        ),
        1.0
    );
    for transport in ["poll", "longpoll"] {
        assert_eq!(
            sample(&text, "cascade_connections", &[("transport", transport)]),
            0.0
        );
    }
}

#[tokio::test]
async fn publishes_are_counted_by_entry_point() {
    let server = TestServer::default().await;
    let via =
        |text: &str, via: &str| sample(text, "cascade_messages_published_total", &[("via", via)]);
    // Both series exist from the start.
    let text = server.metrics().await;
    assert!(
        text.contains(r#"cascade_messages_published_total{via="http"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cascade_messages_published_total{via="websocket"} 0"#),
        "{text}"
    );

    server.publish("p", json!(1)).await;
    server.publish("p", json!(2)).await;

    let mut ws = WsClient::connect(&server).await;
    ws.send(json!({"op": "publish", "channel": "p", "data": {"from": "ws"}, "id": 1}))
        .await;
    let ack = ws.recv().await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(ack["id"], 1, "{ack}");
    assert_eq!(ack["offset"], 3, "{ack}");

    let text = server.metrics().await;
    assert_eq!(via(&text, "http"), 2.0);
    assert_eq!(via(&text, "websocket"), 1.0);

    // A refused publish is not counted as published.
    let response = http()
        .post(server.url("/publish"))
        .body("{")
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 400);
    assert_eq!(via(&server.metrics().await, "http"), 2.0);
}

#[tokio::test]
async fn negotiations_and_fallbacks_are_counted() {
    let server = TestServer::default().await;
    let (status, body) = server.get_json("/negotiate").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["transports"]
        .as_array()
        .expect("transports")
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, TRANSPORTS);
    assert_eq!(
        sample(&server.metrics().await, "cascade_negotiations_total", &[]),
        1.0
    );

    let (status, _) = server
        .get_json("/negotiate?failed=websocket:timeout,sse")
        .await;
    assert_eq!(status, 200);
    let text = server.metrics().await;
    assert_eq!(sample(&text, "cascade_negotiations_total", &[]), 2.0);
    let fallback = |text: &str, from: &str, to: &str, reason: &str| {
        sample(
            text,
            "cascade_fallbacks_total",
            &[("from", from), ("to", to), ("reason", reason)],
        )
    };
    assert_eq!(
        fallback(&text, "websocket", "longpoll", "timeout"),
        1.0,
        "{text}"
    );
    assert_eq!(fallback(&text, "sse", "longpoll", "unknown"), 1.0, "{text}");

    // A reason outside the known set is folded into "other" (bounded cardinality).
    let (status, _) = server
        .get_json("/negotiate?failed=websocket:made_up_reason")
        .await;
    assert_eq!(status, 200);
    let text = server.metrics().await;
    assert_eq!(fallback(&text, "websocket", "sse", "other"), 1.0, "{text}");
    assert_eq!(sample(&text, "cascade_negotiations_total", &[]), 3.0);
    let fallback_series = samples(&text)
        .into_iter()
        .filter(|s| s.name == "cascade_fallbacks_total")
        .count();
    assert_eq!(fallback_series, 3, "{text}");

    // Every rung failed: there is nowhere to go.
    let (status, _) = server
        .get_json("/negotiate?failed=websocket,sse,longpoll,poll:refused")
        .await;
    assert_eq!(status, 200);
    let text = server.metrics().await;
    assert_eq!(fallback(&text, "poll", "none", "refused"), 1.0, "{text}");
}

#[tokio::test]
async fn gaps_are_counted_per_transport() {
    let mut config = test_config();
    config.history.max_messages = 2;
    let server = TestServer::start(config).await;
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = server.publish("gc", json!(i)).await.0;
    }
    let stale = format!("gc@{epoch}:1");
    let mut ws = WsClient::connect(&server).await;
    ws.subscribe(&["gc"], Some(&stale)).await;
    let gap = ws.recv().await;
    assert_eq!(gap["op"], "gap", "{gap}");
    let mut sse = SseClient::connect(&server, &format!("cursor={stale}"), None).await;
    assert_eq!(sse.next().await.expect("open").event, "open");
    assert_eq!(sse.next().await.expect("gap").event, "gap");
    for route in ["/poll", "/longpoll"] {
        let (status, body) = server.get_json(&format!("{route}?cursor={stale}")).await;
        assert_eq!(status, 200);
        assert!(body["gaps"].is_array(), "{route}: {body}");
    }
    let text = server.metrics().await;
    for transport in TRANSPORTS {
        assert_eq!(
            sample(&text, "cascade_gaps_total", &[("transport", transport)]),
            1.0,
            "{transport}"
        );
    }
}

#[tokio::test]
async fn errors_are_counted_by_code() {
    let server = TestServer::default().await;
    for path in ["/nope", "/poll", "/poll?channels=a%40b", "/ws"] {
        let response = http().get(server.url(path)).send().await.expect("GET");
        assert!(response.status().is_client_error(), "{path}");
    }
    let text = server.metrics().await;
    for code in [
        "not_found",
        "no_channels",
        "bad_channel",
        "upgrade_required",
    ] {
        assert_eq!(
            sample(&text, "cascade_errors_total", &[("code", code)]),
            1.0,
            "{code}"
        );
    }
}

/// Puts a value in every series, so that the exposition is as full as it gets.
async fn exercise(server: &TestServer) {
    let mut ws = WsClient::connect(server).await;
    ws.subscribe(&["x"], None).await;
    let mut sse = SseClient::connect(server, "channels=x", None).await;
    assert_eq!(sse.next().await.expect("open").event, "open");
    let (_, start) = server.get_json("/poll?channels=x").await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    server.publish("x", json!("y")).await;
    ws.recv().await;
    sse.next_message().await;
    server.get_json(&format!("/poll?cursor={cursor}")).await;
    server.get_json(&format!("/longpoll?cursor={cursor}")).await;
    server.get_json("/negotiate?failed=websocket:closed").await;
    server.get_json("/nope").await;
    ws.ws
        .send(tokio_tungstenite::tungstenite::Message::text("{"))
        .await
        .expect("send");
    ws.recv().await;
}

#[tokio::test]
async fn exposition_is_valid_prometheus_text() {
    let server = TestServer::default().await;
    exercise(&server).await;

    let response = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .expect("content-type")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("text");

    // Our own check, always: every non-comment line is `name{labels} value`.
    let all = samples(&text);
    for name in [
        "cascade_connections",
        "cascade_connections_total",
        "cascade_messages_delivered_total",
        "cascade_delivered_bytes_total",
        "cascade_delivery_lag_seconds_bucket",
        "cascade_delivery_lag_seconds_sum",
        "cascade_delivery_lag_seconds_count",
        "cascade_slow_consumers_total",
        "cascade_gaps_total",
        "cascade_negotiations_total",
        "cascade_fallbacks_total",
        "cascade_messages_published_total",
        "cascade_errors_total",
        "cascade_active_channels",
    ] {
        assert!(
            all.iter().any(|s| s.name == name),
            "{name} missing:\n{text}"
        );
    }
    for transport in TRANSPORTS {
        assert!(
            all.iter().any(|s| s.name == "cascade_connections"
                && s.labels.get("transport").map(String::as_str) == Some(transport)),
            "cascade_connections{{transport={transport}}} missing"
        );
    }
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert!(
            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
            "{line}"
        );
    }

    // promtool, when present; CI must have it.
    if let Some(output) = promtool(&["check", "metrics"], Some(&text)) {
        assert!(
            output.status.success(),
            "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Runs promtool with `args` (in `deploy/prometheus`), feeding it `input`; `None` when it
/// is not installed, which CI does not allow.
fn promtool(args: &[&str], input: Option<&str>) -> Option<std::process::Output> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            let mut stdin = child.stdin.take().expect("stdin");
            if let Some(input) = input {
                stdin
                    .write_all(input.as_bytes())
                    .expect("write to promtool");
            }
            drop(stdin);
            Some(child.wait_with_output().expect("promtool"))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but promtool is not on PATH"
            );
            // tests/browser.rs's `promtool_is_installed` fails for it.
            eprintln!(
                "note: promtool not found on PATH; skipped promtool {}",
                args.join(" ")
            );
            None
        }
        Err(err) => panic!("running promtool: {err}"),
    }
}

/// The metric families `text` names (`cascade_...`, a histogram's series by its family).
fn families_named(text: &str) -> std::collections::BTreeSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("cascade_"))
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
        })
        .collect()
}

/// Asserts that `server`, once every transport was exercised, serves each family named in
/// `text` (from `what`).
async fn assert_served(server: &TestServer, what: &str, text: &str) {
    let named = families_named(text);
    assert!(named.len() >= 8, "{what} names {named:?}");
    let exposition = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let served: std::collections::BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    for family in &named {
        assert!(
            served.contains(family),
            "{what} names {family}, which the gateway does not serve:\n{exposition}"
        );
    }
}

/// Asserts that promtool (when present) succeeds with `args` in `deploy/prometheus`.
fn assert_promtool(args: &[&str]) {
    assert_succeeded(args, promtool(args, None));
}

/// Asserts that the promtool run with `args` that gave `output` (if it ran) succeeded.
fn assert_succeeded(args: &[&str], output: Option<std::process::Output>) {
    if let Some(output) = output {
        assert!(
            output.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The alerts and recording rules shipped in `deploy/prometheus` name only metric families
/// this gateway serves, and pass promtool's check and their own unit tests there.
#[tokio::test]
async fn shipped_alert_rules_name_served_metrics_and_pass_their_tests() {
    let server = TestServer::default().await;
    exercise(&server).await;
    let rules = include_str!("../deploy/prometheus/cascade-rules.yml");
    assert_served(&server, "cascade-rules.yml", rules).await;
    assert_promtool(&["check", "rules", "cascade-rules.yml"]);
    assert_promtool(&["test", "rules", "cascade-rules.test.yml"]);
}

/// The Grafana dashboard in `deploy/grafana` queries only metric families this gateway
/// serves, and every query parses as PromQL once Grafana's variables are filled in.
#[tokio::test]
async fn shipped_dashboard_queries_parse_and_name_served_metrics() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../deploy/grafana/cascade.json")).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets").iter())
        .map(|target| target["expr"].as_str().expect("expr").to_owned())
        .collect();
    assert_eq!(exprs.len(), 16, "one query per panel");
    let server = TestServer::default().await;
    exercise(&server).await;
    assert_served(&server, "cascade.json", &exprs.join("\n")).await;

    // promtool parses PromQL in rule files: each query becomes a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (at, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        let quoted = serde_json::to_string(&expr).unwrap();
        rules += &format!("      - record: dashboard:query{at}\n        expr: {quoted}\n");
    }
    let path = std::env::temp_dir().join(format!("cascade-dashboard-{}.yml", std::process::id()));
    std::fs::write(&path, rules).expect("write the rules");
    let args = ["check", "rules", path.to_str().unwrap()];
    let output = promtool(&args, None);
    let _ = std::fs::remove_file(&path);
    assert_succeeded(&args, output);
}

#[test]
fn sample_parser_accepts_and_rejects() {
    let s = parse_sample(r#"a_b{x="1",y="q\"z"} 2.5"#).expect("parses");
    assert_eq!(s.name, "a_b");
    assert_eq!(s.labels["y"], "q\"z");
    assert_eq!(s.value, 2.5);
    assert_eq!(parse_sample("up 1 1700000000000").unwrap().value, 1.0);
    assert!(
        parse_sample("le{le=\"+Inf\"} +Inf")
            .unwrap()
            .value
            .is_infinite()
    );
    for bad in [
        "",
        "1abc 2",
        "a{b=1} 2",
        "a{b=\"1\"}2",
        "a 1 2 3",
        "a{b=\"1\" 2",
        "a x",
    ] {
        assert!(parse_sample(bad).is_none(), "{bad:?}");
    }
}
