//! The one error type of the gateway, and the one place that maps it to an HTTP status and
//! a machine-readable code. Transports return `Error`; they never pick statuses themselves.

use http::StatusCode;

/// Result with the gateway's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the gateway cannot start with its configuration (a secret, a key file, the
/// engine's URL, a proxy list): reported by `main` and never sent to a client, so kept
/// apart from [`Error`], whose every variant has a status and a code.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(reason: String) -> Self {
        ConfigError(reason)
    }
}

/// Everything that can go wrong while serving a request, from the client's point of view.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No route has this path.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("method {method} is not allowed here; use {allow}")]
    MethodNotAllowed {
        /// The method the client used.
        method: String,
        /// The methods the route accepts, for the `Allow` header.
        allow: &'static str,
    },
    /// The transport exists but the operator disabled it.
    #[error("the {0} transport is disabled on this gateway")]
    TransportDisabled(&'static str),
    /// A channel name outside the allowed alphabet or length.
    #[error("bad channel name {0:?}: use 1 to 128 of A-Z a-z 0-9 _ - . : /")]
    BadChannel(String),
    /// A subscription that names no channel.
    #[error("no channel given: pass channels=a,b or a cursor")]
    NoChannels,
    /// A subscription over the per-subscription channel limit.
    #[error("too many channels: at most {0} per subscription")]
    TooManyChannels(usize),
    /// A cursor that does not parse.
    #[error("bad cursor: {0}")]
    BadCursor(String),
    /// A query parameter that does not parse.
    #[error("bad parameter {name}: {reason}")]
    BadParam {
        /// The parameter's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A body or frame that is not the JSON we expect.
    #[error("bad JSON: {0}")]
    BadJson(String),
    /// A WebSocket frame of the wrong shape (unknown op, missing field, binary).
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// A request body over the configured limit.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// A message payload over the configured limit.
    #[error("message data larger than {0} bytes")]
    MessageTooLarge(usize),
    /// A client's publish that names its own `from`: the gateway alone sets the sender.
    #[error("from is set by the gateway; a publish may not carry it")]
    FromNotAllowed,
    /// The session was ended by the application's backend (`POST /disconnect`): the
    /// client must not reconnect with the same credentials.
    #[error("disconnected by the server")]
    Disconnected,
    /// A request that breaks HTTP's own rules (a missing or repeated `Host`, a malformed
    /// WebSocket handshake).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A plain GET on the WebSocket route, or a malformed upgrade.
    #[error("WebSocket upgrade required: {0}")]
    UpgradeRequired(&'static str),
    /// Credentials that are missing where needed, malformed or badly signed.
    #[error("invalid credentials: {0}")]
    TokenInvalid(String),
    /// A token past its `exp`.
    #[error("the token has expired; fetch a new one")]
    TokenExpired,
    /// Valid credentials that do not allow this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The channel rules refused every channel of a subscribing request: answered as the
    /// first refusal (`forbidden` or `token_invalid`), naming each refused channel.
    #[error("{first}")]
    Refused {
        /// The refusal of the first channel, which gives the code and the status.
        first: Box<Error>,
        /// Every refused channel, in the order asked.
        refused: Vec<Refusal>,
    },
    /// A browser origin outside the allowlist.
    #[error("origin {0:?} is not allowed")]
    OriginNotAllowed(String),
    /// Too many publishes on one connection.
    #[error("publish rate limit exceeded; slow down")]
    RateLimited,
    /// A connection limit is reached.
    #[error("too many connections: {0}")]
    TooManyConnections(&'static str),
    /// The client was too slow sending its request.
    #[error("the request was not received in time")]
    RequestTimeout,
    /// The gateway is draining for shutdown.
    #[error("the gateway is shutting down; reconnect shortly")]
    ShuttingDown,
    /// The engine (for example Redis) cannot be reached.
    #[error("the message engine is unavailable: {0}")]
    EngineUnavailable(String),
    /// The application's backend cannot be reached, or answered with an HTTP error.
    #[error("the application's backend is unavailable: {0}")]
    BackendUnavailable(String),
    /// The application's backend did not answer within `hooks.timeout_ms`.
    #[error("the application's backend did not answer in time")]
    BackendTimeout,
    /// The application's backend answered with something that is not a hook answer.
    #[error("the application's backend answered nonsense: {0}")]
    BackendInvalid(String),
    /// The application's backend refused, with its own code and message.
    #[error("{}", .0.message)]
    Backend(Box<BackendRefusal>),
    /// A request to `/socket.io/` that Engine.IO refuses, answered in Engine.IO's own
    /// form (`{"code":1,"message":"Session ID unknown"}`) so that its clients understand.
    #[error("{}", .0.message())]
    EngineIo(EngineIoError),
    /// A bug or an I/O failure on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Engine.IO's own error codes, as its servers answer them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineIoError {
    /// 0: `transport` is neither `polling` nor `websocket`.
    TransportUnknown,
    /// 1: no such session (or it ended).
    SessionIdUnknown,
    /// 2: a handshake by anything but `GET`.
    BadHandshakeMethod,
    /// 3: a request or packet Engine.IO cannot read (a payload over the limit included).
    BadRequest,
    /// 4: refused.
    Forbidden,
    /// 5: `EIO` is not 4.
    UnsupportedProtocolVersion,
}

impl EngineIoError {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Engine.IO's message for the code, word for word.
    pub fn message(self) -> &'static str {
        match self {
            EngineIoError::TransportUnknown => "Transport unknown",
            EngineIoError::SessionIdUnknown => "Session ID unknown",
            EngineIoError::BadHandshakeMethod => "Bad handshake method",
            EngineIoError::BadRequest => "Bad request",
            EngineIoError::Forbidden => "Forbidden",
            EngineIoError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The metric label it is counted under.
    pub fn label(self) -> &'static str {
        match self {
            EngineIoError::TransportUnknown => "socketio_transport_unknown",
            EngineIoError::SessionIdUnknown => "socketio_session_unknown",
            EngineIoError::BadHandshakeMethod => "socketio_bad_handshake_method",
            EngineIoError::BadRequest => "socketio_bad_request",
            EngineIoError::Forbidden => "socketio_forbidden",
            EngineIoError::UnsupportedProtocolVersion => "socketio_unsupported_protocol_version",
        }
    }
}

/// A refusal by the application's backend, passed on to the client as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRefusal {
    /// The backend's code: 1 to 64 of `a-z 0-9 _` (anything else was made `forbidden`).
    pub code: String,
    /// The backend's message.
    pub message: String,
    /// 401 for a refused connect, 403 for anything else.
    pub status: StatusCode,
}

impl Error {
    /// The stable, machine-readable code clients match on: the backend's own for a
    /// backend's refusal, else one of the gateway's (see [`Error::label`]).
    pub fn code(&self) -> &str {
        match self {
            Error::Backend(refusal) => &refusal.code,
            Error::Refused { first, .. } => first.code(),
            other => other.label(),
        }
    }

    /// The gateway's own code, as metrics count it: a backend's refusal is
    /// `backend_refused` whatever its code, so that no backend can grow the label set.
    pub fn label(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::TransportDisabled(_) => "transport_disabled",
            Error::BadChannel(_) => "bad_channel",
            Error::NoChannels => "no_channels",
            Error::TooManyChannels(_) => "too_many_channels",
            Error::BadCursor(_) => "bad_cursor",
            Error::BadParam { .. } => "bad_param",
            Error::BadJson(_) => "bad_json",
            Error::BadFrame(_) => "bad_frame",
            Error::BodyTooLarge(_) => "body_too_large",
            Error::MessageTooLarge(_) => "message_too_large",
            Error::BadRequest(_) => "bad_request",
            Error::FromNotAllowed => "from_not_allowed",
            Error::Disconnected => "disconnected",
            Error::UpgradeRequired(_) => "upgrade_required",
            Error::TokenInvalid(_) => "token_invalid",
            Error::TokenExpired => "token_expired",
            Error::Forbidden(_) => "forbidden",
            Error::Refused { first, .. } => first.label(),
            Error::OriginNotAllowed(_) => "origin_not_allowed",
            Error::RateLimited => "rate_limited",
            Error::TooManyConnections(_) => "too_many_connections",
            Error::RequestTimeout => "request_timeout",
            Error::ShuttingDown => "shutting_down",
            Error::EngineUnavailable(_) => "engine_unavailable",
            Error::BackendUnavailable(_) => "backend_unavailable",
            Error::BackendTimeout => "backend_timeout",
            Error::BackendInvalid(_) => "backend_invalid",
            Error::Backend(_) => "backend_refused",
            Error::EngineIo(err) => err.label(),
            Error::Internal(_) => "internal",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound(_) | Error::TransportDisabled(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::BadChannel(_)
            | Error::NoChannels
            | Error::TooManyChannels(_)
            | Error::BadCursor(_)
            | Error::BadParam { .. }
            | Error::BadJson(_)
            | Error::BadFrame(_)
            | Error::BadRequest(_)
            | Error::FromNotAllowed => StatusCode::BAD_REQUEST,
            Error::Disconnected => StatusCode::FORBIDDEN,
            Error::BodyTooLarge(_) | Error::MessageTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            Error::TokenInvalid(_) | Error::TokenExpired => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            Error::Refused { first, .. } => first.status(),
            Error::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Error::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::ShuttingDown | Error::EngineUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::BackendUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::BackendInvalid(_) => StatusCode::BAD_GATEWAY,
            Error::Backend(refusal) => refusal.status,
            Error::EngineIo(EngineIoError::Forbidden) => StatusCode::FORBIDDEN,
            Error::EngineIo(_) => StatusCode::BAD_REQUEST,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message clients are sent: the error's text, cut to at most
    /// [`MAX_MESSAGE_BYTES`]. Every answer to a client takes its message from here, so
    /// that no error (a serde error quoting a whole JSON string, say) can echo
    /// unbounded input back.
    pub fn message(&self) -> String {
        clip(self.to_string())
    }

    /// The code a refused channel is named with: the backend's own for its refusal.
    pub fn refusal_code(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Error::Backend(refusal) => refusal.code.clone().into(),
            other => other.label().into(),
        }
    }

    /// The channels a refusal names; empty for every other error.
    pub fn refused(&self) -> &[Refusal] {
        match self {
            Error::Refused { refused, .. } => refused,
            _ => &[],
        }
    }

    /// The error body, `{"error":{"code":..,"message":..}}`, with `"refused":[..]` beside
    /// `error` when it names refused channels.
    pub fn to_json(&self) -> String {
        if let Error::EngineIo(err) = self {
            return serde_json::json!({"code": err.code(), "message": err.message()}).to_string();
        }
        let mut body =
            serde_json::json!({"error": {"code": self.code(), "message": self.message()}});
        if !self.refused().is_empty() {
            body["refused"] = serde_json::json!(self.refused());
        }
        body.to_string()
    }
}

/// A channel of a subscribing request that the channel rules refused: the request goes
/// on without it and names it, `{"channel":"user:bob","code":"forbidden"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// The channel's name.
    pub channel: String,
    /// `forbidden`, or `token_invalid` when the channel needs a token the request lacks,
    /// or the code of the backend's subscribe hook.
    pub code: std::borrow::Cow<'static, str>,
}

/// The longest message an error sends a client, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256;

/// `text` when it fits in [`MAX_MESSAGE_BYTES`]; else its start and its end around a `…`,
/// since both say something (serde names the expected type and position at the end).
fn clip(text: String) -> String {
    const HEAD: usize = 150;
    const TAIL: usize = 100;
    if text.len() <= MAX_MESSAGE_BYTES {
        return text;
    }
    let mut head = HEAD;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - TAIL;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{}", &text[..head], &text[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_code_and_message() {
        let err = Error::TooManyChannels(128);
        let body: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap();
        assert_eq!(body["error"]["code"], "too_many_channels");
        assert!(body["error"]["message"].as_str().unwrap().contains("128"));
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(body.get("refused").is_none(), "{body}");
    }

    #[test]
    fn a_refusal_of_every_channel_names_them_all() {
        let err = Error::Refused {
            first: Box::new(Error::Forbidden(
                "not allowed to subscribe to user:bob".into(),
            )),
            refused: vec![
                Refusal {
                    channel: "user:bob".into(),
                    code: "forbidden".into(),
                },
                Refusal {
                    channel: "user:eve".into(),
                    code: "forbidden".into(),
                },
            ],
        };
        assert_eq!(
            (err.code(), err.status()),
            ("forbidden", StatusCode::FORBIDDEN)
        );
        let body: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
        assert_eq!(
            body["refused"],
            serde_json::json!([
                {"channel": "user:bob", "code": "forbidden"},
                {"channel": "user:eve", "code": "forbidden"}
            ])
        );
    }

    #[test]
    fn messages_are_clipped_at_both_ends() {
        let long = format!("start {} end", "é".repeat(1000));
        let message = Error::BadJson(long).message();
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.starts_with("bad JSON: start "), "{message}");
        assert!(
            message.ends_with("é end") && message.contains('…'),
            "{message}"
        );
        let short = Error::BadJson("short".into());
        assert_eq!(short.message(), short.to_string());
        let body: serde_json::Value =
            serde_json::from_str(&Error::NotFound("/".repeat(10_000)).to_json()).unwrap();
        assert!(body["error"]["message"].as_str().unwrap().len() <= MAX_MESSAGE_BYTES);
    }
}
