//! The scenarios: each drives the clients against the gateway and fills a [`Report`].
//!
//! - `idle`: hold N connections of one transport; the gateway's resident memory per
//!   connection.
//! - `fanout`, `channels`, `poll`: subscribers on K channels, publishers at a rate; each
//!   subscriber must see every `n` of its channel exactly once. They differ only in
//!   their defaults (one channel and many subscribers; one subscriber on each of many
//!   channels; many polling clients for a fixed time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cascade::config::Transport;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clients::{Follow, Publishing, Tally, histogram, publisher, subscriber, unix_us};
use crate::gateway::{CoreTimes, Gateway, ProcStats, own_stats};
use crate::report::{Report, mib, ms};
use crate::{Options, Scenario};

/// One run: the gateway nodes, the resolved options, and the hard deadline.
pub struct Run {
    /// The gateway nodes under test (at least one). Subscriber `i` connects to node
    /// `i % nodes`; publishers post to the first node.
    pub gateways: Vec<Gateway>,
    /// With the Redis engine: the server's URL, read before and after the window.
    pub redis_url: Option<String>,
    /// What to do.
    pub opts: Options,
    /// Nothing is started after this; waits give up at it.
    pub deadline: Instant,
    /// Makes this run's channel names unique on a shared gateway.
    pub tag: String,
}

impl Run {
    fn channel(&self, c: usize) -> String {
        format!("load.{}.{c}", self.tag)
    }

    /// Where publishers post: the first node.
    fn addr(&self) -> SocketAddr {
        self.gateways[0].addr
    }

    /// Where subscriber `i` connects: node `i % nodes`.
    fn subscriber_addr(&self, i: usize) -> SocketAddr {
        self.gateways[i % self.gateways.len()].addr
    }

    /// Each node's `/proc` statistics (`None` for a node without a known PID).
    fn node_stats(&self) -> Result<Vec<Option<ProcStats>>, String> {
        self.gateways
            .iter()
            .map(|gateway| match gateway.pid {
                None => Ok(None),
                Some(pid) => gateway.stats().map(Some).ok_or_else(|| {
                    format!(
                        "the gateway (pid {pid}) is gone; see {}",
                        gateway.log_path()
                    )
                }),
            })
            .collect()
    }

    /// RSS and CPU summed over the nodes (`None` unless every node has a PID).
    fn stats(&self) -> Result<Option<ProcStats>, String> {
        Ok(sum_stats(&self.node_stats()?))
    }

    /// One `/metrics` sample summed over the nodes (`None` if no node answers).
    async fn metric(&self, sample: &str) -> Option<f64> {
        let mut total = None;
        for gateway in &self.gateways {
            if let Some(v) = gateway.metric(sample).await {
                total = Some(total.unwrap_or(0.0) + v);
            }
        }
        total
    }

    /// Starts `count` subscribers, subscriber `i` on channel `i % channels`, at most
    /// `connect_concurrency` connecting at once.
    async fn subscribe(
        &self,
        count: usize,
        channels: usize,
        expected: impl Fn(usize) -> u64,
        tally: &Arc<Tally>,
        stop: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        if self.opts.h2_streams > 0 {
            return self.subscribe_h2(count, tally, stop);
        }
        let slots = Arc::new(Semaphore::new(self.opts.connect_concurrency.max(1)));
        let mut tasks = Vec::with_capacity(count);
        let hold_s = self.opts.duration.as_secs() + 30;
        for i in 0..count {
            let acquire = slots.clone().acquire_owned();
            let Ok(Ok(permit)) = tokio::time::timeout_at(self.deadline.into(), acquire).await
            else {
                break;
            };
            let sources = &self.opts.sources;
            let shared = self.channel(i % channels);
            let follow = Follow {
                transport: self.opts.transport,
                channels: if self.opts.own_channel {
                    format!("{shared},{shared}.own.{i}")
                } else {
                    shared
                },
                expected: expected(i % channels),
                interval: self.opts.interval,
                hold_s,
                source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
                negotiate: self.opts.negotiate,
                wire: self.opts.wire,
            };
            tasks.push(tokio::spawn(subscriber(
                self.subscriber_addr(i),
                follow,
                tally.clone(),
                stop.clone(),
                permit,
            )));
        }
        tasks
    }

    /// `count` SSE streams on one channel, `--h2-streams` to an HTTP/2 connection, each
    /// counted confirmed when its answer's head came.
    fn subscribe_h2(
        &self,
        count: usize,
        tally: &Arc<Tally>,
        stop: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let per = self.opts.h2_streams;
        let path = format!("/sse?channels={}", self.channel(0));
        let sources = &self.opts.sources;
        (0..count.div_ceil(per))
            .map(|c| {
                let streams = per.min(count - c * per);
                let (tally, stop, path) = (tally.clone(), stop.clone(), path.clone());
                let addr = self.subscriber_addr(c);
                let source = (!sources.is_empty()).then(|| sources[c % sources.len()]);
                tokio::spawn(async move {
                    let opened = || {
                        tally.confirmed.fetch_add(1, Ordering::Relaxed);
                    };
                    let held = crate::tls::h2_sse(addr, source, &path, streams, opened, stop);
                    if let Err(error) = held.await {
                        tally.failed.fetch_add(streams, Ordering::Relaxed);
                        tally.error(format!("h2 sse: {error}"));
                    }
                })
            })
            .collect()
    }

    /// Waits until every subscriber is confirmed or has failed; long polls must also show
    /// on the gateway's gauge as parked. Returns how many are confirmed.
    async fn settle(&self, count: usize, tally: &Tally) -> Result<usize, String> {
        loop {
            let confirmed = tally.confirmed.load(Ordering::Relaxed);
            let failed = tally.failed.load(Ordering::Relaxed);
            if confirmed + failed >= count {
                break;
            }
            if Instant::now() > self.deadline {
                return Err(format!(
                    "only {confirmed} of {count} subscribers confirmed ({failed} failed) before \
                     the --duration cap; first error: {}",
                    first_error(tally)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let confirmed = tally.confirmed.load(Ordering::Relaxed);
        if self.opts.transport == Transport::Longpoll && confirmed > 0 {
            let gauge = r#"cascade_connections{transport="longpoll"}"#;
            loop {
                let parked = self.metric(gauge).await.unwrap_or(0.0) as usize;
                if parked >= confirmed {
                    break;
                }
                if Instant::now() > self.deadline {
                    return Err(format!("only {parked} of {confirmed} long polls parked"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(confirmed)
    }
}

fn first_error(tally: &Tally) -> String {
    tally
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "none".to_owned())
}

/// Stops the clients and waits a little for them to finish.
async fn finish(stop: &CancellationToken, tasks: Vec<JoinHandle<()>>) {
    stop.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            abort.abort();
        }
    }
}

/// The nodes' statistics added up; `None` unless every node has them.
fn sum_stats(nodes: &[Option<ProcStats>]) -> Option<ProcStats> {
    nodes.iter().try_fold(
        ProcStats {
            rss_kib: 0,
            cpu_s: 0.0,
        },
        |sum, node| {
            let node = (*node)?;
            Some(ProcStats {
                rss_kib: sum.rss_kib + node.rss_kib,
                cpu_s: sum.cpu_s + node.cpu_s,
            })
        },
    )
}

/// Each node's CPU seconds between two samples, rounded to milliseconds.
fn cpu_per_node(a: &[Option<ProcStats>], b: &[Option<ProcStats>]) -> Vec<Option<f64>> {
    a.iter()
        .zip(b)
        .map(|(a, b)| cpu_between(*a, *b).map(|c| (c * 1000.0).round() / 1000.0))
        .collect()
}

/// Gateway CPU seconds between two samples.
fn cpu_between(a: Option<ProcStats>, b: Option<ProcStats>) -> Option<f64> {
    Some(b?.cpu_s - a?.cpu_s)
}

/// RSS growth in KiB per unit.
fn rss_per(a: Option<ProcStats>, b: Option<ProcStats>, units: usize) -> Option<f64> {
    let (a, b) = (a?, b?);
    (units > 0).then(|| (b.rss_kib as f64 - a.rss_kib as f64) / units as f64)
}

/// Holds `connections` connections open and measures what they cost the gateway.
pub async fn idle(run: &Run) -> Result<Report, String> {
    let o = &run.opts;
    let mut report = Report::new("idle", o.transport);
    report.param("connections", o.connections);
    if crate::tls::enabled() {
        report.param("tls", true);
    }
    if o.h2_streams > 0 {
        report.param("h2_streams_per_connection", o.h2_streams);
    }
    if o.negotiate {
        report.param("negotiate", true);
    }
    let tally = Arc::new(Tally::new());
    let stop = CancellationToken::new();
    let before = run.stats()?;
    let own_before = own_stats();
    let started = Instant::now();
    let tasks = run.subscribe(o.connections, 1, |_| 0, &tally, &stop).await;
    let confirmed = run.settle(o.connections, &tally).await;
    let established = started.elapsed();
    let opened = run.stats()?;
    let own_opened = own_stats();
    tokio::time::sleep(o.settle).await;
    let after = run.stats()?;
    let label = if o.wire == crate::clients::Wire::CascadeSocketio {
        "socketio-websocket"
    } else {
        o.transport.name()
    };
    let gauge = format!(r#"cascade_connections{{transport="{label}"}}"#);
    let open_on_gateway = run.metric(&gauge).await;
    finish(&stop, tasks).await;
    let confirmed = confirmed?;

    report.result("confirmed", confirmed);
    report.result("failed", tally.failed.load(Ordering::Relaxed));
    report.result("dropped", tally.dropped.load(Ordering::Relaxed));
    report.result("gateway_open", open_on_gateway);
    report.result("establish_s", established.as_secs_f64());
    report.result(
        "connections_per_s",
        confirmed as f64 / established.as_secs_f64(),
    );
    report.result("rss_before_mib", before.map(|s| mib(s.rss_kib)));
    report.result("rss_after_mib", after.map(|s| mib(s.rss_kib)));
    report.result("rss_per_connection_kib", rss_per(before, after, confirmed));
    let cpu = cpu_between(before, opened);
    report.result("establish_cpu_s", cpu);
    report.result(
        "cpu_us_per_connection",
        cpu.filter(|_| confirmed > 0)
            .map(|c| c * 1e6 / confirmed as f64),
    );
    report.result("generator_cpu_s", cpu_between(own_before, own_opened));
    report.result(
        "first_error",
        tally
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    );
    Ok(report)
}

/// Subscribers on channels, publishers at a rate; deliveries, latency, loss and CPU.
pub async fn delivery(run: &Run) -> Result<Report, String> {
    let o = &run.opts;
    let name = match o.scenario {
        Scenario::Channels => "channels",
        Scenario::Poll => "poll",
        _ => "fanout",
    };
    let mut report = Report::new(name, o.transport);
    let channels = o.channels.max(1);
    let per_channel = |c: usize| {
        let k = channels as u64;
        o.messages / k + u64::from((c as u64) < o.messages % k)
    };
    report.param("subscribers", o.subscribers);
    report.param("channels", channels);
    if o.own_channel {
        report.param("own_channel", true);
    }
    if o.negotiate {
        report.param("negotiate", true);
    }
    report.param("messages", o.messages);
    report.param("rate", o.rate);
    report.param("publishers", o.publishers);
    if matches!(o.transport, Transport::Poll) {
        report.param("interval_ms", o.interval.as_millis() as u64);
    }
    if o.min_window > Duration::ZERO {
        report.param("seconds", o.min_window.as_secs());
    }

    let tally = Arc::new(Tally::new());
    let stop = CancellationToken::new();
    let before = run.stats()?;
    let started = Instant::now();
    let tasks = run
        .subscribe(o.subscribers, channels, per_channel, &tally, &stop)
        .await;
    let confirmed = match run.settle(o.subscribers, &tally).await {
        Ok(confirmed) => confirmed,
        Err(e) => {
            finish(&stop, tasks).await;
            return Err(e);
        }
    };
    // From the first connection to the last subscription confirmed: with many channels,
    // how fast the engine takes new channels on.
    report.result("establish_s", started.elapsed().as_secs_f64());
    let connected_nodes = run.node_stats()?;
    let connected = sum_stats(&connected_nodes);
    let redis0 = run.redis_url.as_deref().and_then(crate::engine::snapshot);

    // The measured window starts with the first publish.
    let own0 = own_stats();
    let cores0 = (
        CoreTimes::read(&o.gateway_cores),
        CoreTimes::read(&o.generator_cores),
    );
    let requests0 = tally.requests.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let t0_us = unix_us();
    let plan = Arc::new(Publishing {
        messages: o.messages,
        rate: o.rate,
        channels: (0..channels).map(|c| run.channel(c)).collect(),
        api_key: o.api_key.clone(),
        batch: o.batch,
        start: t0,
        deadline: run.deadline,
        next: AtomicU64::new(0),
        published: AtomicU64::new(0),
        published_per_channel: (0..channels).map(|_| AtomicU64::new(0)).collect(),
        failed: AtomicU64::new(0),
        round_trip: std::sync::Mutex::new(histogram()),
    });
    let publishers: Vec<JoinHandle<()>> = (0..o.publishers.max(1))
        .filter(|_| o.messages > 0)
        .map(|_| tokio::spawn(publisher(run.addr(), plan.clone(), tally.clone())))
        .collect();

    // What subscribers must have seen: every message that was published (all of them,
    // unless the --duration cap stopped the publishers early).
    let owed = |plan: &Publishing| -> u64 {
        (0..o.subscribers)
            .map(|i| plan.published_per_channel[i % channels].load(Ordering::Relaxed))
            .sum()
    };
    // A short poller may see nothing for a whole interval; that is not a stall.
    let drain = o.drain.max(o.interval + Duration::from_secs(1));
    let mut progress = (0u64, Instant::now());
    let mut published_at: Option<Instant> = None;
    let capped = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        if now > run.deadline {
            break true;
        }
        let delivered = tally.delivered.load(Ordering::Relaxed);
        if delivered != progress.0 {
            progress = (delivered, now);
        }
        if published_at.is_none() && publishers.iter().all(|p| p.is_finished()) {
            published_at = Some(now);
        }
        let Some(published_at) = published_at else {
            continue;
        };
        let stalled = now - progress.1.max(published_at) > drain;
        let windowed = now.duration_since(t0) >= o.min_window;
        if windowed && (delivered >= owed(&plan) || stalled) {
            break false;
        }
    };
    let t1 = Instant::now();
    let after_nodes = run.node_stats()?;
    let after = sum_stats(&after_nodes);
    let redis1 = run.redis_url.as_deref().and_then(crate::engine::snapshot);
    let own1 = own_stats();
    let cores1 = (
        CoreTimes::read(&o.gateway_cores),
        CoreTimes::read(&o.generator_cores),
    );
    let requests = tally.requests.load(Ordering::Relaxed) - requests0;
    for p in &publishers {
        p.abort();
    }
    finish(&stop, tasks).await;

    let delivered = tally.delivered.load(Ordering::Relaxed);
    let owed = owed(&plan);
    let window = (t1 - t0).as_secs_f64();
    let last = tally.last_delivery_us.load(Ordering::Relaxed);
    // Deliveries per second over the span they actually took, unless the run is timed.
    let span = if o.min_window > Duration::ZERO || last <= t0_us {
        window
    } else {
        (last - t0_us) as f64 / 1e6
    };
    let cpu = cpu_between(connected, after);

    report.result("confirmed", confirmed);
    report.result("failed", tally.failed.load(Ordering::Relaxed));
    report.result("dropped", tally.dropped.load(Ordering::Relaxed));
    report.result("published", plan.published.load(Ordering::Relaxed));
    report.result("publish_failed", plan.failed.load(Ordering::Relaxed));
    report.result("expected", owed);
    report.result("delivered", delivered);
    report.result("lost", owed.saturating_sub(delivered));
    report.result("duplicates", tally.duplicates.load(Ordering::Relaxed));
    report.result("strays", tally.strays.load(Ordering::Relaxed));
    report.result("gaps", tally.gaps.load(Ordering::Relaxed));
    report.result("seconds", span);
    report.result("deliveries_per_s", delivered as f64 / span.max(1e-9));
    report.result(
        "publishes_per_s",
        plan.published.load(Ordering::Relaxed) as f64 / span.max(1e-9),
    );
    {
        let latency = tally.latency.lock().unwrap_or_else(|e| e.into_inner());
        if !latency.is_empty() {
            report.result("latency_p50_ms", ms(latency.value_at_quantile(0.50)));
            report.result("latency_p99_ms", ms(latency.value_at_quantile(0.99)));
            report.result("latency_p999_ms", ms(latency.value_at_quantile(0.999)));
            report.result("latency_max_ms", ms(latency.max()));
        }
        let rtt = plan.round_trip.lock().unwrap_or_else(|e| e.into_inner());
        if !rtt.is_empty() {
            report.result("publish_rtt_p50_ms", ms(rtt.value_at_quantile(0.50)));
            report.result("publish_rtt_p99_ms", ms(rtt.value_at_quantile(0.99)));
        }
    }
    if matches!(o.transport, Transport::Poll | Transport::Longpoll) {
        report.result("requests", requests);
        report.result("requests_per_s", requests as f64 / window.max(1e-9));
        report.result(
            "gateway_cpu_us_per_request",
            cpu.filter(|_| requests > 0)
                .map(|c| c * 1e6 / requests as f64),
        );
    }
    report.result("window_s", window);
    report.result("gateway_cpu_s", cpu);
    if run.gateways.len() > 1 {
        report.result(
            "gateway_cpu_s_per_node",
            serde_json::json!(cpu_per_node(&connected_nodes, &after_nodes)),
        );
    }
    report.result("gateway_cpu_util", cpu.map(|c| c / window.max(1e-9)));
    report.result(
        "deliveries_per_cpu_s",
        cpu.filter(|c| *c > 0.0).map(|c| delivered as f64 / c),
    );
    // How busy the pinned cores were, whoever used them: well above the process's own
    // utilisation means other work (or softirq time charged to nobody) competed with it.
    let gateway_core = CoreTimes::fractions(cores0.0, cores1.0);
    report.result("gateway_core_busy", gateway_core.map(|(busy, _)| busy));
    report.result(
        "gateway_core_softirq",
        gateway_core.map(|(_, softirq)| softirq),
    );
    let generator_core = CoreTimes::fractions(cores0.1, cores1.1);
    report.result("generator_core_busy", generator_core.map(|(busy, _)| busy));
    let own_cpu = cpu_between(own0, own1);
    report.result("generator_cpu_s", own_cpu);
    report.result("generator_cpu_util", own_cpu.map(|c| c / window.max(1e-9)));
    report.result("rss_before_mib", before.map(|s| mib(s.rss_kib)));
    report.result("rss_connected_mib", connected.map(|s| mib(s.rss_kib)));
    report.result("rss_after_mib", after.map(|s| mib(s.rss_kib)));
    report.result(
        "rss_per_subscriber_kib",
        rss_per(before, connected, confirmed),
    );
    // Connections and channels together; what a channel alone costs is the difference
    // against the same subscribers on one channel (BENCHMARKS.md, "Many channels").
    if o.scenario == Scenario::Channels && channels > 1 {
        report.result("rss_per_channel_kib", rss_per(before, connected, channels));
    }
    if let (Some(a), Some(b)) = (&redis0, &redis1) {
        let published = plan.published.load(Ordering::Relaxed);
        for (key, value) in crate::engine::window(a, b, published) {
            report.result(&key, value);
        }
    } else if run.redis_url.is_some() {
        report.result("redis_calls", "unreadable");
    }
    report.result("capped", capped);
    report.result(
        "first_error",
        tally
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    );
    Ok(report)
}
