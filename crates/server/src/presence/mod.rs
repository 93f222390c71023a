//! Presence: which users are online, on which devices (connections), and who is in
//! which room. The hub keeps no copy of its own: `room_joined` members and peers,
//! `room_members`, the connections-per-user limit, RTC relay and stats all ask here.
//!
//! Shaped for a cluster, as centrifuge's presence managers are: answers are futures (a
//! shared presence is a network call away), removals are fire-and-forget so that they
//! can run on every exit path (a `Drop` included), counts never list everyone, and
//! pages go by cursor. A shared implementation keeps entries alive with
//! [`Presence::heartbeat`], lets a dead node's entries expire, and removes them once
//! through [`Presence::reap`].

mod memory;
mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use switchboard_protocol::{Member, UserInfo};

pub use self::memory::MemoryPresence;
pub use self::redis::{RedisPresence, RedisPresenceOptions};

/// One connection of a user, as presence records it.
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    pub client_id: &'a Arc<str>,
    pub user: &'a UserInfo,
    /// `websocket`, `socketio` or `sse`.
    pub transport: &'static str,
}

/// How many are in a room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomCounts {
    /// Distinct users.
    pub users: u64,
    /// Connections.
    pub connections: u64,
}

/// One page of a room's members, ordered by user id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberPage {
    pub members: Vec<Member>,
    /// Where the next page starts; None on the last page.
    pub next_cursor: Option<String>,
}

/// A connection in a room, addressable by WebRTC signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub client_id: Arc<str>,
    pub user: UserInfo,
    /// When its user joined the room (Unix ms).
    pub joined_at: u64,
}

/// A device of a dead node, removed from presence by [`Presence::reap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub client_id: Arc<str>,
    pub user: UserInfo,
    /// `websocket`, `socketio` or `sse`.
    pub transport: String,
    /// The rooms it was removed from.
    pub rooms: Vec<String>,
    /// Its user has no device left.
    pub last: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PresenceError {
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

pub type Answer<'a, T> = BoxFuture<'a, Result<T, PresenceError>>;

pub trait Presence: Send + Sync + 'static {
    /// Records a device; answers how many devices its user has now, this one included.
    fn connect<'a>(&'a self, device: Device<'a>) -> Answer<'a, u64>;

    /// Forgets a device (the hub leaves its rooms first).
    fn disconnect(&self, device: Device<'_>);

    /// How many devices `user` has.
    fn devices<'a>(&'a self, user: &'a str) -> Answer<'a, u64>;

    /// The client ids of `user`'s devices (at most `max_connections_per_user`).
    fn device_ids<'a>(&'a self, user: &'a str) -> Answer<'a, Vec<Arc<str>>>;

    /// Records that `device` is in `room`; answers the room's counts now.
    fn join<'a>(&'a self, room: &'a str, device: Device<'a>) -> Answer<'a, RoomCounts>;

    /// Records that `device` left `room`.
    fn leave(&self, room: &str, device: Device<'_>);

    fn counts<'a>(&'a self, room: &'a str) -> Answer<'a, RoomCounts>;

    /// Up to `limit` members of `room` whose user id sorts after `cursor`.
    fn members<'a>(
        &'a self,
        room: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> Answer<'a, MemberPage>;

    /// Up to `limit` connections in `room` other than `except`.
    fn peers<'a>(
        &'a self,
        room: &'a str,
        except: &'a str,
        limit: usize,
    ) -> Answer<'a, Vec<PeerEntry>>;

    /// Whether connection `client_id` is in one of `rooms`.
    fn in_any<'a>(&'a self, client_id: &'a str, rooms: &'a [Arc<str>]) -> Answer<'a, bool>;

    /// Whether `user` has a connection in `room`.
    fn has_user<'a>(&'a self, room: &'a str, user: &'a str) -> Answer<'a, bool>;

    /// Every room with someone in it, with its counts.
    fn rooms(&self) -> Answer<'_, Vec<(String, RoomCounts)>>;

    /// Keeps this node's entries alive in a shared presence; called every ping period.
    fn heartbeat(&self) {}

    /// Devices of other nodes that expired since the last call (their node died), removed
    /// from presence with their rooms. Each is returned to exactly one caller in the
    /// cluster, with `last: true` if its user has no device left.
    fn reap(&self) -> Answer<'_, Vec<Reaped>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}
