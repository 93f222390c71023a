//! The bench as a Socket.IO client (`--proto socketio`): Engine.IO v4 over a WebSocket
//! carrying Socket.IO v5 packets, through the protocol crate's codec
//! ([`switchboard_protocol::socketio`]).
//!
//! A connection opens with the server's Engine.IO open packet (`0{"sid":..}`), sends
//! the Socket.IO CONNECT with the token (`40{"token":..}`), and is ready once the
//! server's `connected` event arrives. The server's Engine.IO pings (`2`) must be
//! answered (`3`) or the server closes the connection, so whatever reads a connection
//! also answers its pings. Events are `42["name",data,..]`; a request with an ack id
//! (`42<id>["name",data]`) is answered by `43<id>[data]`.
//!
//! As in [`crate::scan`], the hot path (a subscriber's `new_message`) is a byte prefix
//! test; every other layout goes through the codec.

use std::borrow::Cow;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use switchboard_protocol::socketio::{self, EventName, Kind, engine};
use tokio_tungstenite::tungstenite::Message;

use crate::BenchError;
use crate::target::{Ws, closed};

/// The query that selects Engine.IO v4 over a WebSocket, appended to the URL.
pub const QUERY: &str = "EIO=4&transport=websocket";
/// The client's answer to a server ping.
pub const PONG: &str = "3";
/// Most binary attachments accepted when decoding (the bench expects none).
const MAX_ATTACHMENTS: usize = 10;
/// The head of a `new_message` event of the main namespace as servers encode it.
const NEW_MESSAGE_HEAD: &str = r#"42["new_message","#;

/// An Engine.IO ping from the server (`2`, or `2<data>`).
pub fn is_ping(frame: &str) -> bool {
    frame.starts_with('2')
}

/// The pong that answers `ping`: `3` with the ping's data.
pub fn pong(ping: &str) -> String {
    format!("3{}", ping.get(1..).unwrap_or(""))
}

/// The Socket.IO CONNECT of the main namespace with the token as its auth payload.
pub fn connect(token: &str) -> String {
    let auth = json!({ "token": token }).to_string();
    socketio::message(Kind::Connect, 0, "/", None, Some(&auth))
}

/// `join_room` that keeps the connection's other rooms.
pub fn join_room(room: &str) -> String {
    let data = json!({"roomId": room, "exclusive": false}).to_string();
    socketio::event_message("/", "join_room", &data, None)
}

/// A Socket.IO packet of the main namespace inside an Engine.IO message, if `frame`
/// is one.
fn packet(frame: &str) -> Option<socketio::Packet<'_>> {
    match engine::Packet::decode(frame).ok()? {
        engine::Packet::Message(text) => socketio::Packet::decode(text, MAX_ATTACHMENTS)
            .ok()
            .filter(|p| p.namespace == "/"),
        _ => None,
    }
}

/// The name of an event of the main namespace.
pub fn event_name(frame: &str) -> Option<Cow<'_, str>> {
    if let Some(rest) = frame.strip_prefix("42[\"") {
        let end = rest.find(['"', '\\'])?;
        if rest.as_bytes()[end] == b'"' {
            return Some(Cow::Borrowed(&rest[..end]));
        }
    }
    let p = packet(frame)?;
    if p.kind != Kind::Event {
        return None;
    }
    match p.event().ok()?.0 {
        EventName::Text(name) => Some(name),
        EventName::Other(_) => None,
    }
}

/// Whether the frame is a `new_message` event, without parsing it when it can.
pub fn is_new_message(frame: &str) -> bool {
    if frame.starts_with("42[") {
        return frame.starts_with(NEW_MESSAGE_HEAD);
    }
    event_name(frame).is_some_and(|n| n == "new_message")
}

/// An ack: its id, and whether it says `ok` (`{"ok":true,..}` as its first argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    /// `None` when ok; the reason otherwise.
    pub error: Option<String>,
}

/// The ack in `frame`, if it is one.
pub fn ack(frame: &str) -> Option<Ack> {
    if !frame.starts_with("43") {
        return None;
    }
    let p = packet(frame)?;
    let id = p.id.filter(|_| p.kind == Kind::Ack)?;
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        ok: bool,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        code: Option<String>,
    }
    let args: Vec<serde_json::Value> = serde_json::from_str(p.data?).ok()?;
    let error = match args.first().and_then(|a| Answer::deserialize(a).ok()) {
        Some(a) if a.ok => None,
        Some(a) => Some(match (a.error, a.code) {
            (Some(e), Some(c)) => format!("{e} ({c})"),
            (Some(e), None) => e,
            _ => frame.to_string(),
        }),
        None => Some(frame.to_string()),
    };
    Some(Ack { id, error })
}

/// `message (code)` of an `error` event, or the frame itself if it has another shape.
pub fn error_message(frame: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorData {
        message: String,
        #[serde(default)]
        code: Option<String>,
    }
    let data = packet(frame)
        .and_then(|p| p.event().ok())
        .and_then(|(_, args)| args.first().copied())
        .and_then(|a| serde_json::from_str::<ErrorData>(a.get()).ok());
    match data {
        Some(ErrorData {
            message,
            code: Some(code),
        }) => format!("{message} ({code})"),
        Some(ErrorData { message, .. }) => message,
        None => frame.to_string(),
    }
}

/// What a CONNECT_ERROR says (`44{"message":..}` or `44"..."`).
fn connect_error(p: &socketio::Packet<'_>) -> String {
    let value: serde_json::Value = p
        .data
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default();
    match value {
        serde_json::Value::String(s) => s,
        v => v["message"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_string),
    }
}

/// The opening of a connection after the WebSocket upgrade: the open packet, the
/// CONNECT with `token`, the server's CONNECT answer and its `connected` event.
pub async fn open(ws: &mut Ws, token: &str) -> Result<(), BenchError> {
    let mut opened = false;
    let mut accepted = false;
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(text) => text,
            Message::Close(frame) => return Err(closed(frame)),
            _ => continue,
        };
        let unexpected = || BenchError::Unexpected {
            expected: "the Socket.IO handshake",
            frame: text.to_string(),
        };
        match engine::Packet::decode(&text).map_err(|_| unexpected())? {
            engine::Packet::Open(_) if !opened => {
                opened = true;
                ws.send(Message::text(connect(token))).await?;
            }
            engine::Packet::Ping(_) => ws.send(Message::text(pong(&text))).await?,
            engine::Packet::Close => return Err(closed(None)),
            engine::Packet::Message(_) if opened => {
                let Some(p) = packet(&text) else { continue };
                match p.kind {
                    Kind::Connect => accepted = true,
                    Kind::ConnectError => return Err(BenchError::Server(connect_error(&p))),
                    Kind::Disconnect => return Err(closed(None)),
                    Kind::Event if accepted => match event_name(&text).as_deref() {
                        Some("connected") => return Ok(()),
                        Some("error") => return Err(BenchError::Server(error_message(&text))),
                        _ => {}
                    },
                    _ => {}
                }
            }
            engine::Packet::Noop => {}
            _ => return Err(unexpected()),
        }
    }
    Err(closed(None))
}

/// Reads until the event `name`, answering pings; an `error` event or the end of the
/// connection is an error.
pub async fn wait_for(ws: &mut Ws, name: &'static str) -> Result<(), BenchError> {
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(text) => {
                if is_ping(&text) {
                    ws.send(Message::text(pong(&text))).await?;
                    continue;
                }
                match event_name(&text).as_deref() {
                    Some(n) if n == name => return Ok(()),
                    Some("error") => return Err(BenchError::Server(error_message(&text))),
                    _ if text.starts_with("41") || text.as_str() == "1" => {
                        return Err(closed(None));
                    }
                    _ => {}
                }
            }
            Message::Close(frame) => return Err(closed(frame)),
            _ => {}
        }
    }
    Err(closed(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `new_message` as Switchboard encodes it: the recovery offset rides last.
    const DELIVERED: &str = r#"42["new_message",{"id":"0193a1b2","roomId":"bench","sender":{"id":"pub-0","username":"pub-0"},"content":"xxxxxxxx|3:17|t=1732000000123456","type":"text","metadata":{},"timestamp":1732000000124,"offset":42},"42-e1-bench"]"#;

    #[test]
    fn recognises_events_and_finds_the_stamp() {
        assert!(is_new_message(DELIVERED));
        assert_eq!(event_name(DELIVERED).as_deref(), Some("new_message"));
        let stamp = crate::scan::stamp(DELIVERED).unwrap();
        assert_eq!((stamp.publisher, stamp.seq), (3, 17));
        assert_eq!(stamp.sent_us, 1_732_000_000_123_456);
        // Node's socket.io: no offset argument.
        let node = r#"42["new_message",{"content":"x|0:1|t=9","offset":1}]"#;
        assert!(is_new_message(node));
        assert_eq!(crate::scan::stamp(node).map(|s| s.sent_us), Some(9));

        assert!(!is_new_message(r#"42["room_joined",{"roomId":"r"}]"#));
        assert!(!is_new_message(r#"43[{"ok":true}]"#));
        assert!(!is_new_message("2"));
        assert!(!is_new_message(r#"42/webrtc,["new_message",{}]"#));
        assert_eq!(
            event_name(r#"42["connected",{"user":{}}]"#).as_deref(),
            Some("connected")
        );
        assert_eq!(event_name(r#"42["a\"b",1]"#).as_deref(), Some("a\"b"));
        assert_eq!(event_name("3"), None);
    }

    #[test]
    fn acks_and_errors() {
        assert_eq!(
            ack(r#"437[{"ok":true,"id":"m1","offset":3}]"#),
            Some(Ack { id: 7, error: None })
        );
        let refused = ack(r#"4312[{"ok":false,"error":"Not a member","code":"FORBIDDEN"}]"#);
        assert_eq!(
            refused,
            Some(Ack {
                id: 12,
                error: Some("Not a member (FORBIDDEN)".into())
            })
        );
        assert_eq!(ack(DELIVERED), None);
        assert_eq!(
            error_message(
                r#"42["error",{"message":"Invalid room ID","code":"INVALID_ROOM","timestamp":1}]"#
            ),
            "Invalid room ID (INVALID_ROOM)"
        );
    }

    #[test]
    fn requests_decode_with_the_codec() {
        let c = connect("abc");
        let engine::Packet::Message(text) = engine::Packet::decode(&c).unwrap() else {
            panic!("{c}")
        };
        let p = socketio::Packet::decode(text, 0).unwrap();
        assert_eq!(
            (p.kind, p.data),
            (Kind::Connect, Some(r#"{"token":"abc"}"#))
        );

        let j = join_room("r-1");
        assert_eq!(event_name(&j).as_deref(), Some("join_room"));
        let p = packet(&j).unwrap();
        let (_, args) = p.event().unwrap();
        let data: serde_json::Value = serde_json::from_str(args[0].get()).unwrap();
        assert_eq!(data, json!({"roomId": "r-1", "exclusive": false}));

        assert!(is_ping("2") && !is_ping("3"));
        assert_eq!(pong("2"), "3");
        assert_eq!(pong("2probe"), "3probe");
    }
}
