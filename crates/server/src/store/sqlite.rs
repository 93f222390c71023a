//! The embedded default store: one SQLite file in WAL mode.
//!
//! One writer task owns the write connection and commits batches; reads use a small
//! pool of their own connections, which WAL lets run beside the writer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use switchboard_protocol::{HistoryRange, NewMessage};
use tokio::sync::{mpsc, oneshot};

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Committed, Draft, OnDurable, Store, StoreError, StoreStats, StoredMessage};
use crate::broker::{Broker, Envelope};
use crate::metrics::Metrics;

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Rows per INSERT statement (5 parameters each, far below SQLite's limit).
const ROWS_PER_INSERT: usize = 128;
/// Rooms whose last offset the writer remembers.
const MAX_CACHED_ROOMS: usize = 100_000;
/// Drafts waiting for the writer before `append` makes senders wait.
const QUEUE: usize = 16 * 1024;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID";

// Drafts travel by value: boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Job {
    Append(Draft, OnDurable),
    Close(oneshot::Sender<()>),
}

pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    reads: SqlitePool,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    messages: AtomicU64,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/switchboard.db` and starts the writer, which
    /// publishes committed messages through `broker`.
    pub async fn open(
        dir: &Path,
        synchronous_full: bool,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
    ) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Database(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let opts = SqliteConnectOptions::new()
            .filename(dir.join("switchboard.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(Duration::from_secs(5));
        let mut writer = SqliteConnection::connect_with(&opts).await?;
        sqlx::query(SCHEMA).execute(&mut writer).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        tokio::spawn(Writer::new(writer, broker, counters.clone(), metrics).run(rx));
        Ok(SqliteStore {
            jobs: tx,
            reads,
            counters,
        })
    }
}

impl Store for SqliteStore {
    fn append(&self, draft: Draft, done: OnDurable) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.jobs
                .send(Job::Append(draft, done))
                .await
                .map_err(|_| StoreError::Closed)
        }
        .boxed()
    }

    fn range<'a>(
        &'a self,
        room: &'a str,
        range: HistoryRange,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, StoreError>> {
        async move {
            let limit = i64::from(limit);
            let rows =
                match range {
                    HistoryRange::Since(after) => {
                        sqlx::query(
                            "SELECT seq, data FROM messages WHERE room = ? AND seq > ? \
                         ORDER BY seq ASC LIMIT ?",
                        )
                        .bind(room)
                        .bind(after as i64)
                        .bind(limit)
                        .fetch_all(&self.reads)
                        .await?
                    }
                    HistoryRange::Between { since, before } => {
                        sqlx::query(
                            "SELECT seq, data FROM messages WHERE room = ? AND seq > ? AND seq < ? \
                         ORDER BY seq ASC LIMIT ?",
                        )
                        .bind(room)
                        .bind(since.min(i64::MAX as u64) as i64)
                        .bind(before.min(i64::MAX as u64) as i64)
                        .bind(limit)
                        .fetch_all(&self.reads)
                        .await?
                    }
                    HistoryRange::Before(before) => {
                        sqlx::query(
                            "SELECT seq, data FROM messages WHERE room = ? AND seq < ? \
                         ORDER BY seq DESC LIMIT ?",
                        )
                        .bind(room)
                        .bind(before.min(i64::MAX as u64) as i64)
                        .bind(limit)
                        .fetch_all(&self.reads)
                        .await?
                    }
                    HistoryRange::Latest => sqlx::query(
                        "SELECT seq, data FROM messages WHERE room = ? ORDER BY seq DESC LIMIT ?",
                    )
                    .bind(room)
                    .bind(limit)
                    .fetch_all(&self.reads)
                    .await?,
                };
            let mut out: Vec<StoredMessage> = rows
                .into_iter()
                .map(|r| StoredMessage {
                    offset: r.get::<i64, _>(0) as u64,
                    data: r.get(1),
                })
                .collect();
            if matches!(range, HistoryRange::Before(_) | HistoryRange::Latest) {
                out.reverse();
            }
            Ok(out)
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let (tx, rx) = oneshot::channel();
            if self.jobs.send(Job::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
            self.reads.close().await;
        }
        .boxed()
    }

    fn is_healthy(&self) -> bool {
        !self.jobs.is_closed() && !self.reads.is_closed()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            messages: self.counters.messages.load(Ordering::Relaxed),
        }
    }
}

struct Writer {
    conn: SqliteConnection,
    broker: Arc<dyn Broker>,
    /// Last offset of each room written so far; a room not here is read from disk.
    last_offsets: HashMap<Arc<str>, u64>,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
}

struct Row_ {
    room: Arc<str>,
    offset: u64,
    id: String,
    ts: u64,
    data: String,
}

impl Writer {
    fn new(
        conn: SqliteConnection,
        broker: Arc<dyn Broker>,
        counters: Arc<Counters>,
        metrics: Arc<Metrics>,
    ) -> Writer {
        Writer {
            conn,
            broker,
            last_offsets: HashMap::new(),
            counters,
            metrics,
        }
    }

    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut jobs_buf = Vec::with_capacity(MAX_BATCH);
        loop {
            if jobs.recv_many(&mut jobs_buf, MAX_BATCH).await == 0 {
                return;
            }
            let mut closing = None;
            for job in jobs_buf.drain(..) {
                match job {
                    Job::Append(d, done) => batch.push((d, done)),
                    Job::Close(tx) => closing = Some(tx),
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch).await;
            }
            if let Some(tx) = closing {
                let _ = self.conn.close_hard().await;
                let _ = tx.send(());
                return;
            }
        }
    }

    /// Commits `batch` in one transaction, then publishes and acknowledges each
    /// message in order. On failure nothing is published and every sender hears why.
    async fn commit(&mut self, batch: &mut Vec<(Draft, OnDurable)>) {
        let (drafts, dones): (Vec<Draft>, Vec<OnDurable>) = batch.drain(..).unzip();
        let started = std::time::Instant::now();
        let written = self.write(drafts).await;
        self.metrics
            .store_commit_latency
            .record(started.elapsed().as_secs_f64());
        match written {
            Ok(rows) => {
                self.metrics.store_batch_size.record(rows.len() as f64);
                self.metrics.messages_stored.increment(rows.len() as u64);
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .messages
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                for (done, row) in dones.into_iter().zip(rows) {
                    let frame = format!("{{\"type\":\"new_message\",\"data\":{}}}", row.data);
                    self.broker.publish(Envelope {
                        room: row.room,
                        frame: frame.into(),
                        offset: Some(row.offset),
                        exclude: None,
                    });
                    done(Ok(Committed {
                        id: row.id,
                        offset: row.offset,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = dones.len(), "store commit failed");
                // Offsets handed out in the failed transaction are reused.
                self.last_offsets.clear();
                for done in dones {
                    done(Err(e.clone()));
                }
            }
        }
    }

    async fn write(&mut self, batch: Vec<Draft>) -> Result<Vec<Row_>, StoreError> {
        let mut tx = self.conn.begin().await?;
        let mut rows = Vec::with_capacity(batch.len());
        let mut next: HashMap<Arc<str>, u64> = HashMap::new();
        for d in batch {
            let last = match next.get(&d.room).or(self.last_offsets.get(&d.room)) {
                Some(o) => *o,
                None => {
                    let max: i64 = sqlx::query_scalar(
                        "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room = ?",
                    )
                    .bind(&*d.room)
                    .fetch_one(&mut *tx)
                    .await?;
                    max as u64
                }
            };
            let offset = last + 1;
            next.insert(d.room.clone(), offset);
            let msg = NewMessage {
                id: d.id,
                room_id: d.room.to_string(),
                sender: d.sender,
                content: d.content,
                kind: d.kind,
                metadata: d.metadata,
                timestamp: d.timestamp,
                offset,
            };
            let data = serde_json::to_string(&msg)
                .map_err(|e| StoreError::Database(format!("encode: {e}")))?;
            rows.push(Row_ {
                room: d.room,
                offset,
                id: msg.id,
                ts: msg.timestamp,
                data,
            });
        }
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO messages (room, seq, id, ts, data) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(&*r.room)
                    .push_bind(r.offset as i64)
                    .push_bind(&r.id)
                    .push_bind(r.ts as i64)
                    .push_bind(&r.data);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        // A cache, not a registry: past this many rooms it starts over (offsets are
        // read back from disk), so memory does not grow with every room ever written.
        if self.last_offsets.len() + next.len() > MAX_CACHED_ROOMS {
            self.last_offsets.clear();
        }
        self.last_offsets.extend(next);
        Ok(rows)
    }
}
