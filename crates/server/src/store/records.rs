//! What the store keeps of the user layer, and the writes that change it.
//!
//! Every write goes through the store's one writer, in the same transactions as the
//! messages (group commit): a join's membership or a status costs no fsync of its own.

use serde::{Deserialize, Serialize};

/// A user's profile and status as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub avatar: Option<String>,
    /// `online`, `away`, `busy` or `offline` (invisible), as the user set it.
    pub status: String,
    /// When the user last went offline (ms), if ever.
    pub last_seen: Option<u64>,
}

/// A durable member of a room, with its profile when the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub user_id: String,
    pub username: Option<String>,
    pub avatar: Option<String>,
    pub status: Option<String>,
    pub last_seen: Option<u64>,
    pub joined_at: u64,
}

/// One notification entry. While unread, `count` and the preview come from the room
/// (its head and newest message); once read they are what they were then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub id: String,
    pub user_id: String,
    pub room: String,
    pub kind: String,
    pub count: u64,
    pub message: String,
    pub sender_id: String,
    pub sender_name: String,
    pub timestamp: u64,
    pub read: bool,
}

/// A pending webhook push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRecord {
    pub id: i64,
    pub body: String,
    pub attempts: u32,
}

/// An uploaded file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub sha256: String,
    pub created_at: u64,
}

/// A change to the user layer.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Records the user's profile (from its token), keeping its status.
    UpsertUser {
        id: String,
        username: String,
        avatar: Option<String>,
    },
    SetStatus {
        user: String,
        status: String,
    },
    SetLastSeen {
        user: String,
        at: u64,
    },
    /// Replaces the user's contact list.
    ReplaceContacts {
        user: String,
        contacts: Vec<String>,
    },
    /// Makes `user` a member of `room` (no change if it is one).
    AddMember {
        room: String,
        user: String,
        at: u64,
    },
    RemoveMember {
        room: String,
        user: String,
    },
    /// Moves the user's read marker in `room` to `offset`, never backwards; answers
    /// the marker.
    MarkRead {
        room: String,
        user: String,
        offset: u64,
    },
    /// Opens an unread entry in `room` for each of `entries` whose user has none, from
    /// `first_offset`, and queues the entry's push when it has one; answers the
    /// entries opened.
    Notify {
        room: String,
        kind: String,
        first_offset: u64,
        at: u64,
        entries: Vec<NewEntry>,
    },
    /// The user is back online: its unread entries stop at the rooms' current heads
    /// (what comes while it is online is no offline news).
    FreezeNotifications {
        user: String,
    },
    /// Marks the user's entries read (those of `ids`, or all); answers how many.
    ReadNotifications {
        user: String,
        ids: Option<Vec<String>>,
    },
    /// Records an uploaded file, unless its owner's files would then pass `quota` bytes
    /// (`Changed(false)`): checked in the writer, so concurrent uploads cannot both pass.
    InsertFile {
        file: FileRecord,
        quota: Option<u64>,
    },
    /// Records that a file was shared in a room; `Changed(false)` if the file is gone.
    ShareFile {
        file: String,
        room: String,
    },
    /// Deletes a file's record if it was never shared (`Changed(false)` otherwise).
    DeleteOrphanFile {
        id: String,
    },
    /// A push attempt's result: delivered or given up (`retry_at` None), or to retry.
    PushAttempted {
        id: i64,
        attempts: u32,
        retry_at: Option<u64>,
    },
}

/// A notification entry to open: its id, its user, and the webhook body to queue.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub id: String,
    pub user: String,
    pub push: Option<String>,
}

/// What a write answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    /// Whether something changed (a new member, say).
    Changed(bool),
    /// A read marker.
    Marker(u64),
    /// Notification entries opened: (entry id, user).
    Opened(Vec<(String, String)>),
    Count(u64),
}
