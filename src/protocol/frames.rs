//! The frames a WebSocket client sends: subscribe, unsubscribe and publish, parsed
//! without copying the published payload.

use super::truncate_for_message;
use crate::error::Error;

/// A frame a WebSocket client sends.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// `{"op":"subscribe","channels":[..],"cursor":".."}`; either part may be absent.
    Subscribe {
        /// Channel names, unvalidated.
        channels: Option<Vec<String>>,
        /// A cursor, unparsed.
        cursor: Option<String>,
    },
    /// `{"op":"unsubscribe","channels":[..]}`.
    Unsubscribe {
        /// Channel names, unvalidated.
        channels: Vec<String>,
    },
    /// `{"op":"publish","channel":"..","data":<JSON>,"id":7}`, with an optional
    /// `"exclude_client":".."`. One carrying `from` is refused (`from_not_allowed`).
    Publish {
        /// The channel name, unvalidated.
        channel: String,
        /// The payload, as sent.
        data: &'a serde_json::value::RawValue,
        /// Echoed in the `ack` or `error` frame.
        id: Option<u64>,
        /// A client session not to hand the message to, unvalidated.
        exclude_client: Option<String>,
    },
    /// `{"op":"presence","id":3,"channel":".."}`: who is in the channel.
    Presence {
        /// Echoed in the `presence` or `error` frame.
        id: Option<u64>,
        /// The channel name, unvalidated.
        channel: String,
    },
    /// `{"op":"rpc","id":7,"method":"login","params":<JSON>}`: a call to the backend.
    Rpc {
        /// Echoed in the `rpc_result` or `error` frame.
        id: u64,
        /// The backend's method, unvalidated.
        method: String,
        /// The parameters as sent; absent is `null`.
        params: Option<&'a serde_json::value::RawValue>,
    },
}

/// The fields any frame may carry. A flat struct rather than an internally tagged enum:
/// serde buffers tagged enums, which `RawValue` cannot be read from.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrame<'a> {
    op: String,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    method: Option<String>,
    #[serde(borrow, default)]
    params: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    exclude_client: Option<String>,
    /// Read only to refuse it: the sender is the gateway's to set.
    #[serde(borrow, default, deserialize_with = "present")]
    from: Option<&'a serde_json::value::RawValue>,
}

/// `Some` for a present field, even one holding JSON `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de serde_json::value::RawValue>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

impl<'a> ClientFrame<'a> {
    /// Parses a text frame. On failure returns the frame's `id` (when it has a readable
    /// one, to echo it) with a `bad_json` or `bad_frame` error.
    pub fn parse(text: &'a str) -> Result<Self, (Option<u64>, Error)> {
        let raw: RawFrame<'a> = serde_json::from_str(text).map_err(|err| {
            #[derive(serde::Deserialize)]
            struct Id {
                id: Option<u64>,
            }
            let id = serde_json::from_str::<Id>(text).ok().and_then(|f| f.id);
            let err = if err.is_data() {
                Error::BadFrame(err.to_string())
            } else {
                Error::BadJson(err.to_string())
            };
            (id, err)
        })?;
        let missing = |field: &str| (raw.id, Error::BadFrame(format!("{} needs {field}", raw.op)));
        match raw.op.as_str() {
            "subscribe" => Ok(ClientFrame::Subscribe {
                channels: raw.channels,
                cursor: raw.cursor,
            }),
            "unsubscribe" => Ok(ClientFrame::Unsubscribe {
                channels: raw.channels.ok_or_else(|| missing("channels"))?,
            }),
            "publish" if raw.from.is_some() => Err((raw.id, Error::FromNotAllowed)),
            "publish" => Ok(ClientFrame::Publish {
                channel: raw.channel.clone().ok_or_else(|| missing("channel"))?,
                data: raw.data.ok_or_else(|| missing("data"))?,
                id: raw.id,
                exclude_client: raw.exclude_client,
            }),
            "presence" => Ok(ClientFrame::Presence {
                id: raw.id,
                channel: raw.channel.clone().ok_or_else(|| missing("channel"))?,
            }),
            "rpc" => Ok(ClientFrame::Rpc {
                id: raw.id.ok_or_else(|| missing("id"))?,
                method: raw.method.clone().ok_or_else(|| missing("method"))?,
                params: raw.params,
            }),
            other => Err((
                raw.id,
                Error::BadFrame(format!(
                    "unknown op {:?}: use subscribe, unsubscribe, publish, presence or rpc",
                    truncate_for_message(other)
                )),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_with_escapes_and_null_data() {
        let frame =
            ClientFrame::parse(r#"{"op":"publish","channel":"room\/1","data":null,"id":3}"#)
                .unwrap();
        let ClientFrame::Publish {
            channel, data, id, ..
        } = frame
        else {
            panic!("publish");
        };
        assert_eq!(
            (channel.as_str(), data.get(), id),
            ("room/1", "null", Some(3))
        );
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"subscribe","channels":["a"]}"#),
            Ok(ClientFrame::Subscribe { .. })
        ));
        let code = |text: &str| ClientFrame::parse(text).unwrap_err().1.label();
        let frame = ClientFrame::parse(r#"{"op":"rpc","id":7,"method":"login","params":[1]}"#);
        let Ok(ClientFrame::Rpc { id, method, params }) = frame else {
            panic!("rpc");
        };
        assert_eq!(
            (id, method.as_str(), params.map(|p| p.get())),
            (7, "login", Some("[1]"))
        );
        assert_eq!(code(r#"{"op":"rpc","method":"login"}"#), "bad_frame");
        assert_eq!(code("{"), "bad_json");
        assert_eq!(code(r#"{"op":"dance"}"#), "bad_frame");
        assert_eq!(
            code(r#"{"op":"publish","channel":"a","data":1,"from":{"user":"x"}}"#),
            "from_not_allowed"
        );
        assert_eq!(
            code(r#"{"op":"publish","channel":"a","data":1,"from":null}"#),
            "from_not_allowed"
        );
        assert_eq!(code(r#"{"op":"presence","id":3}"#), "bad_frame");
        assert_eq!(code(r#"{"op":"publish","channel":"a"}"#), "bad_frame");
        assert_eq!(code(r#"{"op":"subscribe","extra":1}"#), "bad_frame");
        assert_eq!(code("[]"), "bad_frame");
        assert_eq!(
            ClientFrame::parse(r#"{"op":"x","id":9}"#).unwrap_err().0,
            Some(9)
        );
    }
}
