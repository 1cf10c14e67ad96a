//! Configuration: built-in defaults, then an optional TOML file, then `CASCADE_*`
//! environment overrides. Every limit has a default and every key names its unit.
//!
//! Environment names are derived from the key path, so every key has one:
//! `listen` is `CASCADE_LISTEN`, `[longpoll] timeout_ms` is `CASCADE_LONGPOLL_TIMEOUT_MS`.
//! Lists are comma-separated (`CASCADE_TRANSPORTS=sse,poll`).

mod hooks;
mod limits;
mod redis_url;
mod socketio;
mod tls;

pub use hooks::{HookEvent, HooksConfig};
pub use limits::LimitsConfig;
pub use redis_url::SentinelUrl;
pub use socketio::SocketIoConfig;
pub use tls::TlsConfig;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::auth::rules::{NamespaceConfig, PublishRule, SubscribeRule, default_namespaces};

/// The whole gateway configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the gateway listens on: an IP address and a port, not a host name.
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Enabled transports, best first; `/negotiate` offers them in this order.
    pub transports: Vec<Transport>,
    /// Which engine carries the bus.
    pub engine: EngineKind,
    /// Serves the chat demo at `/` (with `/demo.js` and `/demo.css`); off in production.
    pub demo: bool,
    /// The Redis server of the `redis` engine (`redis://host:port/db`, or its sentinels
    /// as `redis+sentinel://host:port,host:port/master`), or the seed nodes of the
    /// `redis-cluster` engine, comma-separated.
    pub redis_url: String,
    /// Prefix of every Redis key and pub/sub channel, so that several clusters (or test
    /// runs) can share one Redis.
    pub redis_prefix: String,
    /// How Redis pub/sub carries live messages: 0 = each node subscribes to the channels
    /// its clients follow; N = N fixed shard channels that every node follows.
    pub redis_shards: u32,
    /// `redis-cluster` engine, and `redis` behind Sentinel: replicas that must hold a
    /// publish before it is acknowledged, so that a failover loses nothing acknowledged
    /// (0: do not wait).
    pub redis_min_replicas: u32,
    /// Retained history per channel.
    pub history: HistoryConfig,
    /// Long-polling settings.
    pub longpoll: LongPollConfig,
    /// Short-polling settings.
    pub poll: PollConfig,
    /// Server-Sent Events settings.
    pub sse: SseConfig,
    /// WebSocket settings.
    pub websocket: WebSocketConfig,
    /// Limits that bound what one client can cost.
    pub limits: LimitsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Client token verification and connect tickets.
    pub token: TokenConfig,
    /// API keys that backends send as `X-Cascade-Api-Key`; several allow rotation.
    pub api_keys: Vec<Secret>,
    /// Browser origins allowed to connect (`https://app.example.com`, or `*`); the
    /// gateway's own origin is always allowed.
    pub allowed_origins: Vec<String>,
    /// Whether CORS answers allow credentials (cookies) from allowed origins.
    pub cors_credentials: bool,
    /// Load balancers and proxies (addresses or CIDR blocks) whose `Forwarded`,
    /// `X-Forwarded-For` and `X-Forwarded-Host` headers name the client; empty: none.
    pub trusted_proxies: Vec<String>,
    /// Rules of channels outside every namespace.
    pub channels: NamespaceConfig,
    /// Rules per namespace: the part of a channel name before the first `:`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Calls to the application's backend (docs/HOOKS.md); off while `url` is empty.
    pub hooks: HooksConfig,
    /// The Socket.IO endpoint (docs/SOCKETIO.md).
    pub socketio: SocketIoConfig,
    /// TLS termination (HTTPS, and HTTP/2 for browsers); off while `cert_file` is empty.
    pub tls: TlsConfig,
}

/// Client token settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// `HS256` (with `hmac_secret`), `RS256` or `ES256` (with `public_key_file`).
    pub algorithm: String,
    /// Shared secret for HS256 tokens; at least 16 bytes.
    pub hmac_secret: Secret,
    /// PEM public key for RS256 or ES256 tokens.
    pub public_key_file: String,
    /// Secret that signs connect tickets, shared by all nodes (defaults to one derived
    /// from `hmac_secret`; without either, tickets only work on the issuing node).
    pub ticket_secret: Secret,
    /// How long a connect ticket is valid, in milliseconds.
    pub ticket_ttl_ms: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            algorithm: "HS256".to_owned(),
            hmac_secret: Secret::default(),
            public_key_file: String::new(),
            ticket_secret: Secret::default(),
            ticket_ttl_ms: 30_000,
        }
    }
}

/// `token.hmac_secret` of the shipped development config, `config/cascade.toml`. It is
/// public: a gateway that signs or verifies with it accepts tokens anyone can make.
pub const DEVELOPMENT_SECRET: &str = "dev-only-secret-change-me";

/// A configuration value that must never be printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// A transport rung of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket.
    Websocket,
    /// Server-Sent Events.
    Sse,
    /// Long polling.
    Longpoll,
    /// Short polling.
    Poll,
}

impl Transport {
    /// Every transport, best first.
    pub const ALL: [Transport; 4] = [
        Transport::Websocket,
        Transport::Sse,
        Transport::Longpoll,
        Transport::Poll,
    ];

    /// The name used on the wire and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Sse => "sse",
            Transport::Longpoll => "longpoll",
            Transport::Poll => "poll",
        }
    }

    /// Looks a transport up by its wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The path it is served at: the route table's and `/negotiate`'s, written once.
    pub const fn path(self) -> &'static str {
        match self {
            Transport::Websocket => "/ws",
            Transport::Sse => "/sse",
            Transport::Longpoll => "/longpoll",
            Transport::Poll => "/poll",
        }
    }
}

/// The engine behind the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The embedded, single-node in-memory engine.
    Memory,
    /// Redis: many gateway nodes share one bus.
    Redis,
    /// Redis Cluster: the bus spread over the shards of a cluster.
    #[serde(rename = "redis-cluster")]
    RedisCluster,
}

/// Retained history per channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Messages kept per channel; older ones are dropped first.
    pub max_messages: usize,
    /// How long a message is kept, in milliseconds.
    pub max_age_ms: u64,
}

/// Long-polling settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LongPollConfig {
    /// How long a poll is held when the client does not say, in milliseconds.
    pub timeout_ms: u64,
    /// The longest hold a client may ask for with `timeout=`, in milliseconds.
    pub max_timeout_ms: u64,
}

/// Short-polling settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// The interval `/negotiate` advises short-polling clients to use, in milliseconds.
    pub interval_ms: u64,
}

/// Server-Sent Events settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Interval between comment heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
    /// The `retry:` reconnect delay sent when a stream opens, in milliseconds.
    pub retry_ms: u64,
}

/// WebSocket settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Interval between pings, in milliseconds; a peer silent for two intervals is dropped.
    pub ping_interval_ms: u64,
    /// Largest frame or message a client may send, in bytes.
    pub max_frame_bytes: usize,
}

/// Graceful shutdown.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long draining may take before the process exits anyway, in milliseconds.
    pub drain_deadline_ms: u64,
    /// Clients are told to reconnect after a random delay within this window, in
    /// milliseconds, so that a deploy does not cause a reconnect storm.
    pub reconnect_window_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            transports: Transport::ALL.to_vec(),
            engine: EngineKind::Memory,
            demo: false,
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            redis_prefix: "cascade".to_owned(),
            redis_shards: 0,
            redis_min_replicas: 1,
            history: HistoryConfig::default(),
            longpoll: LongPollConfig::default(),
            poll: PollConfig::default(),
            sse: SseConfig::default(),
            websocket: WebSocketConfig::default(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            token: TokenConfig::default(),
            api_keys: Vec::new(),
            allowed_origins: Vec::new(),
            cors_credentials: false,
            trusted_proxies: Vec::new(),
            // Secure by default: anyone may read public channels (read-only feeds over
            // SSE are a core use); publishing needs an API key or a token that allows it.
            channels: NamespaceConfig {
                subscribe: SubscribeRule::Anyone,
                publish: PublishRule::Token,
                history_max_messages: None,
                history_max_age_ms: None,
                presence: false,
                join_leave: false,
            },
            namespaces: default_namespaces(),
            hooks: HooksConfig::default(),
            socketio: SocketIoConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_messages: 1000,
            max_age_ms: 300_000,
        }
    }
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            timeout_ms: 25_000,
            max_timeout_ms: 60_000,
        }
    }
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig { interval_ms: 2000 }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            heartbeat_ms: 15_000,
            retry_ms: 2000,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_ms: 25_000,
            max_frame_bytes: 128 * 1024,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_deadline_ms: 10_000,
            reconnect_window_ms: 5000,
        }
    }
}

impl Config {
    /// Defaults, overlaid by `file` when given, overlaid by the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?,
            None => String::new(),
        };
        Self::from_sources(&text, std::env::vars())
    }

    /// Builds a config from TOML text and `(name, value)` environment pairs.
    pub fn from_sources(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut tree: toml::Table = toml::from_str(toml_text).context("parsing config TOML")?;
        // The defaults' shape tells which keys exist and what type each one has.
        let defaults = toml::Table::try_from(Config::default())?;
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CASCADE_"))
            .collect();
        let mut used = Vec::new();
        apply_env(&mut tree, &defaults, "CASCADE", &env, &mut used)?;
        // A misspelt variable must not leave a limit or a rule silently at its default.
        let unknown: Vec<&str> = env
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !used.iter().any(|u| u == k) && !NOT_KEYS.contains(k))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "unknown environment variables {}: a key's variable is CASCADE_ and its path \
                 in upper case (e.g. CASCADE_LONGPOLL_TIMEOUT_MS); namespaces not in the \
                 built-in config are set in the config file",
                unknown.join(", ")
            );
        }
        let config: Config = toml::Value::Table(tree)
            .try_into()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let prefix_ok = !self.redis_prefix.is_empty()
            && self.redis_prefix.len() <= 64
            && self
                .redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !prefix_ok {
            bail!("redis_prefix: use 1 to 64 of A-Z a-z 0-9 _ - . :");
        }
        if self.engine == EngineKind::Redis {
            if let Err(err) = SentinelUrl::parse(&self.redis_url) {
                bail!("redis_url: {err}");
            }
        }
        if self.redis_shards > 1024 {
            bail!("redis_shards: at most 1024");
        }
        if self.transports.is_empty() {
            bail!("transports: enable at least one transport");
        }
        if let Err(err) = crate::forwarded::TrustedProxies::parse(&self.trusted_proxies) {
            bail!("trusted_proxies: {err}");
        }
        for (i, t) in self.transports.iter().enumerate() {
            if self.transports[..i].contains(t) {
                bail!("transports: {} is listed twice", t.name());
            }
        }
        let positive = [
            ("history.max_messages", self.history.max_messages as u64),
            ("limits.max_channels", self.limits.max_channels as u64),
            (
                "limits.subscriber_queue",
                self.limits.subscriber_queue as u64,
            ),
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes as u64,
            ),
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            ("sse.heartbeat_ms", self.sse.heartbeat_ms),
            (
                "limits.http2_idle_timeout_ms",
                self.limits.http2_idle_timeout_ms,
            ),
            (
                "websocket.ping_interval_ms",
                self.websocket.ping_interval_ms,
            ),
            (
                "limits.http2_max_concurrent_streams",
                self.limits.http2_max_concurrent_streams.into(),
            ),
            ("limits.http2_keepalive_ms", self.limits.http2_keepalive_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        // RFC 9113 §6.5.2: a window below 65 535 is allowed but stalls every upload.
        let windows = [
            (
                "limits.http2_stream_window_bytes",
                self.limits.http2_stream_window_bytes,
            ),
            (
                "limits.http2_connection_window_bytes",
                self.limits.http2_connection_window_bytes,
            ),
        ];
        for (key, value) in windows {
            if !(65_535..=(1 << 31) - 1).contains(&value) {
                bail!("{key} must be from 65535 to 2147483647");
            }
        }
        if self.limits.http2_max_header_list_bytes < 1024 {
            bail!("limits.http2_max_header_list_bytes must be at least 1024");
        }
        self.tls.validate()?;
        self.hooks.validate().and(self.socketio.validate())
    }

    /// Whether client tokens or connect tickets are signed with [`DEVELOPMENT_SECRET`]:
    /// tokens when it is `token.hmac_secret` and no public key replaces it, tickets when it
    /// is `token.ticket_secret`, or `token.hmac_secret` which they then derive from.
    pub fn uses_development_secret(&self) -> bool {
        let token = &self.token;
        let is_dev = |s: &Secret| s.expose() == DEVELOPMENT_SECRET;
        let tokens = token.public_key_file.is_empty() && is_dev(&token.hmac_secret);
        let tickets = if token.ticket_secret.expose().is_empty() {
            is_dev(&token.hmac_secret)
        } else {
            is_dev(&token.ticket_secret)
        };
        tokens || tickets
    }

    /// Whether `transport` is enabled.
    pub fn enabled(&self, transport: Transport) -> bool {
        self.transports.contains(&transport)
    }

    /// A millisecond key as a `Duration`.
    pub fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

/// `listen`, refused with an example to copy when it is not an IP address and port
/// (`localhost:8080` would need a resolver, and could name several addresses).
fn listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        let port = text
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .unwrap_or(8080);
        serde::de::Error::custom(format!(
            "listen {text:?} is not an IP address and port, such as 127.0.0.1:{port} or \
             0.0.0.0:{port} ([::]:{port} for IPv6); host names are not accepted"
        ))
    })
}

/// `CASCADE_*` variables that are not config keys.
const NOT_KEYS: [&str; 3] = ["CASCADE_CONFIG", "CASCADE_LOG", "CASCADE_LOG_FORMAT"];

/// Overlays `CASCADE_<PATH>` variables onto `tree`, typed after `defaults`.
fn apply_env(
    tree: &mut toml::Table,
    defaults: &toml::Table,
    prefix: &str,
    env: &[(String, String)],
    used: &mut Vec<String>,
) -> anyhow::Result<()> {
    for (key, default) in defaults {
        let name = format!("{prefix}_{}", key.to_ascii_uppercase());
        if let toml::Value::Table(sub_defaults) = default {
            // Only materialize a table the file lacks when a variable fills it: an empty
            // table would shadow the section's defaults.
            let mut sub = match tree.remove(key) {
                Some(toml::Value::Table(sub)) => sub,
                Some(_) => bail!("config key {key} must be a table"),
                None => toml::Table::new(),
            };
            apply_env(&mut sub, sub_defaults, &name, env, used)?;
            if !sub.is_empty() {
                tree.insert(key.clone(), toml::Value::Table(sub));
            }
            continue;
        }
        if let Some((_, raw)) = env.iter().find(|(k, _)| *k == name) {
            used.push(name.clone());
            let value = match default {
                toml::Value::String(_) => toml::Value::String(raw.clone()),
                toml::Value::Array(_) => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                ),
                _ => toml::from_str::<toml::Table>(&format!("v = {raw}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .with_context(|| format!("{name}={raw:?} is not a valid value"))?,
            };
            tree.insert(key.clone(), value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_field_norms() {
        let c = Config::from_sources("", env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_message_bytes, 65536);
        assert_eq!(c.limits.max_channels, 128);
        assert_eq!(c.transports, Transport::ALL.to_vec());
        assert!(!c.demo, "the demo is opt-in");
    }

    #[test]
    fn environment_overrides_file_for_every_kind_of_key() {
        let file = "listen = \"127.0.0.1:1\"\n[longpoll]\ntimeout_ms = 5\n";
        let c = Config::from_sources(
            file,
            env(&[
                ("CASCADE_LISTEN", "127.0.0.1:9000"),
                ("CASCADE_LONGPOLL_TIMEOUT_MS", "1234"),
                ("CASCADE_TRANSPORTS", "sse, poll"),
                ("CASCADE_HISTORY_MAX_AGE_MS", "60000"),
                ("CASCADE_DEMO", "true"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.longpoll.timeout_ms, 1234);
        assert_eq!(c.transports, vec![Transport::Sse, Transport::Poll]);
        assert_eq!(c.history.max_age_ms, 60000);
        assert!(c.demo);
    }

    #[test]
    fn the_cluster_engine_takes_a_list_of_seed_nodes() {
        let c = Config::from_sources(
            "",
            env(&[
                ("CASCADE_ENGINE", "redis-cluster"),
                (
                    "CASCADE_REDIS_URL",
                    "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
                ),
                ("CASCADE_REDIS_MIN_REPLICAS", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.engine, EngineKind::RedisCluster);
        assert_eq!(c.redis_url, "redis://10.0.0.1:7000,redis://10.0.0.2:7000");
        assert_eq!(c.redis_min_replicas, 0);
        let c = Config::from_sources("engine = \"redis-cluster\"", env(&[])).unwrap();
        assert_eq!(
            (c.engine, c.redis_min_replicas),
            (EngineKind::RedisCluster, 1)
        );
    }

    #[test]
    fn the_redis_engine_takes_a_sentinel_url() {
        let sentinel = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster";
        let c = Config::from_sources(
            "",
            env(&[("CASCADE_ENGINE", "redis"), ("CASCADE_REDIS_URL", sentinel)]),
        )
        .unwrap();
        assert_eq!(c.redis_url, sentinel);
        let bad = "engine = \"redis\"\nredis_url = \"redis+sentinel://h:99999/m\"";
        let err = Config::from_sources(bad, env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("redis_url"), "{err:#}");
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(Config::from_sources("", env(&[("CASCADE_LONGPOLL_TIMEOUT_MS", "soon")])).is_err());
        assert!(Config::from_sources("nonsense = 1", env(&[])).is_err());
        assert!(Config::from_sources("", env(&[("CASCADE_LIMITS_MAX_CONECTIONS", "1")])).is_err());
        assert!(Config::from_sources("", env(&[("CASCADE_LOG", "debug")])).is_ok());
        assert!(Config::from_sources("transports = []", env(&[])).is_err());
        assert!(Config::from_sources("transports = [\"sse\",\"sse\"]", env(&[])).is_err());
        assert!(Config::from_sources("[limits]\nmax_channels = 0", env(&[])).is_err());
    }

    #[test]
    fn hooks_take_the_environment_names_the_issue_spells() {
        let c = Config::from_sources("", env(&[])).unwrap();
        assert_eq!(c.hooks.timeout_ms, 3000);
        assert_eq!(
            c.hooks.forward_headers,
            ["cookie", "user-agent", "x-forwarded-for"]
        );
        assert!(!c.hook(HookEvent::Connect), "off without a url");
        let c = Config::from_sources(
            "",
            env(&[
                ("CASCADE_HOOKS_URL", "https://app.example/hooks"),
                ("CASCADE_HOOKS_EVENTS", "connect, rpc"),
                ("CASCADE_HOOKS_TIMEOUT_MS", "500"),
                ("CASCADE_HOOKS_SECRET", "s3cret"),
                ("CASCADE_HOOKS_FORWARD_HEADERS", "cookie,x-tenant"),
            ]),
        )
        .unwrap();
        assert_eq!(c.hooks.url, "https://app.example/hooks");
        assert_eq!(c.hooks.events, [HookEvent::Connect, HookEvent::Rpc]);
        assert!(c.hook(HookEvent::Rpc) && !c.hook(HookEvent::Publish));
        assert_eq!(c.hooks.timeout_ms, 500);
        assert_eq!(c.hooks.secret.expose(), "s3cret");
        assert_eq!(c.hooks.forward_headers, ["cookie", "x-tenant"]);
        for bad in [
            &[("CASCADE_HOOKS_EVENTS", "connect")][..],
            &[("CASCADE_HOOKS_URL", "ftp://x")],
            &[("CASCADE_HOOKS_URL", "http://x/?a=1")],
            &[
                ("CASCADE_HOOKS_URL", "http://x"),
                ("CASCADE_HOOKS_EVENTS", "ping"),
            ],
            &[
                ("CASCADE_HOOKS_URL", "http://x"),
                ("CASCADE_HOOKS_FORWARD_HEADERS", "Cookie"),
            ],
            &[
                ("CASCADE_HOOKS_URL", "http://x"),
                ("CASCADE_HOOKS_TIMEOUT_MS", "0"),
            ],
        ] {
            assert!(Config::from_sources("", env(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_host_name_in_listen_says_to_use_an_address() {
        for (file, vars) in [
            ("listen = \"localhost:9000\"", env(&[])),
            ("", env(&[("CASCADE_LISTEN", "localhost:9000")])),
        ] {
            let err = format!("{:#}", Config::from_sources(file, vars).unwrap_err());
            assert!(err.contains("host names are not accepted"), "{err}");
            assert!(err.contains("127.0.0.1:9000"), "{err}");
        }
        let c = Config::from_sources("listen = \"[::1]:9000\"", env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "[::1]:9000");
    }

    #[test]
    fn shipped_config_file_parses() {
        let text = include_str!("../config/cascade.toml");
        let c = Config::from_sources(text, env(&[])).unwrap();
        assert!(c.demo, "the shipped dev config serves the demo");
        assert!(
            c.uses_development_secret(),
            "DEVELOPMENT_SECRET is config/cascade.toml's token.hmac_secret"
        );
    }

    #[test]
    fn the_development_secret_is_recognised_wherever_it_signs() {
        let dev = ("CASCADE_TOKEN_HMAC_SECRET", DEVELOPMENT_SECRET);
        let own = "an-operator-secret-of-32-bytes!!";
        let cases: [(&[(&str, &str)], bool); 6] = [
            (&[], false),
            (&[("CASCADE_TOKEN_HMAC_SECRET", own)], false),
            (&[dev], true),
            // Tickets derive from the development secret even when tokens do not use it.
            (&[dev, ("CASCADE_TOKEN_PUBLIC_KEY_FILE", "/k.pem")], true),
            (
                &[
                    dev,
                    ("CASCADE_TOKEN_PUBLIC_KEY_FILE", "/k.pem"),
                    ("CASCADE_TOKEN_TICKET_SECRET", own),
                ],
                false,
            ),
            (&[("CASCADE_TOKEN_TICKET_SECRET", DEVELOPMENT_SECRET)], true),
        ];
        for (vars, expected) in cases {
            let c = Config::from_sources("", env(vars)).unwrap();
            assert_eq!(c.uses_development_secret(), expected, "{vars:?}");
        }
        // The shipped file with a secret of the operator's own, as the README advises.
        let text = include_str!("../config/cascade.toml");
        let c = Config::from_sources(text, env(&[("CASCADE_TOKEN_HMAC_SECRET", own)])).unwrap();
        assert!(!c.uses_development_secret());
    }
}
