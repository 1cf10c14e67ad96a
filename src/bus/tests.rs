//! Contract tests of the bus: offsets under racing publishers, the history/live seam,
//! gaps, hole filling and slow consumers. The seam tests run many iterations because the
//! races they guard against are timing-dependent.
//!
//! Every contract test runs against every engine. The Redis runs need a Redis at
//! `CASCADE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`) and fail loudly without
//! one; the Redis Cluster runs start a local cluster (`redis-server` and `redis-cli` on
//! PATH), shared by the runs that overlap, and so do the Sentinel runs (a master, a
//! replica and three sentinels, the engine told only the sentinels); each bus uses a
//! fresh key prefix.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;

use super::memory::{MemoryEngine, Retention};
use super::*;
use crate::protocol::{Channel, Cursor, Epoch, Gap, Message, Position, Publication};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Redis,
    /// Redis with live messages on 4 shard channels instead of one per channel.
    RedisSharded,
    /// A Redis Cluster of 3 masters and 3 replicas.
    RedisCluster,
    /// Redis behind Sentinel: a master, a replica and three sentinels.
    RedisSentinel,
}

#[path = "../../tests/support/redis_cluster.rs"]
mod local_cluster;
#[path = "../../tests/support/redis_sentinel.rs"]
mod local_sentinel;
#[path = "../../tests/support/process.rs"]
mod process;

/// A bus, and the local cluster its engine needs, if any.
struct TestBus {
    bus: Bus,
    /// The key prefix of a Redis engine.
    prefix: String,
    _local: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::ops::Deref for TestBus {
    type Target = Bus;
    fn deref(&self) -> &Bus {
        &self.bus
    }
}

/// The cluster of the Redis Cluster runs: started by the first that needs it, stopped
/// (by PID) when the last bus using it is dropped.
fn shared_cluster() -> Arc<local_cluster::RedisCluster> {
    static CLUSTER: Mutex<Weak<local_cluster::RedisCluster>> = Mutex::new(Weak::new());
    let mut shared = CLUSTER.lock().unwrap();
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(tokio::task::block_in_place(
        local_cluster::RedisCluster::start,
    ));
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// The sentinel set of the Sentinel runs, shared as the cluster is.
fn shared_sentinel() -> Arc<local_sentinel::RedisSentinel> {
    static SET: Mutex<Weak<local_sentinel::RedisSentinel>> = Mutex::new(Weak::new());
    let mut shared = SET.lock().unwrap();
    if let Some(set) = shared.upgrade() {
        return set;
    }
    let set = Arc::new(tokio::task::block_in_place(
        local_sentinel::RedisSentinel::start,
    ));
    *shared = Arc::downgrade(&set);
    set
}

/// Waits until `engine` answers, failing loudly when it does not in time.
async fn until_up(engine: &dyn Engine, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !engine.is_up() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn redis_url() -> String {
    std::env::var("CASCADE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

async fn bus_with(kind: Kind, retention: Retention, queue: usize) -> TestBus {
    let hub = Arc::new(Hub::new());
    let history_limit = retention.max_messages;
    let mut local: Option<Arc<dyn std::any::Any + Send + Sync>> = None;
    let prefix = format!("test-{}", Epoch::random());
    let engine: Arc<dyn Engine> = match kind {
        Kind::Memory => MemoryEngine::new(hub.clone(), retention),
        Kind::Redis | Kind::RedisSharded | Kind::RedisSentinel => {
            let url = if matches!(kind, Kind::RedisSentinel) {
                let set = shared_sentinel();
                let url = set.url();
                local = Some(set);
                url
            } else {
                redis_url()
            };
            let settings = super::redis::RedisSettings {
                url: url.clone(),
                prefix: prefix.clone(),
                retention: retention.into(),
                shards: if matches!(kind, Kind::RedisSharded) {
                    4
                } else {
                    0
                },
                min_replicas: u32::from(matches!(kind, Kind::RedisSentinel)),
            };
            let engine = super::redis::RedisEngine::new(
                hub.clone(),
                settings,
                crate::metrics::Metrics::new().engine(),
            )
            .expect("redis engine");
            let what = format!(
                "Redis must answer at {url} for the redis engine tests (.ci/run starts one)"
            );
            until_up(&*engine, &what).await;
            engine
        }
        Kind::RedisCluster => {
            let shared = shared_cluster();
            let settings = super::redis_cluster::RedisClusterSettings {
                urls: shared.url().split(',').map(str::to_owned).collect(),
                prefix: prefix.clone(),
                retention: retention.into(),
                min_replicas: 1,
            };
            local = Some(shared);
            let engine = super::redis_cluster::RedisClusterEngine::new(
                hub.clone(),
                settings,
                crate::metrics::Metrics::new().engine(),
            )
            .expect("redis cluster engine");
            until_up(&*engine, "the local Redis Cluster must answer").await;
            engine
        }
    };
    let bus = Bus::new(
        engine,
        hub,
        BusConfig {
            subscriber_queue: queue,
            history_limit,
            presence: PresencePolicy {
                default: (true, true),
                namespaces: Default::default(),
            },
        },
    );
    TestBus {
        bus,
        prefix,
        _local: local,
    }
}

async fn bus(kind: Kind) -> TestBus {
    bus_with(
        kind,
        Retention {
            max_messages: 1000,
            max_age: Duration::from_secs(300),
        },
        4096,
    )
    .await
}

/// Runs a contract test once per engine.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Redis).await
                }
            )*
        }
        mod redis_sharded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::RedisSharded).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::RedisCluster).await
                }
            )*
        }
        mod redis_sentinel {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::RedisSentinel).await
                }
            )*
        }
    };
}

contract!(
    racing_publishers_get_consecutive_offsets,
    seam_has_no_gap_and_no_duplicate_under_a_racing_publisher,
    old_offset_and_wrong_epoch_are_reported_as_gaps,
    a_cursor_ahead_of_the_head_gets_a_gap_not_a_replay,
    a_subscriber_that_does_not_read_is_cut_off_alone,
    a_kept_value_is_rekept_and_prolonged_only_while_it_lives,
    a_wide_channel_gets_every_message_once_in_order_under_racing_publishers,
);

/// A channel this wide is walked in parts over both workers, and racing publishers leave
/// their messages to the walk going on: every subscriber still gets each message once,
/// in offset order, with no gap.
async fn a_wide_channel_gets_every_message_once_in_order_under_racing_publishers(kind: Kind) {
    const SUBSCRIBERS: usize = 600;
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 50;
    let bus = bus(kind).await;
    let channel = Channel::parse("wide").unwrap();
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut sub = bus.subscribe();
        sub.add(&cursor(&channel, None)).await.unwrap();
        subs.push(sub);
    }
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let bus = bus.bus.clone();
            let channel = channel.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    bus.publish(&channel, data(n)).await.unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    for (at, sub) in subs.iter_mut().enumerate() {
        for expected in 1..=PUBLISHERS * EACH {
            let message = next_message(sub).await;
            assert_eq!(message.offset, expected, "subscriber {at}");
        }
        assert!(sub.try_next().is_none(), "subscriber {at}: nothing more");
    }
}

/// What a Socket.IO session's state relies on: `rekeep` and `prolong` act only on a live
/// value and never bring an expired one back; `claim_once` is won once.
async fn a_kept_value_is_rekept_and_prolonged_only_while_it_lives(kind: Kind) {
    // Held whole: it keeps the shared Redis Cluster running.
    let test = bus(kind).await;
    let bus = &test.bus;
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(30);
    assert!(!bus.rekeep("k", Bytes::from("x"), long).await.unwrap());
    assert!(!bus.prolong("k", long).await.unwrap());
    assert_eq!(bus.kept("k").await.unwrap(), None, "nothing brought back");
    bus.keep("k", Bytes::from("a"), short).await.unwrap();
    assert!(bus.rekeep("k", Bytes::from("b"), short).await.unwrap());
    assert!(bus.prolong("k", long).await.unwrap());
    tokio::time::sleep(short * 2).await;
    assert_eq!(
        bus.kept("k").await.unwrap(),
        Some(Bytes::from("b")),
        "prolonged past its first expiry, with the value rekept"
    );
    bus.keep("gone", Bytes::from("a"), short).await.unwrap();
    tokio::time::sleep(short * 2).await;
    assert!(!bus.rekeep("gone", Bytes::from("b"), long).await.unwrap());
    assert!(!bus.prolong("gone", long).await.unwrap());
    assert_eq!(bus.kept("gone").await.unwrap(), None);
    assert!(bus.claim_once("end", short).await.unwrap());
    assert!(!bus.claim_once("end", short).await.unwrap());
    tokio::time::sleep(short * 2).await;
    assert!(
        bus.claim_once("end", short).await.unwrap(),
        "claimable once expired"
    );
}

fn chat() -> Channel {
    Channel::parse("chat").unwrap()
}

fn data(n: u64) -> Bytes {
    Bytes::from(n.to_string())
}

fn cursor(channel: &Channel, position: Option<Position>) -> Cursor {
    Cursor {
        entries: vec![(channel.clone(), position)],
    }
}

async fn next_message(sub: &mut Subscription) -> Arc<Message> {
    match tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within the deadline")
        .expect("not cut off")
    {
        Event::Message(m) => m,
        Event::Gap(g) => panic!("unexpected gap {g:?}"),
        Event::Control(c) => panic!("unexpected control {c:?}"),
    }
}

async fn racing_publishers_get_consecutive_offsets(kind: Kind) {
    let bus = bus(kind).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let bus = bus.bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..250 {
                offsets.push(bus.publish(&chat(), data(n)).await.unwrap().offset);
                if n % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let offsets = task.await.unwrap();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "per publisher order"
        );
        all.extend(offsets);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=2000).collect::<Vec<u64>>());
}

/// The heart of the product: subscribing from a position while a publisher races must
/// yield exactly the messages after that position, once each, in order.
async fn seam_has_no_gap_and_no_duplicate_under_a_racing_publisher(kind: Kind) {
    let iterations = match kind {
        Kind::Memory => 200,
        // Each iteration connects afresh; fewer keep the run short.
        Kind::Redis | Kind::RedisSharded | Kind::RedisCluster | Kind::RedisSentinel => 40,
    };
    // Keeps a local cluster up across the iterations' buses.
    let _first = bus(kind).await;
    for iteration in 0..iterations {
        let bus = bus(kind).await;
        let channel = Channel::parse(&format!("race:{iteration}")).unwrap();
        let total = 60u64;
        let publisher = {
            let bus = bus.bus.clone();
            let channel = channel.clone();
            tokio::spawn(async move {
                for n in 1..=total {
                    bus.publish(&channel, data(n)).await.unwrap();
                    if n % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        // Join at a varying point of the stream: sometimes from a position, sometimes
        // from now on.
        for _ in 0..(iteration % 7) {
            tokio::task::yield_now().await;
        }
        let mut sub = bus.subscribe();
        let from_position = iteration % 2 == 0;
        let start = if from_position {
            let (_, now) = bus.catch_up(&cursor(&channel, None), None).await.unwrap();
            let position = now.entries[0].1.clone().unwrap();
            let back = Position {
                offset: position.offset.saturating_sub(iteration % 5),
                ..position
            };
            sub.add(&cursor(&channel, Some(back))).await.unwrap()
        } else {
            sub.add(&cursor(&channel, None)).await.unwrap()
        };
        let mut expected = start.entries[0].1.as_ref().unwrap().offset + 1;
        while expected <= total {
            let message = next_message(&mut sub).await;
            assert_eq!(message.offset, expected, "iteration {iteration}");
            assert_eq!(message.data(), expected.to_string().as_bytes());
            expected += 1;
        }
        publisher.await.unwrap();
        assert!(sub.try_next().is_none(), "nothing after the last message");
    }
}

async fn old_offset_and_wrong_epoch_are_reported_as_gaps(kind: Kind) {
    let bus = bus_with(
        kind,
        Retention {
            max_messages: 3,
            max_age: Duration::from_secs(300),
        },
        64,
    )
    .await;
    let mut epoch = None;
    for n in 1..=10 {
        epoch = Some(bus.publish(&chat(), data(n)).await.unwrap().epoch.clone());
    }
    let epoch = epoch.unwrap();
    let old = Position {
        epoch: epoch.clone(),
        offset: 2,
    };
    let wrong = Position {
        epoch: Epoch::parse("other").unwrap(),
        offset: 9,
    };
    for from in [old, wrong] {
        let (events, next) = bus
            .catch_up(&cursor(&chat(), Some(from)), None)
            .await
            .unwrap();
        let Event::Gap(gap) = &events[0] else {
            panic!("expected a gap first, got {events:?}");
        };
        assert_eq!(
            *gap,
            Gap {
                channel: chat(),
                epoch: epoch.clone(),
                first: 8
            }
        );
        let offsets: Vec<u64> = events[1..]
            .iter()
            .map(|e| match e {
                Event::Message(m) => m.offset,
                Event::Gap(_) | Event::Control(_) => panic!("one gap only"),
            })
            .collect();
        assert_eq!(offsets, vec![8, 9, 10]);
        assert_eq!(next.to_string(), format!("chat@{epoch}:10"));
    }
}

/// A cursor past the head of its epoch (forged, or holding writes a promoted Redis
/// replica lost) gets a gap at the head, never the messages it already holds again.
async fn a_cursor_ahead_of_the_head_gets_a_gap_not_a_replay(kind: Kind) {
    let bus = bus(kind).await;
    let mut epoch = None;
    for n in 1..=5 {
        epoch = Some(bus.publish(&chat(), data(n)).await.unwrap().epoch.clone());
    }
    let epoch = epoch.unwrap();
    let ahead = Position {
        epoch: epoch.clone(),
        offset: 9,
    };
    let (events, next) = bus
        .catch_up(&cursor(&chat(), Some(ahead)), None)
        .await
        .unwrap();
    let [Event::Gap(gap)] = &events[..] else {
        panic!("expected one gap and nothing else, got {events:?}");
    };
    assert_eq!((&gap.epoch, gap.first), (&epoch, 6));
    assert_eq!(next.to_string(), format!("chat@{epoch}:5"));
}

/// What the Redis scripts do after a promotion started a new epoch (see `PROMOTED` in
/// `redis_script`; the Redis Cluster tests cause real ones): the promotion is written
/// here as the script writes it, on one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_cross_a_promotions_fork_through_one_gap() {
    let bus = bus(Kind::Redis).await;
    let mut old = None;
    for n in 1..=5 {
        old = Some(bus.publish(&chat(), data(n)).await.unwrap().epoch.clone());
    }
    let old = old.unwrap();
    let new = Epoch::random();
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let meta = format!("{}:{{chat}}:meta", bus.prefix);
    let _: () = ::redis::cmd("HSET")
        .arg(&meta)
        .arg(&[
            "prev",
            old.as_str(),
            "pfirst",
            "1",
            "fork",
            "5",
            "epoch",
            new.as_str(),
        ])
        .query_async(&mut redis)
        .await
        .unwrap();
    for n in 6..=7 {
        let message = bus.publish(&chat(), data(n)).await.unwrap();
        assert_eq!((&message.epoch, message.offset), (&new, n));
    }
    let read = |epoch: &Epoch, offset: u64| {
        let from = Position {
            epoch: epoch.clone(),
            offset,
        };
        let bus = &bus;
        async move {
            let (events, next) = bus
                .catch_up(&cursor(&chat(), Some(from)), None)
                .await
                .unwrap();
            let events: Vec<String> = events
                .iter()
                .map(|event| match event {
                    Event::Message(m) => format!("{}:{}", m.epoch, m.offset),
                    Event::Gap(g) => format!("gap {}:{}", g.epoch, g.first),
                    Event::Control(_) => panic!("no control here"),
                })
                .collect();
            (events, next.to_string())
        }
    };
    let after = format!("chat@{new}:7");
    // Behind the fork: the old epoch's messages, then one gap into the new epoch.
    assert_eq!(
        read(&old, 3).await,
        (
            vec![
                format!("{old}:4"),
                format!("{old}:5"),
                format!("gap {new}:6"),
                format!("{new}:6"),
                format!("{new}:7"),
            ],
            after.clone()
        )
    );
    // Past the fork (holding writes the promoted replica lost): a gap, no reused offset.
    assert_eq!(
        read(&old, 7).await,
        (
            vec![
                format!("gap {new}:6"),
                format!("{new}:6"),
                format!("{new}:7")
            ],
            after.clone()
        )
    );
    // An unknown epoch: everything retained, each part under its own epoch.
    let unknown = Epoch::random();
    let (events, next) = read(&unknown, 2).await;
    assert_eq!(events[0], format!("gap {old}:1"));
    assert_eq!(events[6], format!("gap {new}:6"));
    assert_eq!((events.len(), next), (9, after.clone()));
    // The current epoch reads as always.
    assert_eq!(read(&new, 6).await, (vec![format!("{new}:7")], after));
}

async fn a_subscriber_that_does_not_read_is_cut_off_alone(kind: Kind) {
    let bus = bus_with(
        kind,
        Retention {
            max_messages: 100,
            max_age: Duration::from_secs(300),
        },
        4,
    )
    .await;
    let token = tokio_util::sync::CancellationToken::new();
    let mut slow = bus.subscribe_with_cut(token.clone());
    slow.add(&cursor(&chat(), None)).await.unwrap();
    // Without a token (a long poll's kind), the cut shows only through `next`.
    let mut slow_tokenless = bus.subscribe();
    slow_tokenless.add(&cursor(&chat(), None)).await.unwrap();
    let mut fast = bus.subscribe();
    fast.add(&cursor(&chat(), None)).await.unwrap();
    for n in 1..=10 {
        bus.publish(&chat(), data(n)).await.unwrap();
        assert_eq!(next_message(&mut fast).await.offset, n);
    }
    assert!(token.is_cancelled());
    assert_eq!(slow.next().await.unwrap_err(), Closed::SlowConsumer);
    assert_eq!(slow.cut_off().now_or_never(), Some(Closed::SlowConsumer));
    assert_eq!(
        slow_tokenless.try_next().map(|r| r.unwrap_err()),
        Some(Closed::SlowConsumer)
    );
    assert_eq!(slow_tokenless.cut_off().now_or_never(), None);
}

#[tokio::test]
async fn idle_channels_are_swept_and_come_back_with_a_new_epoch() {
    let hub = Arc::new(Hub::new());
    let engine = MemoryEngine::new(
        hub.clone(),
        Retention {
            max_messages: 10,
            max_age: Duration::from_millis(1),
        },
    );
    let first = engine
        .publish(&chat(), Publication::data(data(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // let the message age past max_age
    // The background sweeper may have been first; either way the channel is gone.
    engine.sweep();
    assert_eq!(engine.channel_count(), 0);
    let second = engine
        .publish(&chat(), Publication::data(data(2)))
        .await
        .unwrap();
    assert_eq!(second.offset, 1);
    assert_ne!(second.epoch, first.epoch);
}

/// An engine that keeps history but only delivers the live messages it is told to, so
/// that the subscription's hole filling can be tested without a network.
struct LossyEngine {
    hub: Arc<Hub>,
    log: Mutex<(Epoch, VecDeque<Arc<Message>>)>,
    deliver: fn(u64) -> bool,
}

impl LossyEngine {
    fn head(&self) -> u64 {
        self.log.lock().unwrap().1.back().map_or(0, |m| m.offset)
    }
}

impl Engine for LossyEngine {
    fn publish(&self, channel: &Channel, publication: Publication) -> Reply<'_, Arc<Message>> {
        let mut log = self.log.lock().unwrap();
        let offset = log.1.back().map_or(1, |m| m.offset + 1);
        let message = Arc::new(Message::published(
            channel.clone(),
            log.0.clone(),
            offset,
            0,
            &publication,
        ));
        log.1.push_back(message.clone());
        if (self.deliver)(offset) {
            self.hub.deliver(&message);
        }
        now(Ok(message))
    }

    fn command<'a>(&'a self, command: &'a control::Command) -> Reply<'a, ()> {
        self.hub.users().apply(command);
        now(Ok(()))
    }

    fn history<'a>(
        &'a self,
        _channel: &'a Channel,
        from: Option<&'a Position>,
        limit: usize,
    ) -> Reply<'a, History> {
        let log = self.log.lock().unwrap();
        let head = log.1.back().map_or(0, |m| m.offset);
        let messages = match from {
            Some(p) => log
                .1
                .iter()
                .filter(|m| m.offset > p.offset)
                .take(limit)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        now(Ok(History {
            epoch: log.0.clone(),
            head,
            gap: None,
            messages,
        }))
    }

    fn watch<'a>(&'a self, _channel: &'a Channel) -> Reply<'a, ()> {
        now(Ok(()))
    }

    fn unwatch(&self, _channel: &Channel) {}

    fn claim_once<'a>(&'a self, _key: &'a str, _ttl: Duration) -> Reply<'a, bool> {
        now(Ok(true))
    }

    fn name(&self) -> &'static str {
        "lossy"
    }
}

#[tokio::test]
async fn missed_live_messages_are_filled_from_history() {
    let hub = Arc::new(Hub::new());
    let engine = Arc::new(LossyEngine {
        hub: hub.clone(),
        log: Mutex::new((Epoch::parse("e1").unwrap(), VecDeque::new())),
        // Only every third message reaches the hub.
        deliver: |offset| offset % 3 == 0,
    });
    let bus = Bus::new(
        engine.clone(),
        hub,
        BusConfig {
            subscriber_queue: 64,
            history_limit: 100,
            presence: PresencePolicy::default(),
        },
    );
    let mut sub = bus.subscribe();
    sub.add(&cursor(&chat(), None)).await.unwrap();
    for n in 1..=30 {
        bus.publish(&chat(), data(n)).await.unwrap();
    }
    for expected in 1..=30 {
        assert_eq!(next_message(&mut sub).await.offset, expected);
    }
    assert_eq!(engine.head(), 30);
    assert_eq!(sub.cursor().to_string(), "chat@e1:30");
}

fn news() -> Channel {
    Channel::parse("news").unwrap()
}

/// A subscription to chat and news that has read `n` messages published to chat.
async fn reader_of_chat_and_news(bus: &Bus, n: u64) -> Subscription {
    let mut sub = bus.subscribe();
    let mut wanted = cursor(&chat(), None);
    wanted.entries.push((news(), None));
    sub.add(&wanted).await.unwrap();
    for i in 1..=n {
        bus.publish(&chat(), data(i)).await.unwrap();
    }
    for _ in 0..n {
        next_message(&mut sub).await;
    }
    sub
}

#[tokio::test]
async fn put_cursor_writes_the_cursor_text() {
    let bus = bus(Kind::Memory).await;
    let mut sub = reader_of_chat_and_news(&bus, 12).await;
    bus.publish(&news(), data(1)).await.unwrap();
    next_message(&mut sub).await;
    let mut out = bytes::BytesMut::new();
    sub.put_cursor(&mut out);
    let text = sub.cursor().to_string();
    assert_eq!(std::str::from_utf8(&out).unwrap(), text);
    assert!(text.contains(":12"), "{text}");
    assert!(out.len() <= sub.cursor_len_max());
}

#[tokio::test]
async fn resumed_by_compares_a_poll_with_the_subscription_as_text() {
    let bus = bus(Kind::Memory).await;
    let sub = reader_of_chat_and_news(&bus, 3).await;
    let text = sub.cursor().to_string();
    assert!(sub.resumed_by(None, &text), "{text}");
    assert!(sub.resumed_by(Some("chat,news"), &text));
    for (channels, cursor) in [
        (Some("news,chat"), text.clone()),
        (Some("chat"), text.clone()),
        (Some("chat,news,more"), text.clone()),
        (Some("chat,news,"), text.clone()),
        (None, text.replace(":3", ":2")),
        (None, format!("{text},")),
        (None, text.split(',').next().unwrap().to_owned()),
        (None, String::new()),
    ] {
        assert!(
            !sub.resumed_by(channels, &cursor),
            "{channels:?} {cursor:?} against {text}"
        );
    }
    // What resumes as text is what the cursor parses to.
    assert_eq!(Cursor::parse(&text, 8).unwrap(), sub.cursor());
}
mod users;
