//! The embedded default store: one SQLite file in WAL mode.
//!
//! One writer task owns the write connection and commits batches; reads use a small
//! pool of their own connections, which WAL lets run beside the writer. The schema is
//! versioned by sqlx migrations (`migrations/sqlite/`), applied at open: a database
//! written by an earlier release is upgraded in place.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, SqlStr, Sqlite};
use switchboard_protocol::{HistoryRange, now_millis};
use tokio::sync::{mpsc, oneshot};

use super::history::{self, HistorySql, PageFill};
use super::writer::{Backend, Counters, Item, Job, Outcome, Work, Writer, duplicate_of, items};
use super::{
    CommitLog, Committed, Completion, DedupeKey, Draft, Gap, Page, Store, StoreError, StoreStats,
    StoredMessage, bind_offset,
};
use crate::metrics::Metrics;
use crate::position::{Position, new_epoch};

/// Rows per INSERT statement (6 parameters each, far below SQLite's limit).
const ROWS_PER_INSERT: usize = 128;
/// Rooms whose last offset the writer remembers (and readers may ask for).
const MAX_CACHED_ROOMS: usize = 100_000;
/// Drafts waiting for the writer before `append` makes senders wait.
const QUEUE: usize = 16 * 1024;

/// What the SQLite store needs from the config.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Directory of `switchboard.db` (created if missing).
    pub dir: PathBuf,
    /// `synchronous = full` (fsync every commit) rather than `normal`.
    pub synchronous_full: bool,
    /// How long an idempotency key is remembered.
    pub dedupe_window: Duration,
}

mod users;

fn migrator() -> Migrator {
    let migration = |version, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            SqlStr::from_static(sql),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(
            1,
            "messages",
            include_str!("migrations/sqlite/0001_messages.sql"),
        ),
        migration(
            2,
            "positions",
            include_str!("migrations/sqlite/0002_positions.sql"),
        ),
        migration(3, "users", include_str!("migrations/sqlite/0003_users.sql")),
    ])
}

pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    reads: SqlitePool,
    epoch: Arc<str>,
    heads: Arc<Mutex<Heads>>,
    counters: Arc<Counters>,
}

/// Rooms' last offsets, so that `head` needs no query: every join asks it.
///
/// Loaded whole at open (from the `rooms` table) while there are at most
/// `MAX_CACHED_ROOMS`: then a room that is not here has no message, and `head` is 0
/// without asking the database. The writer overwrites what it commits, before the
/// commit is published, so nobody can have seen an offset the cache does not have.
/// Past the bound the cache starts over (`complete` turns false, `generation` moves
/// on) and a miss is read from the database; a reader adds its answer only where the
/// writer has not been since (its snapshot may be older than the writer's latest
/// commit) and only within the same generation.
#[derive(Default)]
struct Heads {
    offsets: HashMap<Arc<str>, u64>,
    complete: bool,
    generation: u64,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A failed statement: a database error (a constraint, say) concerns the rows at hand,
/// anything else (I/O, a closed connection) the whole store.
fn classify(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(d) => StoreError::Rejected(d.to_string()),
        other => unavailable(other),
    }
}

/// History in SQLite's dialect.
const HISTORY: HistorySql = HistorySql {
    since: "SELECT seq, data FROM messages WHERE room = ? AND seq > ? ORDER BY seq ASC LIMIT ?",
    between: "SELECT seq, data FROM messages WHERE room = ? AND seq > ? AND seq < ? \
              ORDER BY seq ASC LIMIT ?",
    before: "SELECT seq, data FROM messages WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
    latest: "SELECT seq, data FROM messages WHERE room = ? ORDER BY seq DESC LIMIT ?",
};

impl SqliteStore {
    /// Opens (creating if needed) `dir/switchboard.db`, applies migrations and starts
    /// the writer, which hands its outcomes to `commits`.
    pub async fn open(
        opts: &SqliteOptions,
        commits: CommitLog,
        metrics: Arc<Metrics>,
    ) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(&opts.dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data dir {}: {e}",
                opts.dir.display()
            ))
        })?;
        let connect = SqliteConnectOptions::new()
            .filename(opts.dir.join("switchboard.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if opts.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(Duration::from_secs(5));
        let mut writer = SqliteConnection::connect_with(&connect)
            .await
            .map_err(unavailable)?;
        migrator()
            .run(&mut writer)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating the database: {e}")))?;
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)")
            .bind(new_epoch())
            .execute(&mut writer)
            .await
            .map_err(unavailable)?;
        let epoch: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&mut writer)
            .await
            .map_err(unavailable)?;
        let epoch: Arc<str> = epoch.into();
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect.read_only(true))
            .await
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let known: Vec<(String, i64)> = sqlx::query_as("SELECT room, head FROM rooms LIMIT ?")
            .bind(MAX_CACHED_ROOMS as i64 + 1)
            .fetch_all(&mut writer)
            .await
            .map_err(unavailable)?;
        let heads = Arc::new(Mutex::new(Heads {
            complete: known.len() <= MAX_CACHED_ROOMS,
            offsets: known
                .into_iter()
                .take(MAX_CACHED_ROOMS)
                .map(|(room, head)| (room.into(), head as u64))
                .collect(),
            generation: 0,
        }));
        let backend = SqliteBackend {
            conn: writer,
            epoch: epoch.clone(),
            last_offsets: HashMap::new(),
            heads: heads.clone(),
            dedupe_window_ms: opts.dedupe_window.as_millis() as u64,
        };
        tokio::spawn(Writer::new(backend, commits, counters.clone(), metrics).run(rx));
        Ok(SqliteStore {
            jobs: tx,
            reads,
            epoch,
            heads,
            counters,
        })
    }
}

impl Store for SqliteStore {
    fn append(&self, draft: Draft, done: Completion) -> BoxFuture<'_, ()> {
        async move {
            // A closed queue gives the job back; dropping it answers `Closed`.
            let _ = self.jobs.send(Job::Append(draft, done)).await;
        }
        .boxed()
    }

    fn head<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Position, StoreError>> {
        let generation = {
            let heads = self.heads.lock();
            let known = match heads.offsets.get(room) {
                Some(offset) => Some(*offset),
                None if heads.complete => Some(0),
                None => None,
            };
            if let Some(offset) = known {
                let head = Position::new(offset, self.epoch.clone());
                return std::future::ready(Ok(head)).boxed();
            }
            heads.generation
        };
        async move {
            let max: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(head), 0) FROM rooms WHERE room = ?")
                    .bind(room)
                    .fetch_one(&self.reads)
                    .await
                    .map_err(unavailable)?;
            let mut heads = self.heads.lock();
            let offset = if heads.generation == generation && heads.offsets.len() < MAX_CACHED_ROOMS
            {
                *heads.offsets.entry(room.into()).or_insert(max as u64)
            } else {
                heads.offsets.get(room).copied().unwrap_or(max as u64)
            };
            Ok(Position::new(offset, self.epoch.clone()))
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        room: &'a str,
        range: HistoryRange,
        limit: u32,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        async move {
            let mut rows = history::query(&HISTORY, room, range, limit).fetch(&self.reads);
            let mut page = PageFill::new(max_bytes);
            while let Some(row) = rows.try_next().await.map_err(unavailable)? {
                if !page.push(row.get::<i64, _>(0) as u64, row.get(1)) {
                    break;
                }
            }
            Ok(page.finish(range))
        }
        .boxed()
    }

    fn gap<'a>(
        &'a self,
        room: &'a str,
        after: u64,
        upto: u64,
        max_messages: u32,
    ) -> BoxFuture<'a, Result<Gap, StoreError>> {
        async move {
            let row = sqlx::query(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM (SELECT size FROM messages \
                 WHERE room = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?)",
            )
            .bind(room)
            .bind(bind_offset(after))
            .bind(bind_offset(upto))
            .bind(i64::from(max_messages) + 1)
            .fetch_one(&self.reads)
            .await
            .map_err(unavailable)?;
            Ok(Gap {
                messages: row.get::<i64, _>(0) as u64,
                bytes: row.get::<i64, _>(1) as u64,
            })
        }
        .boxed()
    }

    fn replay<'a>(
        &'a self,
        room: &'a str,
        after: u64,
        upto: u64,
    ) -> BoxStream<'a, Result<StoredMessage, StoreError>> {
        sqlx::query(
            "SELECT seq, data FROM messages WHERE room = ? AND seq > ? AND seq <= ? \
             ORDER BY seq ASC",
        )
        .bind(room)
        .bind(bind_offset(after))
        .bind(bind_offset(upto))
        .fetch(&self.reads)
        .map(|row| {
            let row = row.map_err(unavailable)?;
            Ok(StoredMessage {
                offset: row.get::<i64, _>(0) as u64,
                data: row.get(1),
            })
        })
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
        self.counters.stats()
    }
}

/// The writer's side of the file: its own connection, and the offsets it gives out.
struct SqliteBackend {
    conn: SqliteConnection,
    epoch: Arc<str>,
    /// Last offset of each room written so far; a room not here is read from disk.
    last_offsets: HashMap<Arc<str>, u64>,
    heads: Arc<Mutex<Heads>>,
    dedupe_window_ms: u64,
}

/// A row to insert.
struct Row_ {
    room: Arc<str>,
    offset: u64,
    id: String,
    ts: u64,
    data: String,
}

impl Backend for SqliteBackend {
    /// Writes `work` in one transaction, in order: a message gets the next offset of
    /// its room (a repeat of a recent idempotency key gets the original's outcome), a
    /// user-layer write is applied.
    async fn write(&mut self, work: &[Work]) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.conn.begin().await.map_err(unavailable)?;
        let now = now_millis();
        let mut out: Vec<Outcome> = Vec::with_capacity(work.len());
        let mut rows = Vec::with_capacity(work.len());
        let mut keys: Vec<(&DedupeKey, usize)> = Vec::new();
        let mut next: HashMap<Arc<str>, u64> = HashMap::new();
        for item in items(work) {
            let d = match item {
                Item::Message(d) => d,
                Item::Profiles(run) => {
                    let done = users::upsert_users(&mut tx, &run).await?;
                    out.extend(done.into_iter().map(Outcome::Write));
                    continue;
                }
                Item::Write(op) => {
                    out.push(Outcome::Write(users::apply(&mut tx, op).await?));
                    continue;
                }
            };
            if let Some(key) = &d.dedupe {
                if let Some(&(_, i)) = keys.iter().find(|(k, _)| *k == key) {
                    let Outcome::Message(original) = &out[i] else {
                        unreachable!("keys index messages")
                    };
                    let duplicate = duplicate_of(original);
                    out.push(Outcome::Message(duplicate));
                    continue;
                }
                let earlier =
                    sqlx::query("SELECT room, id, seq, ts FROM dedupe WHERE scope = ? AND key = ?")
                        .bind(&key.scope)
                        .bind(&key.key)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(classify)?;
                if let Some(row) = earlier {
                    let ts = row.get::<i64, _>(3) as u64;
                    if ts.saturating_add(self.dedupe_window_ms) >= now {
                        out.push(Outcome::Message(Committed {
                            id: row.get(1),
                            room: row.get::<String, _>(0).into(),
                            position: Position::new(
                                row.get::<i64, _>(2) as u64,
                                self.epoch.clone(),
                            ),
                            payload: Default::default(),
                            duplicate: true,
                            private: None,
                        }));
                        continue;
                    }
                }
                keys.push((key, out.len()));
            }
            let last = match next.get(&d.room).or(self.last_offsets.get(&d.room)) {
                Some(o) => *o,
                None => {
                    let head: i64 = sqlx::query_scalar(
                        "SELECT COALESCE(MAX(head), 0) FROM rooms WHERE room = ?",
                    )
                    .bind(&*d.room)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(classify)?;
                    head as u64
                }
            };
            let offset = last + 1;
            next.insert(d.room.clone(), offset);
            let data = d
                .payload(offset)
                .map_err(|e| StoreError::Rejected(format!("encode: {e}")))?;
            out.push(Outcome::Message(d.committed(
                Position::new(offset, self.epoch.clone()),
                data.clone().into(),
            )));
            rows.push(Row_ {
                room: d.room.clone(),
                offset,
                id: d.id.clone(),
                ts: d.timestamp,
                data,
            });
        }
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO messages (room, seq, size, id, ts, data) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(&*r.room)
                    .push_bind(bind_offset(r.offset))
                    .push_bind(r.data.len() as i64)
                    .push_bind(&r.id)
                    .push_bind(r.ts as i64)
                    .push_bind(&r.data);
            });
            q.build().execute(&mut *tx).await.map_err(classify)?;
        }
        if !next.is_empty() {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO rooms (room, head) ");
            q.push_values(&next, |mut b, (room, offset)| {
                b.push_bind(&**room).push_bind(bind_offset(*offset));
            });
            q.push(" ON CONFLICT (room) DO UPDATE SET head = excluded.head");
            q.build().execute(&mut *tx).await.map_err(classify)?;
        }
        for (key, i) in &keys {
            let Outcome::Message(c) = &out[*i] else {
                unreachable!("keys index messages")
            };
            sqlx::query(
                "INSERT OR REPLACE INTO dedupe (scope, key, room, id, seq, ts) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&key.scope)
            .bind(&key.key)
            .bind(&*c.room)
            .bind(&c.id)
            .bind(bind_offset(c.position.offset))
            .bind(now as i64)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        tx.commit().await.map_err(unavailable)?;
        // A cache, not a registry: past this many rooms it starts over (offsets are
        // read back from disk), so memory does not grow with every room ever written.
        if self.last_offsets.len() + next.len() > MAX_CACHED_ROOMS {
            self.last_offsets.clear();
        }
        {
            let mut heads = self.heads.lock();
            if heads.offsets.len() + next.len() > MAX_CACHED_ROOMS {
                heads.offsets.clear();
                heads.complete = false;
                heads.generation += 1;
            }
            for (room, offset) in &next {
                heads.offsets.insert(room.clone(), *offset);
            }
        }
        self.last_offsets.extend(next);
        Ok(out)
    }

    /// Deletes idempotency keys older than the window.
    async fn prune(&mut self) {
        let cutoff = now_millis().saturating_sub(self.dedupe_window_ms);
        if let Err(e) = sqlx::query("DELETE FROM dedupe WHERE ts < ?")
            .bind(cutoff as i64)
            .execute(&mut self.conn)
            .await
        {
            tracing::warn!(error = %e, "pruning idempotency keys failed");
        }
    }

    async fn close(self) {
        let _ = self.conn.close_hard().await;
    }
}
