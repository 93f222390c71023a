//! Checks shared by the fuzz targets: what every request the parsers accept must satisfy,
//! and how the Socket.IO dialect may differ from the native one.

use serde_json::Value;
use serde_json::value::RawValue;
use switchboard_protocol::{
    Dialect, ErrorKind, HISTORY_MAX_LIMIT, ROOM_MEMBERS_MAX_LIMIT, Request,
    is_valid_client_message_id, is_valid_room_id,
};

/// The types the native protocol defines; any other is a custom request.
pub const KNOWN_TYPES: [&str; 14] = [
    "ping",
    "join_room",
    "leave_room",
    "send_message",
    "typing",
    "send_private_message",
    "update_status",
    "share_file",
    "history",
    "room_members",
    "mark_read",
    "rtc_offer",
    "rtc_answer",
    "rtc_ice_candidate",
];

fn has_content(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn room(id: &str) {
    assert!(is_valid_room_id(id), "accepted an invalid room id {id:?}");
}

fn client_message_id(id: &Option<String>) {
    if let Some(id) = id {
        assert!(
            is_valid_client_message_id(id),
            "accepted an invalid clientMessageId {id:?}"
        );
    }
}

/// What a request of type `kind` that parsed must satisfy: the validation the hub
/// relies on (room ids, limits, required fields) was done.
pub fn check_request(kind: &str, request: &Request) {
    match request {
        Request::Ping => assert_eq!(kind, "ping"),
        Request::JoinRoom(j) => room(&j.room_id),
        Request::LeaveRoom { room_id } | Request::MarkRead { room_id, .. } => room(room_id),
        Request::Typing { room_id, .. } => room(room_id),
        Request::SendMessage(m) => {
            room(&m.room_id);
            assert!(has_content(&m.content), "a message without content");
            assert!(m.metadata.is_object(), "metadata that is not an object");
            assert!(!m.kind.is_empty());
            client_message_id(&m.client_message_id);
        }
        Request::SendPrivateMessage(m) => {
            assert!(!m.recipient_id.is_empty());
            assert!(has_content(&m.content), "a private message without content");
            assert!(!m.kind.is_empty());
            client_message_id(&m.client_message_id);
        }
        Request::UpdateStatus { .. } => assert_eq!(kind, "update_status"),
        Request::ShareFile { room_id, file_id } => {
            room(room_id);
            assert!(!file_id.is_empty());
        }
        Request::History(h) => {
            room(&h.room_id);
            assert!((1..=HISTORY_MAX_LIMIT).contains(&h.limit), "{h:?}");
        }
        Request::RoomMembers(q) => {
            room(&q.room_id);
            assert!((1..=ROOM_MEMBERS_MAX_LIMIT).contains(&q.limit), "{q:?}");
            assert!(q.cursor.as_deref() != Some(""));
        }
        Request::Rtc(s) => {
            assert_eq!(s.kind.as_str(), kind);
            assert!(!s.target_peer_id.is_empty());
        }
        Request::Custom { kind: k, .. } => {
            assert_eq!(k, kind);
            assert!(!KNOWN_TYPES.contains(&k.as_str()), "{k} parsed as custom");
        }
    }
}

/// Parses `kind` with payload `data` in both dialects, checks each result, and checks
/// that the dialects differ only where they are meant to: `typing_start`/`typing_stop`
/// (Socket.IO's typing request) and `join_room`'s `exclusive` default.
pub fn check_both_dialects(kind: &str, data: Option<&RawValue>) -> Result<Request, ErrorKind> {
    let native = Request::from_event(kind, data, Dialect::Native);
    let sio = Request::from_event(kind, data, Dialect::SocketIo);
    for r in [&native, &sio] {
        match r {
            Ok(request) if matches!(kind, "typing_start" | "typing_stop") => {
                assert!(matches!(
                    request,
                    Request::Typing { .. } | Request::Custom { .. }
                ));
                if let Request::Typing { room_id, .. } = request {
                    room(room_id);
                }
            }
            Ok(request) => check_request(kind, request),
            Err(e) => {
                // Every error can be told to the client.
                let _ = (e.to_string(), e.code());
            }
        }
    }
    match kind {
        "typing_start" | "typing_stop" => {
            // A custom type in the native protocol. Its data may still be refused: a
            // RawValue skips numbers without checking their range, so a payload with
            // 1e400 only fails as a Value ("number out of range").
            assert!(
                matches!(&native, Ok(Request::Custom { kind: k, .. }) if k == kind)
                    || matches!(&native, Err(ErrorKind::InvalidPayload(_))),
                "{kind} is a custom type in the native protocol: {native:?}"
            );
            if let Ok(request) = &sio {
                let Request::Typing { is_typing, .. } = request else {
                    panic!("{kind} in Socket.IO is typing: {request:?}");
                };
                assert_eq!(*is_typing, kind == "typing_start");
            }
        }
        "join_room" => match (&native, &sio) {
            (Ok(Request::JoinRoom(n)), Ok(Request::JoinRoom(s))) => {
                let mut n = n.clone();
                n.exclusive = s.exclusive;
                assert_eq!(&n, s, "join_room differs beyond exclusive");
            }
            (Err(n), Err(s)) => assert_eq!(n, s),
            other => panic!("join_room: dialects disagree: {other:?}"),
        },
        _ => assert_eq!(native, sio, "{kind}: dialects disagree"),
    }
    native
}
