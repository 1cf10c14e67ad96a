//! The state every request handler shares: configuration, the bus, credentials checks,
//! limits, metrics, and the shutdown signal that long-lived streams watch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::bus::memory::MemoryEngine;
use crate::bus::redis::{RedisEngine, RedisSettings};
use crate::bus::redis_cluster::{RedisClusterEngine, RedisClusterSettings};
use crate::bus::{Bus, BusConfig, Engine, Hub, PresencePolicy, Retention, RetentionPolicy};
use crate::config::{Config, EngineKind};
use crate::error::ConfigError;
use crate::forwarded::TrustedProxies;
use crate::hooks::Hooks;
use crate::limits::{ConnectionLimiter, PublishRate};
use crate::metrics::Metrics;
use crate::session::Sessions;
use crate::tls::Tls;

/// Shared application state; handlers receive it as `Arc<App>`.
pub struct App {
    /// The configuration the gateway was started with.
    pub config: Config,
    /// The message bus.
    pub bus: Bus,
    /// Who may connect, subscribe and publish.
    pub auth: Auth,
    /// Open connections, in total and per IP, and the trusted proxies' clients.
    pub connections: Arc<ConnectionLimiter>,
    /// The Prometheus metrics.
    pub metrics: Metrics,
    /// Cancelled when the gateway starts draining; WebSockets, SSE streams and parked long
    /// polls watch it to tell their clients to reconnect.
    pub shutdown: Shutdown,
    /// Tracks upgraded WebSockets and streaming bodies, which outlive hyper's own
    /// graceful shutdown of the connection they came from.
    pub streams: TaskTracker,
    /// The application's backend, when `[hooks]` names one.
    pub hooks: Option<Arc<Hooks>>,
    /// Issues and verifies the session values polling clients carry.
    pub sessions: Sessions,
    /// TLS termination, when `[tls]` names a certificate.
    pub tls: Option<Arc<Tls>>,
}

impl App {
    /// Builds the state, starting the configured engine. Must run inside a tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        let auth = Auth::from_config(&config)?;
        let hub = Arc::new(Hub::with_publish_backlog(config.limits.publish_backlog));
        let metrics = Metrics::new();
        let retention = retention_policy(&config);
        let history_limit = retention.max_messages();
        let engine: Arc<dyn Engine> = match config.engine {
            EngineKind::Memory => MemoryEngine::new(hub.clone(), retention),
            EngineKind::Redis => RedisEngine::new(
                hub.clone(),
                RedisSettings {
                    url: config.redis_url.clone(),
                    prefix: config.redis_prefix.clone(),
                    retention,
                    shards: config.redis_shards,
                    min_replicas: config.redis_min_replicas,
                },
                metrics.engine(),
            )
            .map_err(|err| ConfigError(err.to_string()))?,
            EngineKind::RedisCluster => RedisClusterEngine::new(
                hub.clone(),
                RedisClusterSettings {
                    urls: config
                        .redis_url
                        .split(',')
                        .map(|url| url.trim().to_owned())
                        .filter(|url| !url.is_empty())
                        .collect(),
                    prefix: config.redis_prefix.clone(),
                    retention,
                    min_replicas: config.redis_min_replicas,
                },
                metrics.engine(),
            )
            .map_err(|err| ConfigError(err.to_string()))?,
        };
        let bus = Bus::new(
            engine,
            hub,
            BusConfig {
                subscriber_queue: config.limits.subscriber_queue,
                history_limit,
                presence: presence_policy(&config),
            },
        );
        let proxies = TrustedProxies::parse(&config.trusted_proxies)?;
        let connections = ConnectionLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
            proxies,
            PublishRate {
                per_second: config.limits.publish_rate_per_second,
                burst: config.limits.publish_burst,
            },
        );
        let hooks = Hooks::new(&config, metrics.hooks()).map(Arc::new);
        if let Some(hooks) = &hooks {
            hooks.start();
        }
        let sessions = Sessions::from_config(&config)?;
        let shutdown = Shutdown::default();
        let tls = Tls::from_config(&config.tls, metrics.errors_handle("tls_reload_failed"))?;
        if let Some(tls) = &tls {
            let stop = shutdown.clone();
            tokio::spawn(tls.clone().watch(async move { stop.cancelled().await }));
        }
        if bus.keeps_presence() {
            tokio::spawn(expire_presence(bus.clone(), shutdown.clone()));
        }
        Ok(Arc::new(App {
            hooks,
            sessions,
            config,
            bus,
            auth,
            connections,
            metrics,
            shutdown,
            streams: TaskTracker::new(),
            tls,
        }))
    }

    /// A reconnect delay drawn uniformly from the configured window, so that clients told
    /// to reconnect at the same moment spread out instead of stampeding.
    pub fn reconnect_delay_ms(&self) -> u64 {
        fastrand::u64(0..=self.config.shutdown.reconnect_window_ms)
    }
}

/// The drain signal: a token to wait on, and a flag for the checks made on every
/// delivery (the token's own check takes a mutex shared by every connection).
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    draining: Arc<AtomicBool>,
}

impl Shutdown {
    /// Starts the drain.
    pub fn cancel(&self) {
        self.draining.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether the drain has started.
    pub fn is_cancelled(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once the drain starts.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// [`Shutdown::cancelled`], owning its token: for a connection that waits on it for
    /// its whole life beside borrows of its own state.
    pub fn cancelled_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

/// Which channels keep presence and announce joins and leaves: per namespace.
fn presence_policy(config: &Config) -> PresencePolicy {
    let flags = |ns: &crate::auth::rules::NamespaceConfig| (ns.presence, ns.join_leave);
    PresencePolicy {
        default: flags(&config.channels),
        namespaces: (config.namespaces.iter())
            .map(|(name, ns)| (name.clone(), flags(ns)))
            .collect(),
    }
}

/// Every few seconds, the polling clients that stopped polling leave presence.
async fn expire_presence(bus: Bus, shutdown: Shutdown) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => bus.expire_presence().await,
        }
    }
}

/// History retention: `[history]`, overridden by `[channels]` and per namespace.
fn retention_policy(config: &Config) -> RetentionPolicy {
    // [channels] may override [history] for channels outside every namespace.
    let default = Retention {
        max_messages: config
            .channels
            .history_max_messages
            .unwrap_or(config.history.max_messages),
        max_age: Config::ms(
            config
                .channels
                .history_max_age_ms
                .unwrap_or(config.history.max_age_ms),
        ),
    };
    let namespaces = config
        .namespaces
        .iter()
        .filter(|(_, ns)| ns.history_max_messages.is_some() || ns.history_max_age_ms.is_some())
        .map(|(name, ns)| {
            let retention = Retention {
                max_messages: ns.history_max_messages.unwrap_or(default.max_messages),
                max_age: ns.history_max_age_ms.map_or(default.max_age, Config::ms),
            };
            (name.clone(), retention)
        })
        .collect();
    RetentionPolicy {
        default,
        namespaces,
    }
}
