//! Gateway nodes on a Redis Cluster (`engine = "redis-cluster"`): one sequence on every
//! transport, live traffic on the shard that owns each channel, and no silent loss when a
//! master fails over (gracefully or killed) or a channel's slot moves mid-stream.
//!
//! Each test starts its own cluster of 3 masters and 3 replicas on free ports
//! (`redis-server` and `redis-cli` on PATH) and stops it by PID. The tests take turns
//! (see [`one_at_a_time`]): six clusters at once on a small machine would miss the
//! cluster's own heartbeats and fail over by themselves.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::nodes::Node;
use support::redis_cluster::RedisCluster;
use support::stream::*;
use support::*;

/// Held for a test's duration, so that one cluster runs at a time.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

fn nodes(count: usize, cluster: &RedisCluster, test: &str) -> Vec<Node> {
    nodes_with(count, cluster, test, "1")
}

/// Gateway nodes that acknowledge a publish once `min_replicas` replicas hold it.
fn nodes_with(count: usize, cluster: &RedisCluster, test: &str, min_replicas: &str) -> Vec<Node> {
    let url = cluster.url();
    let prefix = format!("test-{test}-{}", std::process::id());
    let env = [
        ("CASCADE_ENGINE", "redis-cluster"),
        ("CASCADE_REDIS_URL", url.as_str()),
        ("CASCADE_REDIS_PREFIX", prefix.as_str()),
        ("CASCADE_LONGPOLL_TIMEOUT_MS", "1000"),
        ("CASCADE_API_KEYS", API_KEY),
        ("CASCADE_REDIS_MIN_REPLICAS", min_replicas),
        (
            "CASCADE_LOG",
            "info,cascade::bus::redis_cluster=debug,redis=info",
        ),
    ];
    (0..count).map(|_| Node::spawn(&env)).collect()
}

/// Streams 300 messages through two nodes on `cluster` and disrupts it after 60 (see
/// [`stream_through`](support::stream::stream_through)).
async fn stream_through(
    cluster: RedisCluster,
    test: &str,
    min_replicas: &str,
    disrupt: impl FnOnce(&mut RedisCluster) + Send + 'static,
) -> (Outcome, RedisCluster) {
    let nodes = nodes_with(2, &cluster, test, min_replicas);
    let url = cluster.url();
    let engine_state = || support::redis_cluster::shard_subscriptions(&url);
    support::stream::stream_through(test, &nodes, (300, 60), cluster, disrupt, engine_state).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_one_sequence_on_every_transport() {
    let _turn = one_at_a_time().await;
    let cluster = RedisCluster::start();
    let nodes = nodes(2, &cluster, "two");
    let mut ws = nodes[1].ws().await;
    let subscribed = ws.subscribe(&["chat"], None).await;
    let start = subscribed["cursor"].as_str().unwrap().to_owned();
    let mut sse = nodes[0].sse(&format!("cursor={start}"), None).await;
    assert_eq!(sse.next().await.unwrap().event, "open");

    let total = 60u64;
    for n in 1..=total {
        let (_, offset) = publish(&nodes[n as usize % 2], "chat", n)
            .await
            .expect("publish");
        assert_eq!(offset, n);
    }
    let expected: Vec<u64> = (1..=total).collect();
    let mut over_ws = Vec::new();
    while over_ws.len() < total as usize {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message", "{frame}");
        assert_eq!(frame["offset"], frame["data"]["n"]);
        over_ws.push(frame["offset"].as_u64().unwrap());
    }
    assert_eq!(over_ws, expected, "websocket");
    let mut over_sse = Vec::new();
    while over_sse.len() < total as usize {
        over_sse.push(sse.next_message().await.json()["offset"].as_u64().unwrap());
    }
    assert_eq!(over_sse, expected, "sse");
    let mut cursor = start;
    let mut polled = Vec::new();
    for i in 0..total {
        if polled.len() >= total as usize {
            break;
        }
        let path = if i % 2 == 0 { "/longpoll" } else { "/poll" };
        let url = nodes[i as usize % 2].url(&format!("{path}?cursor={cursor}&timeout=1"));
        let body: Value = http().get(url).send().await.unwrap().json().await.unwrap();
        assert!(body.get("gaps").is_none(), "{body}");
        for message in body["messages"].as_array().unwrap() {
            polled.push(message["offset"].as_u64().unwrap());
        }
        cursor = body["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(polled, expected, "polling across both nodes");
    let health: Value = http()
        .get(nodes[0].url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["engine"], "redis-cluster");
}

/// Live traffic stays on the shard that owns each channel: every master carries the
/// sharded subscriptions of its own channels, and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_spreads_over_the_shards() {
    let _turn = one_at_a_time().await;
    let cluster = RedisCluster::start();
    let nodes = nodes(2, &cluster, "spread");
    let prefix = format!("test-spread-{}", std::process::id());
    let channels: Vec<String> = (0..12).map(|i| format!("room{i}")).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let reads_before = history_reads(&cluster);
    let mut ws = nodes[1].ws().await;
    ws.subscribe(&names, None).await;
    let mut masters = std::collections::HashSet::new();
    for channel in &channels {
        let topic = format!("{prefix}:{{{channel}}}:live");
        let owner = cluster.master_of(cluster.slot(&topic));
        masters.insert(owner.port);
        for node in cluster.nodes().iter().filter(|n| n.master) {
            let reply = cluster.cli(node.port, &["PUBSUB", "SHARDNUMSUB", &topic]);
            let count: u64 = reply.lines().nth(1).unwrap().parse().unwrap();
            let expected = u64::from(node.port == owner.port);
            assert_eq!(count, expected, "{topic} on {}", node.port);
        }
    }
    assert_eq!(masters.len(), 3, "the test channels cover every shard");
    for (n, channel) in channels.iter().enumerate() {
        publish(&nodes[0], channel, n as u64)
            .await
            .expect("publish");
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < channels.len() {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message", "{frame}");
        got.insert(frame["channel"].as_str().unwrap().to_owned());
    }
    // Each channel's live message came after the push confirming its subscription, on
    // the same connection, so the listener has handled every one of those by now. A
    // subscription's read of where the channel stands and a publish read the log's
    // head once each; a listener that took its own confirmations for the client's
    // resubscriptions read each channel's history again, on the task that every live
    // message of the node waits behind.
    let reads = history_reads(&cluster) - reads_before;
    assert!(
        reads <= 2 * channels.len() as u64,
        "{reads} history reads for {} new channels",
        channels.len()
    );
}

/// `LINDEX` calls on the cluster's masters so far, scripts' included: one per history
/// read of a channel's log head.
fn history_reads(cluster: &RedisCluster) -> u64 {
    cluster
        .nodes()
        .iter()
        .filter(|node| node.master)
        .map(|node| {
            let stats = cluster.cli(node.port, &["INFO", "commandstats"]);
            stats
                .lines()
                .find_map(|line| line.strip_prefix("cmdstat_lindex:calls="))
                .and_then(|rest| rest.split(',').next()?.parse().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// The key of `test`'s channel `chat`, whose slot the disruptions aim at.
fn chat_key(test: &str) -> String {
    format!("test-{test}-{}:{{chat}}:meta", std::process::id())
}

/// The demoted master drops the channel's subscriptions (`sunsubscribe`), and the
/// cluster client's slot refresh may close the connection a node subscribed again on;
/// the engine's probe finds that out and the stream goes on (see the listener's doc).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_mid_stream_loses_nothing() {
    let _turn = one_at_a_time().await;
    let (outcome, _cluster) = stream_through(RedisCluster::start(), "failover", "1", |cluster| {
        let master = cluster.master_of(cluster.slot(&chat_key("failover")));
        let replica = cluster.replica_of(&master.id);
        cluster.failover(replica.port);
    })
    .await;
    // Mid-stream; nothing lost and the stream never broke. The promotion starts a new
    // epoch (the replica cannot know it lacks nothing): one gap, skipping nothing.
    assert!(outcome.outlived, "{outcome:?}");
    assert_eq!(
        (outcome.gaps, outcome.covered, outcome.resumed),
        (1, 0, 0),
        "{outcome:?}"
    );
    // A lost subscription is found by a probe within a second or two; without the
    // audit the stream stalled for good.
    assert!(
        outcome.longest_wait < Duration::from_secs(10),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_mid_stream_loses_nothing_silently() {
    let _turn = one_at_a_time().await;
    let (outcome, _cluster) = stream_through(RedisCluster::start(), "kill", "1", |cluster| {
        let slot = cluster.slot(&chat_key("kill"));
        let master = cluster.master_of(slot);
        cluster.kill(master.port);
        let started = Instant::now();
        while cluster.serving(slot).is_none_or(|now| now.id == master.id) {
            assert!(
                started.elapsed() < FAILOVER_DEADLINE,
                "no replica took over"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("kill: a replica took over after {:?}", started.elapsed());
        // Back as a replica of its successor, so that publishes reach a replica again.
        cluster.restart(master.port);
        cluster.wait_healthy();
    })
    .await;
    assert!(outcome.refused > 0, "the kill was mid-stream: {outcome:?}");
    assert_eq!(
        outcome.covered, 0,
        "acknowledged messages reached a replica: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_mid_stream_loses_nothing() {
    let _turn = one_at_a_time().await;
    let (outcome, _cluster) = stream_through(RedisCluster::start(), "reshard", "1", |cluster| {
        let slot = cluster.slot(&chat_key("reshard"));
        let from = cluster.master_of(slot);
        let to = cluster.other_master(&from.id);
        // Half moved for a while: the keys already on `to`, clients sent there by ASK.
        cluster.migrate_slot(slot, &from, &to, || {
            std::thread::sleep(Duration::from_millis(300))
        });
    })
    .await;
    // Mid-stream; nothing lost, no gap, and the stream never broke.
    assert!(outcome.outlived, "{outcome:?}");
    assert_eq!(
        (outcome.gaps, outcome.covered, outcome.resumed),
        (0, 0, 0),
        "{outcome:?}"
    );
}

/// A master killed while its replica lacks its last writes (the link cut, and a
/// publish acknowledged without waiting for a replica): the promoted replica misses
/// messages the subscriber already has, and its next publishes would reuse their
/// offsets. The subscriber must be told of a gap, never get a reused offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_before_its_replica_caught_up_reports_a_gap() {
    let _turn = one_at_a_time().await;
    let (outcome, _cluster) = stream_through(RedisCluster::start(), "fork", "0", |cluster| {
        let slot = cluster.slot(&chat_key("fork"));
        let master = cluster.master_of(slot);
        let offset = |cluster: &RedisCluster| -> u64 {
            let info = cluster.cli(master.port, &["INFO", "replication"]);
            let line = info.lines().find(|l| l.starts_with("master_repl_offset:"));
            line.unwrap()
                .split(':')
                .nth(1)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        // The replica cannot sync again (its AUTH fails) once its link is cut: from then
        // on the master's writes exist only on the master.
        let replica = cluster.replica_of(&master.id);
        cluster.cli(replica.port, &["CONFIG", "SET", "masterauth", "wrong"]);
        cluster.cli(master.port, &["CLIENT", "KILL", "TYPE", "replica"]);
        let cut = offset(cluster);
        let started = Instant::now();
        while offset(cluster) < cut + 1000 {
            assert!(
                started.elapsed() < FAILOVER_DEADLINE,
                "no write after the cut"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        cluster.kill(master.port);
        while cluster.serving(slot).is_none_or(|now| now.id == master.id) {
            assert!(
                started.elapsed() < FAILOVER_DEADLINE,
                "no replica took over"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.cli(replica.port, &["CONFIG", "SET", "masterauth", ""]);
        cluster.restart(master.port);
        cluster.wait_healthy();
    })
    .await;
    // `check` already failed the test on any silent loss or reused offset.
    assert!(outcome.refused > 0, "the kill was mid-stream: {outcome:?}");
    assert!(outcome.gaps > 0, "the fork was reported: {outcome:?}");
}

/// A Socket.IO polling session on a Redis Cluster: its requests alternate between two
/// nodes, and its connect answer, its acknowledgement and every message of its room
/// arrive, once and in order (its state is kept by the cluster, its packets travel by
/// the bus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_polling_session_moves_between_nodes() {
    let _turn = one_at_a_time().await;
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let prefix = format!("test-sio-{}", std::process::id());
    let secret = "a token secret for the socket.io cluster test";
    let env = [
        ("CASCADE_ENGINE", "redis-cluster"),
        ("CASCADE_REDIS_URL", url.as_str()),
        ("CASCADE_REDIS_PREFIX", prefix.as_str()),
        ("CASCADE_API_KEYS", API_KEY),
        ("CASCADE_TOKEN_HMAC_SECRET", secret),
        ("CASCADE_SOCKETIO_PING_INTERVAL_MS", "500"),
    ];
    let nodes: Vec<Node> = (0..2).map(|_| Node::spawn(&env)).collect();
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args([
            "token",
            "--sub",
            "ann",
            "--channels",
            "",
            "--publish",
            "",
            "--ttl",
            "1h",
        ])
        .env("CASCADE_TOKEN_HMAC_SECRET", secret)
        .env("CASCADE_LOG", "warn")
        .output()
        .expect("cascade token");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let engine_io = |node: &Node, sid: Option<&str>| {
        let sid = sid.map(|s| format!("&sid={s}")).unwrap_or_default();
        node.url(&format!("/socket.io/?EIO=4&transport=polling{sid}"))
    };
    let open = get_text(&engine_io(&nodes[0], None)).await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    let post = |node: usize, body: String| {
        http()
            .post(engine_io(&nodes[node], Some(&sid)))
            .body(body)
            .send()
    };
    let connect = post(1, format!("40{}", json!({ "token": token })))
        .await
        .unwrap();
    assert_eq!(connect.status().as_u16(), 200);
    let mut packets: Vec<String> = Vec::new();
    let mut poll_at = 0;
    let mut poll = async |packets: &mut Vec<String>| {
        let answer = get_text(&engine_io(&nodes[poll_at % 2], Some(&sid))).await;
        poll_at += 1;
        packets.extend(
            answer
                .split('\u{1e}')
                .filter(|p| *p != "2")
                .map(str::to_owned),
        );
    };
    while packets.is_empty() {
        poll(&mut packets).await;
    }
    assert!(packets.remove(0).starts_with("40{\"sid\""));
    let total = 20u64;
    for n in 1..=total {
        publish(&nodes[n as usize % 2], "user:ann", n)
            .await
            .expect("publish");
    }
    // An emit on one node, acknowledged by whichever serves the next poll.
    assert_eq!(
        post(0, r#"427["hello"]"#.into())
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while packets.len() < total as usize + 1 && Instant::now() < deadline {
        poll(&mut packets).await;
    }
    let acks: Vec<&String> = packets.iter().filter(|p| p.starts_with("437[")).collect();
    assert_eq!(acks.len(), 1, "{packets:?}");
    let got: Vec<u64> = packets
        .iter()
        .filter(|p| p.starts_with("42["))
        .map(|p| {
            let args: Value = serde_json::from_str(&p[2..]).unwrap();
            args[1]["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(got, (1..=total).collect::<Vec<_>>(), "{packets:?}");
    assert!(poll_at >= 2, "both nodes served polls");
}
