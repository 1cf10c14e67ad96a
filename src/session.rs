//! Client sessions: the id the gateway gives each client session (the `client` the
//! backend's hooks receive), and the signed session value that lets a polling client keep
//! its session across requests and nodes.
//!
//! A WebSocket or an SSE stream is one session for as long as it is open. A polling
//! client is one session across many requests, which may land on any node: its first
//! answer carries `"session":"<value>"`, a token signed with a secret every node shares
//! (see [`Sessions::from_config`]), and the client sends it back as `session=` on every
//! later request. A request with a valid value is that session again, with no call to the
//! connect hook; one without (or with a value that no longer verifies) starts a new one.
//!
//! A leaf above `protocol` and `error`: it knows nothing of HTTP, the hooks or the bus.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{ConfigError, Error, Result};
use crate::protocol::Channel;

/// Length of a client id: 22 characters of base64url are 132 bits.
pub const CLIENT_ID_LEN: usize = 22;

/// Most bytes of channel names a session value remembers as allowed by the subscribe
/// hook: the value rides in every poll's URL, which the lean path bounds at 16 KiB.
pub const MAX_ALLOWED_BYTES: usize = 2048;

/// The largest `meta` a connect hook may attach to a session, compact JSON bytes: it
/// travels in the session value, in every polling request's URL.
pub const MAX_META_BYTES: usize = 1024;

/// The id of one client session: 22 random characters of `A-Z a-z 0-9 - _`.
///
/// Not a secret and not a credential (nothing is granted by knowing one: a session is
/// proved by its signed value), so the process's fast generator, seeded from the OS, is
/// enough; it only has to be unique. Held inline (22 bytes, `Copy`): every idle session
/// keeps it in several places, and an allocation for each would cost more than the id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId([u8; CLIENT_ID_LEN]);

impl ClientId {
    /// A fresh id.
    pub fn random() -> Self {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        ClientId(std::array::from_fn(|_| ALPHABET[fastrand::usize(..64)]))
    }

    /// An id as the gateway writes them, or `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; CLIENT_ID_LEN] = text.as_bytes().try_into().ok()?;
        let valid = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        valid.then_some(ClientId(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Every constructor checks for ASCII, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ClientId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ClientId::parse(&text).ok_or_else(|| serde::de::Error::custom("not a client id"))
    }
}

/// What the gateway knows of a client session beyond its credentials.
#[derive(Clone, Debug)]
pub struct ClientSession {
    /// The session's id.
    pub client: ClientId,
    /// The user the connect hook accepted, if it named one (shared with the identity,
    /// presence and the users index rather than copied into each).
    pub user: Option<Arc<str>>,
    /// Channels the connect hook subscribed the client to: readable whatever the channel
    /// rules say, and asked of no subscribe hook. (Boxed slices, not vectors: exact, and
    /// smaller in the record every session keeps.)
    pub granted: Box<[Channel]>,
    /// Channels the subscribe hook allowed: not asked again in this session (the channel
    /// rules still apply). Kept to [`MAX_ALLOWED_BYTES`] of names.
    pub allowed: Box<[Channel]>,
    /// The connect hook's `expire_at`, unix seconds: the session ends then.
    pub expire_at: Option<u64>,
    /// The connect hook's `meta`, passed to the later hooks.
    pub meta: Option<Box<RawValue>>,
}

impl ClientSession {
    /// A session of its own for a client that no connect hook was asked about.
    pub fn fresh() -> Self {
        ClientSession {
            client: ClientId::random(),
            user: None,
            granted: Box::default(),
            allowed: Box::default(),
            expire_at: None,
            meta: None,
        }
    }

    /// Whether the subscribe hook allowed `channel` earlier in the session.
    pub fn allows(&self, channel: &Channel) -> bool {
        self.allowed.iter().any(|allowed| allowed == channel)
    }

    /// The same session, remembering that the subscribe hook allowed `channels`, as far
    /// as [`MAX_ALLOWED_BYTES`] lets it; `None` when nothing new is remembered.
    pub fn allowing<'a>(&self, channels: impl IntoIterator<Item = &'a Channel>) -> Option<Self> {
        let mut allowed = self.allowed.to_vec();
        let mut bytes: usize = allowed.iter().map(|c| c.as_str().len() + 1).sum();
        for channel in channels {
            if allowed.contains(channel) || bytes + channel.as_str().len() + 1 > MAX_ALLOWED_BYTES {
                continue;
            }
            bytes += channel.as_str().len() + 1;
            allowed.push(channel.clone());
        }
        (allowed.len() > self.allowed.len()).then(|| ClientSession {
            allowed: allowed.into_boxed_slice(),
            ..self.clone()
        })
    }

    /// Whether the connect hook granted `channel`.
    pub fn grants(&self, channel: &Channel) -> bool {
        self.granted.iter().any(|granted| granted == channel)
    }
}

/// The claims of a session value. Short names: the value rides in every poll's URL.
#[derive(Serialize, Deserialize)]
struct SessionClaims {
    /// Always `"session"`, so that no token or ticket passes for one.
    typ: String,
    cid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ch: Vec<String>,
    /// Allowed by the subscribe hook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ok: Vec<String>,
    /// The connect hook's `expire_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uexp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<Box<RawValue>>,
    /// When the value stops being accepted (the session itself may go on: the client is
    /// then connected again).
    exp: u64,
}

/// Issues and verifies session values.
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Lifetime of a value without an `expire_at`, seconds.
    ttl: u64,
}

impl Sessions {
    /// Values signed with a key derived from the first secret configured of
    /// `hooks.secret`, `token.ticket_secret` and `token.hmac_secret`, which every node of
    /// a cluster shares; without any, a key of this process's own (one node only: another
    /// node would connect the client again).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let secret = [
            config.hooks.secret.expose(),
            config.token.ticket_secret.expose(),
            config.token.hmac_secret.expose(),
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .map(|s| Sha256::digest(format!("cascade-session:{s}")).to_vec())
        .unwrap_or_else(|| (0..32).map(|_| fastrand::u8(..)).collect());
        Sessions::new(&secret, config.hooks.session_ttl_ms.div_ceil(1000)).map_err(ConfigError)
    }

    /// Values signed with `secret`, valid for `ttl` seconds unless the connect hook said
    /// otherwise.
    pub fn new(secret: &[u8], ttl: u64) -> Result<Self, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Sessions {
            encoding: EncodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            decoding: DecodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            validation,
            ttl: ttl.max(1),
        })
    }

    /// The value a client sends back to stay `session`.
    pub fn issue(&self, session: &ClientSession) -> Result<String> {
        let now = now_secs();
        let claims = SessionClaims {
            typ: "session".into(),
            cid: session.client.as_str().to_owned(),
            sub: session.user.as_deref().map(str::to_owned),
            ch: session
                .granted
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            ok: session
                .allowed
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            uexp: session.expire_at,
            meta: session.meta.clone(),
            exp: session.expire_at.unwrap_or(u64::MAX).min(now + self.ttl),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// The session a value names, or `None` for one that is malformed, forged, expired
    /// or from another cluster: the client is then simply connected again.
    pub fn verify(&self, value: &str) -> Option<ClientSession> {
        if value.len() > 16 * 1024 {
            return None;
        }
        let claims = jsonwebtoken::decode::<SessionClaims>(value, &self.decoding, &self.validation)
            .ok()?
            .claims;
        if claims.typ != "session" {
            return None;
        }
        Some(ClientSession {
            client: ClientId::parse(&claims.cid)?,
            user: claims.sub.map(Arc::from),
            granted: claims
                .ch
                .iter()
                .map(|c| Channel::parse(c))
                .collect::<Result<_>>()
                .ok()?,
            allowed: claims
                .ok
                .iter()
                .map(|c| Channel::parse(c))
                .collect::<Result<_>>()
                .ok()?,
            expire_at: claims.uexp,
            meta: claims.meta,
        })
    }
}

/// Seconds since the unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> ClientSession {
        ClientSession {
            client: ClientId::random(),
            user: Some(Arc::from("alice")),
            granted: Box::new([Channel::parse("room:1").unwrap()]),
            allowed: Box::default(),
            expire_at: None,
            meta: Some(RawValue::from_string(r#"{"name":"Alice"}"#.into()).unwrap()),
        }
    }

    #[test]
    fn ids_are_unique_and_parse_back() {
        let (a, b) = (ClientId::random(), ClientId::random());
        assert_ne!(a, b);
        assert_eq!(ClientId::parse(a.as_str()), Some(a));
        assert!(ClientId::parse("short").is_none());
        assert!(ClientId::parse(&"!".repeat(CLIENT_ID_LEN)).is_none());
    }

    #[test]
    fn a_value_carries_its_session_to_any_node_with_the_secret() {
        let node_a = Sessions::new(b"a shared secret of some length", 60).unwrap();
        let node_b = Sessions::new(b"a shared secret of some length", 60).unwrap();
        let s = session();
        let back = node_b.verify(&node_a.issue(&s).unwrap()).unwrap();
        assert_eq!(back.client, s.client);
        assert_eq!(back.user.as_deref(), Some("alice"));
        assert!(back.grants(&Channel::parse("room:1").unwrap()));
        assert!(!back.grants(&Channel::parse("room:2").unwrap()));
        assert_eq!(back.meta.as_ref().unwrap().get(), r#"{"name":"Alice"}"#);
        let chat = Channel::parse("chat").unwrap();
        let more = back.allowing([&chat]).unwrap();
        assert!(more.allowing([&chat]).is_none(), "nothing new");
        let again = node_a.verify(&node_b.issue(&more).unwrap()).unwrap();
        assert!(again.allows(&chat) && !again.allows(&Channel::parse("x").unwrap()));
        let long: Vec<Channel> = (0..100)
            .map(|i| Channel::parse(&format!("{i:0>100}")).unwrap())
            .collect();
        let full = again.allowing(&long).unwrap();
        let kept: usize = full.allowed.iter().map(|c| c.as_str().len() + 1).sum();
        assert!(kept <= MAX_ALLOWED_BYTES && full.allowed.len() > 10);
    }

    #[test]
    fn forged_expired_and_foreign_values_name_no_session() {
        let sessions = Sessions::new(b"a shared secret of some length", 60).unwrap();
        let value = sessions.issue(&session()).unwrap();
        let mut forged = value.clone();
        forged.replace_range(forged.len() - 3.., "AAA");
        assert!(sessions.verify(&forged).is_none());
        let other = Sessions::new(b"another cluster's secret....", 60).unwrap();
        assert!(other.verify(&value).is_none());
        let ended = ClientSession {
            expire_at: Some(now_secs() - 1),
            ..session()
        };
        assert!(sessions.verify(&sessions.issue(&ended).unwrap()).is_none());
        for garbage in ["", "a.b.c", &"x".repeat(20_000)] {
            assert!(sessions.verify(garbage).is_none());
        }
    }
}
