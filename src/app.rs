//! The state every request handler shares: configuration, the bus, metrics, and the
//! shutdown signal that long-lived streams watch.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::memory::{MemoryEngine, Retention};
use crate::bus::redis::{RedisEngine, RedisSettings};
use crate::bus::{Bus, BusConfig, Engine, Hub};
use crate::config::{Config, EngineKind};
use crate::error::Result;
use crate::metrics::Metrics;

/// Shared application state; handlers receive it as `Arc<App>`.
pub struct App {
    /// The configuration the gateway was started with.
    pub config: Config,
    /// The message bus.
    pub bus: Bus,
    /// The Prometheus metrics.
    pub metrics: Metrics,
    /// Cancelled when the gateway starts draining; WebSockets, SSE streams and parked long
    /// polls watch it to tell their clients to reconnect.
    pub shutdown: CancellationToken,
    /// Tracks upgraded WebSockets and streaming bodies, which outlive hyper's own
    /// graceful shutdown of the connection they came from.
    pub streams: TaskTracker,
}

impl App {
    /// Builds the state, starting the configured engine. Must run inside a tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Self>> {
        let hub = Arc::new(Hub::new());
        let metrics = Metrics::new();
        let max_age = Config::ms(config.history.max_age_ms);
        let engine: Arc<dyn Engine> = match config.engine {
            EngineKind::Memory => MemoryEngine::new(
                hub.clone(),
                Retention {
                    max_messages: config.history.max_messages,
                    max_age,
                },
            ),
            EngineKind::Redis => RedisEngine::new(
                hub.clone(),
                RedisSettings {
                    url: config.redis_url.clone(),
                    prefix: config.redis_prefix.clone(),
                    max_messages: config.history.max_messages,
                    max_age,
                },
                metrics.engine(),
            )?,
        };
        let bus = Bus::new(
            engine,
            hub,
            BusConfig {
                subscriber_queue: config.limits.subscriber_queue,
                history_limit: config.history.max_messages,
            },
        );
        Ok(Arc::new(App {
            config,
            bus,
            metrics,
            shutdown: CancellationToken::new(),
            streams: TaskTracker::new(),
        }))
    }

    /// A reconnect delay drawn uniformly from the configured window, so that clients told
    /// to reconnect at the same moment spread out instead of stampeding.
    pub fn reconnect_delay_ms(&self) -> u64 {
        fastrand::u64(0..=self.config.shutdown.reconnect_window_ms)
    }
}
