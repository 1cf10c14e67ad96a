//! Prometheus metrics, owned by the application state (no globals, so tests can run
//! several gateways in one process).
//!
//! Per-transport handles are resolved once at start-up: the delivery path increments plain
//! counters and never looks a label up, and its own counters are striped by thread (see
//! [`Deliveries`]).

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::{HookEvent, Transport};

mod deliveries;
pub use deliveries::{Deliveries, DeliveryCollector};

/// Reasons a client may give for a failed rung; anything else is counted as `other` so
/// that clients cannot blow up the label cardinality.
pub const FALLBACK_REASONS: [&str; 7] = [
    "unknown",
    "unsupported",
    "refused",
    "timeout",
    "closed",
    "buffered",
    "error",
];

/// The `transport` labels of the Socket.IO endpoint: polling, WebSocket.
pub const SOCKETIO_TRANSPORTS: [&str; 2] = ["socketio-polling", "socketio-websocket"];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    transports: [TransportMetrics; 4],
    socketio: [TransportMetrics; 2],
    /// Negotiations answered.
    pub negotiations: IntCounter,
    fallbacks: IntCounterVec,
    published: IntCounterVec,
    errors: IntCounterVec,
    /// TLS handshakes finished, by the ALPN protocol chosen: `h2`, `http/1.1`, `none`.
    tls_handshakes: [IntCounter; 3],
    /// Channels with at least one subscriber on this node.
    pub active_channels: IntGauge,
    /// Deliveries queued on this node and not yet taken by their subscribers.
    pub fanout_backlog: IntGauge,
    /// Publishes answered late because the fan-out backlog was over its bound.
    publish_waits: IntCounter,
    /// Time those publishes waited, in seconds.
    publish_wait_seconds: prometheus::Counter,
    engine: crate::bus::redis::EngineMetrics,
    hooks: HookMetrics,
}

/// The `alpn` labels of `cascade_tls_handshakes_total`.
const TLS_ALPN: [&str; 3] = ["h2", "http/1.1", "none"];

/// The outcomes of a call to the backend, as `cascade_hook_requests_total`'s `result`.
pub const HOOK_RESULTS: [&str; 5] = ["ok", "refused", "unavailable", "timeout", "invalid"];

/// The handles of the backend hooks, resolved per event once: `requests[event][result]`
/// in the order of [`HookEvent::ALL`] and [`HOOK_RESULTS`].
#[derive(Clone)]
pub struct HookMetrics {
    requests: [[IntCounter; 5]; 5],
    duration: [Histogram; 5],
}

impl HookMetrics {
    /// Counts one call of `event` that ended as `result` (one of [`HOOK_RESULTS`]) after
    /// `seconds`.
    pub fn record(&self, event: HookEvent, result: &str, seconds: f64) {
        let e = event as usize;
        let r = HOOK_RESULTS.iter().position(|x| *x == result).unwrap_or(2);
        self.requests[e][r].inc();
        self.duration[e].observe(seconds);
    }
}

/// The metric handles of one transport.
pub struct TransportMetrics {
    /// Open connections (WebSocket, SSE) or requests in flight (polling).
    pub open: IntGauge,
    /// Connections accepted or requests served.
    pub served: IntCounter,
    /// Messages delivered, their bytes and their publish-to-delivery lag.
    pub deliveries: Arc<Deliveries>,
    /// Subscribers cut off because they could not keep up.
    pub slow_consumers: IntCounter,
    /// Gaps reported to clients.
    pub gaps: IntCounter,
}

impl TransportMetrics {
    /// Records one delivered message of `bytes` bytes published at `ts_ms`.
    #[inline] // On every delivery; a call across codegen units otherwise.
    pub fn record_delivery(&self, bytes: usize, ts_ms: u64, now_ms: u64) {
        self.deliveries.record(bytes, ts_ms, now_ms);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let open = IntGaugeVec::new(
            Opts::new(
                "cascade_connections",
                "Open connections (websocket, sse) or requests in flight (longpoll, poll).",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let served = IntCounterVec::new(
            Opts::new(
                "cascade_connections_total",
                "Connections accepted (websocket, sse) or requests served (longpoll, poll).",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let slow = IntCounterVec::new(
            Opts::new(
                "cascade_slow_consumers_total",
                "Subscribers cut off because their queue overflowed.",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let gaps = IntCounterVec::new(
            Opts::new(
                "cascade_gaps_total",
                "Gaps reported to clients whose position was no longer retained.",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let negotiations = IntCounter::new(
            "cascade_negotiations_total",
            "Negotiations answered by /negotiate.",
        )
        .expect("valid metric");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "cascade_fallbacks_total",
                "Transport failures reported by clients on /negotiate.",
            ),
            &["from", "to", "reason"],
        )
        .expect("valid metric");
        let published = IntCounterVec::new(
            Opts::new(
                "cascade_messages_published_total",
                "Messages published, by entry point.",
            ),
            &["via"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "cascade_errors_total",
                "Requests and frames refused, by error code.",
            ),
            &["code"],
        )
        .expect("valid metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "cascade_tls_handshakes_total",
                "TLS handshakes finished, by the protocol ALPN chose (h2, http/1.1, none).",
            ),
            &["alpn"],
        )
        .expect("valid metric");
        let active_channels = IntGauge::new(
            "cascade_active_channels",
            "Channels with at least one subscriber on this node.",
        )
        .expect("valid metric");
        let fanout_backlog = IntGauge::new(
            "cascade_fanout_backlog",
            "Deliveries queued on this node and not yet taken by their subscribers.",
        )
        .expect("valid metric");
        let publish_waits = IntCounter::new(
            "cascade_publish_waits_total",
            "HTTP publishes answered late because the fan-out backlog was over limits.publish_backlog.",
        )
        .expect("valid metric");
        let publish_wait_seconds = prometheus::Counter::new(
            "cascade_publish_wait_seconds_total",
            "Time HTTP publishes waited for the fan-out backlog.",
        )
        .expect("valid metric");

        let engine_up = IntGauge::new(
            "cascade_engine_up",
            "1 while the bus engine answers, 0 while it does not.",
        )
        .expect("valid metric");
        let engine_roundtrip = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "cascade_engine_roundtrip_seconds",
                "Round trip of one engine operation (redis engine).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["op"],
        )
        .expect("valid metric");
        engine_up.set(1);
        let hook_requests = IntCounterVec::new(
            Opts::new(
                "cascade_hook_requests_total",
                "Calls to the application's backend, by event and result.",
            ),
            &["event", "result"],
        )
        .expect("valid metric");
        let hook_duration = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "cascade_hook_duration_seconds",
                "Time of one call to the application's backend, queueing included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["event"],
        )
        .expect("valid metric");

        for collector in [
            Box::new(engine_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(engine_roundtrip.clone()),
            Box::new(open.clone()),
            Box::new(served.clone()),
            Box::new(slow.clone()),
            Box::new(gaps.clone()),
            Box::new(negotiations.clone()),
            Box::new(fallbacks.clone()),
            Box::new(published.clone()),
            Box::new(errors.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(active_channels.clone()),
            Box::new(fanout_backlog.clone()),
            Box::new(publish_waits.clone()),
            Box::new(publish_wait_seconds.clone()),
            Box::new(hook_requests.clone()),
            Box::new(hook_duration.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        for via in ["http", "websocket"] {
            published.with_label_values(&[via]);
        }

        let hooks = HookMetrics {
            requests: HookEvent::ALL.map(|event| {
                HOOK_RESULTS.map(|result| hook_requests.with_label_values(&[event.name(), result]))
            }),
            duration: HookEvent::ALL.map(|event| hook_duration.with_label_values(&[event.name()])),
        };
        let per_label = |name: &str| {
            let label = [name];
            TransportMetrics {
                open: open.with_label_values(&label),
                served: served.with_label_values(&label),
                deliveries: Arc::new(Deliveries::default()),
                slow_consumers: slow.with_label_values(&label),
                gaps: gaps.with_label_values(&label),
            }
        };
        let transports = Transport::ALL.map(|t| per_label(t.name()));
        let socketio = SOCKETIO_TRANSPORTS.map(per_label);
        let deliveries = Transport::ALL
            .iter()
            .map(|t| t.name())
            .chain(SOCKETIO_TRANSPORTS)
            .zip(transports.iter().chain(&socketio))
            .map(|(name, t)| (name.to_owned(), t.deliveries.clone()))
            .collect();
        registry
            .register(Box::new(DeliveryCollector::new(deliveries)))
            .expect("unique metric names");
        Metrics {
            registry,
            transports,
            socketio,
            negotiations,
            fallbacks,
            published,
            errors,
            tls_handshakes: TLS_ALPN.map(|alpn| tls_handshakes.with_label_values(&[alpn])),
            active_channels,
            fanout_backlog,
            publish_waits,
            publish_wait_seconds,
            engine: crate::bus::redis::EngineMetrics {
                up: engine_up,
                publish_seconds: engine_roundtrip.with_label_values(&["publish"]),
                history_seconds: engine_roundtrip.with_label_values(&["history"]),
            },
            hooks,
        }
    }

    /// Counts a publish that waited `waited` for the fan-out backlog.
    pub fn publish_waited(&self, waited: std::time::Duration) {
        self.publish_waits.inc();
        self.publish_wait_seconds.inc_by(waited.as_secs_f64());
    }

    /// The handles the backend hooks report through.
    pub fn hooks(&self) -> HookMetrics {
        self.hooks.clone()
    }

    /// The handles an engine reports its health and latency through.
    pub fn engine(&self) -> crate::bus::redis::EngineMetrics {
        self.engine.clone()
    }

    /// The handles of one transport.
    #[inline] // On every delivery; a call across codegen units otherwise.
    pub fn transport(&self, transport: Transport) -> &TransportMetrics {
        let index = Transport::ALL
            .iter()
            .position(|t| *t == transport)
            .unwrap_or(0);
        &self.transports[index]
    }

    /// The handles of a Socket.IO transport: `websocket` or else polling.
    pub fn socketio(&self, websocket: bool) -> &TransportMetrics {
        &self.socketio[usize::from(websocket)]
    }

    /// Counts a client-reported failure of `from`, after which it moved on to `to`.
    pub fn fallback(&self, from: Transport, to: Option<Transport>, reason: &str) {
        let reason = if FALLBACK_REASONS.contains(&reason) {
            reason
        } else {
            "other"
        };
        let to = to.map_or("none", Transport::name);
        self.fallbacks
            .with_label_values(&[from.name(), to, reason])
            .inc();
    }

    /// Counts a published message by entry point (`http` or `websocket`).
    pub fn published(&self, via: &str) {
        self.published.with_label_values(&[via]).inc();
    }

    /// Counts a refused request or frame by its error code.
    pub fn error(&self, code: &str) {
        self.errors.with_label_values(&[code]).inc();
    }

    /// The counter of errors with `code`, for a task that counts them without the rest.
    pub fn errors_handle(&self, code: &str) -> IntCounter {
        self.errors.with_label_values(&[code])
    }

    /// Counts a finished TLS handshake by the protocol its ALPN chose.
    pub fn tls_handshake(&self, alpn: Option<&[u8]>) {
        let i = match alpn {
            Some(b"h2") => 0,
            Some(b"http/1.1") => 1,
            _ => 2,
        };
        self.tls_handshakes[i].inc();
    }

    /// Counts an error answer by its code: once for each channel it refuses when it names
    /// refused channels, as when some of a request's channels are served, else once.
    pub fn error_answer(&self, err: &crate::error::Error) {
        let times = err.refused().len().max(1) as u64;
        self.errors.with_label_values(&[err.label()]).inc_by(times);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
