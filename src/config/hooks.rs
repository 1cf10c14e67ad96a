//! `[hooks]`: where the application's backend is and what it is called for.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::Secret;

/// `[hooks]`: the application's backend, called over HTTP on client events.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Base URL, `http://` or `https://`; each event is `POST {url}/{event}`. Empty: off.
    pub url: String,
    /// The events the backend is called for.
    pub events: Vec<HookEvent>,
    /// How long one call may take, queueing for a free slot included, in milliseconds.
    pub timeout_ms: u64,
    /// Signs every call (`X-Cascade-Signature`) when set, and the client sessions.
    pub secret: Secret,
    /// Request headers passed to the connect hook (lower-case names).
    pub forward_headers: Vec<String>,
    /// Calls in flight at once on this node; more wait for a slot within `timeout_ms`.
    pub max_concurrent: usize,
    /// Largest answer body read from the backend, in bytes; a larger one is invalid.
    pub max_answer_bytes: usize,
    /// RPCs one WebSocket may have in flight; more are refused `rate_limited`.
    pub max_rpc_in_flight: usize,
    /// How long a client session value stays valid without a connect hook's
    /// `expire_at`, in milliseconds; a polling client past it is connected again.
    pub session_ttl_ms: u64,
    /// A `/longpoll` or `/poll` client that has not polled for this long is gone (the
    /// disconnect hook), in milliseconds. Socket.IO's polling sockets go by their
    /// session's expiry instead (`socketio.ping_interval_ms + ping_timeout_ms`).
    pub poll_idle_ms: u64,
}

/// An event the backend may be called for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookEvent {
    /// A client session begins.
    Connect,
    /// A client subscribes to a channel.
    Subscribe,
    /// A client publishes.
    Publish,
    /// A client calls the backend.
    Rpc,
    /// A client session ends.
    Disconnect,
}

impl HookEvent {
    /// Every event, in the order of the metrics' handles.
    pub const ALL: [HookEvent; 5] = [
        HookEvent::Connect,
        HookEvent::Subscribe,
        HookEvent::Publish,
        HookEvent::Rpc,
        HookEvent::Disconnect,
    ];

    /// The name in the URL path and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            HookEvent::Connect => "connect",
            HookEvent::Subscribe => "subscribe",
            HookEvent::Publish => "publish",
            HookEvent::Rpc => "rpc",
            HookEvent::Disconnect => "disconnect",
        }
    }
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            url: String::new(),
            events: Vec::new(),
            timeout_ms: 3000,
            secret: Secret::default(),
            forward_headers: ["cookie", "user-agent", "x-forwarded-for"]
                .map(str::to_owned)
                .to_vec(),
            max_concurrent: 256,
            max_answer_bytes: 256 * 1024,
            max_rpc_in_flight: 8,
            session_ttl_ms: 3_600_000,
            poll_idle_ms: 60_000,
        }
    }
}

impl super::Config {
    /// Whether the backend is called for `event`.
    pub fn hook(&self, event: HookEvent) -> bool {
        !self.hooks.url.is_empty() && self.hooks.events.contains(&event)
    }
}

impl HooksConfig {
    /// Refuses a `[hooks]` the gateway could not use.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        let hooks = self;
        if hooks.url.is_empty() {
            if !hooks.events.is_empty() {
                bail!("hooks.events needs hooks.url");
            }
            return Ok(());
        }
        let uri: http::Uri = hooks
            .url
            .parse()
            .map_err(|_| anyhow::anyhow!("hooks.url {:?} is not a URL", hooks.url))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            bail!("hooks.url: use http://host[:port][/path] or https://...");
        }
        if uri.query().is_some() {
            bail!("hooks.url: no query string; each event is POST {{url}}/{{event}}");
        }
        for name in &hooks.forward_headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || name.bytes().any(|b| b.is_ascii_uppercase())
            {
                bail!("hooks.forward_headers: {name:?} is not a lower-case header name");
            }
        }
        let positive = [
            ("hooks.timeout_ms", hooks.timeout_ms),
            ("hooks.max_concurrent", hooks.max_concurrent as u64),
            ("hooks.max_answer_bytes", hooks.max_answer_bytes as u64),
            ("hooks.max_rpc_in_flight", hooks.max_rpc_in_flight as u64),
            ("hooks.session_ttl_ms", hooks.session_ttl_ms),
            ("hooks.poll_idle_ms", hooks.poll_idle_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        Ok(())
    }
}
