//! Durability: a room message gets its position and is made durable here before anyone
//! sees it.
//!
//! A store has one writer. It gives each message the next offset of its room, commits
//! many messages in one transaction (group commit), and hands every outcome, in commit
//! order, to the commit log the hub reads. The hub publishes each message and then
//! acknowledges it: delivery order equals offset order, and the store never calls the
//! broker. The trait assumes nothing of SQLite: PostgreSQL implements it the same way.

mod history;
mod postgres;
mod records;
mod sqlite;
mod users;
mod writer;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde_json::Value;
use switchboard_protocol::{HistoryRange, UserInfo};

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use users::{
    FileRecord, MemberRecord, NewEntry, NotificationRecord, PushRecord, UserRecord, UserStore,
    WriteOp, WriteOutcome,
};

use crate::encode::Frame;
use crate::position::Position;

/// A message on its way to the store.
#[derive(Debug, Clone)]
pub struct Draft {
    pub id: String,
    pub room: Arc<str>,
    pub sender: UserInfo,
    pub content: Value,
    pub kind: String,
    pub metadata: Value,
    pub timestamp: u64,
    /// A repeat of the same key within the dedupe window is not stored again: its
    /// outcome is the original's, marked duplicate.
    pub dedupe: Option<DedupeKey>,
    /// A private message's recipient: the stored payload is then a
    /// `private_message`, else a `new_message`.
    pub recipient: Option<String>,
    /// The connection that sent it, if any.
    pub origin: Option<Arc<str>>,
}

impl Draft {
    /// The stored payload, once the message has its offset.
    pub fn payload(&self, offset: u64) -> serde_json::Result<String> {
        match &self.recipient {
            None => serde_json::to_string(&switchboard_protocol::NewMessage {
                id: self.id.clone(),
                room_id: self.room.to_string(),
                sender: self.sender.clone(),
                content: self.content.clone(),
                kind: self.kind.clone(),
                metadata: self.metadata.clone(),
                timestamp: self.timestamp,
                offset,
            }),
            Some(recipient) => serde_json::to_string(&switchboard_protocol::PrivateMessage {
                id: self.id.clone(),
                sender: self.sender.clone(),
                recipient: recipient.clone(),
                content: self.content.clone(),
                kind: self.kind.clone(),
                timestamp: self.timestamp,
                room_id: self.room.to_string(),
                offset,
            }),
        }
    }

    /// The draft once stored at `position`, with its `payload`.
    fn committed(&self, position: Position, payload: Frame) -> Committed {
        Committed {
            id: self.id.clone(),
            room: self.room.clone(),
            position,
            payload,
            duplicate: false,
            private: self.recipient.as_ref().map(|recipient| PrivateRoute {
                sender: self.sender.id.clone(),
                recipient: recipient.clone(),
                origin: self.origin.clone(),
            }),
        }
    }
}

/// Who sent a message (`scope`: a user, or the server API) and the id it gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub scope: String,
    pub key: String,
}

/// A message once it is durable.
#[derive(Debug, Clone)]
pub struct Committed {
    pub id: String,
    pub room: Arc<str>,
    pub position: Position,
    /// The `new_message` payload; empty for a duplicate (it was published before).
    pub payload: Frame,
    /// A repeat of an earlier send: nothing was stored, `id` and `position` are the
    /// original's.
    pub duplicate: bool,
    /// For a private message: who sent it to whom, from which connection.
    pub private: Option<PrivateRoute>,
}

/// Where a private message goes once stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateRoute {
    pub sender: String,
    pub recipient: String,
    /// The sending connection, which already knows.
    pub origin: Option<Arc<str>>,
}

/// What the sender of a draft is told: called exactly once, with the outcome, or with
/// [`StoreError::Closed`] if the draft is dropped unanswered (the store shut down, the
/// commit log is gone). Silence is not an outcome.
pub struct Completion(Option<Box<OnOutcome>>);

type OnOutcome = dyn FnOnce(Result<Committed, StoreError>) + Send;

impl Completion {
    pub fn new(f: impl FnOnce(Result<Committed, StoreError>) + Send + 'static) -> Completion {
        Completion(Some(Box::new(f)))
    }

    /// A completion nobody waits for.
    pub fn none() -> Completion {
        Completion(None)
    }

    pub fn complete(mut self, result: Result<Committed, StoreError>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(StoreError::Closed));
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

/// One draft's outcome on the commit log, in commit order.
#[derive(Debug)]
pub struct Commit {
    pub result: Result<Committed, StoreError>,
    pub done: Completion,
}

/// Where the writer hands its outcomes, one batch per transaction. Bounded: the writer
/// waits while the hub is behind.
pub type CommitLog = tokio::sync::mpsc::Sender<Vec<Commit>>;

/// A stored message: its offset and the JSON of its `new_message` payload.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub offset: u64,
    pub data: String,
}

/// Messages read for `history`, in ascending offset order.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    /// The byte bound cut the page short of `limit` (more messages are in the range).
    pub truncated: bool,
}

/// The size of what follows a position, counted up to a bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gap {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store is closed")]
    Closed,
    /// The database cannot be reached or failed as a whole; a retry may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// This message was refused (a constraint, an encoding failure); others are not
    /// affected.
    #[error("message rejected by the store: {0}")]
    Rejected(String),
}

pub trait Store: UserStore + Send + Sync + 'static {
    /// Queues `draft`; waits only while the writer's queue is full. Its outcome goes to
    /// the commit log with `done`; a store that is closed drops `done`, which answers
    /// [`StoreError::Closed`].
    fn append(&self, draft: Draft, done: Completion) -> BoxFuture<'_, ()>;

    /// The room's position now: its last offset (0 without messages) and its epoch.
    /// Reads no message.
    fn head<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Position, StoreError>>;

    /// Messages of `room` in ascending offset order: the newest `limit` before an
    /// offset, the oldest `limit` after one, or the newest `limit`; at least one and
    /// at most `max_bytes` of payload.
    fn read<'a>(
        &'a self,
        room: &'a str,
        range: HistoryRange,
        limit: u32,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Page, StoreError>>;

    /// How many messages, and how many payload bytes, have `after < offset <= upto`,
    /// counting at most `max_messages + 1` of them. Reads sizes, not payloads.
    fn gap<'a>(
        &'a self,
        room: &'a str,
        after: u64,
        upto: u64,
        max_messages: u32,
    ) -> BoxFuture<'a, Result<Gap, StoreError>>;

    /// The messages with `after < offset <= upto`, in order, one at a time.
    fn replay<'a>(
        &'a self,
        room: &'a str,
        after: u64,
        upto: u64,
    ) -> BoxStream<'a, Result<StoredMessage, StoreError>>;

    /// Commits everything queued, answers what comes later with `Closed`, then stops.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// Whether the store can take writes and reads (for `/ready`).
    fn is_healthy(&self) -> bool;

    /// Counters since the store opened.
    fn stats(&self) -> StoreStats;
}

/// Offsets are u64 on the wire and i64 (BIGINT) in the databases; past i64 no room
/// ever gets.
fn bind_offset(offset: u64) -> i64 {
    offset.min(i64::MAX as u64) as i64
}

/// How the writer has been batching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Messages made durable.
    pub messages: u64,
}
