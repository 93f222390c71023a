//! Socket.IO: each event is an Engine.IO message carrying a Socket.IO EVENT packet,
//! `42["<type>",<data>]` (`42/webrtc,[...]` in the signaling namespace).
//!
//! A durable event carries its position as a last argument, `"<offset>-<epoch>-<room>"`:
//! the official client keeps the last such argument it saw and hands it back when it
//! reconnects (connection state recovery). The position is the event's own, the same
//! for every recipient, so the packet is still encoded once.

use switchboard_protocol::socketio;

use super::Frame;
use crate::position::Position;

/// The namespace of the hub's Socket.IO sockets.
pub const ROOT: &str = "/";
/// The namespace of WebRTC signaling.
pub const WEBRTC: &str = "/webrtc";

/// An event of `namespace` whose data is JSON already.
pub fn wrap(namespace: &str, kind: &str, data: &str, at: Option<(&str, &Position)>) -> Frame {
    let marker = at.map(|(room, p)| offset_marker(room, p));
    socketio::event_message(namespace, event_name(kind), data, marker.as_deref()).into()
}

/// The original Socket.IO design's name of an event where it differs from the native
/// protocol's.
pub fn event_name(kind: &str) -> &str {
    match kind {
        "typing_status" => "user_typing",
        other => other,
    }
}

/// The recovery offset of position `p` of `room`.
pub fn offset_marker(room: &str, p: &Position) -> String {
    format!("{}-{}-{}", p.offset, p.epoch, room)
}

/// A recovery offset read back: `(room, offset, epoch)`.
pub fn parse_marker(marker: &str) -> Option<(&str, u64, &str)> {
    let (offset, rest) = marker.split_once('-')?;
    let (epoch, room) = rest.split_once('-')?;
    Some((room, offset.parse().ok()?, epoch))
}

/// An ack answering `id` with one argument, `data` (JSON).
pub fn ack(namespace: &str, id: u64, data: &str) -> Frame {
    socketio::ack_message(namespace, id, data).into()
}

/// `{"ok":true,...}`: the fields of a reply's data (an object) after `ok: true`.
pub fn ok_with(data: &str) -> String {
    match data.strip_prefix('{') {
        Some("}") => r#"{"ok":true}"#.to_string(),
        Some(rest) => format!(r#"{{"ok":true,{rest}"#),
        None => format!(r#"{{"ok":true,"data":{data}}}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_markers() {
        let p = Position::new(42, "abc".into());
        assert_eq!(
            wrap(ROOT, "new_message", "{}", Some(("dm:a:b", &p))).as_str(),
            r#"42["new_message",{},"42-abc-dm:a:b"]"#
        );
        assert_eq!(parse_marker("42-abc-dm:a:b"), Some(("dm:a:b", 42, "abc")));
        assert_eq!(parse_marker("x-abc-r"), None);
        assert_eq!(
            wrap(WEBRTC, "peer_left", "{}", None).as_str(),
            r#"42/webrtc,["peer_left",{}]"#
        );
    }

    #[test]
    fn ok_answers() {
        assert_eq!(ok_with("{}"), r#"{"ok":true}"#);
        assert_eq!(
            ok_with(r#"{"id":"x","offset":3}"#),
            r#"{"ok":true,"id":"x","offset":3}"#
        );
        assert_eq!(ok_with("5"), r#"{"ok":true,"data":5}"#);
    }
}
