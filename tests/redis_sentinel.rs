//! The `redis` engine behind Sentinel (`redis+sentinel://`): publish and subscribe, and
//! no silent loss when the master fails over by hand (`SENTINEL FAILOVER`) or is killed
//! mid-stream; publishes resume within a deadline.
//!
//! Each test starts its own master, replica and three sentinels on free ports
//! (`redis-server` on PATH) and stops them by PID; the tests take turns (see
//! [`one_at_a_time`]) so that a busy machine does not miss the sentinels' heartbeats.
//! Without `redis-server` they skip with a message, unless `CI` is set.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::nodes::Node;
use support::redis_sentinel::RedisSentinel;
use support::stream::*;
use support::*;

/// Held for a test's duration, so that one sentinel set runs at a time.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Whether `redis-server` can run; a test without it prints why and passes, except on
/// CI, which installs it (see scripts/test).
fn redis_server_present() -> bool {
    let present = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but redis-server is not on PATH"
        );
        eprintln!("skipped: redis-server is not on PATH");
    }
    present
}

/// Gateway nodes on the sentinel set, acknowledging a publish once `min_replicas`
/// replicas hold it.
fn nodes(count: usize, set: &RedisSentinel, test: &str, min_replicas: &str) -> Vec<Node> {
    let url = set.url();
    let prefix = format!("test-{test}-{}", std::process::id());
    let env = [
        ("CASCADE_ENGINE", "redis"),
        ("CASCADE_REDIS_URL", url.as_str()),
        ("CASCADE_REDIS_PREFIX", prefix.as_str()),
        ("CASCADE_REDIS_MIN_REPLICAS", min_replicas),
        ("CASCADE_API_KEYS", API_KEY),
        ("CASCADE_LOG", "info,cascade::bus::redis=debug,redis=info"),
    ];
    (0..count).map(|_| Node::spawn(&env)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_through_the_sentinels() {
    if !redis_server_present() {
        return;
    }
    let _turn = one_at_a_time().await;
    let set = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap();
    let nodes = nodes(2, &set, "basic", "1");
    let mut ws = nodes[1].ws().await;
    ws.subscribe(&["chat"], None).await;
    let total = 30u64;
    for n in 1..=total {
        let (_, offset) = publish(&nodes[n as usize % 2], "chat", n)
            .await
            .expect("publish");
        assert_eq!(offset, n);
    }
    for n in 1..=total {
        let frame = ws.recv().await;
        assert_eq!(frame["op"], "message", "{frame}");
        assert_eq!(
            (frame["offset"].as_u64(), frame["data"]["n"].as_u64()),
            (Some(n), Some(n))
        );
    }
    let health: Value = http()
        .get(nodes[0].url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["engine"], "redis");
    let logged = nodes[0].log().join("\n");
    assert!(logged.contains("following the master"), "{logged}");
}

/// Streams 600 messages through two nodes on a fresh Sentinel set and disrupts it after
/// 60 (see [`stream_through`](support::stream::stream_through)).
async fn stream_through(
    test: &str,
    min_replicas: &str,
    disrupt: impl FnOnce(&mut RedisSentinel) + Send + 'static,
) -> Outcome {
    let set = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap();
    let nodes = nodes(2, &set, test, min_replicas);
    let engine_state = String::new;
    support::stream::stream_through(test, &nodes, (600, 60), set, disrupt, engine_state)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_stream_loses_nothing() {
    if !redis_server_present() {
        return;
    }
    let _turn = one_at_a_time().await;
    let outcome = stream_through("failover", "1", |set| {
        set.failover();
        // Publishes wait for a replica: the old master, once it rejoined.
        set.wait_settled();
    })
    .await;
    // `check` already failed the test on any silent loss, duplicate or reused offset.
    // Every acknowledged message reached the replica (WAIT) before it was promoted; the
    // promotion starts a new epoch (the replica cannot know it lacks nothing): one gap,
    // skipping nothing; the stream never broke.
    assert!(outcome.outlived, "the failover was mid-stream: {outcome:?}");
    assert_eq!(
        (outcome.gaps, outcome.covered, outcome.resumed),
        (1, 0, 0),
        "{outcome:?}"
    );
    assert!(
        outcome.publish_back < FAILOVER_DEADLINE && outcome.longest_wait < FAILOVER_DEADLINE,
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_mid_stream_loses_nothing_silently() {
    if !redis_server_present() {
        return;
    }
    let _turn = one_at_a_time().await;
    let outcome = stream_through("kill", "1", |set| {
        let old = set.kill_master();
        // Back as a replica of its successor, so that publishes reach a replica again.
        set.restart(old);
    })
    .await;
    assert!(outcome.refused > 0, "the kill was mid-stream: {outcome:?}");
    assert_eq!(
        outcome.covered, 0,
        "acknowledged messages reached the replica: {outcome:?}"
    );
    assert!(outcome.publish_back < FAILOVER_DEADLINE * 2, "{outcome:?}");
}

/// Without `WAIT` a publish is acknowledged as soon as the master has it, so publishes
/// go on through a failover by hand: the old master takes them until the node follows
/// the new one, not waiting for the old one to rejoin as a replica. Those the promoted
/// replica lacks reached live subscribers; a reader who resumes among them gets a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_publishes_resume_as_soon_as_the_master_moves() {
    if !redis_server_present() {
        return;
    }
    let _turn = one_at_a_time().await;
    let outcome = stream_through("nowait", "0", |set| set.failover()).await;
    assert!(outcome.outlived, "the failover was mid-stream: {outcome:?}");
    assert!(outcome.gaps >= 1, "the promotion's epoch: {outcome:?}");
    assert!(
        outcome.publish_back < Duration::from_secs(10),
        "{outcome:?}"
    );
}

/// The same after a killed master: publishes resume once the sentinels promote the
/// replica, without waiting for the old master to return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_publishes_resume_once_a_killed_master_is_replaced() {
    if !redis_server_present() {
        return;
    }
    let _turn = one_at_a_time().await;
    let outcome = stream_through("nowaitkill", "0", |set| {
        set.kill_master();
    })
    .await;
    assert!(outcome.refused > 0, "the kill was mid-stream: {outcome:?}");
    assert!(
        outcome.publish_back < Duration::from_secs(15),
        "{outcome:?}"
    );
}

/// A node hears of failovers from one sentinel; when that one falls silent (stopped,
/// its connection left open), the node still finds the new master by asking again
/// (every 5 s), the silent sentinel costing each lookup its one-second timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sentinel_does_not_keep_a_node_on_the_old_master() {
    if !redis_server_present() {
        return;
    }
    let _turn = one_at_a_time().await;
    let mut set = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap();
    let nodes = nodes(1, &set, "silent", "0");
    // The node looks the master up after it starts listening.
    eventually("the node to be ready", || async {
        let ready = http().get(nodes[0].url("/readyz")).send().await;
        ready.is_ok_and(|r| r.status() == 200)
    })
    .await;
    publish(&nodes[0], "chat", 1).await.expect("publish");
    let set = tokio::task::spawn_blocking(move || {
        set.pause_sentinel(0, true);
        set.failover();
        set
    })
    .await
    .unwrap();
    let new = set.master_port().expect("a new master");
    let followed = format!("master=127.0.0.1:{new}");
    eventually("the node to follow the new master", || async {
        nodes[0].log().iter().any(|l| l.contains(&followed))
    })
    .await;
    publish(&nodes[0], "chat", 2).await.expect("publish");
    let key = format!("test-silent-{}:{{chat}}:meta", std::process::id());
    let head = set.cli(new, &["HGET", &key, "head"]);
    assert_eq!(head, "2", "the publish reached the new master");
    for line in nodes[0].log().iter().filter(|l| l.contains("redis")) {
        eprintln!("node 0: {line}");
    }
    let mut set = set;
    set.pause_sentinel(0, false);
}
