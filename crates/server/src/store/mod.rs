//! Durability: room messages get their offset and are made durable here before anyone
//! sees them.
//!
//! A store has one writer per node. It assigns each message the next offset of its
//! room, commits many messages in one transaction (group commit), and only then
//! publishes them, in commit order, and tells each sender it is durable. Publishing
//! from the writer is what makes delivery order equal offset order.

mod sqlite;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use switchboard_protocol::{HistoryRange, UserInfo};

pub use sqlite::SqliteStore;

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
}

/// A message once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub id: String,
    pub offset: u64,
}

/// Called once a draft is durable (and published), or failed.
pub type OnDurable = Box<dyn FnOnce(Result<Committed, StoreError>) + Send>;

/// A stored message: its offset and the JSON of its `new_message` payload.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub offset: u64,
    pub data: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store is closed")]
    Closed,
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

pub trait Store: Send + Sync + 'static {
    /// Queues `draft` for the writer; waits only while the writer's queue is full.
    /// `done` runs once the message is durable and published, or failed.
    fn append(&self, draft: Draft, done: OnDurable) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Messages of `room` in ascending offset order: the newest `limit` before an
    /// offset, the oldest `limit` after one, or the newest `limit`.
    fn range<'a>(
        &'a self,
        room: &'a str,
        range: HistoryRange,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, StoreError>>;

    /// Commits everything queued, then stops the writer.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// Whether the store can take writes and reads (for `/ready`).
    fn is_healthy(&self) -> bool;

    /// Counters since the store opened.
    fn stats(&self) -> StoreStats;
}

/// How the writer has been batching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Messages made durable.
    pub messages: u64,
}
