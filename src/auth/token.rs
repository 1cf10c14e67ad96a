//! JSON Web Tokens: client tokens verified with a shared secret (HS256) or a public key
//! (RS256, ES256), and the gateway's own short-lived connect tickets.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::protocol::{Channel, MAX_CHANNEL_LEN, truncate_for_message};

/// The claims Cascade reads from a client token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id; `user:<sub>` is this user's personal channel.
    pub sub: String,
    /// Expiry, unix seconds. Required.
    pub exp: u64,
    /// Patterns of channels the user may subscribe to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Patterns of channels the user may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

impl Claims {
    /// Refuses claims that would sign a token the gateway cannot use: a `sub` whose
    /// personal channel `user:<sub>` is not a channel name, or a pattern no channel name
    /// can match (outside the channel alphabet, or longer than a name).
    pub fn check(&self) -> Result<(), String> {
        let personal = format!("{}:{}", crate::auth::rules::PERSONAL, self.sub);
        if self.sub.is_empty() || Channel::parse(&personal).is_err() {
            return Err(format!(
                "sub {:?}: user:<sub> must be a channel name, so use 1 to {} of \
                 A-Z a-z 0-9 _ - . : /",
                truncate_for_message(&self.sub),
                MAX_CHANNEL_LEN - crate::auth::rules::PERSONAL.len() - 1
            ));
        }
        for pattern in self.channels.iter().chain(&self.publish) {
            // A pattern is a channel name in which `*` stands for any run of characters.
            Channel::parse(&pattern.replace('*', "a")).map_err(|_| {
                format!(
                    "channel pattern {:?}: use 1 to {MAX_CHANNEL_LEN} of A-Z a-z 0-9 _ - . : / \
                     and * (any run of characters)",
                    truncate_for_message(pattern)
                )
            })?;
        }
        Ok(())
    }
}

/// A client token's claims with the dates Cascade checks itself (see [`not_yet_valid`]).
#[derive(Deserialize)]
struct Dated {
    #[serde(flatten)]
    claims: Claims,
    /// Not before, unix seconds (a NumericDate may have a fraction).
    nbf: Option<f64>,
    /// Issued at, unix seconds.
    iat: Option<f64>,
}

/// How far ahead of the gateway's clock a token's `nbf` or `iat` may be, in seconds: the
/// clock skew tolerated between the issuer and the gateway. `exp` has none.
pub const CLOCK_LEEWAY_SECS: u64 = 60;

/// Ticket claims: the client's claims plus the ticket's own id and expiry.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TicketClaims {
    #[serde(flatten)]
    claims: Claims,
    /// The original token's expiry: a ticket never outlives the token it came from.
    token_exp: u64,
    /// Single-use id.
    jti: String,
    /// Always `"ticket"`, so that a ticket is never mistaken for a token.
    typ: String,
}

/// Verifies client tokens with the configured key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// Present for HS256, so that `cascade token` can sign with the same secret.
    signing: Option<EncodingKey>,
}

/// Seconds since the unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    // No leeway for `exp`; `nbf` and `iat` get `CLOCK_LEEWAY_SECS`, checked in `verify`
    // since the library has one leeway for all three.
    validation.leeway = 0;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation
}

/// Refuses a token whose `nbf` or `iat` is more than [`CLOCK_LEEWAY_SECS`] after `now`:
/// one that is not valid yet, or that claims to be issued in the future.
fn not_yet_valid(nbf: Option<f64>, iat: Option<f64>, now: u64) -> Result<(), Error> {
    let latest = (now + CLOCK_LEEWAY_SECS) as f64;
    for (claim, at) in [("nbf", nbf), ("iat", iat)] {
        if let Some(at) = at.filter(|&at| at > latest) {
            return Err(Error::TokenInvalid(format!(
                "the token is not yet valid: its {claim} is {:.0} s ahead of the gateway's \
                 clock (leeway {CLOCK_LEEWAY_SECS} s)",
                at - now as f64
            )));
        }
    }
    Ok(())
}

fn token_error(err: jsonwebtoken::errors::Error) -> Error {
    match err.kind() {
        ErrorKind::ExpiredSignature => Error::TokenExpired,
        _ => Error::TokenInvalid(err.to_string()),
    }
}

impl Verifier {
    /// An HS256 verifier (and signer) with a shared secret.
    pub fn hmac(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 16 {
            return Err("token.hmac_secret must be at least 16 bytes".into());
        }
        Ok(Verifier {
            key: DecodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            validation: validation(Algorithm::HS256),
            signing: Some(EncodingKey::from_secret(secret).map_err(|e| e.to_string())?),
        })
    }

    /// An RS256 or ES256 verifier from a PEM public key.
    pub fn public_key(algorithm: &str, pem: &[u8]) -> Result<Self, String> {
        let (algorithm, key) = match algorithm {
            "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)),
            "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(pem)),
            other => {
                return Err(format!(
                    "token.algorithm {other:?}: use HS256, RS256 or ES256"
                ));
            }
        };
        Ok(Verifier {
            key: key.map_err(|e| format!("token.public_key_file: {e}"))?,
            validation: validation(algorithm),
            signing: None,
        })
    }

    /// Verifies a token's signature, expiry, `nbf` and `iat`, and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        if token.len() > 8 * 1024 {
            return Err(Error::TokenInvalid("token longer than 8 KiB".into()));
        }
        let dated = jsonwebtoken::decode::<Dated>(token, &self.key, &self.validation)
            .map_err(token_error)?
            .claims;
        not_yet_valid(dated.nbf, dated.iat, now_secs())?;
        Ok(dated.claims)
    }

    /// Signs `claims` (HS256 only): what `cascade token` prints. Refuses claims the
    /// gateway could not use ([`Claims::check`]).
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let key = self
            .signing
            .as_ref()
            .ok_or("signing needs token.hmac_secret (HS256)")?;
        claims.check()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).map_err(|e| e.to_string())
    }
}

/// Issues and verifies connect tickets: short-lived, single-use stand-ins for a token in
/// a WebSocket or SSE URL, where a long-lived token would end up in access logs.
pub struct Tickets {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Ticket lifetime, seconds.
    ttl: u64,
}

impl Tickets {
    /// Tickets signed with `secret`; nodes that share it accept each other's tickets.
    pub fn new(secret: &[u8], ttl: u64) -> Result<Self, String> {
        Ok(Tickets {
            encoding: EncodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            decoding: DecodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            ttl: ttl.max(1),
        })
    }

    /// A ticket carrying `claims`, valid for the ticket lifetime (never past the token).
    pub fn issue(&self, claims: &Claims) -> Result<String, Error> {
        let ticket = TicketClaims {
            claims: Claims {
                exp: claims.exp.min(now_secs() + self.ttl),
                ..claims.clone()
            },
            token_exp: claims.exp,
            jti: crate::protocol::Epoch::random().to_string()
                + crate::protocol::Epoch::random().as_str(),
            typ: "ticket".into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &ticket, &self.encoding)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Verifies a ticket; returns the client's claims (with the token's expiry) and the
    /// ticket id that must be claimed once.
    pub fn verify(&self, ticket: &str) -> Result<(Claims, String), Error> {
        if ticket.len() > 8 * 1024 {
            return Err(Error::TokenInvalid("ticket longer than 8 KiB".into()));
        }
        let data = jsonwebtoken::decode::<TicketClaims>(
            ticket,
            &self.decoding,
            &validation(Algorithm::HS256),
        )
        .map_err(token_error)?;
        let ticket = data.claims;
        if ticket.typ != "ticket" {
            return Err(Error::TokenInvalid("not a connect ticket".into()));
        }
        let claims = Claims {
            exp: ticket.token_exp,
            ..ticket.claims
        };
        Ok((claims, ticket.jti))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            channels: vec!["room:*".into()],
            publish: vec![],
        }
    }

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let verifier = Verifier::hmac(SECRET).unwrap();
        let token = verifier.sign(&claims(now_secs() + 60)).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().sub, "alice");
        let mut tampered = token.clone();
        tampered.pop();
        assert_eq!(
            verifier.verify(&tampered).unwrap_err().code(),
            "token_invalid"
        );
        let other = Verifier::hmac(b"another-secret-of-16+bytes").unwrap();
        assert_eq!(other.verify(&token).unwrap_err().code(), "token_invalid");
        for garbage in ["", "a.b", "a.b.c", "....", &"x".repeat(10_000)] {
            assert_eq!(
                verifier.verify(garbage).unwrap_err().code(),
                "token_invalid"
            );
        }
    }

    #[test]
    fn expired_tokens_say_so() {
        let verifier = Verifier::hmac(SECRET).unwrap();
        let token = verifier.sign(&claims(now_secs() - 5)).unwrap();
        assert_eq!(verifier.verify(&token).unwrap_err().code(), "token_expired");
    }

    /// A token signed with whatever `claims` JSON, `nbf` and `iat` included.
    fn signed(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    #[test]
    fn tokens_from_the_future_are_not_yet_valid() {
        let verifier = Verifier::hmac(SECRET).unwrap();
        let now = now_secs();
        let exp = now + 3600;
        for (claim, at) in [
            ("nbf", now + 120),
            ("iat", now + 120),
            ("nbf", now + 10_000),
        ] {
            let token = signed(serde_json::json!({"sub": "alice", "exp": exp, claim: at}));
            let err = verifier.verify(&token).unwrap_err();
            assert_eq!(err.code(), "token_invalid", "{claim} {at}: {err}");
            assert!(err.to_string().contains("not yet valid"), "{claim}: {err}");
        }
        // Within the leeway (a clock a little ahead of ours), and in the past, they are.
        for (claim, at) in [
            ("nbf", now + 30),
            ("iat", now + 30),
            ("nbf", now - 600),
            ("iat", now - 600),
        ] {
            let token = signed(serde_json::json!({"sub": "alice", "exp": exp, claim: at}));
            assert_eq!(
                verifier.verify(&token).unwrap().sub,
                "alice",
                "{claim} {at}"
            );
        }
        // NumericDate may have a fraction; a date that is not a number is refused.
        let token = signed(serde_json::json!({"sub": "a", "exp": exp, "nbf": now as f64 - 0.5}));
        assert!(verifier.verify(&token).is_ok());
        let token = signed(serde_json::json!({"sub": "a", "exp": exp, "nbf": "soon"}));
        assert_eq!(verifier.verify(&token).unwrap_err().code(), "token_invalid");
    }

    #[test]
    fn only_claims_the_gateway_can_use_are_signed() {
        let verifier = Verifier::hmac(SECRET).unwrap();
        let with = |sub: &str, channels: &[&str]| Claims {
            sub: sub.into(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            ..claims(now_secs() + 60)
        };
        for bad in [
            with("bad name", &[]),
            with("", &[]),
            with(&"a".repeat(124), &[]),
            with("alice", &["a b"]),
            with("alice", &["room:*", ""]),
            with("alice", &["x@y"]),
        ] {
            let err = verifier.sign(&bad).unwrap_err();
            assert!(err.contains("A-Z a-z 0-9"), "{bad:?}: {err}");
        }
        for good in [
            with("alice", &["room:*", "*", "chat"]),
            with(&"a".repeat(123), &[]),
        ] {
            assert!(verifier.sign(&good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Verifier::hmac(b"short").is_err());
    }

    #[test]
    fn tickets_carry_claims_but_are_not_tokens() {
        let tickets = Tickets::new(SECRET, 30).unwrap();
        let exp = now_secs() + 3600;
        let ticket = tickets.issue(&claims(exp)).unwrap();
        let (back, jti) = tickets.verify(&ticket).unwrap();
        assert_eq!(back, claims(exp));
        assert!(!jti.is_empty());
        // A token signed with the same secret is not a ticket.
        let token = Verifier::hmac(SECRET).unwrap().sign(&claims(exp)).unwrap();
        assert!(tickets.verify(&token).is_err());
    }
}
