//! Server-to-client frames: the payload of each event type and the one encoder.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ErrorKind, Ref, now_millis};

/// Encodes `{"type": kind, "data": data, "ref": reference}` as JSON text.
pub fn encode<T: Serialize + ?Sized>(kind: &str, data: &T, reference: Option<&Ref>) -> String {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"type\":");
    // Type names are fixed ASCII identifiers; serializing still escapes a custom one.
    serde_json::to_writer(&mut out, kind).expect("a str serializes");
    out.extend_from_slice(b",\"data\":");
    serde_json::to_writer(&mut out, data).expect("event payloads serialize");
    if let Some(r) = reference {
        out.extend_from_slice(b",\"ref\":");
        serde_json::to_writer(&mut out, r).expect("a ref serializes");
    }
    out.push(b'}');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Splits a frame made by [`encode`] without a `ref` into its type and its `data`
/// JSON, without parsing the data: how other wire formats (SSE) reuse one encoding.
pub fn split_frame(frame: &str) -> Option<(&str, &str)> {
    let rest = frame.strip_prefix("{\"type\":\"")?;
    let end = rest.find('"')?;
    let kind = &rest[..end];
    if kind.contains('\\') {
        return None;
    }
    let data = rest[end + 1..]
        .strip_prefix(",\"data\":")?
        .strip_suffix('}')?;
    Some((kind, data))
}

/// Encodes an `error` event.
pub fn encode_error(err: &ErrorKind, reference: Option<&Ref>) -> String {
    encode(
        "error",
        &ErrorData {
            message: err.to_string(),
            code: err.code().to_string(),
            timestamp: now_millis(),
        },
        reference,
    )
}

/// A user as other clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connected {
    pub client_id: String,
    pub user: UserInfo,
    pub timestamp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pong {
    pub timestamp: u64,
}

/// Another connection in a room, addressable by WebRTC signals.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub peer_id: String,
    pub user: UserInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomJoined {
    pub room_id: String,
    pub timestamp: u64,
    /// Distinct users with a connection in the room, the joiner first; at most the
    /// server's `join_list_limit` of them.
    pub members: Vec<UserInfo>,
    /// The room's other connections, at most `join_list_limit`.
    pub peers: Vec<Peer>,
    /// Distinct users in the room, the joiner included.
    pub member_count: u64,
    /// Other connections in the room.
    pub peer_count: u64,
    /// The epoch of the room's history: positions (`offset`, `since`) belong to it.
    pub epoch: String,
    /// The room's last offset now (0 for a room without messages).
    pub offset: u64,
    /// With `since`: whether every missed message follows. `false` means the gap was
    /// larger than the server replays, or the position is not one of this history;
    /// load it with `history`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// One entry of `room_members`: an online member with its status, or an offline one
/// with when it was last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// `online`, `away`, `busy`, or `offline` (gone, or invisible).
    pub status: String,
    /// When the user became a member (ms).
    pub joined_at: u64,
    /// For an offline member: when it was last online (ms), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// `device_connected` and `device_disconnected`, to a user's other devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceEvent {
    /// The device's connection id (the native protocol's name).
    pub client_id: String,
    /// The same id (the original Socket.IO name).
    pub socket_id: String,
    /// `websocket`, `socketio` or `sse`.
    pub transport: String,
    pub timestamp: u64,
}

/// `friend_status_update`: a user's status, as its contacts see it (a status goes to
/// the users the changer lists as contacts).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FriendStatusUpdate {
    pub user_id: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    pub timestamp: u64,
}

/// `status_updated`, to every device of the user who changed its status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusUpdated {
    pub status: String,
    pub timestamp: u64,
}

/// One entry of the offline-notification inbox (`notification` event, HTTP listing,
/// webhook body): one per (user, room) while unread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationEntry {
    pub id: String,
    /// `new_message` or `private_message`.
    #[serde(rename = "type")]
    pub kind: String,
    pub room_id: String,
    /// The newest message's content, its first 100 characters.
    pub message: String,
    pub sender: UserRef,
    /// Messages since the entry opened.
    pub count: u64,
    pub timestamp: u64,
    pub read: bool,
}

/// A user named by id and name only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: String,
    pub username: String,
}

/// `read_marker`, to every device of the user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadMarker {
    pub room_id: String,
    pub offset: u64,
}

/// `room_members`: one page of a room's members, ordered by user id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomMembers {
    pub room_id: String,
    pub members: Vec<Member>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserJoined {
    pub user: UserInfo,
    pub timestamp: u64,
}

/// `user_joined_room` and `user_left_room`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomMembership {
    pub user: UserInfo,
    pub room_id: String,
    pub peer_id: String,
    pub timestamp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomLeft {
    pub room_id: String,
    pub timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewMessage {
    pub id: String,
    pub room_id: String,
    pub sender: UserInfo,
    pub content: Value,
    #[serde(rename = "type")]
    pub kind: String,
    pub metadata: Value,
    pub timestamp: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The send repeated a `clientMessageId` already stored: nothing new was stored or
    /// delivered, and `id`/`offset` are the original's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingStatus {
    pub user: UserInfo,
    pub room_id: String,
    pub is_typing: bool,
    pub timestamp: u64,
}

/// A durable message of a private conversation (room `dm:<a>:<b>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrivateMessage {
    pub id: String,
    pub sender: UserInfo,
    /// The recipient's user id.
    pub recipient: String,
    pub content: Value,
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: u64,
    pub room_id: String,
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub room_id: String,
    pub messages: Vec<NewMessage>,
}

/// `rtc_offer`, `rtc_answer`, `rtc_ice_candidate` as the target receives them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RtcRelay {
    pub sender_peer_id: String,
    pub payload: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDisconnected {
    pub user: UserInfo,
    /// The connection that closed.
    pub peer_id: String,
    pub timestamp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemMessage {
    #[serde(rename = "type")]
    pub kind: String,
    pub content: Value,
    pub timestamp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: Value,
    pub timestamp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorData {
    pub message: String,
    pub code: String,
    pub timestamp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_shape() {
        let s = encode(
            "pong",
            &Pong { timestamp: 5 },
            Some(&Ref::String("r".into())),
        );
        assert_eq!(s, r#"{"type":"pong","data":{"timestamp":5},"ref":"r"}"#);
        let s = encode("pong", &Pong { timestamp: 5 }, None);
        assert_eq!(s, r#"{"type":"pong","data":{"timestamp":5}}"#);
    }

    #[test]
    fn split() {
        let f = encode("new_message", &Pong { timestamp: 5 }, None);
        assert_eq!(split_frame(&f), Some(("new_message", r#"{"timestamp":5}"#)));
        assert_eq!(split_frame("nope"), None);
        let f = encode("we\"ird", &Pong { timestamp: 5 }, None);
        assert_eq!(split_frame(&f), None);
    }

    #[test]
    fn error_shape() {
        let v: Value = serde_json::from_str(&encode_error(
            &ErrorKind::NotInRoom,
            Some(&Ref::Number(1.into())),
        ))
        .unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["data"]["message"], "Not in room");
        assert_eq!(v["data"]["code"], "not_in_room");
        assert_eq!(v["ref"], 1);
    }
}

/// `/webrtc` (Socket.IO): a peer in a signaling room, as `room_peers` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RtcPeer {
    /// The peer id: its socket id.
    pub id: String,
    pub user_info: UserInfo,
    pub joined_at: u64,
}

/// `/webrtc`: `room_peers`, the joiner's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomPeers {
    pub room_id: String,
    pub peers: Vec<RtcPeer>,
}

/// `/webrtc`: `peer_joined`, to the others of the room.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerJoined {
    pub peer_id: String,
    pub user_info: UserInfo,
    pub timestamp: u64,
}

/// `/webrtc`: `peer_left`, when a peer leaves a room or disconnects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerLeft {
    pub peer_id: String,
    pub timestamp: u64,
}

impl PeerLeft {
    pub fn now(peer_id: &str) -> PeerLeft {
        PeerLeft {
            peer_id: peer_id.to_string(),
            timestamp: crate::now_millis(),
        }
    }
}
