//! File bytes in PostgreSQL, so that every node of a cluster reads what any node wrote.
//!
//! A file is a row of `file_blobs` (its size and chunk size, and whether it is whole)
//! and its bytes in `file_chunks`, `CHUNK` bytes a row. An upload inserts its chunks as
//! they fill, then marks its blob committed in one statement: a reader asks only for
//! committed blobs, so it never sees part of an upload. An upload dropped before its
//! commit deletes what it wrote; what one whose node died left is removed by
//! [`PostgresStorage::sweep_abandoned`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use sqlx::PgPool;
use tokio::task::JoinHandle;

use super::{ByteStream, FileStorage, Upload};

/// Bytes per row of `file_chunks`: what an upload holds in memory, and what a download
/// reads per query.
const CHUNK: usize = 256 * 1024;

/// Uploads not committed this long after they started are taken for dead (their node
/// stopped mid-upload) when a node opens the storage.
const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Serialises schema creation between nodes starting together ("SBFILES1").
const SCHEMA_LOCK: i64 = 0x5342_4649_4c45_5331;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS file_blobs (
        id TEXT PRIMARY KEY,
        committed BOOLEAN NOT NULL DEFAULT FALSE,
        size BIGINT NOT NULL DEFAULT 0,
        chunk_size INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )",
    "CREATE INDEX IF NOT EXISTS file_blobs_uncommitted ON file_blobs (started_at)
        WHERE NOT committed",
    "CREATE TABLE IF NOT EXISTS file_chunks (
        id TEXT NOT NULL,
        n INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (id, n)
    )",
    "CREATE TABLE IF NOT EXISTS file_link_keys (
        name TEXT PRIMARY KEY,
        key BYTEA NOT NULL
    )",
];

/// A failed query, saying what it was for.
fn failed(what: impl std::fmt::Display) -> impl FnOnce(sqlx::Error) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e}"))
}

/// Creates the tables if missing, one node at a time.
async fn create_schema(pool: &PgPool) -> io::Result<()> {
    let what = "creating the file tables";
    let mut tx = pool.begin().await.map_err(failed(what))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(failed(what))?;
    let fresh: bool = sqlx::query_scalar("SELECT to_regclass('file_chunks') IS NULL")
        .fetch_one(&mut *tx)
        .await
        .map_err(failed(what))?;
    for statement in SCHEMA {
        sqlx::query(*statement)
            .execute(&mut *tx)
            .await
            .map_err(failed(what))?;
    }
    if fresh {
        // Uploads are mostly compressed already (images, video): TOAST them without
        // trying to compress, which also lets `substring` read only the slice asked for.
        sqlx::query("ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL")
            .execute(&mut *tx)
            .await
            .map_err(failed(what))?;
    }
    tx.commit().await.map_err(failed(what))
}

/// The key of signed file links shared by every node on this database: made by the
/// first node that asks, read by the others.
pub async fn shared_url_key(pool: &PgPool) -> io::Result<Vec<u8>> {
    create_schema(pool).await?;
    let what = "reading the shared file link key";
    let candidate: [u8; 32] = rand::random();
    sqlx::query(
        "INSERT INTO file_link_keys (name, key) VALUES ('url', $1) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&candidate[..])
    .execute(pool)
    .await
    .map_err(failed(what))?;
    let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM file_link_keys WHERE name = 'url'")
        .fetch_one(pool)
        .await
        .map_err(failed(what))?;
    if key.len() < 32 {
        return Err(io::Error::other(format!(
            "{what}: the key in file_link_keys has {} bytes, fewer than 32",
            key.len()
        )));
    }
    Ok(key)
}

pub struct PostgresStorage {
    pool: PgPool,
}

impl PostgresStorage {
    /// Bytes per stored chunk.
    pub const CHUNK: usize = CHUNK;

    /// Creates the tables if missing (safe with several nodes starting at once) and
    /// removes uploads abandoned more than a day ago.
    pub async fn open(pool: PgPool) -> io::Result<PostgresStorage> {
        create_schema(&pool).await?;
        let storage = PostgresStorage { pool };
        let removed = storage.sweep_abandoned(ABANDONED_AFTER).await?;
        if removed > 0 {
            tracing::info!(removed, "abandoned file uploads removed");
        }
        Ok(storage)
    }

    /// Removes the uploads started more than `older_than` ago and never committed (their
    /// node died mid-upload); answers how many. An upload still running past it loses
    /// its bytes and fails at its commit.
    pub async fn sweep_abandoned(&self, older_than: Duration) -> io::Result<u64> {
        let removed: i64 = sqlx::query_scalar(
            "WITH gone AS (
                DELETE FROM file_blobs
                WHERE NOT committed AND started_at < now() - make_interval(secs => $1)
                RETURNING id
            ), chunks AS (
                DELETE FROM file_chunks WHERE id IN (SELECT id FROM gone)
            )
            SELECT count(*) FROM gone",
        )
        .bind(older_than.as_secs_f64())
        .fetch_one(&self.pool)
        .await
        .map_err(failed("removing abandoned uploads"))?;
        Ok(removed as u64)
    }
}

/// Deletes file `id`'s blob and chunks in one statement.
async fn remove(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH chunks AS (DELETE FROM file_chunks WHERE id = $1)
        DELETE FROM file_blobs WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .map(|_| ())
}

impl FileStorage for PostgresStorage {
    fn create<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Upload>>> {
        async move {
            let what = format!("starting the upload of file {id}");
            let started = sqlx::query(
                "INSERT INTO file_blobs (id, chunk_size) VALUES ($1, $2)
                ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(CHUNK as i32)
            .execute(&self.pool)
            .await
            .map_err(failed(&what))?;
            if started.rows_affected() != 1 {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{what}: the id is taken"),
                ));
            }
            let upload: Box<dyn Upload> = Box::new(PostgresUpload {
                pool: self.pool.clone(),
                id: id.into(),
                buf: Vec::new(),
                next: 0,
                size: 0,
                pending: None,
                broken: false,
                committed: false,
            });
            Ok(upload)
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        id: &'a str,
        start: u64,
        len: u64,
    ) -> BoxFuture<'a, io::Result<ByteStream>> {
        async move {
            let blob: Option<(i64, i32)> = sqlx::query_as(
                "SELECT size, chunk_size FROM file_blobs WHERE id = $1 AND committed",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed(format!("opening file {id}")))?;
            let Some((size, chunk)) = blob else {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
            };
            let size = size as u64;
            let chunk = u64::try_from(chunk)
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| {
                    io::Error::other(format!("file {id} has chunks of {chunk} bytes"))
                })?;
            let reader = Reader {
                pool: self.pool.clone(),
                id: id.into(),
                chunk,
                pos: start.min(size),
                end: start.saturating_add(len).min(size),
            };
            Ok(futures_util::stream::try_unfold(reader, Reader::next).boxed())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<()>> {
        async move {
            remove(&self.pool, id)
                .await
                .map_err(failed(format!("deleting file {id}")))
        }
        .boxed()
    }
}

/// A download's place in the file: each step reads (the needed part of) one chunk.
struct Reader {
    pool: PgPool,
    id: Arc<str>,
    chunk: u64,
    pos: u64,
    end: u64,
}

impl Reader {
    async fn next(mut self) -> io::Result<Option<(Bytes, Reader)>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let n = self.pos / self.chunk;
        let within = self.pos % self.chunk;
        let take = (self.chunk - within).min(self.end - self.pos);
        let what = || format!("reading chunk {n} of file {}", self.id);
        let n_sql = i32::try_from(n).map_err(|_| io::Error::other(what()))?;
        // Chunk sizes are i32, so are offsets within one.
        let data: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT substring(data FROM $3 FOR $4) FROM file_chunks WHERE id = $1 AND n = $2",
        )
        .bind(&*self.id)
        .bind(n_sql)
        .bind(within as i32 + 1)
        .bind(take as i32)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed(what()))?;
        let data = match data {
            Some(d) if d.len() as u64 == take => d,
            Some(d) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: {} bytes where {take} were expected", what(), d.len()),
                ));
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: the chunk is missing (file deleted meanwhile?)", what()),
                ));
            }
        };
        self.pos += take;
        Ok(Some((Bytes::from(data), self)))
    }
}

/// One upload: at most one chunk buffered, each full chunk inserted before more is taken.
struct PostgresUpload {
    pool: PgPool,
    id: Arc<str>,
    buf: Vec<u8>,
    /// Number of the next chunk to insert.
    next: i32,
    size: u64,
    /// The chunk insert in flight. It runs as its own task, so that a write dropped
    /// mid-await cannot leave an insert landing after the cleanup; the cleanup awaits it.
    pending: Option<JoinHandle<io::Result<()>>>,
    /// A chunk failed: the file would have a hole, so nothing more is taken.
    broken: bool,
    committed: bool,
}

impl PostgresUpload {
    fn usable(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(format!(
                "upload of file {} failed earlier",
                self.id
            )));
        }
        if self.committed {
            return Err(io::Error::other(format!(
                "upload of file {} already committed",
                self.id
            )));
        }
        Ok(())
    }

    /// Inserts the buffer as the next chunk and waits for it.
    async fn flush(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        let n = self.next;
        self.next = n
            .checked_add(1)
            .ok_or_else(|| io::Error::other(format!("file {} has too many chunks", self.id)))?;
        let pool = self.pool.clone();
        let id = self.id.clone();
        self.pending = Some(tokio::spawn(async move {
            sqlx::query("INSERT INTO file_chunks (id, n, data) VALUES ($1, $2, $3)")
                .bind(&*id)
                .bind(n)
                .bind(data)
                .execute(&pool)
                .await
                .map(|_| ())
                .map_err(failed(format!("writing chunk {n} of file {id}")))
        }));
        self.settle().await
    }

    /// Waits for the insert in flight, if any.
    async fn settle(&mut self) -> io::Result<()> {
        let Some(handle) = self.pending.as_mut() else {
            return Ok(());
        };
        let outcome = handle.await;
        self.pending = None;
        let result = outcome.unwrap_or_else(|e| {
            Err(io::Error::other(format!(
                "writing a chunk of file {}: {e}",
                self.id
            )))
        });
        if result.is_err() {
            self.broken = true;
        }
        result
    }
}

impl Upload for PostgresUpload {
    fn write<'a>(&'a mut self, mut chunk: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        async move {
            self.usable()?;
            while !chunk.is_empty() {
                if self.buf.capacity() == 0 {
                    self.buf.reserve_exact(CHUNK);
                }
                let take = (CHUNK - self.buf.len()).min(chunk.len());
                self.buf.extend_from_slice(&chunk[..take]);
                self.size += take as u64;
                chunk = &chunk[take..];
                if self.buf.len() == CHUNK {
                    self.flush().await?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        async move {
            self.usable()?;
            if !self.buf.is_empty() {
                self.flush().await?;
            }
            let what = format!("committing file {}", self.id);
            let done = sqlx::query(
                "UPDATE file_blobs SET committed = TRUE, size = $2
                WHERE id = $1 AND NOT committed",
            )
            .bind(&*self.id)
            .bind(self.size as i64)
            .execute(&self.pool)
            .await
            .map_err(failed(&what))?;
            if done.rows_affected() != 1 {
                return Err(io::Error::other(format!(
                    "{what}: the upload was removed meanwhile (deleted, or swept as abandoned)"
                )));
            }
            self.committed = true;
            Ok(())
        }
        .boxed()
    }
}

impl Drop for PostgresUpload {
    /// An upload dropped before its commit (refused, failed, or its request gone)
    /// deletes what it wrote, once its insert in flight has landed.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(file = %self.id, "upload dropped outside a runtime: left to the sweep");
            return;
        };
        let pending = self.pending.take();
        let pool = self.pool.clone();
        let id = self.id.clone();
        runtime.spawn(async move {
            if let Some(insert) = pending {
                let _ = insert.await;
            }
            if let Err(e) = remove(&pool, &id).await {
                tracing::warn!(error = %e, file = %id, "removing an abandoned upload failed");
            }
        });
    }
}
