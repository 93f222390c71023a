//! The requests the bench sends, encoded once.
//!
//! Setup frames go through the protocol crate's envelope encoder. `send_message` is
//! on the hot path, so its fixed head (room, padding) is encoded once and each frame
//! only appends the stamp and the `ref` (Socket.IO: the ack id goes in front of the
//! fixed part, written with the protocol crate's packet header).

use serde_json::json;
use switchboard_protocol::socketio::{self, Kind};
use switchboard_protocol::{Ref, encode};

use crate::scan;
use crate::target::Proto;

/// `join_room` that keeps the connection's other rooms.
pub fn join_room(room: &str) -> String {
    encode(
        "join_room",
        &json!({"roomId": room, "exclusive": false}),
        None,
    )
}

/// `ping` with a numeric `ref`, answered by `pong` with the same `ref`.
pub fn ping(reference: u64) -> String {
    encode("ping", &json!({}), Some(&Ref::Number(reference.into())))
}

/// `send_message` frames of one publisher into one room.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    /// Native: everything up to the stamp,
    /// `{"type":"send_message","data":{"roomId":..,"content":"xxx`. Socket.IO: what
    /// follows the packet header, `["send_message",{"roomId":..,"content":"xxx`.
    head: String,
    publisher: u32,
    proto: Proto,
}

impl MessageTemplate {
    /// `padding` bytes of content precede the stamp.
    pub fn new(room: &str, padding: usize, publisher: u32) -> MessageTemplate {
        MessageTemplate::for_proto(Proto::Native, room, padding, publisher)
    }

    /// The same in `proto`.
    pub fn for_proto(proto: Proto, room: &str, padding: usize, publisher: u32) -> MessageTemplate {
        let room = serde_json::to_string(room).expect("a str serializes");
        let mut head = match proto {
            Proto::Native => {
                format!(r#"{{"type":"send_message","data":{{"roomId":{room},"content":""#)
            }
            Proto::SocketIo => format!(r#"["send_message",{{"roomId":{room},"content":""#),
        };
        head.extend(std::iter::repeat_n('x', padding));
        MessageTemplate {
            head,
            publisher,
            proto,
        }
    }

    /// One frame; with `reference` the server acks it (native: once durable, with
    /// `ack`; Socket.IO: `reference` is the ack id, answered by an ack packet).
    pub fn frame(&self, seq: u64, sent_us: u64, reference: Option<u64>) -> String {
        let mut out = String::with_capacity(self.head.len() + 80);
        if self.proto == Proto::SocketIo {
            // `42<id>`: an Engine.IO message carrying an event.
            out.push('4');
            socketio::write_header(&mut out, Kind::Event, 0, "/", reference);
        }
        out.push_str(&self.head);
        scan::write_stamp(&mut out, self.publisher, seq, sent_us);
        if self.proto == Proto::SocketIo {
            out.push_str("\"}]");
            return out;
        }
        out.push_str("\"}");
        if let Some(r) = reference {
            use std::fmt::Write;
            let _ = write!(out, ",\"ref\":{r}");
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::{Frame, Request};

    #[test]
    fn the_server_parses_what_the_bench_sends() {
        let t = MessageTemplate::new("bench-1", 16, 2);
        let f = Frame::parse(&t.frame(9, 1234, Some(1234))).unwrap();
        assert_eq!(f.reference, Some(Ref::Number(1234.into())));
        let Ok(Request::SendMessage(m)) = f.request else {
            panic!("{:?}", f.request)
        };
        assert_eq!(m.room_id, "bench-1");
        let content = m.content.as_str().unwrap();
        assert_eq!(content, format!("{}|2:9|t=1234", "x".repeat(16)));

        let f = Frame::parse(&t.frame(0, 1, None)).unwrap();
        assert_eq!(f.reference, None);

        let f = Frame::parse(&join_room("r")).unwrap();
        assert!(matches!(f.request, Ok(Request::JoinRoom(ref j)) if !j.exclusive));
        let f = Frame::parse(&ping(3)).unwrap();
        assert_eq!(f.request, Ok(Request::Ping));
        assert_eq!(f.reference, Some(Ref::Number(3.into())));
    }

    #[test]
    fn socketio_frames_decode_with_the_codec() {
        use switchboard_protocol::socketio::{EventName, engine};
        let t = MessageTemplate::for_proto(Proto::SocketIo, "bench-1", 16, 2);
        let frame = t.frame(9, 1234, Some(41));
        assert!(frame.starts_with(r#"4241["send_message","#), "{frame}");
        let engine::Packet::Message(text) = engine::Packet::decode(&frame).unwrap() else {
            panic!("{frame}")
        };
        let p = socketio::Packet::decode(text, 0).unwrap();
        assert_eq!((p.kind, p.namespace, p.id), (Kind::Event, "/", Some(41)));
        let (name, args) = p.event().unwrap();
        assert!(matches!(name, EventName::Text(n) if n == "send_message"));
        let data: serde_json::Value = serde_json::from_str(args[0].get()).unwrap();
        assert_eq!(data["roomId"], "bench-1");
        let content = format!("{}|2:9|t=1234", "x".repeat(16));
        assert_eq!(data["content"], content.as_str());

        let p = t.frame(0, 1, None);
        assert!(p.starts_with(r#"42["send_message","#), "{p}");
        assert!(socketio::Packet::decode(&p[1..], 0).unwrap().id.is_none());
    }
}
