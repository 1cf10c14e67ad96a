//! Calls to the application's backend: `POST {hooks.url}/{event}` with a JSON body, signed
//! when `hooks.secret` is set, answered `{"result":..}` or `{"error":{..}}`
//! (docs/HOOKS.md). Transports call these on a client's connect, subscribe, publish, RPC
//! and disconnect; this module knows nothing of transports, and nothing of the bus.
//!
//! Every call is bounded: in time (`hooks.timeout_ms`, a wait for a free slot included),
//! in number (`hooks.max_concurrent` calls in flight on a node; the rest wait for a slot
//! within their time), and in the answer's size (`hooks.max_answer_bytes`). A call ties up
//! only the request or connection that made it.

pub mod answer;
mod client;
pub mod idle;
pub mod sign;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::auth::Identity;
use crate::config::{Config, HookEvent};
use crate::error::{BackendRefusal, Error, Result};
use crate::metrics::HookMetrics;

/// Idle connections to the backend kept for the next calls. A burst of connects opens up
/// to `hooks.max_concurrent`; keeping them all idle held their buffers for as long as the
/// pool kept them (0.09 KiB per idle WebSocket at 10,000, measured with
/// `cargo bench --bench load -- idle --hooks connect,subscribe,disconnect`).
const MAX_IDLE_CONNECTIONS: usize = 16;
use crate::protocol::{Channel, compact_json};
use crate::query::Query;
use crate::session::{ClientId, ClientSession, MAX_META_BYTES};
use answer::{Answer, ConnectResult, PublishResult};
use client::{Client, Failure};
use sign::{SIGNATURE_HEADER, Signer, TIMESTAMP_HEADER};

/// Query parameters that are the gateway's own credentials, never passed to the backend
/// (the connect hook gets the token's user instead).
const CREDENTIAL_PARAMS: [&str; 3] = ["token", "ticket", "session"];

/// The backend's hooks, built once from `[hooks]`.
pub struct Hooks {
    /// Which events are called, by [`HookEvent`] index.
    events: [bool; 5],
    client: Client,
    signer: Option<Signer>,
    /// Bounds the calls in flight on this node.
    slots: Semaphore,
    timeout: Duration,
    max_answer: usize,
    forward: Vec<HeaderName>,
    metrics: HookMetrics,
    /// Whether an invalid answer to each event was logged yet: once is enough to tell an
    /// operator, and a broken backend must not flood the log. Counted every time.
    logged: [AtomicBool; 5],
    max_message_bytes: usize,
    max_channels: usize,
    idle: idle::Idle,
    poll_idle: Duration,
    socketio: idle::Watched,
}

/// What the connect hook is told about a client starting a session.
pub struct Connecting<'a> {
    /// The transport it came on (`websocket`, `sse`, `longpoll`, `poll`), or the endpoint
    /// for a client's first request outside any (`publish`, `rpc`).
    pub transport: &'static str,
    /// Its address (the client's, behind a trusted proxy).
    pub remote: Option<IpAddr>,
    /// Its request's headers; only `hooks.forward_headers` are passed on.
    pub headers: &'a HeaderMap,
    /// Its request's query; credentials are left out.
    pub query: &'a Query<'a>,
    /// Who its token (if any) says it is.
    pub user: Option<&'a str>,
    /// A Socket.IO client's handshake `auth` object, passed as the body's `auth`.
    pub auth: Option<&'a RawValue>,
}

impl Hooks {
    /// The hooks of `config`, or `None` when `hooks.url` is empty.
    pub fn new(config: &Config, metrics: HookMetrics) -> Option<Self> {
        let hooks = &config.hooks;
        if hooks.url.is_empty() {
            return None;
        }
        Some(Hooks {
            events: HookEvent::ALL.map(|event| config.hook(event)),
            client: Client::new(&hooks.url, hooks.max_concurrent.min(MAX_IDLE_CONNECTIONS)),
            signer: Signer::new(hooks.secret.expose().as_bytes()),
            slots: Semaphore::new(hooks.max_concurrent),
            timeout: Duration::from_millis(hooks.timeout_ms),
            max_answer: hooks.max_answer_bytes,
            // Checked by the config.
            forward: hooks
                .forward_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            metrics,
            logged: Default::default(),
            max_message_bytes: config.limits.max_message_bytes,
            max_channels: config.limits.max_channels,
            idle: idle::Idle::default(),
            poll_idle: Duration::from_millis(hooks.poll_idle_ms),
            socketio: idle::Watched::default(),
        })
    }

    /// Starts watching polling sessions for the disconnect hook, for as long as these
    /// hooks live. Must run inside a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        if self.on(HookEvent::Disconnect) {
            let tell = |hooks: &Arc<Self>, gone: idle::Seen| {
                hooks.tell_disconnect(gone.user.as_deref(), Some(&gone.session), "idle");
            };
            idle::sweep(Arc::downgrade(self), |h| &h.idle, self.poll_idle, tell);
        }
    }

    /// Records a poll by `who`: a polling session is over once it stops (`hooks.poll_idle_ms`).
    pub fn polled(&self, who: &Identity) {
        if let Some(session) = who
            .session
            .as_ref()
            .filter(|_| self.on(HookEvent::Disconnect))
        {
            self.idle.touch(who.user.as_ref(), session);
        }
    }

    /// The Socket.IO polling sessions this node served, watched for going quiet.
    pub fn socketio_watched(&self) -> &idle::Watched {
        &self.socketio
    }

    /// Whether the backend is called for `event`.
    pub fn on(&self, event: HookEvent) -> bool {
        self.events[event as usize]
    }

    /// The request headers the connect hook is given.
    pub fn forwarded_headers(&self) -> &[HeaderName] {
        &self.forward
    }

    /// Asks the backend about a new client session: the session it accepts (its user,
    /// the channels granted, when it ends), or its refusal.
    pub async fn connect(&self, connecting: Connecting<'_>) -> Result<ClientSession> {
        let client = ClientId::random();
        let mut headers = Map::new();
        for name in &self.forward {
            // Several lines of one header are one value (cookies: `; `, RFC 6265 §5.4).
            let separator = if name == http::header::COOKIE {
                "; "
            } else {
                ", "
            };
            let values: Vec<&str> = connecting
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !values.is_empty() {
                headers.insert(name.as_str().to_owned(), values.join(separator).into());
            }
        }
        let mut query = Map::new();
        for (key, value) in connecting.query.iter() {
            if !CREDENTIAL_PARAMS.contains(&key) && !query.contains_key(key) {
                query.insert(key.to_owned(), value.into());
            }
        }
        let mut body = json!({
            "client": client.as_str(),
            "transport": connecting.transport,
            "remote": connecting.remote.map(|ip| ip.to_string()),
            "headers": headers,
            "query": query,
        });
        if let Some(user) = connecting.user {
            body["user"] = user.into();
        }
        if let Some(auth) = connecting.auth {
            // Valid JSON: it was parsed as a packet's data.
            body["auth"] = serde_json::from_str(auth.get()).unwrap_or(Value::Null);
        }
        let token_user = connecting.user.map(str::to_owned);
        self.call(HookEvent::Connect, &body, |result| {
            self.accepted(client, token_user, &result)
        })
        .await
    }

    /// Checks a connect hook's result.
    fn accepted(
        &self,
        client: ClientId,
        token_user: Option<String>,
        result: &RawValue,
    ) -> Result<ClientSession, String> {
        let result: ConnectResult =
            serde_json::from_str(result.get()).map_err(|e| format!("result: {e}"))?;
        if let Some(user) = &result.user {
            let personal = format!("{}:{user}", crate::auth::rules::PERSONAL);
            if user.is_empty() || Channel::parse(&personal).is_err() {
                return Err("result.user: user:<user> must be a channel name".into());
            }
        }
        if result.channels.len() > self.max_channels {
            return Err(format!(
                "result.channels: at most {} (limits.max_channels)",
                self.max_channels
            ));
        }
        let granted = result
            .channels
            .iter()
            .map(|name| Channel::parse(name))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| format!("result.channels: {e}"))?;
        if result
            .expire_at
            .is_some_and(|at| at <= crate::auth::token::now_secs())
        {
            return Err("result.expire_at is not in the future".into());
        }
        let meta = match result.meta {
            Some(meta) => Some(compact(&meta, MAX_META_BYTES, "result.meta")?),
            None => None,
        };
        Ok(ClientSession {
            client,
            user: result.user.or(token_user).map(Arc::from),
            granted: granted.into_boxed_slice(),
            allowed: Box::default(),
            expire_at: result.expire_at,
            meta,
        })
    }

    /// Asks the backend whether `who` may subscribe to `channel`.
    pub async fn subscribe(&self, who: &Identity, channel: &Channel) -> Result<()> {
        let mut body = caller(who);
        body["channel"] = channel.as_str().into();
        self.call(HookEvent::Subscribe, &body, |_| Ok(())).await
    }

    /// Asks the backend whether `who` may publish `data` (compact JSON) to `channel`: the
    /// data to publish, the backend's in place of the client's when it replaced it.
    pub async fn publish(&self, who: &Identity, channel: &Channel, data: Bytes) -> Result<Bytes> {
        let mut body = caller(who);
        body["channel"] = channel.as_str().into();
        // Compact JSON already, so valid.
        body["data"] = serde_json::from_slice(&data).unwrap_or(Value::Null);
        let max = self.max_message_bytes;
        self.call(HookEvent::Publish, &body, |result| {
            let result: PublishResult =
                serde_json::from_str(result.get()).map_err(|e| format!("result: {e}"))?;
            match result.data {
                Some(replaced) => {
                    let replaced = compact(&replaced, max, "result.data")?;
                    Ok(Bytes::copy_from_slice(replaced.get().as_bytes()))
                }
                None => Ok(data),
            }
        })
        .await
    }

    /// Calls the backend's `method` for `who` with `params`; the backend's result.
    pub async fn rpc(
        &self,
        who: &Identity,
        method: &str,
        params: &RawValue,
    ) -> Result<Box<RawValue>> {
        let mut body = caller(who);
        body["method"] = method.into();
        body["params"] = serde_json::from_str(params.get()).unwrap_or(Value::Null);
        self.call(HookEvent::Rpc, &body, Ok).await
    }

    /// Tells the backend, without waiting for it, that `who`'s session ended for `reason`.
    pub fn disconnect(self: &Arc<Self>, who: &Identity, reason: &str) {
        self.tell_disconnect(who.user.as_deref(), who.session.as_deref(), reason);
    }

    /// Tells the backend, without waiting for it, that `session` of `user` ended.
    pub fn disconnect_session(
        self: &Arc<Self>,
        user: Option<&str>,
        session: &ClientSession,
        reason: &str,
    ) {
        self.tell_disconnect(user, Some(session), reason);
    }

    fn tell_disconnect(
        self: &Arc<Self>,
        user: Option<&str>,
        session: Option<&ClientSession>,
        reason: &str,
    ) {
        if !self.on(HookEvent::Disconnect) {
            return;
        }
        let mut body = caller_of(user, session);
        body["reason"] = reason.into();
        let hooks = self.clone();
        // The answer is read only to be counted: nothing waits on it.
        tokio::spawn(async move {
            let _ = hooks.call(HookEvent::Disconnect, &body, |_| Ok(())).await;
        });
    }

    /// One call: `body` to the event's URL, signed, within the time and slot bounds; the
    /// answer's result passed through `check` (which says why a result is invalid), or
    /// the refusal or failure as the client's error. Counted and timed by outcome.
    async fn call<T>(
        &self,
        event: HookEvent,
        body: &Value,
        check: impl FnOnce(Box<RawValue>) -> Result<T, String>,
    ) -> Result<T> {
        let started = Instant::now();
        let body = Bytes::from(body.to_string());
        let sent = tokio::time::timeout(self.timeout, async {
            // Never closed, so a permit always comes in the end.
            let _slot = self.slots.acquire().await;
            let headers = self.signature(&body);
            self.client
                .post(event.name(), headers, body, self.max_answer)
                .await
        })
        .await;
        let (label, outcome) = match sent {
            Err(_) => ("timeout", Err(Error::BackendTimeout)),
            Ok(Err(Failure::Unavailable(why))) => {
                tracing::debug!(event = event.name(), error = %why, "hook call failed");
                ("unavailable", Err(Error::BackendUnavailable(why)))
            }
            Ok(Err(Failure::TooLarge(max))) => (
                "invalid",
                Err(self.invalid(event, format!("answer larger than {max} bytes"))),
            ),
            Ok(Ok(answer)) => match answer::parse(&answer) {
                Ok(Answer::Result(result)) => match check(result) {
                    Ok(value) => ("ok", Ok(value)),
                    Err(why) => ("invalid", Err(self.invalid(event, why))),
                },
                Ok(Answer::Refused { code, message }) => {
                    let status = if event == HookEvent::Connect {
                        http::StatusCode::UNAUTHORIZED
                    } else {
                        http::StatusCode::FORBIDDEN
                    };
                    let refusal = BackendRefusal {
                        code,
                        message,
                        status,
                    };
                    ("refused", Err(Error::Backend(Box::new(refusal))))
                }
                Err(why) => ("invalid", Err(self.invalid(event, why))),
            },
        };
        self.metrics
            .record(event, label, started.elapsed().as_secs_f64());
        outcome
    }

    /// The signature headers of `body`, if a secret is set.
    fn signature(&self, body: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        let Some(signer) = &self.signer else {
            return Vec::new();
        };
        let now = crate::auth::token::now_secs();
        let signature = signer.sign(now, body);
        [
            (TIMESTAMP_HEADER, now.to_string()),
            (SIGNATURE_HEADER, signature),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((HeaderName::from_static(name), value.parse().ok()?)))
        .collect()
    }

    /// The client's error for an invalid answer to `event`, logged the first time.
    fn invalid(&self, event: HookEvent, why: String) -> Error {
        if !self.logged[event as usize].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                event = event.name(),
                reason = %why,
                "the backend's answer to a hook is invalid (logged once per event; \
                 cascade_hook_requests_total{{result=\"invalid\"}} counts them all)"
            );
        }
        Error::BackendInvalid(why)
    }
}

/// The `user`, `client` and `meta` every hook but connect is told.
fn caller(who: &Identity) -> Value {
    caller_of(who.user.as_deref(), who.session.as_deref())
}

fn caller_of(user: Option<&str>, session: Option<&ClientSession>) -> Value {
    let mut body = json!({
        "user": user,
        "client": session.map(|s| s.client.as_str()),
    });
    if let Some(meta) = session.and_then(|s| s.meta.as_deref()) {
        body["meta"] = serde_json::from_str(meta.get()).unwrap_or(Value::Null);
    }
    body
}

/// `raw` as compact JSON of at most `max` bytes, or why not.
fn compact(raw: &RawValue, max: usize, what: &str) -> Result<Box<RawValue>, String> {
    let compacted =
        compact_json(raw.get().as_bytes()).ok_or_else(|| format!("{what}: bad JSON"))?;
    if compacted.len() > max {
        return Err(format!("{what} larger than {max} bytes"));
    }
    let text = String::from_utf8(compacted.to_vec()).map_err(|_| format!("{what}: not UTF-8"))?;
    RawValue::from_string(text).map_err(|e| format!("{what}: {e}"))
}
