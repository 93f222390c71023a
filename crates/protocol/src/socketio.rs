//! Engine.IO v4 and Socket.IO v5 packets: decoding and encoding, no I/O.
//!
//! Engine.IO carries packets over a WebSocket (one packet per frame; a binary frame is
//! a binary message) or over HTTP long-polling (packets joined by `\x1e`, a binary one
//! written as `b<base64>`). Its `message` packets carry Socket.IO packets:
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, binary attachments
//! following an event as their own Engine.IO messages.
//!
//! Decoding borrows from its input and validates as the reference parser does
//! (socket.io-parser's `isPacketValid`): a packet that decodes is well-formed, so a
//! server can close the connection on any error, as the protocol says.

use std::fmt;

use serde_json::value::RawValue;

/// Engine.IO's record separator between packets of a polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Engine.IO packets.
pub mod engine {
    use super::DecodeError;

    /// One Engine.IO text packet.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Packet<'a> {
        Open(&'a str),
        Close,
        Ping(&'a str),
        Pong(&'a str),
        Message(&'a str),
        Upgrade,
        Noop,
    }

    impl<'a> Packet<'a> {
        /// Decodes a text packet: its type digit and the data after it.
        pub fn decode(text: &'a str) -> Result<Packet<'a>, DecodeError> {
            let mut chars = text.chars();
            let kind = chars.next().ok_or(DecodeError("empty packet"))?;
            let data = &text[kind.len_utf8()..];
            Ok(match kind {
                '0' => Packet::Open(data),
                '1' => Packet::Close,
                '2' => Packet::Ping(data),
                '3' => Packet::Pong(data),
                '4' => Packet::Message(data),
                '5' => Packet::Upgrade,
                '6' => Packet::Noop,
                _ => return Err(DecodeError("unknown packet type")),
            })
        }
    }

    /// One packet of a polling payload: text, or a binary message (`b<base64>`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Item<'a> {
        Text(Packet<'a>),
        Binary(Vec<u8>),
    }

    /// Splits a polling payload into its packets.
    pub fn decode_payload(body: &str) -> impl Iterator<Item = Result<Item<'_>, DecodeError>> {
        body.split(super::RECORD_SEPARATOR).map(|part| {
            if let Some(b64) = part.strip_prefix('b') {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map(Item::Binary)
                    .map_err(|_| DecodeError("invalid base64 packet"))
            } else {
                Packet::decode(part).map(Item::Text)
            }
        })
    }

    /// A binary message as a polling payload item.
    pub fn encode_binary(data: &[u8]) -> String {
        use base64::Engine as _;
        let mut out = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        out.push('b');
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut out);
        out
    }
}

/// The type of a Socket.IO packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

impl Kind {
    fn from_digit(b: u8) -> Option<Kind> {
        Some(match b {
            b'0' => Kind::Connect,
            b'1' => Kind::Disconnect,
            b'2' => Kind::Event,
            b'3' => Kind::Ack,
            b'4' => Kind::ConnectError,
            b'5' => Kind::BinaryEvent,
            b'6' => Kind::BinaryAck,
            _ => return None,
        })
    }

    pub fn is_binary(self) -> bool {
        matches!(self, Kind::BinaryEvent | Kind::BinaryAck)
    }

    pub fn digit(self) -> char {
        (b'0' + self as u8) as char
    }
}

/// Event names a client may not emit: they are the library's own.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// One decoded Socket.IO packet, borrowing its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: Kind,
    /// Binary attachments that follow (binary types only).
    pub attachments: usize,
    /// `/` unless the packet names another.
    pub namespace: &'a str,
    pub id: Option<u64>,
    /// The JSON payload, if any.
    pub data: Option<&'a str>,
}

impl<'a> Packet<'a> {
    /// Decodes and validates a packet; at most `max_attachments` binary attachments.
    pub fn decode(text: &'a str, max_attachments: usize) -> Result<Packet<'a>, DecodeError> {
        let bytes = text.as_bytes();
        let kind = bytes
            .first()
            .and_then(|b| Kind::from_digit(*b))
            .ok_or(DecodeError("unknown packet type"))?;
        let mut i = 1;
        let mut attachments = 0;
        if kind.is_binary() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || bytes.get(i) != Some(&b'-') || i - start > 6 {
                return Err(DecodeError("invalid attachment count"));
            }
            attachments = text[start..i]
                .parse()
                .map_err(|_| DecodeError("invalid attachment count"))?;
            if attachments > max_attachments {
                return Err(DecodeError("too many attachments"));
            }
            i += 1;
        }
        let mut namespace = "/";
        if bytes.get(i) == Some(&b'/') {
            let end = text[i..].find(',').map_or(text.len(), |n| i + n);
            namespace = &text[i..end];
            i = (end + 1).min(text.len());
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let id = if i > start {
            if i - start > 15 {
                return Err(DecodeError("invalid ack id"));
            }
            Some(
                text[start..i]
                    .parse()
                    .map_err(|_| DecodeError("invalid ack id"))?,
            )
        } else {
            None
        };
        let data = (i < text.len()).then(|| &text[i..]);
        let packet = Packet {
            kind,
            attachments,
            namespace,
            id,
            data,
        };
        packet.validate()?;
        Ok(packet)
    }

    fn validate(&self) -> Result<(), DecodeError> {
        let value: Option<serde_json::Value> = match self.data {
            Some(d) => Some(serde_json::from_str(d).map_err(|_| DecodeError("invalid payload"))?),
            None => None,
        };
        let ok = match self.kind {
            Kind::Connect => matches!(value, None | Some(serde_json::Value::Object(_))),
            Kind::Disconnect => value.is_none(),
            Kind::ConnectError => matches!(
                value,
                Some(serde_json::Value::String(_) | serde_json::Value::Object(_))
            ),
            Kind::Event | Kind::BinaryEvent => match &value {
                Some(serde_json::Value::Array(a)) => match a.first() {
                    Some(serde_json::Value::String(name)) => {
                        !RESERVED_EVENTS.contains(&name.as_str())
                    }
                    Some(serde_json::Value::Number(_)) => true,
                    _ => false,
                },
                _ => false,
            },
            Kind::Ack | Kind::BinaryAck => {
                self.id.is_some() && matches!(value, Some(serde_json::Value::Array(_)))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(DecodeError("invalid payload"))
        }
    }

    /// An event's name and arguments (the payload array, split).
    pub fn event(&self) -> Result<(EventName<'a>, Vec<&'a RawValue>), DecodeError> {
        let data = self.data.ok_or(DecodeError("invalid payload"))?;
        let mut items: Vec<&'a RawValue> =
            serde_json::from_str(data).map_err(|_| DecodeError("invalid payload"))?;
        if items.is_empty() {
            return Err(DecodeError("invalid payload"));
        }
        let first = items.remove(0);
        let name = match serde_json::from_str::<std::borrow::Cow<'a, str>>(first.get()) {
            Ok(s) => EventName::Text(s),
            Err(_) => EventName::Other(first),
        };
        Ok((name, items))
    }
}

/// An event's name: a string, or (the protocol allows it) a number.
#[derive(Debug, Clone)]
pub enum EventName<'a> {
    Text(std::borrow::Cow<'a, str>),
    Other(&'a RawValue),
}

/// Appends the packet header `<type>[<attachments>-][<nsp>,][<id>]` to `out`.
pub fn write_header(
    out: &mut String,
    kind: Kind,
    attachments: usize,
    namespace: &str,
    id: Option<u64>,
) {
    use std::fmt::Write as _;
    out.push(kind.digit());
    if kind.is_binary() {
        let _ = write!(out, "{attachments}-");
    }
    if namespace != "/" {
        out.push_str(namespace);
        out.push(',');
    }
    if let Some(id) = id {
        let _ = write!(out, "{id}");
    }
}

/// An Engine.IO message carrying an event: `42[/nsp,]["name",<data>(,<extra>)]`, where
/// `data` is JSON and `extra` an optional last argument (a recovery offset).
pub fn event_message(namespace: &str, name: &str, data: &str, extra: Option<&str>) -> String {
    let mut out = String::with_capacity(namespace.len() + name.len() + data.len() + 16);
    out.push('4');
    write_header(&mut out, Kind::Event, 0, namespace, None);
    out.push('[');
    push_json_string(&mut out, name);
    out.push(',');
    out.push_str(data);
    if let Some(extra) = extra {
        out.push(',');
        push_json_string(&mut out, extra);
    }
    out.push(']');
    out
}

/// An Engine.IO message carrying an ack `43[/nsp,]<id>[<data>]`.
pub fn ack_message(namespace: &str, id: u64, data: &str) -> String {
    let mut out = String::with_capacity(namespace.len() + data.len() + 16);
    out.push('4');
    write_header(&mut out, Kind::Ack, 0, namespace, Some(id));
    out.push('[');
    out.push_str(data);
    out.push(']');
    out
}

/// An Engine.IO message carrying any Socket.IO packet with a JSON payload.
pub fn message(
    kind: Kind,
    attachments: usize,
    namespace: &str,
    id: Option<u64>,
    data: Option<&str>,
) -> String {
    let mut out = String::with_capacity(namespace.len() + data.map_or(0, str::len) + 16);
    out.push('4');
    write_header(&mut out, kind, attachments, namespace, id);
    if let Some(d) = data {
        out.push_str(d);
    }
    out
}

fn push_json_string(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("strings serialize"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Packet<'_>, DecodeError> {
        Packet::decode(s, 10)
    }

    #[test]
    fn engine_packets() {
        assert_eq!(
            engine::Packet::decode("2probe"),
            Ok(engine::Packet::Ping("probe"))
        );
        assert_eq!(
            engine::Packet::decode("4hello"),
            Ok(engine::Packet::Message("hello"))
        );
        assert_eq!(engine::Packet::decode("6"), Ok(engine::Packet::Noop));
        assert!(engine::Packet::decode("").is_err());
        assert!(engine::Packet::decode("9").is_err());
        assert!(engine::Packet::decode("é").is_err());
    }

    #[test]
    fn polling_payloads() {
        let items: Vec<_> = engine::decode_payload("4hello\x1ebAQID\x1e2").collect();
        assert_eq!(
            items,
            vec![
                Ok(engine::Item::Text(engine::Packet::Message("hello"))),
                Ok(engine::Item::Binary(vec![1, 2, 3])),
                Ok(engine::Item::Text(engine::Packet::Ping(""))),
            ]
        );
        assert_eq!(engine::encode_binary(&[1, 2, 3]), "bAQID");
        assert!(engine::decode_payload("b!!").next().unwrap().is_err());
    }

    #[test]
    fn socketio_packets_from_the_protocol_document() {
        let p = decode("0").unwrap();
        assert_eq!((p.kind, p.namespace, p.data), (Kind::Connect, "/", None));
        let p = decode(r#"0/admin,{"token":"123"}"#).unwrap();
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.data, Some(r#"{"token":"123"}"#));
        let p = decode("1/admin,").unwrap();
        assert_eq!((p.kind, p.namespace), (Kind::Disconnect, "/admin"));
        let p = decode(r#"2["hello",1]"#).unwrap();
        assert_eq!(p.kind, Kind::Event);
        let p = decode(r#"2/admin,456["project:delete",123]"#).unwrap();
        assert_eq!((p.namespace, p.id), ("/admin", Some(456)));
        let p = decode(r#"3/admin,456[]"#).unwrap();
        assert_eq!((p.kind, p.id), (Kind::Ack, Some(456)));
        let p = decode(r#"4{"message":"Not authorized"}"#).unwrap();
        assert_eq!(p.kind, Kind::ConnectError);
        let p = decode(r#"51-["hello",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!((p.kind, p.attachments), (Kind::BinaryEvent, 1));
        let p = decode(r#"61-/admin,456[{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.id),
            (Kind::BinaryAck, 1, Some(456))
        );
    }

    #[test]
    fn invalid_socketio_packets() {
        for bad in [
            "",
            "7",
            "a",
            "2",
            "2{}",
            "2[]",
            "2[{}]",
            r#"2["connect"]"#,
            r#"2["disconnect",1]"#,
            "2[\"a\"",
            "3[]",
            "3/admin,[]",
            "0[]",
            "0\"x\"",
            "1{}",
            "4",
            "5[\"a\"]",
            "5-[\"a\"]",
            "511-[\"a\"]",
            "2999999999999999999[\"a\"]",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn event_names_and_arguments() {
        let p = decode(r#"2["hi",{"a":1},"x"]"#).unwrap();
        let (name, args) = p.event().unwrap();
        assert!(matches!(name, EventName::Text(n) if n == "hi"));
        assert_eq!(
            args.iter().map(|a| a.get()).collect::<Vec<_>>(),
            [r#"{"a":1}"#, r#""x""#]
        );
        let p = decode(r#"2[1]"#).unwrap();
        assert!(matches!(p.event().unwrap().0, EventName::Other(_)));
    }

    #[test]
    fn encoding() {
        assert_eq!(
            event_message("/", "new_message", "{}", None),
            r#"42["new_message",{}]"#
        );
        assert_eq!(
            event_message("/webrtc", "peer_left", "{}", Some("7")),
            r#"42/webrtc,["peer_left",{},"7"]"#
        );
        assert_eq!(ack_message("/", 3, r#"{"ok":true}"#), r#"433[{"ok":true}]"#);
        assert_eq!(
            message(Kind::BinaryAck, 1, "/", Some(2), Some("[1]")),
            "461-2[1]"
        );
        assert_eq!(event_message("/", "a\"b", "1", None), r#"42["a\"b",1]"#);
    }
}
