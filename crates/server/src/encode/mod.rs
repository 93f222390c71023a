//! Wire formats: every event is encoded at most once per format and the same bytes are
//! shared by every session of that format.
//!
//! An [`Event`] holds its type and the JSON of its `data`; [`Event::frame`] gives its
//! encoding for one [`Format`], made on first use and kept. Fan-out calls
//! [`Event::prepare`] before it takes a room's lock, so encoding never happens under
//! it. Replies to one session are encoded straight into its format ([`reply`]).

pub mod native;
pub mod socketio;
pub mod sse;

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use switchboard_protocol::Ref;

use crate::position::Position;

/// Encoded text shared between recipients without copying. Always valid UTF-8: it is
/// only made from `String`s and `&'static str`s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    pub const fn from_static(s: &'static str) -> Frame {
        Frame(Bytes::from_static(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: a Frame is only built from UTF-8 text (see the constructors).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Frame {
        Frame(Bytes::from(s))
    }
}

/// A wire format: how sessions of one kind want their events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `{"type": ..., "data": ...}` text frames: the native WebSocket protocol.
    Native = 0,
    /// `event: <type>` / `data: <json>` lines of a Server-Sent Events stream.
    Sse = 1,
    /// Socket.IO event packets of the main namespace, `42["<type>",<data>]`.
    SocketIo = 2,
    /// Socket.IO event packets of the `/webrtc` signaling namespace.
    SocketIoRtc = 3,
}

/// How many formats there are.
pub const FORMATS: usize = 4;

impl Format {
    pub const ALL: [Format; FORMATS] = [
        Format::Native,
        Format::Sse,
        Format::SocketIo,
        Format::SocketIoRtc,
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A set of formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FormatSet(u8);

impl FormatSet {
    pub fn with(self, f: Format) -> FormatSet {
        FormatSet(self.0 | 1 << f.index())
    }

    pub fn contains(self, f: Format) -> bool {
        self.0 & (1 << f.index()) != 0
    }
}

/// One event for a room or a session: its type, its `data` JSON and, for a durable
/// message, its position.
#[derive(Debug)]
pub struct Event {
    kind: Cow<'static, str>,
    data: Frame,
    position: Option<Position>,
    /// The room whose history `position` belongs to, when the event is delivered to
    /// another (a private message reaches its users' personal rooms).
    history_room: Option<Arc<str>>,
    encoded: [OnceLock<Frame>; FORMATS],
}

impl Event {
    /// An event whose data is `data` serialized.
    pub fn new<T: Serialize + ?Sized>(kind: impl Into<Cow<'static, str>>, data: &T) -> Event {
        let json = serde_json::to_string(data).expect("event payloads serialize");
        Event::raw(kind, json.into(), None)
    }

    /// An event whose data is JSON already (a stored message, say).
    pub fn raw(
        kind: impl Into<Cow<'static, str>>,
        data: Frame,
        position: Option<Position>,
    ) -> Event {
        Event {
            kind: kind.into(),
            data,
            position,
            history_room: None,
            encoded: Default::default(),
        }
    }

    /// The same event, its position being one of `room`'s history.
    pub fn in_history_of(mut self, room: Arc<str>) -> Event {
        self.history_room = Some(room);
        self
    }

    pub fn history_room(&self) -> Option<&Arc<str>> {
        self.history_room.as_ref()
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The JSON of `data`.
    pub fn data(&self) -> &Frame {
        &self.data
    }

    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    pub fn offset(&self) -> Option<u64> {
        self.position.as_ref().map(|p| p.offset)
    }

    /// The event in `format`, encoded on first use.
    pub fn frame(&self, format: Format) -> &Frame {
        self.encoded[format.index()].get_or_init(|| {
            let at = match (&self.history_room, &self.position) {
                (Some(room), Some(p)) => Some((&**room, p)),
                _ => None,
            };
            encode_at(format, &self.kind, self.data.as_str(), at)
        })
    }

    /// Encodes the event for every format in `formats` now, so that fan-out under a
    /// lock only clones bytes.
    pub fn prepare(&self, formats: FormatSet) {
        for f in Format::ALL {
            if formats.contains(f) {
                self.frame(f);
            }
        }
    }
}

/// A room event of type `kind` whose `data` is JSON already, in `format`.
pub fn encode(format: Format, kind: &str, data: &str) -> Frame {
    encode_at(format, kind, data, None)
}

/// [`encode`] for a durable event at position `at` of a room (Socket.IO packets carry
/// it, for connection state recovery).
pub fn encode_at(format: Format, kind: &str, data: &str, at: Option<(&str, &Position)>) -> Frame {
    match format {
        Format::Native => native::wrap(kind, data, None),
        Format::Sse => sse::wrap(kind, data),
        Format::SocketIo => socketio::wrap(socketio::ROOT, kind, data, at),
        Format::SocketIoRtc => socketio::wrap(socketio::WEBRTC, kind, data, None),
    }
}

/// A reply to one session: `{type: kind, data, ref}` in its format. (A Socket.IO
/// session's `ref` is an ack id; the session answers it, see `Session::reply`.)
pub fn reply<T: Serialize + ?Sized>(
    format: Format,
    kind: &str,
    data: &T,
    reference: Option<&Ref>,
) -> Frame {
    match format {
        Format::Native => native::encode(kind, data, reference),
        _ => {
            let json = serde_json::to_string(data).expect("event payloads serialize");
            encode(format, kind, &json)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_encoded_once_per_format() {
        let e = Event::new("pong", &serde_json::json!({"timestamp": 5}));
        let a = e.frame(Format::Native).clone();
        let b = e.frame(Format::Native).clone();
        assert_eq!(a.as_str(), r#"{"type":"pong","data":{"timestamp":5}}"#);
        // The same bytes, not a copy.
        assert_eq!(a.bytes().as_ptr(), b.bytes().as_ptr());
        assert_eq!(
            e.frame(Format::Sse).as_str(),
            "event: pong\ndata: {\"timestamp\":5}\n"
        );
    }

    #[test]
    fn format_sets() {
        let s = FormatSet::default().with(Format::Sse);
        assert!(s.contains(Format::Sse));
        assert!(!s.contains(Format::Native));
    }
}
