//! Engine.IO 4 and Socket.IO 5 packets, as text: decoding what a client sends, encoding
//! what the gateway sends. Pure functions, no I/O; property-tested in tests/parsers.
//!
//! Engine.IO: one type digit (`0` open … `6` noop) and its data; a polling body carries
//! several, separated by `\x1e`. Socket.IO rides in Engine.IO's `4` (message): a type digit
//! (`0` connect … `6` binary ack), a namespace led by `/` and ended by `,` (absent for `/`),
//! an ack id in digits, then JSON. Binary attachments (`b…` payloads, Socket.IO types 5 and
//! 6) are refused: the gateway carries JSON.

use serde_json::value::RawValue;

/// The record separator between the packets of a polling payload.
pub const SEPARATOR: char = '\x1e';

/// Longest ack id a client may use: Socket.IO's counter is a JavaScript number.
const MAX_ACK_DIGITS: usize = 15;

/// Why a packet was refused; the session that sent it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPacket {
    /// Empty, an unknown type, or malformed.
    Malformed,
    /// A binary packet or attachment.
    Binary,
}

/// An Engine.IO packet from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Engine<'a> {
    /// `1`: the client closes the session.
    Close,
    /// `2`: a ping (`2probe` while upgrading).
    Ping(&'a str),
    /// `3`: a pong.
    Pong(&'a str),
    /// `4`: a Socket.IO packet.
    Message(&'a str),
    /// `5`: the upgrade to WebSocket is complete.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Decodes one Engine.IO packet.
pub fn decode_engine(text: &str) -> Result<Engine<'_>, BadPacket> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(BadPacket::Malformed)?;
    let data = chars.as_str();
    match kind {
        '1' => Ok(Engine::Close),
        '2' => Ok(Engine::Ping(data)),
        '3' => Ok(Engine::Pong(data)),
        '4' => Ok(Engine::Message(data)),
        '5' => Ok(Engine::Upgrade),
        '6' => Ok(Engine::Noop),
        'b' => Err(BadPacket::Binary),
        // `0` (open) is the server's alone.
        _ => Err(BadPacket::Malformed),
    }
}

/// The packets of a polling body.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(SEPARATOR)
}

/// A Socket.IO packet's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`: connect to a namespace.
    Connect,
    /// `1`: disconnect from a namespace.
    Disconnect,
    /// `2`: an event.
    Event,
    /// `3`: an acknowledgement.
    Ack,
}

/// A Socket.IO packet from a client.
#[derive(Debug)]
pub struct Socket<'a> {
    /// Its type.
    pub kind: Kind,
    /// Its namespace, `/` when none is named.
    pub namespace: &'a str,
    /// Its ack id, if it asks for (or answers) an acknowledgement.
    pub id: Option<u64>,
    /// Its JSON: a connect's auth object, an event's `[name, ...args]`, an ack's args.
    pub data: Option<&'a RawValue>,
}

/// Decodes one Socket.IO packet. An event must be an array led by its name, a string;
/// a connect's data an object.
pub fn decode_socket(text: &str) -> Result<Socket<'_>, BadPacket> {
    let mut rest = text;
    let kind = match rest.as_bytes().first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'5' | b'6') => return Err(BadPacket::Binary),
        // `4` (connect error) is the server's alone.
        _ => return Err(BadPacket::Malformed),
    };
    rest = &rest[1..];
    let mut namespace = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        namespace = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits == 0 {
        None
    } else if digits > MAX_ACK_DIGITS {
        return Err(BadPacket::Malformed);
    } else {
        Some(rest[..digits].parse().map_err(|_| BadPacket::Malformed)?)
    };
    rest = &rest[digits..];
    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<&RawValue>(rest).map_err(|_| BadPacket::Malformed)?)
    };
    let packet = Socket {
        kind,
        namespace,
        id,
        data,
    };
    let shape_ok = match kind {
        Kind::Event => packet.event().is_some(),
        Kind::Ack => data.is_some_and(|d| d.get().starts_with('[')),
        Kind::Connect => data.is_none_or(|d| d.get().starts_with('{')),
        Kind::Disconnect => true,
    };
    if shape_ok {
        Ok(packet)
    } else {
        Err(BadPacket::Malformed)
    }
}

impl<'a> Socket<'a> {
    /// An event's name and arguments.
    pub fn event(&self) -> Option<(String, Vec<&'a RawValue>)> {
        let mut items: Vec<&'a RawValue> = serde_json::from_str(self.data?.get()).ok()?;
        if items.is_empty() {
            return None;
        }
        let name: String = serde_json::from_str(items.remove(0).get()).ok()?;
        Some((name, items))
    }
}

/// The Engine.IO open packet.
pub fn open(
    sid: &str,
    upgrades: bool,
    ping_interval: u64,
    ping_timeout: u64,
    max: usize,
) -> String {
    let upgrades = if upgrades { r#"["websocket"]"# } else { "[]" };
    // A sid is base64url: no escaping.
    format!(
        r#"0{{"sid":"{sid}","upgrades":{upgrades},"pingInterval":{ping_interval},"pingTimeout":{ping_timeout},"maxPayload":{max}}}"#
    )
}

/// A Socket.IO connect answer for `/` (Engine.IO message included): the socket's id and
/// its private id for recovery.
pub fn connected(socket_id: &str, pid: &str) -> String {
    format!("40{}", serde_json::json!({"sid": socket_id, "pid": pid}))
}

/// A Socket.IO connect error (Engine.IO message included) for `namespace`.
pub fn connect_error(namespace: &str, message: &str, data: Option<serde_json::Value>) -> String {
    let mut body = serde_json::json!({ "message": message });
    if let Some(data) = data {
        body["data"] = data;
    }
    if namespace == "/" {
        format!("44{body}")
    } else {
        // A namespace that is not served is named back as the client wrote it; it may
        // hold anything but `,`.
        format!("44{namespace},{body}")
    }
}

/// A Socket.IO event to `/` (Engine.IO message included): `42["event",data]`, with the
/// recovery offset as its last argument when there is one.
pub fn event(name: &str, data: &[u8], offset: Option<&str>) -> String {
    let mut out = String::with_capacity(16 + name.len() + data.len());
    out.push_str("42[");
    // Event names are checked to need no escaping (protocol::is_event_name), and
    // `message` needs none either.
    out.push('"');
    out.push_str(name);
    out.push_str("\",");
    out.push_str(std::str::from_utf8(data).unwrap_or("null"));
    if let Some(offset) = offset {
        // Cursor text needs no escaping.
        out.push_str(",\"");
        out.push_str(offset);
        out.push('"');
    }
    out.push(']');
    out
}

/// A Socket.IO acknowledgement to `/` (Engine.IO message included) with one argument.
pub fn ack(id: u64, argument: &str) -> String {
    format!("43{id}[{argument}]")
}

/// A Socket.IO disconnect of `/` by the server (Engine.IO message included).
pub const DISCONNECT: &str = "41";

/// Engine.IO's close: the session is over, the client opens another.
pub const CLOSE: &str = "1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets_decode() {
        assert_eq!(decode_engine("2probe"), Ok(Engine::Ping("probe")));
        assert_eq!(decode_engine("3"), Ok(Engine::Pong("")));
        assert_eq!(decode_engine("40{}"), Ok(Engine::Message("0{}")));
        assert_eq!(decode_engine("5"), Ok(Engine::Upgrade));
        assert_eq!(decode_engine("bAAA"), Err(BadPacket::Binary));
        for bad in ["", "0", "7", "x"] {
            assert_eq!(decode_engine(bad), Err(BadPacket::Malformed), "{bad:?}");
        }
        let parts: Vec<_> = split_payload("40\x1e42[\"a\"]").collect();
        assert_eq!(parts, ["40", "42[\"a\"]"]);
    }

    #[test]
    fn socket_packets_decode() {
        let p = decode_socket(r#"0{"token":"t"}"#).unwrap();
        assert_eq!((p.kind, p.namespace, p.id), (Kind::Connect, "/", None));
        assert_eq!(p.data.unwrap().get(), r#"{"token":"t"}"#);
        let p = decode_socket("0/admin,").unwrap();
        assert_eq!((p.kind, p.namespace), (Kind::Connect, "/admin"));
        let p = decode_socket(r#"2/chat,12["say",1,{"a":2}]"#).unwrap();
        assert_eq!((p.namespace, p.id), ("/chat", Some(12)));
        let (name, args) = p.event().unwrap();
        assert_eq!(name, "say");
        assert_eq!(
            args.iter().map(|a| a.get()).collect::<Vec<_>>(),
            ["1", r#"{"a":2}"#]
        );
        let p = decode_socket("1").unwrap();
        assert_eq!(p.kind, Kind::Disconnect);
        assert_eq!(
            decode_socket(r#"51-["a",{"_placeholder":true,"num":0}]"#).unwrap_err(),
            BadPacket::Binary
        );
        for bad in [
            "",
            "4{}",
            "2",
            "2[]",
            "2[1]",
            "2{}",
            "0[]",
            "3",
            "2[\"a\"",
            "29999999999999999[\"a\"]",
        ] {
            assert!(decode_socket(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encodings_are_what_clients_read() {
        assert_eq!(
            open("abc", true, 25000, 20000, 1000000),
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        assert_eq!(connected("s", "p"), r#"40{"sid":"s","pid":"p"}"#);
        assert_eq!(
            connect_error("/x", "Invalid namespace", None),
            r#"44/x,{"message":"Invalid namespace"}"#
        );
        assert_eq!(
            event("msg", b"{\"a\":1}", Some("c@E:1")),
            r#"42["msg",{"a":1},"c@E:1"]"#
        );
        assert_eq!(event("msg", b"1", None), r#"42["msg",1]"#);
        assert_eq!(ack(3, "null"), "433[null]");
    }
}
