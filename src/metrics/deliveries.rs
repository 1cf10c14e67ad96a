//! The per-delivery metrics, striped by thread.
//!
//! `cascade_messages_delivered_total`, `cascade_delivered_bytes_total` and
//! `cascade_delivery_lag_seconds` change on every delivery, from every worker. Kept as
//! one prometheus counter or histogram per transport, each delivery wrote four or five
//! cache lines that every core writes, and on many cores each write waits for its line
//! to come from another core (BENCHMARKS.md, "A model for 16 and 64 cores"). Here each
//! thread adds to a stripe of its own, and a scrape sums the stripes: the exported
//! families are the same as before, name for name and bucket for bucket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};

/// Upper bounds of the lag histogram's buckets, in seconds.
const LAG_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Stripes per transport: threads beyond this share them, still far fewer to a line.
const STRIPES: usize = 16;

/// One thread's share of a transport's delivery metrics, on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    delivered: AtomicU64,
    bytes: AtomicU64,
    /// Lag sum in milliseconds, the resolution a message's timestamp has.
    lag_ms: AtomicU64,
    /// Deliveries per lag bucket, not cumulative; the last is beyond every bound.
    lag_buckets: [AtomicU64; LAG_BUCKETS.len() + 1],
}

/// One transport's delivery metrics.
pub struct Deliveries {
    stripes: Box<[Stripe]>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Deliveries {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }
}

impl Deliveries {
    /// Records one delivered message of `bytes` bytes published at `ts_ms`.
    #[inline]
    pub fn record(&self, bytes: usize, ts_ms: u64, now_ms: u64) {
        let stripe = &self.stripes[crate::sync::thread_slot() % STRIPES];
        let lag_ms = now_ms.saturating_sub(ts_ms);
        let seconds = lag_ms as f64 / 1000.0;
        let bucket = LAG_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LAG_BUCKETS.len());
        stripe.delivered.fetch_add(1, Ordering::Relaxed);
        stripe.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        stripe.lag_ms.fetch_add(lag_ms, Ordering::Relaxed);
        stripe.lag_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages delivered, summed over the stripes.
    pub fn delivered(&self) -> u64 {
        self.sum(|stripe| &stripe.delivered)
    }

    fn sum(&self, field: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| field(stripe).load(Ordering::Relaxed))
            .sum()
    }
}

/// Exports every transport's [`Deliveries`] as the three labelled families.
pub struct DeliveryCollector {
    descs: [Desc; 3],
    transports: Vec<(String, Arc<Deliveries>)>,
}

impl DeliveryCollector {
    /// A collector of `transports`, each by its `transport` label.
    pub fn new(transports: Vec<(String, Arc<Deliveries>)>) -> Self {
        let desc = |name: &str, help: &str| {
            Desc::new(
                name.into(),
                help.into(),
                vec!["transport".into()],
                Default::default(),
            )
            .expect("valid metric")
        };
        DeliveryCollector {
            descs: [
                desc(
                    "cascade_messages_delivered_total",
                    "Messages delivered to clients.",
                ),
                desc(
                    "cascade_delivered_bytes_total",
                    "Bytes of delivered message JSON written to clients.",
                ),
                desc(
                    "cascade_delivery_lag_seconds",
                    "Time from publish to the delivery write.",
                ),
            ],
            transports,
        }
    }

    fn family(
        &self,
        at: usize,
        kind: MetricType,
        metric: impl Fn(&Deliveries) -> Metric,
    ) -> MetricFamily {
        let desc = &self.descs[at];
        let mut family = MetricFamily::default();
        family.set_name(desc.fq_name.clone());
        family.set_help(desc.help.clone());
        family.set_field_type(kind);
        family.set_metric(
            self.transports
                .iter()
                .map(|(label, deliveries)| {
                    let mut pair = LabelPair::default();
                    pair.set_name("transport".into());
                    pair.set_value(label.clone());
                    let mut metric = metric(deliveries);
                    metric.set_label(vec![pair]);
                    metric
                })
                .collect(),
        );
        family
    }
}

fn counter(value: u64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    let mut metric = Metric::default();
    metric.set_counter(counter);
    metric
}

fn histogram(deliveries: &Deliveries) -> Metric {
    let mut cumulative = 0;
    let buckets = LAG_BUCKETS
        .iter()
        .enumerate()
        .map(|(at, bound)| {
            cumulative += deliveries.sum(|stripe| &stripe.lag_buckets[at]);
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(*bound);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let mut histogram = Histogram::default();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(deliveries.sum(|stripe| {
        // Every delivery is in exactly one bucket; `delivered` is the same count.
        &stripe.delivered
    }));
    histogram.set_sample_sum(deliveries.sum(|stripe| &stripe.lag_ms) as f64 / 1000.0);
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    metric
}

impl Collector for DeliveryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![
            self.family(0, MetricType::COUNTER, |d| counter(d.delivered())),
            self.family(1, MetricType::COUNTER, |d| {
                counter(d.sum(|stripe| &stripe.bytes))
            }),
            self.family(2, MetricType::HISTOGRAM, histogram),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};

    #[test]
    fn stripes_from_several_threads_sum_into_one_labelled_family() {
        let websocket = Arc::new(Deliveries::default());
        let registry = Registry::new();
        registry
            .register(Box::new(DeliveryCollector::new(vec![
                ("websocket".into(), websocket.clone()),
                ("sse".into(), Arc::new(Deliveries::default())),
            ])))
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let websocket = websocket.clone();
                std::thread::spawn(move || {
                    for lag in 0..100 {
                        websocket.record(10, 1_000, 1_000 + lag);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        for line in [
            "cascade_messages_delivered_total{transport=\"websocket\"} 400",
            "cascade_messages_delivered_total{transport=\"sse\"} 0",
            "cascade_delivered_bytes_total{transport=\"websocket\"} 4000",
            // Lags 0 and 1 ms in four threads.
            "cascade_delivery_lag_seconds_bucket{transport=\"websocket\",le=\"0.001\"} 8",
            "cascade_delivery_lag_seconds_bucket{transport=\"websocket\",le=\"0.05\"} 204",
            "cascade_delivery_lag_seconds_bucket{transport=\"websocket\",le=\"+Inf\"} 400",
            "cascade_delivery_lag_seconds_sum{transport=\"websocket\"} 19.8",
            "cascade_delivery_lag_seconds_count{transport=\"websocket\"} 400",
            "# TYPE cascade_delivery_lag_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
