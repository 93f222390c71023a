//! Wire types of the Switchboard native WebSocket protocol.
//!
//! One place for every frame name, field name, error message and close code, shared by
//! the server, the client and the bench so that they cannot drift. No I/O here.
//!
//! A frame is JSON text: `{"type": "...", "data": {...}, "ref": ...}`. Requests are
//! parsed in two steps ([`Request::parse`]): the envelope first, so that a bad payload
//! can still be answered with the request's `ref`, then the payload by type.

mod close;
mod error;
mod event;
mod request;
pub mod socketio;

pub use close::CloseCode;
pub use error::ErrorKind;
pub use event::*;
pub use request::*;

/// Milliseconds since the Unix epoch: the unit of every `timestamp` on the wire.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether `id` is a valid room id: 1-128 characters of `A-Za-z0-9_-.:@`.
pub fn is_valid_room_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
}

/// The personal room of a user: only that user's connections are in it.
pub fn personal_room(user_id: &str) -> String {
    format!("{PERSONAL_ROOM_PREFIX}{user_id}")
}

/// Prefix of private conversations (`dm:<a>:<b>`).
pub const DM_ROOM_PREFIX: &str = "dm:";

/// The room of the private conversation of users `a` and `b`: `dm:<a>:<b>` with the
/// two ids in lexicographic order.
pub fn dm_room(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    format!("{DM_ROOM_PREFIX}{first}:{second}")
}

/// The other user of private conversation `room` if `user` is one of its two, else
/// None (another's conversation, or not one at all). Ids with a `:` take no part in
/// private conversations: `dm:a:b:c` could be a's with b:c or a:b's with c.
pub fn dm_peer<'a>(room: &'a str, user: &str) -> Option<&'a str> {
    let (first, second) = room.strip_prefix(DM_ROOM_PREFIX)?.split_once(':')?;
    if user.contains(':') || second.contains(':') || first > second {
        return None;
    }
    match (first == user, second == user) {
        (true, _) => Some(second),
        (_, true) => Some(first),
        _ => None,
    }
}

/// Whether `id` can be a user id: its personal room is a valid room id.
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty() && is_valid_room_id(&personal_room(id))
}

/// Prefix of personal rooms (`user:<id>`).
pub const PERSONAL_ROOM_PREFIX: &str = "user:";

/// The room of server announcements: clients may join it but never publish to it.
pub const SYSTEM_ROOM: &str = "system";

/// Largest `limit` a history request may ask for.
pub const HISTORY_MAX_LIMIT: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert!(is_valid_room_id("general"));
        assert!(is_valid_room_id("team-a.b_c:d@e"));
        assert!(is_valid_room_id(&"a".repeat(128)));
        assert!(!is_valid_room_id(""));
        assert!(!is_valid_room_id(&"a".repeat(129)));
        assert!(!is_valid_room_id("has space"));
        assert!(!is_valid_room_id("slash/room"));
        assert!(!is_valid_room_id("é"));
    }

    #[test]
    fn private_rooms() {
        assert_eq!(dm_room("bob", "alice"), "dm:alice:bob");
        assert_eq!(dm_peer("dm:alice:bob", "alice"), Some("bob"));
        assert_eq!(dm_peer("dm:alice:bob", "bob"), Some("alice"));
        assert_eq!(dm_peer("dm:alice:bob", "carol"), None);
        assert_eq!(dm_peer("dm:bob:alice", "alice"), None, "ids in order only");
        assert_eq!(dm_peer("general", "alice"), None);
        // Ids with a colon take no part: the room would not say whose it is.
        let room = dm_room("a:b", "c");
        assert_eq!(dm_peer(&room, "a"), None);
        assert_eq!(dm_peer(&room, "c"), None);
        assert_eq!(dm_peer("dm:alice:alice", "alice"), Some("alice"));
        assert!(is_valid_user_id("alice") && !is_valid_user_id("") && !is_valid_user_id("a b"));
    }
}
