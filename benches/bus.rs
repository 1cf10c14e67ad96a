//! Micro-benchmarks of the gateway's hot paths that never touch a socket: the in-process
//! bus fanning one publish out to local subscribers, the per-transport encoders, and the
//! cursor codec. Run with `cargo bench --bench bus`.
//!
//! These isolate CPU cost per delivery; the load generator beside them (`benches/load.rs`)
//! measures the same paths end to end, over real sockets, in a separate gateway process.
//!
//! - `bus_publish/<n>`: one `Bus::publish` into a channel with `n` local subscribers
//!   (memory engine), then every subscription takes its message with `try_next`, so no
//!   queue fills up and nobody is cut off. Throughput is per delivery.
//! - `bus_publish_express/<n>`: the same publish to `n` idle subscribers armed for express
//!   delivery, each lending the hub a writer that takes the message and does nothing with
//!   it: the hub's own cost per express delivery, without the `send()`. Each publish
//!   waits, untimed, for twice its walk first, as the hub writes express only to
//!   messages that far apart.
//! - `encode/*`: the bytes each transport writes for one message.
//! - `cursor/*`: `Cursor::parse` and `Display` with 1 and 128 entries.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;

use cascade::bus::memory::{MemoryEngine, Retention};
use cascade::bus::{Bus, BusConfig, CursorAfter, Event, Express, Hub, Subscription, Written};
use cascade::config::Transport;
use cascade::metrics::Metrics;
use cascade::protocol::{Channel, Cursor, Epoch, Message};
use cascade::query::Query;
use cascade::transport::sse::event::SseEvent as _;
use cascade::transport::websocket::wire::WsFrame as _;
use cascade::transport::{poll_body, sse};

/// The payload the load generator publishes: a timestamp and a sequence number.
const DATA: &[u8] = br#"{"t":1764300000000000,"n":123456}"#;

/// A bus over a fresh memory engine with the gateway's default limits.
fn memory_bus() -> Bus {
    let hub = Arc::new(Hub::new());
    let engine = MemoryEngine::new(
        hub.clone(),
        Retention {
            max_messages: 1000,
            max_age: Duration::from_secs(300),
        },
    );
    Bus::new(
        engine,
        hub,
        BusConfig {
            subscriber_queue: 1024,
            history_limit: 1000,
            presence: Default::default(),
        },
    )
}

/// A subscription following `channel` from now on.
fn subscribe(rt: &tokio::runtime::Runtime, bus: &Bus, channel: &Channel) -> Subscription {
    let mut subscription = bus.subscribe();
    let cursor = Cursor {
        entries: vec![(channel.clone(), None)],
    };
    rt.block_on(subscription.add(&cursor))
        .expect("memory engine answers");
    subscription
}

/// Publishes on the memory engine, whose futures are ready at once.
fn publish(bus: &Bus, channel: &Channel, data: &Bytes) -> Arc<Message> {
    bus.publish(channel, data.clone())
        .now_or_never()
        .expect("the memory engine publishes synchronously")
        .expect("publish succeeds")
}

/// A runtime to enter while benching the bus: the memory engine spawns its sweeper, which
/// never runs between iterations because nothing drives this current-thread runtime.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A fresh bus with `n` subscriptions following `channel` from now on.
fn subscribed(
    rt: &tokio::runtime::Runtime,
    channel: &Channel,
    n: usize,
) -> (Bus, Vec<Subscription>) {
    let bus = memory_bus();
    let subscriptions = (0..n).map(|_| subscribe(rt, &bus, channel)).collect();
    (bus, subscriptions)
}

fn bus_publish(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let channel = Channel::parse("bench").expect("valid channel");
    let data = Bytes::from_static(DATA);
    let mut group = c.benchmark_group("bus_publish");
    for subscribers in [1usize, 1_000, 10_000] {
        let (bus, mut subscriptions) = subscribed(&rt, &channel, subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter(|| {
                let message = publish(&bus, &channel, &data);
                for subscription in &mut subscriptions {
                    match subscription.try_next() {
                        Some(Ok(Event::Message(m))) => debug_assert_eq!(m.offset, message.offset),
                        other => panic!("expected the published message, got {other:?}"),
                    }
                }
                message
            });
        });
    }
    group.finish();
}

/// A writer that takes every message whole and does nothing with it.
struct Discard;

impl Express for Discard {
    fn write(&self, message: &Message, _: Option<CursorAfter<'_>>) -> Written {
        black_box(message.ws_wire());
        Written::All
    }
}

fn bus_publish_express(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let channel = Channel::parse("bench").expect("valid channel");
    let data = Bytes::from_static(DATA);
    let mut group = c.benchmark_group("bus_publish_express");
    for subscribers in [1usize, 1_000, 10_000] {
        let (bus, mut subscriptions) = subscribed(&rt, &channel, subscribers);
        let switches: Vec<_> = subscriptions
            .iter_mut()
            .map(|subscription| {
                let switch = subscription.set_express(Arc::new(Discard));
                assert!(subscription.arm(), "an idle subscription arms");
                switch
            })
            .collect();
        group.throughput(Throughput::Elements(subscribers as u64));
        // The hub keeps a moving average of a write's cost (7/8 old, 1/8 new) and queues
        // messages closer than twice the walk it predicts. This one, kept the same way over
        // whole publishes and across samples, is never below that walk.
        let mut average = Duration::ZERO;
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter_custom(|iters| {
                let mut walks = Duration::ZERO;
                for _ in 0..iters {
                    let since = Instant::now();
                    while since.elapsed() < average * 2 + Duration::from_micros(1) {
                        std::hint::spin_loop();
                    }
                    let start = Instant::now();
                    black_box(publish(&bus, &channel, &data));
                    let walk = start.elapsed();
                    average = if average.is_zero() {
                        walk
                    } else {
                        (average * 7 + walk) / 8
                    };
                    walks += walk;
                }
                walks
            });
        });
        for subscription in &mut subscriptions {
            assert!(
                subscription.try_next().is_none(),
                "every message went express, none was queued"
            );
        }
        drop(switches);
    }
    group.finish();
}

/// A fresh message, as the engine builds it at publish.
fn message(offset: u64) -> Message {
    Message::new(
        Channel::parse("room:lobby").expect("valid channel"),
        Epoch::parse("k3JdQ9xZ").expect("valid epoch"),
        offset,
        1_764_300_000_000,
        DATA,
    )
}

fn encode(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));

    group.bench_function("message_new", |b| b.iter(|| message(black_box(42))));
    group.bench_function("ws_frame", |b| {
        // The frame is cached per message, so each iteration needs a fresh one.
        b.iter_batched(
            || message(42),
            |m| m.ws_frame().len(),
            BatchSize::SmallInput,
        );
    });

    // A subscription that has received one message, so its cursor carries a position.
    let bus = memory_bus();
    let channel = Channel::parse("room:lobby").expect("valid channel");
    let mut subscription = subscribe(&rt, &bus, &channel);
    let published = Event::Message(publish(&bus, &channel, &Bytes::from_static(DATA)));
    assert!(matches!(subscription.try_next(), Some(Ok(_))));
    let sse_metrics = metrics.transport(Transport::Sse);
    group.bench_function("sse_event", |b| {
        b.iter(|| {
            let mut out = BytesMut::new();
            sse::encode(
                &mut out,
                &published,
                &subscription,
                sse_metrics,
                1_764_300_000_000,
            );
            out.freeze()
        });
    });

    // What a lone event to a subscriber of one channel costs since the message keeps its
    // SSE event: a reference count (the event above is that one copied into a batch).
    let Event::Message(shared) = &published else {
        unreachable!("published is a message")
    };
    group.bench_function("sse_event_shared", |b| {
        b.iter(|| shared.sse_event().clone())
    });

    let poll_metrics = metrics.transport(Transport::Poll);
    let cursor = subscription.cursor();
    for count in [1usize, 100] {
        let events: Vec<Event> = (1..=count as u64)
            .map(|offset| Event::Message(Arc::new(message(offset))))
            .collect();
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(BenchmarkId::new("poll_body", count), |b| {
            b.iter(|| {
                poll_body(
                    &events,
                    |out| cursor.put(out),
                    &[],
                    None,
                    None,
                    None,
                    poll_metrics,
                )
            });
        });
    }
    group.finish();
}

/// A cursor text of `entries` channels, each with a position.
fn cursor_text(entries: usize) -> String {
    let mut text = String::new();
    for i in 0..entries {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(text, "room:{i:03}@k3JdQ9xZ:{}", 1_000_000 + i);
    }
    text
}

fn cursor(c: &mut Criterion) {
    let mut group = c.benchmark_group("cursor");
    for entries in [1usize, 128] {
        let text = cursor_text(entries);
        let parsed = Cursor::parse(&text, 128).expect("valid cursor");
        group.throughput(Throughput::Elements(entries as u64));
        group.bench_function(BenchmarkId::new("parse", entries), |b| {
            b.iter(|| Cursor::parse(black_box(&text), 128).expect("valid cursor"));
        });
        group.bench_function(BenchmarkId::new("format", entries), |b| {
            b.iter(|| black_box(&parsed).to_string());
        });
    }
    group.finish();
}

/// A poll's query as a browser sends it (`encodeURIComponent` escapes the cursor's `@` and
/// `:`) and as the load generator sends it.
fn query(c: &mut Criterion) {
    let mut group = c.benchmark_group("query");
    let encoded = "channels=chat&cursor=chat%40e1X9abc%3A1234&timeout=30";
    let plain = "channels=chat&cursor=chat@e1X9abc:1234&timeout=30";
    group.bench_function("parse_encoded", |b| {
        b.iter(|| Query::parse(Some(black_box(encoded))));
    });
    group.bench_function("parse_plain", |b| {
        b.iter(|| Query::parse(Some(black_box(plain))));
    });
    group.finish();
}

criterion_group!(
    benches,
    bus_publish,
    bus_publish_express,
    encode,
    cursor,
    query
);
criterion_main!(benches);
