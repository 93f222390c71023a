//! Positions in a room's history, shared by the store, the broker and the hub.

use std::sync::Arc;

/// Where a durable message sits: its room offset (1, 2, 3, ... without gaps) and the
/// epoch of the room's history. The epoch changes only when that history is lost or
/// reset (a new database, a wiped Redis), so an offset means something only together
/// with its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

impl Position {
    pub fn new(offset: u64, epoch: Arc<str>) -> Position {
        Position { offset, epoch }
    }
}

/// A new random epoch: 16 characters of `0-9a-f`.
pub fn new_epoch() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    random[..16].to_string()
}
