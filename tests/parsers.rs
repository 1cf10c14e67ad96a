//! Property tests of every parser that faces the network: channel names, cursors, WebSocket
//! client frames, query strings, tokens and tickets, channel patterns, and Engine.IO and
//! Socket.IO packets.
//!
//! Each property runs `CASCADE_FUZZ_CASES` generated inputs (default 2000) and prints how
//! many it ran (`cargo test --test parsers -- --nocapture`). Properties: no input panics,
//! errors carry the documented codes, valid inputs round-trip, nothing mutated verifies.
//! A counting allocator bounds what one hostile 1 MiB input may allocate.

#[path = "parsers/harness.rs"]
mod harness;
#[path = "parsers/hostile.rs"]
mod hostile;
#[path = "parsers/socketio.rs"]
mod socketio;
#[path = "parsers/tokens.rs"]
mod tokens;

use cascade::auth::pattern::Pattern;
use cascade::protocol::{Channel, ClientFrame, Cursor};
use cascade::query::Query;
use cascade::transport::requested_cursor;
use harness::{channel_name, epoch, error_code_in, fuzz, hostile_text, json_value};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

// Channel::parse

fn is_valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
}

#[test]
fn channel_names() {
    fuzz("Channel::parse valid", channel_name(), |name| {
        let channel = Channel::parse(&name).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(channel.as_str(), name.as_str());
        let namespace = name.split_once(':').map(|(ns, _)| ns);
        prop_assert_eq!(channel.namespace(), namespace);
        Ok(())
    });
    fuzz("Channel::parse arbitrary", hostile_text(), |name| {
        let result = Channel::parse(&name);
        prop_assert_eq!(result.is_ok(), is_valid_channel(&name), "{:?}", name);
        if let Err(err) = result {
            prop_assert_eq!(err.code(), "bad_channel");
            // Hostile input is echoed at most truncated.
            prop_assert!(err.to_string().len() < 256);
        }
        Ok(())
    });
}

// Cursor::parse

#[test]
fn cursors() {
    let valid = prop::collection::btree_map(
        channel_name(),
        proptest::option::of((epoch(), any::<u64>())),
        0..20,
    )
    .prop_map(|entries| {
        entries
            .into_iter()
            .map(|(channel, position)| match position {
                Some((epoch, offset)) => format!("{channel}@{epoch}:{offset}"),
                None => channel,
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    fuzz("Cursor::parse round trip", valid, |text| {
        let cursor = Cursor::parse(&text, 128).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(cursor.to_string(), text);
        Ok(())
    });
    let cursorish = prop_oneof![
        hostile_text(),
        "([a-c:]{0,3}(@[A-Za-z0-9]{0,3}(:[0-9+-]{0,4})?)?,?){0,6}",
    ];
    fuzz(
        "Cursor::parse arbitrary",
        (cursorish, 1usize..8),
        |(text, max)| {
            match Cursor::parse(&text, max) {
                Ok(cursor) => {
                    prop_assert!(cursor.entries.len() <= max);
                    for (i, (channel, _)) in cursor.entries.iter().enumerate() {
                        prop_assert!(is_valid_channel(channel.as_str()));
                        prop_assert!(cursor.entries[..i].iter().all(|(c, _)| c != channel));
                    }
                    // Formatting is canonical: it parses back to the same cursor.
                    let again = Cursor::parse(&cursor.to_string(), max)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(again, cursor);
                }
                Err(err) => error_code_in(err.code(), &["bad_cursor", "too_many_channels"])?,
            }
            Ok(())
        },
    );
}

// ClientFrame::parse

#[derive(Debug, Clone)]
enum Frame {
    Subscribe(Option<Vec<String>>, Option<String>),
    Unsubscribe(Vec<String>),
    Publish(String, Value, Option<u64>),
}

fn valid_frame() -> impl Strategy<Value = Frame> {
    let names = prop::collection::vec(any::<String>(), 0..5);
    prop_oneof![
        (
            proptest::option::of(names.clone()),
            proptest::option::of(any::<String>())
        )
            .prop_map(|(c, k)| Frame::Subscribe(c, k)),
        names.prop_map(Frame::Unsubscribe),
        (
            any::<String>(),
            json_value(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(c, d, i)| Frame::Publish(c, d, i)),
    ]
}

#[test]
fn client_frames() {
    fuzz(
        "ClientFrame::parse arbitrary text",
        hostile_text(),
        |text| {
            if let Err((_, err)) = ClientFrame::parse(&text) {
                error_code_in(err.code(), &["bad_json", "bad_frame"])?;
            }
            Ok(())
        },
    );
    fuzz("ClientFrame::parse arbitrary JSON", json_value(), |value| {
        let text = value.to_string();
        if let Err((id, err)) = ClientFrame::parse(&text) {
            error_code_in(err.code(), &["bad_json", "bad_frame"])?;
            // The echoed id is the frame's own (objects; serde also reads a struct from
            // an array, so `[7]` echoes 7).
            if let (Some(id), Value::Object(map)) = (id, &value) {
                prop_assert_eq!(Some(id), map.get("id").and_then(Value::as_u64));
            }
        }
        Ok(())
    });
    fuzz("ClientFrame::parse valid frames", valid_frame(), |frame| {
        let text = match &frame {
            Frame::Subscribe(channels, cursor) => {
                let mut v = json!({"op": "subscribe"});
                if let Some(c) = channels {
                    v["channels"] = json!(c);
                }
                if let Some(k) = cursor {
                    v["cursor"] = json!(k);
                }
                v.to_string()
            }
            Frame::Unsubscribe(channels) => {
                json!({"op": "unsubscribe", "channels": channels}).to_string()
            }
            Frame::Publish(channel, data, id) => {
                let mut v = json!({"op": "publish", "channel": channel, "data": data});
                if let Some(id) = id {
                    v["id"] = json!(id);
                }
                v.to_string()
            }
        };
        let parsed = ClientFrame::parse(&text)
            .map_err(|(_, e)| TestCaseError::fail(format!("{text}: {e}")))?;
        match (frame, parsed) {
            (Frame::Subscribe(c, k), ClientFrame::Subscribe { channels, cursor }) => {
                prop_assert_eq!(c, channels);
                prop_assert_eq!(k, cursor);
            }
            (Frame::Unsubscribe(c), ClientFrame::Unsubscribe { channels }) => {
                prop_assert_eq!(c, channels);
            }
            (
                Frame::Publish(c, d, i),
                ClientFrame::Publish {
                    channel, data, id, ..
                },
            ) => {
                prop_assert_eq!(c, channel);
                prop_assert_eq!(d.to_string(), data.get());
                prop_assert_eq!(i, id);
            }
            (frame, parsed) => prop_assert!(false, "{frame:?} parsed as {parsed:?}"),
        }
        Ok(())
    });
}

// Query strings and the subscription they ask for

fn percent_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn query_strings() {
    let queryish = prop_oneof![
        hostile_text(),
        "((channels|cursor|token|ticket|timeout|x)=[a-c0-9@:,%+A-F]{0,12}&?){0,5}",
        (
            prop::collection::vec(any::<u8>(), 0..24),
            prop::collection::vec(any::<u8>(), 0..24)
        )
            .prop_map(|(a, b)| format!(
                "channels={}&cursor={}",
                percent_encode(&a),
                percent_encode(&b)
            )),
    ];
    let override_ = proptest::option::of(hostile_text());
    fuzz(
        "Query::parse + requested_cursor",
        (queryish, override_, 1usize..8),
        |(q, last_event_id, max)| {
            let query = Query::parse(Some(&q));
            let _ = query.number("timeout");
            match requested_cursor(&query, last_event_id.as_deref(), max) {
                Ok(cursor) => {
                    prop_assert!(!cursor.entries.is_empty() && cursor.entries.len() <= max);
                    for (channel, _) in &cursor.entries {
                        prop_assert!(is_valid_channel(channel.as_str()));
                    }
                }
                Err(err) => error_code_in(
                    err.code(),
                    &[
                        "no_channels",
                        "bad_channel",
                        "too_many_channels",
                        "bad_cursor",
                    ],
                )?,
            }
            Ok(())
        },
    );
}

// Pattern::matches against a reference

/// The obvious recursive glob: exponential, so only for small inputs.
fn reference_glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| reference_glob(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && reference_glob(rest, &name[1..]),
    }
}

#[test]
fn patterns() {
    let small = ("[ab:*]{0,8}", "[ab:]{0,10}");
    fuzz(
        "Pattern::matches vs reference (small alphabet)",
        small,
        |(pattern, name)| {
            let expected = reference_glob(pattern.as_bytes(), name.as_bytes());
            prop_assert_eq!(Pattern::new(pattern.as_str()).matches(&name), expected);
            Ok(())
        },
    );
    let any_small = ("(.|\\*){0,6}", ".{0,8}");
    fuzz(
        "Pattern::matches vs reference (any text)",
        any_small,
        |(pattern, name)| {
            let expected = reference_glob(pattern.as_bytes(), name.as_bytes());
            prop_assert_eq!(Pattern::new(pattern.as_str()).matches(&name), expected);
            Ok(())
        },
    );
}
