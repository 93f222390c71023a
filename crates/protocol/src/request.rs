//! Client-to-server frames: parsing and validation.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{ErrorKind, HISTORY_MAX_LIMIT, is_valid_room_id};

/// A client's correlation id: echoed on every reply or error its request causes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Number(serde_json::Number),
    String(String),
}

/// One parsed client frame. A frame whose envelope is fine but whose payload is not
/// still carries its `ref`, so the error can be correlated.
#[derive(Debug)]
pub struct Frame {
    pub reference: Option<Ref>,
    pub request: Result<Request, ErrorKind>,
}

/// A validated client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Ping,
    JoinRoom(JoinRoom),
    LeaveRoom {
        room_id: String,
    },
    SendMessage(SendMessage),
    Typing {
        room_id: String,
        is_typing: bool,
    },
    SendPrivateMessage(SendPrivateMessage),
    UpdateStatus {
        status: String,
    },
    ShareFile {
        room_id: String,
        file_id: String,
    },
    History(HistoryQuery),
    RoomMembers(RoomMembersQuery),
    MarkRead {
        room_id: String,
        offset: u64,
    },
    Rtc(RtcSignal),
    /// A type the protocol does not define: for a registered custom handler.
    Custom {
        kind: String,
        data: Value,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinRoom {
    pub room_id: String,
    /// Leave every other joined room first (the personal room stays).
    pub exclusive: bool,
    /// The last offset the client saw: every later message is replayed. A number that
    /// is not an offset (negative, fractional, beyond `u64`) becomes [`SINCE_BEYOND`],
    /// which no room reaches: the join then reports `recovered: false`.
    pub since: Option<u64>,
    /// The room's epoch the client's `since` belongs to; another epoch means the room's
    /// history was reset and nothing is replayed.
    pub epoch: Option<String>,
}

/// `since` as given by a client when it is not a usable offset.
pub const SINCE_BEYOND: u64 = u64::MAX;

/// `room_members`: a page of a room's members.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomMembersQuery {
    pub room_id: String,
    /// Where the previous page ended (its `nextCursor`).
    pub cursor: Option<String>,
    pub limit: u32,
}

/// Default and largest `limit` of `room_members`.
pub const ROOM_MEMBERS_DEFAULT_LIMIT: u32 = 100;
pub const ROOM_MEMBERS_MAX_LIMIT: u32 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct SendMessage {
    pub room_id: String,
    pub content: Value,
    pub kind: String,
    pub metadata: Value,
    /// The client's own id of this send: a retry with the same id is not stored twice.
    pub client_message_id: Option<String>,
}

/// Whether `id` is a valid `clientMessageId` (or `Idempotency-Key`): 1-64 characters
/// of `A-Za-z0-9_-`.
pub fn is_valid_client_message_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[derive(Debug, Clone, PartialEq)]
pub struct SendPrivateMessage {
    pub recipient_id: String,
    pub content: Value,
    pub kind: String,
    pub client_message_id: Option<String>,
}

/// `history`: the newest `limit` before `before`, the oldest `limit` after `since`,
/// or, with both, the oldest `limit` strictly between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryRange {
    Before(u64),
    Since(u64),
    Between { since: u64, before: u64 },
    Latest,
}

impl HistoryRange {
    pub fn new(before: Option<u64>, since: Option<u64>) -> HistoryRange {
        match (before, since) {
            (Some(before), Some(since)) => HistoryRange::Between { since, before },
            (Some(b), None) => HistoryRange::Before(b),
            (None, Some(s)) => HistoryRange::Since(s),
            (None, None) => HistoryRange::Latest,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    pub room_id: String,
    pub range: HistoryRange,
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcKind {
    Offer,
    Answer,
    IceCandidate,
}

impl RtcKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RtcKind::Offer => "rtc_offer",
            RtcKind::Answer => "rtc_answer",
            RtcKind::IceCandidate => "rtc_ice_candidate",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RtcSignal {
    pub kind: RtcKind,
    pub target_peer_id: String,
    pub payload: Value,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "ref", default)]
    reference: Option<Ref>,
}

/// Every payload field any request uses; each type reads the ones it needs. Unknown
/// fields are ignored, as additions to the protocol must be.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Payload {
    room_id: Option<String>,
    exclusive: Option<bool>,
    since: Option<serde_json::Number>,
    epoch: Option<String>,
    client_message_id: Option<String>,
    cursor: Option<String>,
    offset: Option<serde_json::Number>,
    before: Option<u64>,
    limit: Option<u32>,
    content: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    metadata: Option<Value>,
    is_typing: Option<bool>,
    recipient_id: Option<String>,
    /// Any JSON: a status that is not one of the known strings is `Invalid status`.
    status: Option<Value>,
    file_id: Option<String>,
    target_peer_id: Option<String>,
    payload: Option<Value>,
}

impl Frame {
    /// Parses one text frame. `Err` only when the envelope itself is unusable, which
    /// the protocol answers with `Invalid message format` and no `ref`.
    pub fn parse(text: &str) -> Result<Frame, ErrorKind> {
        // serde would take a JSON array for the envelope's fields too; a frame is an
        // object.
        if !text.trim_start().starts_with('{') {
            return Err(ErrorKind::InvalidFormat);
        }
        let env: Envelope<'_> = serde_json::from_str(text).map_err(|_| ErrorKind::InvalidFormat)?;
        let request = Request::from_parts(&env.kind, env.data);
        Ok(Frame {
            reference: env.reference,
            request,
        })
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn has_content(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

fn room(id: Option<String>, missing: ErrorKind) -> Result<String, ErrorKind> {
    let id = non_empty(id).ok_or(missing)?;
    if is_valid_room_id(&id) {
        Ok(id)
    } else {
        Err(ErrorKind::InvalidRoomId)
    }
}

/// A known type's payload: absent or `null` is the empty payload.
fn payload<T: Default + for<'de> Deserialize<'de>>(
    data: Option<&RawValue>,
) -> Result<T, ErrorKind> {
    match data {
        Some(raw) if raw.get() == "null" => Ok(T::default()),
        // serde would read an array as the fields in order; a payload is an object.
        Some(raw) if !raw.get().starts_with('{') => Err(ErrorKind::InvalidPayload(
            "the payload must be an object".into(),
        )),
        Some(raw) => serde_json::from_str(raw.get()).map_err(payload_error),
        None => Ok(T::default()),
    }
}

fn custom_data(data: Option<&RawValue>) -> Result<Value, ErrorKind> {
    match data {
        Some(raw) => serde_json::from_str(raw.get()).map_err(payload_error),
        None => Ok(Value::Null),
    }
}

/// serde's message without its "at line 1 column 9" tail, which means nothing to a
/// client that sent one frame.
fn payload_error(e: serde_json::Error) -> ErrorKind {
    let text = e.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_string();
    ErrorKind::InvalidPayload(text)
}

/// Which protocol's conventions a request follows where the two differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Native,
    /// Socket.IO events: `join_room` is additive unless `exclusive` is given, and
    /// `typing_start` / `typing_stop {roomId}` are the typing request.
    SocketIo,
}

impl Request {
    /// A request of type `kind` with payload `data` (JSON), as `dialect` means it.
    pub fn from_event(
        kind: &str,
        data: Option<&RawValue>,
        dialect: Dialect,
    ) -> Result<Request, ErrorKind> {
        if dialect == Dialect::SocketIo {
            let typing = match kind {
                "typing_start" => Some(true),
                "typing_stop" => Some(false),
                _ => None,
            };
            if let Some(is_typing) = typing {
                let p: Payload = payload(data)?;
                return Ok(Request::Typing {
                    room_id: room(p.room_id, ErrorKind::RoomIdRequired)?,
                    is_typing,
                });
            }
        }
        let mut request = Request::from_parts(kind, data)?;
        if let (Dialect::SocketIo, Request::JoinRoom(j)) = (dialect, &mut request) {
            j.exclusive = payload::<Payload>(data)?.exclusive.unwrap_or(false);
        }
        Ok(request)
    }

    fn from_parts(kind: &str, data: Option<&RawValue>) -> Result<Request, ErrorKind> {
        let known = matches!(
            kind,
            "ping"
                | "join_room"
                | "leave_room"
                | "send_message"
                | "typing"
                | "send_private_message"
                | "update_status"
                | "share_file"
                | "history"
                | "room_members"
                | "mark_read"
                | "rtc_offer"
                | "rtc_answer"
                | "rtc_ice_candidate"
        );
        if !known {
            return Ok(Request::Custom {
                kind: kind.to_string(),
                data: custom_data(data)?,
            });
        }
        let p: Payload = payload(data)?;
        Ok(match kind {
            "ping" => Request::Ping,
            "join_room" => Request::JoinRoom(JoinRoom {
                room_id: room(p.room_id, ErrorKind::RoomIdRequired)?,
                exclusive: p.exclusive.unwrap_or(true),
                since: p.since.map(|n| n.as_u64().unwrap_or(SINCE_BEYOND)),
                epoch: p.epoch,
            }),
            "leave_room" => Request::LeaveRoom {
                room_id: room(p.room_id, ErrorKind::RoomIdRequired)?,
            },
            "send_message" => {
                if !has_content(&p.content) {
                    return Err(ErrorKind::RoomIdAndContentRequired);
                }
                let metadata = match p.metadata {
                    None | Some(Value::Null) => Value::Object(Default::default()),
                    Some(m @ Value::Object(_)) => m,
                    Some(_) => {
                        return Err(ErrorKind::InvalidPayload(
                            "metadata must be an object".into(),
                        ));
                    }
                };
                let room_id = room(p.room_id, ErrorKind::RoomIdAndContentRequired)?;
                if let Some(id) = &p.client_message_id
                    && !is_valid_client_message_id(id)
                {
                    return Err(ErrorKind::InvalidClientMessageId);
                }
                Request::SendMessage(SendMessage {
                    room_id,
                    content: p.content.unwrap_or_default(),
                    kind: non_empty(p.kind).unwrap_or_else(|| "text".into()),
                    metadata,
                    client_message_id: p.client_message_id,
                })
            }
            "typing" => Request::Typing {
                room_id: room(p.room_id, ErrorKind::RoomIdRequired)?,
                is_typing: p.is_typing.unwrap_or(false),
            },
            "send_private_message" => {
                let recipient_id =
                    non_empty(p.recipient_id).ok_or(ErrorKind::RecipientIdAndContentRequired)?;
                if !has_content(&p.content) {
                    return Err(ErrorKind::RecipientIdAndContentRequired);
                }
                if let Some(id) = &p.client_message_id
                    && !is_valid_client_message_id(id)
                {
                    return Err(ErrorKind::InvalidClientMessageId);
                }
                Request::SendPrivateMessage(SendPrivateMessage {
                    recipient_id,
                    content: p.content.unwrap_or_default(),
                    kind: non_empty(p.kind).unwrap_or_else(|| "text".into()),
                    client_message_id: p.client_message_id,
                })
            }
            "update_status" => Request::UpdateStatus {
                status: match p.status {
                    Some(Value::String(s)) => s,
                    _ => String::new(),
                },
            },
            "mark_read" => Request::MarkRead {
                room_id: room(p.room_id, ErrorKind::RoomIdRequired)?,
                offset: p.offset.and_then(|n| n.as_u64()).ok_or_else(|| {
                    ErrorKind::InvalidPayload("offset is required: a non-negative integer".into())
                })?,
            },
            "share_file" => Request::ShareFile {
                room_id: room(p.room_id, ErrorKind::RoomIdRequired)?,
                file_id: non_empty(p.file_id).ok_or(ErrorKind::FileNotFound)?,
            },
            "history" => {
                let since = match p.since {
                    None => None,
                    Some(n) => Some(n.as_u64().ok_or_else(|| {
                        ErrorKind::InvalidPayload("since must be a non-negative integer".into())
                    })?),
                };
                let range = HistoryRange::new(p.before, since);
                Request::History(HistoryQuery {
                    room_id: room(p.room_id, ErrorKind::RoomIdRequired)?,
                    range,
                    limit: p.limit.unwrap_or(50).clamp(1, HISTORY_MAX_LIMIT),
                })
            }
            "room_members" => Request::RoomMembers(RoomMembersQuery {
                room_id: room(p.room_id, ErrorKind::RoomIdRequired)?,
                cursor: non_empty(p.cursor),
                limit: p
                    .limit
                    .unwrap_or(ROOM_MEMBERS_DEFAULT_LIMIT)
                    .clamp(1, ROOM_MEMBERS_MAX_LIMIT),
            }),
            rtc => {
                let kind = match rtc {
                    "rtc_offer" => RtcKind::Offer,
                    "rtc_answer" => RtcKind::Answer,
                    _ => RtcKind::IceCandidate,
                };
                Request::Rtc(RtcSignal {
                    kind,
                    target_peer_id: non_empty(p.target_peer_id)
                        .ok_or(ErrorKind::TargetPeerNotFound)?,
                    payload: p.payload.unwrap_or(Value::Null),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, ErrorKind> {
        Frame::parse(s).unwrap().request
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(Frame::parse("nope").unwrap_err(), ErrorKind::InvalidFormat);
        assert_eq!(Frame::parse("{}").unwrap_err(), ErrorKind::InvalidFormat);
        assert_eq!(
            Frame::parse(r#"{"type":5}"#).unwrap_err(),
            ErrorKind::InvalidFormat
        );
        assert_eq!(
            Frame::parse(r#"{"type":"ping","ref":{}}"#).unwrap_err(),
            ErrorKind::InvalidFormat
        );
        // Arrays are not objects, though serde would read them as the fields in order.
        assert_eq!(
            Frame::parse(r#"["join_room",{"roomId":"g"},7]"#).unwrap_err(),
            ErrorKind::InvalidFormat
        );
        let f = Frame::parse(r#"{"type":"join_room","data":["g",false,3]}"#).unwrap();
        assert!(matches!(f.request, Err(ErrorKind::InvalidPayload(_))));
    }

    #[test]
    fn ref_is_kept_with_payload_errors() {
        let f = Frame::parse(r#"{"type":"join_room","ref":7,"data":{}}"#).unwrap();
        assert_eq!(f.reference, Some(Ref::Number(7.into())));
        assert_eq!(f.request, Err(ErrorKind::RoomIdRequired));
        let f = Frame::parse(r#"{"type":"join_room","ref":"a","data":{"roomId":3}}"#).unwrap();
        assert_eq!(f.reference, Some(Ref::String("a".into())));
        assert!(matches!(f.request, Err(ErrorKind::InvalidPayload(_))));
    }

    #[test]
    fn join_defaults() {
        assert_eq!(
            parse(r#"{"type":"join_room","data":{"roomId":"g"}}"#),
            Ok(Request::JoinRoom(JoinRoom {
                room_id: "g".into(),
                exclusive: true,
                since: None,
                epoch: None,
            }))
        );
        assert_eq!(
            parse(r#"{"type":"join_room","data":{"roomId":"bad room"}}"#),
            Err(ErrorKind::InvalidRoomId)
        );
    }

    #[test]
    fn send_message_validation() {
        assert_eq!(
            parse(r#"{"type":"send_message","data":{"roomId":"g"}}"#),
            Err(ErrorKind::RoomIdAndContentRequired)
        );
        assert_eq!(
            parse(r#"{"type":"send_message","data":{"content":"hi"}}"#),
            Err(ErrorKind::RoomIdAndContentRequired)
        );
        let Ok(Request::SendMessage(m)) =
            parse(r#"{"type":"send_message","data":{"roomId":"g","content":"hi"}}"#)
        else {
            panic!()
        };
        assert_eq!(m.kind, "text");
        assert_eq!(m.metadata, serde_json::json!({}));
    }

    #[test]
    fn since_that_is_not_an_offset_is_beyond_every_room() {
        for since in [
            "9223372036854775817",
            "99999999999999999999999",
            "-1",
            "2.5",
        ] {
            let text = format!(r#"{{"type":"join_room","data":{{"roomId":"g","since":{since}}}}}"#);
            let Ok(Request::JoinRoom(j)) = parse(&text) else {
                panic!("{since}")
            };
            let expected = if since == "9223372036854775817" {
                9223372036854775817
            } else {
                SINCE_BEYOND
            };
            assert_eq!(j.since, Some(expected), "{since}");
        }
    }

    #[test]
    fn client_message_ids_are_validated() {
        let Ok(Request::SendMessage(m)) = parse(
            r#"{"type":"send_message","data":{"roomId":"g","content":"hi","clientMessageId":"a-1_B"}}"#,
        ) else {
            panic!()
        };
        assert_eq!(m.client_message_id.as_deref(), Some("a-1_B"));
        for bad in [
            r#""""#,
            r#""has space""#,
            &format!("\"{}\"", "x".repeat(65)),
        ] {
            let text = format!(
                r#"{{"type":"send_message","data":{{"roomId":"g","content":"hi","clientMessageId":{bad}}}}}"#
            );
            assert_eq!(
                parse(&text),
                Err(ErrorKind::InvalidClientMessageId),
                "{bad}"
            );
        }
    }

    #[test]
    fn room_members_paging() {
        let Ok(Request::RoomMembers(q)) =
            parse(r#"{"type":"room_members","data":{"roomId":"g","cursor":"bob","limit":5000}}"#)
        else {
            panic!()
        };
        assert_eq!(q.cursor.as_deref(), Some("bob"));
        assert_eq!(q.limit, ROOM_MEMBERS_MAX_LIMIT);
    }

    #[test]
    fn history_limit_is_capped() {
        let Ok(Request::History(h)) =
            parse(r#"{"type":"history","data":{"roomId":"g","since":3,"limit":1000}}"#)
        else {
            panic!()
        };
        assert_eq!(h.limit, HISTORY_MAX_LIMIT);
        assert_eq!(h.range, HistoryRange::Since(3));
    }

    #[test]
    fn unknown_types_are_custom() {
        assert_eq!(
            parse(r#"{"type":"custom_action","data":{"x":1}}"#),
            Ok(Request::Custom {
                kind: "custom_action".into(),
                data: serde_json::json!({"x":1})
            })
        );
    }
}
