//! Who may connect, subscribe and publish.
//!
//! Every request is identified once ([`Auth::identify`]): a backend by its
//! `X-Cascade-Api-Key`, a client by its JWT (`Authorization: Bearer`, or `token=` where a
//! browser cannot set headers) or by a connect ticket (`ticket=`), everyone else as
//! anonymous. Channel rules ([`rules`]) then decide each subscribe and publish. Transports
//! call these checks; they never look at credentials themselves.

pub mod origin;
pub mod pattern;
pub mod rules;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::bus::Bus;
use crate::config::Config;
use crate::error::{ConfigError, Error, Result};
use crate::protocol::Channel;
use crate::query::Query;
use crate::session::{ClientId, ClientSession};
use pattern::Pattern;
use rules::Rules;
use token::{Claims, Tickets, Verifier, now_secs};

/// Who is asking, as far as permissions go.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The token's `sub` (or the connect hook's user); `None` for anonymous clients and
    /// backends. Shared with the client session rather than copied.
    pub user: Option<Arc<str>>,
    /// The token's `channels` patterns.
    pub subscribe: Vec<Pattern>,
    /// The token's `publish` patterns.
    pub publish: Vec<Pattern>,
    /// When the credentials expire, unix seconds.
    pub expires_at: Option<u64>,
    /// A backend holding an API key: may publish and subscribe anywhere.
    pub server: bool,
    /// The client session, where the gateway keeps one (with `[hooks]`): its id, and
    /// what the connect hook granted.
    pub session: Option<Arc<ClientSession>>,
}

impl Identity {
    /// No credentials.
    pub fn anonymous() -> Self {
        Identity {
            user: None,
            subscribe: Vec::new(),
            publish: Vec::new(),
            expires_at: None,
            server: false,
            session: None,
        }
    }

    /// A backend authenticated by API key.
    pub fn server() -> Self {
        Identity {
            server: true,
            ..Identity::anonymous()
        }
    }

    fn from_claims(claims: Claims) -> Self {
        Identity {
            user: Some(Arc::from(claims.sub)),
            subscribe: claims.channels.into_iter().map(Pattern::new).collect(),
            publish: claims.publish.into_iter().map(Pattern::new).collect(),
            expires_at: Some(claims.exp),
            server: false,
            session: None,
        }
    }

    /// The same caller in client session `session`: its user (the connect hook's, else
    /// the token's) and the earlier of the two ends.
    pub fn in_session(mut self, session: Arc<ClientSession>) -> Self {
        if session.user.is_some() {
            self.user = session.user.clone();
        }
        self.expires_at = match (self.expires_at, session.expire_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.session = Some(session);
        self
    }

    /// The client session's id, if it has one.
    pub fn client(&self) -> Option<&ClientId> {
        self.session.as_ref().map(|s| &s.client)
    }

    /// Time left before the credentials expire; `None` when they never do.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at
            .map(|exp| Duration::from_secs(exp.saturating_sub(now_secs())))
    }
}

/// Credentials checking and channel rules, built once from config.
pub struct Auth {
    verifier: Option<Verifier>,
    tickets: Tickets,
    /// SHA-256 of each API key: compared in constant time, and the keys themselves are
    /// not kept in memory past start-up.
    api_keys: Vec<[u8; 32]>,
    rules: Rules,
    /// Origins allowed to call from a browser.
    pub origins: origin::Origins,
}

/// The API key header: a scheme of its own, never confused with a client JWT.
pub const API_KEY_HEADER: &str = "x-cascade-api-key";

/// [`API_KEY_HEADER`] as a header name.
pub const API_KEY: http::HeaderName = http::HeaderName::from_static(API_KEY_HEADER);

impl Auth {
    /// Builds the checks from config; fails on an unreadable key or a bad secret.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let token = &config.token;
        let verifier = if !token.public_key_file.is_empty() {
            let pem = std::fs::read(&token.public_key_file)
                .map_err(|e| format!("token.public_key_file {}: {e}", token.public_key_file))?;
            Some(Verifier::public_key(&token.algorithm, &pem)?)
        } else if !token.hmac_secret.expose().is_empty() {
            if token.algorithm != "HS256" {
                return Err(ConfigError(format!(
                    "token.algorithm {} needs token.public_key_file",
                    token.algorithm
                )));
            }
            Some(Verifier::hmac(token.hmac_secret.expose().as_bytes())?)
        } else {
            None
        };
        // Tickets must verify on every node: sign them with a configured secret when
        // there is one, else with a per-process key (single-node deployments).
        let ticket_secret = [token.ticket_secret.expose(), token.hmac_secret.expose()]
            .into_iter()
            .find(|s| !s.is_empty())
            .map(|s| Sha256::digest(format!("cascade-ticket:{s}")).to_vec())
            .unwrap_or_else(|| (0..32).map(|_| fastrand::u8(..)).collect());
        let tickets = Tickets::new(&ticket_secret, token.ticket_ttl_ms.div_ceil(1000))?;
        let api_keys = config
            .api_keys
            .iter()
            .filter(|k| !k.expose().is_empty())
            .map(|k| Sha256::digest(k.expose().as_bytes()).into())
            .collect();
        let rules = Rules::new(config.channels.clone(), config.namespaces.clone())
            .tokens(verifier.is_some());
        Ok(Auth {
            verifier,
            tickets,
            api_keys,
            rules,
            origins: origin::Origins::new(&config.allowed_origins, config.cors_credentials),
        })
    }

    /// Whether client tokens can be verified (a secret or public key is configured).
    pub fn tokens_enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// Whether no request at all can publish: no API key, no token key, and no channel
    /// open to anyone (the built-in defaults). Worth a warning at start-up.
    pub fn nobody_can_publish(&self) -> bool {
        self.api_keys.is_empty() && self.verifier.is_none() && !self.rules.anyone_publishes()
    }

    /// Identifies a request by API key, ticket or token; anonymous without credentials.
    /// Invalid credentials are an error, never silently anonymous.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        query: &Query<'_>,
        bus: &Bus,
    ) -> Result<Identity> {
        // By `HeaderName`: a `&str` name is parsed again for every lookup.
        if let Some(key) = headers.get(&API_KEY) {
            return if self.is_api_key(key.as_bytes()) {
                Ok(Identity::server())
            } else {
                Err(Error::TokenInvalid("unknown API key".into()))
            };
        }
        if let Some(ticket) = query.get("ticket") {
            let (claims, id) = self.tickets.verify(ticket)?;
            if !bus
                .claim_once(
                    &format!("ticket:{id}"),
                    Duration::from_secs(claims.exp.saturating_sub(now_secs()).clamp(1, 3600)),
                )
                .await?
            {
                return Err(Error::TokenInvalid("connect ticket already used".into()));
            }
            return Ok(Identity::from_claims(claims));
        }
        match bearer(headers)?.or_else(|| query.get("token")) {
            Some(token) => self.verify_token(token).map(Identity::from_claims),
            None => Ok(Identity::anonymous()),
        }
    }

    /// Verifies a client token.
    pub fn verify_token(&self, token: &str) -> Result<Claims> {
        match &self.verifier {
            Some(verifier) => verifier.verify(token),
            None => Err(Error::TokenInvalid(
                "this gateway accepts no client tokens (no key configured)".into(),
            )),
        }
    }

    /// A connect ticket for a client that authenticated with a bearer token.
    pub fn ticket(&self, headers: &HeaderMap) -> Result<Option<String>> {
        let Some(token) = bearer(headers)? else {
            return Ok(None);
        };
        let claims = self.verify_token(token)?;
        self.tickets.issue(&claims).map(Some)
    }

    /// Signs a token (HS256 only), for `cascade token`.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        self.verifier
            .as_ref()
            .ok_or("no token.hmac_secret configured")?
            .sign(claims)
    }

    fn is_api_key(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Check every key, without stopping early, so timing says nothing about which.
        self.api_keys
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&digest)
            })
            .into()
    }

    /// Refuses a subscription the channel rules do not allow.
    pub fn check_subscribe(&self, who: &Identity, channel: &Channel) -> Result<()> {
        self.rules.check_subscribe(who, channel)
    }

    /// Refuses a publish the channel rules do not allow.
    pub fn check_publish(&self, who: &Identity, channel: &Channel) -> Result<()> {
        self.rules.check_publish(who, channel)
    }

    /// The channel rules (also the source of per-namespace retention).
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

/// The token of an `Authorization: Bearer` header, if there is one.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::TokenInvalid("Authorization is not ASCII".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(Error::TokenInvalid(
            "Authorization must be 'Bearer <token>'".into(),
        )),
    }
}
