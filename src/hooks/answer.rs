//! What a backend may answer a hook with, checked before anything of it is used:
//! `{"result":<JSON>}` to go on, `{"error":{"code":"..","message":".."}}` to refuse.
//! Anything else is invalid, and so is a result of the wrong shape for its event.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest backend code passed on.
pub const MAX_CODE_LEN: usize = 64;

/// A hook's answer, once its envelope is checked.
#[derive(Debug)]
pub enum Answer {
    /// Go on, with this result (JSON, possibly `null`).
    Result(Box<RawValue>),
    /// Refused with the backend's code (checked) and message.
    Refused {
        /// 1 to 64 of `a-z 0-9 _`, or `forbidden` in place of anything else.
        code: String,
        /// As the backend gave it (clipped where it is answered).
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// `Some` for a present field, even one holding JSON `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Deserialize::deserialize(deserializer).map(Some)
}

/// Checks an answer's envelope; the reason it is invalid otherwise.
pub fn parse(body: &[u8]) -> Result<Answer, String> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        let mut reason = e.to_string();
        reason.truncate(160);
        reason
    })?;
    match (envelope.result, envelope.error) {
        (Some(result), None) => Ok(Answer::Result(result)),
        (None, Some(error)) => Ok(Answer::Refused {
            code: checked_code(error.code),
            message: error.message,
        }),
        (Some(_), Some(_)) => Err("both result and error".into()),
        (None, None) => Err("neither result nor error".into()),
    }
}

/// `code` when it is 1 to 64 of `a-z 0-9 _`, else `forbidden`: a client must be able to
/// match on it, and a log or a label must not be flooded by it.
pub fn checked_code(code: String) -> String {
    let valid = (1..=MAX_CODE_LEN).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid { code } else { "forbidden".into() }
}

/// The result of an accepted connect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectResult {
    /// The user, acting as a token's `sub`.
    #[serde(default)]
    pub user: Option<String>,
    /// Channels subscribed for the client.
    #[serde(default)]
    pub channels: Vec<String>,
    /// When the session ends, unix seconds.
    #[serde(default)]
    pub expire_at: Option<u64>,
    /// Anything the backend wants back in the later hooks.
    #[serde(default)]
    pub meta: Option<Box<RawValue>>,
}

/// The result of an allowed publish: the data to publish in place of the client's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishResult {
    /// Replacement data, when present (JSON `null` included).
    #[serde(default, deserialize_with = "present")]
    pub data: Option<Box<RawValue>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_checked() {
        let result = |body: &str| match parse(body.as_bytes()) {
            Ok(Answer::Result(raw)) => raw.get().to_owned(),
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(result(r#"{"result":{"a":1}}"#), r#"{"a":1}"#);
        assert_eq!(result(r#"{"result":null}"#), "null");
        let refused = |body: &str| match parse(body.as_bytes()) {
            Ok(Answer::Refused { code, message }) => (code, message),
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(
            refused(r#"{"error":{"code":"banned","message":"go away"}}"#),
            ("banned".into(), "go away".into())
        );
        assert_eq!(refused(r#"{"error":{"code":"Banned!"}}"#).0, "forbidden");
        assert_eq!(refused(r#"{"error":{"code":""}}"#).0, "forbidden");
        let long = format!(r#"{{"error":{{"code":"{}"}}}}"#, "a".repeat(65));
        assert_eq!(refused(&long).0, "forbidden");
        let max = "a".repeat(64);
        assert_eq!(
            refused(&format!(r#"{{"error":{{"code":"{max}"}}}}"#)).0,
            max
        );
        for bad in [
            "",
            "nonsense",
            "[]",
            "{}",
            r#"{"result":1,"error":{"code":"x"}}"#,
            r#"{"result":1,"extra":2}"#,
            r#"{"error":"x"}"#,
            r#"{"error":{"message":"no code"}}"#,
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
