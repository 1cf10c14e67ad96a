//! Engine.IO and Socket.IO packet decoders (src/transport/socketio/packet.rs): no input
//! panics, what decodes is what a client encodes, and valid packets round-trip.

use cascade::transport::socketio::packet::{
    self, BadPacket, Engine, Kind, decode_engine, decode_socket, split_payload,
};
use proptest::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;

use super::harness::{fuzz, hostile_text, json_value};

#[test]
fn engine_packets_never_panic_and_keep_their_data() {
    fuzz("Engine.IO packet arbitrary", hostile_text(), |text| {
        match decode_engine(&text) {
            Ok(Engine::Message(data) | Engine::Ping(data) | Engine::Pong(data)) => {
                prop_assert_eq!(data, &text[1..]);
            }
            Ok(_) => prop_assert!(matches!(text.as_bytes()[0], b'1' | b'5' | b'6')),
            Err(BadPacket::Binary) => prop_assert!(text.starts_with('b')),
            Err(BadPacket::Malformed) => {
                prop_assert!(text.is_empty() || !b"123456".contains(&text.as_bytes()[0]))
            }
        }
        // A payload splits into packets that join back to it.
        let parts: Vec<&str> = split_payload(&text).collect();
        prop_assert_eq!(parts.join("\u{1e}"), text);
        Ok(())
    });
}

#[test]
fn socket_packets_never_panic() {
    fuzz("Socket.IO packet arbitrary", hostile_text(), |text| {
        if let Ok(p) = decode_socket(&text) {
            prop_assert!(p.namespace.starts_with('/'));
            if p.kind == Kind::Event {
                prop_assert!(p.event().is_some());
            }
        }
        Ok(())
    });
}

/// What socket.io-parser writes for an event: type, namespace (not for `/`), id, JSON.
fn encoded(namespace: &str, id: Option<u64>, name: &str, args: &[Value]) -> String {
    let mut items = vec![Value::String(name.to_owned())];
    items.extend(args.iter().cloned());
    let ns = if namespace == "/" {
        String::new()
    } else {
        format!("{namespace},")
    };
    let id = id.map(|i| i.to_string()).unwrap_or_default();
    format!("2{ns}{id}{}", Value::Array(items))
}

#[test]
fn events_round_trip() {
    let strategy = (
        prop_oneof![Just("/".to_owned()), "/[a-z]{1,8}"],
        proptest::option::of(0u64..1_000_000_000_000),
        "\\PC{0,16}",
        proptest::collection::vec(json_value(), 0..4),
    );
    fuzz(
        "Socket.IO event round trip",
        strategy,
        |(namespace, id, name, args)| {
            let text = encoded(&namespace, id, &name, &args);
            let p =
                decode_socket(&text).map_err(|e| TestCaseError::fail(format!("{e:?}: {text}")))?;
            prop_assert_eq!(p.kind, Kind::Event);
            prop_assert_eq!(p.namespace, namespace.as_str());
            prop_assert_eq!(p.id, id);
            let (got_name, got_args) = p.event().unwrap();
            prop_assert_eq!(got_name, name);
            // Compared as text: serde_json's float parsing is not exact without its
            // `float_roundtrip` feature, and the gateway passes arguments on as written.
            let got: Vec<&str> = got_args.iter().map(|a| a.get()).collect();
            let sent: Vec<String> = args.iter().map(Value::to_string).collect();
            prop_assert_eq!(got, sent);
            Ok(())
        },
    );
}

#[test]
fn server_packets_are_json_clients_read() {
    fuzz(
        "Socket.IO server encodings",
        ("[a-z]{1,12}", json_value(), 0u64..1 << 40),
        |(name, data, id)| {
            let data_text = data.to_string();
            let event = packet::event(&name, data_text.as_bytes(), Some("chat@E:3"));
            let args: Vec<&RawValue> = serde_json::from_str(&event[2..]).unwrap();
            prop_assert_eq!(args[0].get(), Value::String(name).to_string());
            prop_assert_eq!(args[1].get(), data_text.as_str());
            prop_assert_eq!(args[2].get(), "\"chat@E:3\"");
            let ack = packet::ack(id, &data_text);
            let decoded: Vec<&RawValue> =
                serde_json::from_str(&ack[2 + id.to_string().len()..]).unwrap();
            prop_assert_eq!(decoded[0].get(), data_text.as_str());
            Ok(())
        },
    );
}
