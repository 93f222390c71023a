//! The requests the bench sends, encoded once.
//!
//! Setup frames go through the protocol crate's envelope encoder. `send_message` is
//! on the hot path, so its fixed head (room, padding) is encoded once and each frame
//! only appends the stamp and the `ref`.

use serde_json::json;
use switchboard_protocol::{Ref, encode};

use crate::scan;

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
    /// Everything up to the stamp: `{"type":"send_message","data":{"roomId":..,"content":"xxx`.
    head: String,
    publisher: u32,
}

impl MessageTemplate {
    /// `padding` bytes of content precede the stamp.
    pub fn new(room: &str, padding: usize, publisher: u32) -> MessageTemplate {
        let room = serde_json::to_string(room).expect("a str serializes");
        let mut head = format!(r#"{{"type":"send_message","data":{{"roomId":{room},"content":""#);
        head.extend(std::iter::repeat_n('x', padding));
        MessageTemplate { head, publisher }
    }

    /// One frame; with `reference` the server acks it once durable.
    pub fn frame(&self, seq: u64, sent_us: u64, reference: Option<u64>) -> String {
        let mut out = String::with_capacity(self.head.len() + 80);
        out.push_str(&self.head);
        scan::write_stamp(&mut out, self.publisher, seq, sent_us);
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
}
