//! The cluster's store: one PostgreSQL database shared by every node.
//!
//! Each node has its own writer task (the stores' [`super::writer`], with its
//! transactions in [`writer`]), which commits batches (group commit) on a connection of
//! its own, and a pool for reads. Unlike SQLite, many nodes write the same rooms at
//! once, so offsets are given out by the database, never from what a node remembers:
//! in its commit transaction, a batch bumps the head of each of its rooms in one
//! statement that locks the rooms in sorted order (so two nodes' batches never wait on
//! each other in a cycle), and takes the block `head - n + 1 ..= head` for its `n`
//! messages of that room, in the batch's order.
//! The row lock on a room's head is held until the transaction ends, hence:
//!
//! - a room's offsets are unique and without gaps across all nodes: a transaction
//!   that rolls back rolls its bump back with it;
//! - once a transaction holding offset `m` of room `r` has committed, every offset
//!   below `m` of `r` has committed: whoever has seen `m` can read `1..m`.
//!
//! Each node's commit log is in that node's commit order; across nodes, ordering
//! delivery is the broker's job. `head` reads the database every time.
//!
//! Idempotency keys are kept unique by the primary key of `dedupe`: the same key sent
//! to two nodes at once is stored once. The node whose batch loses that race waits for
//! the other's commit and tries its batch again, which then answers the repeat as a
//! duplicate; if it loses a race again, the repeat is answered
//! [`StoreError::Rejected`] (never stored twice).
//!
//! When PostgreSQL cannot be reached, statements wait at most `acquire_timeout` for a
//! connection and fail with [`StoreError::Unavailable`]; the store is then unhealthy
//! until a statement succeeds again (a probe asks at once, then every `PROBE_EVERY`),
//! and while it is, the writer answers every draft at once with `Unavailable` rather
//! than letting its queue wait. The pools reconnect by themselves. A connection that
//! fails during a commit leaves its outcome unknown: the drafts are answered
//! `Unavailable`, though they may be stored (a retry with the same idempotency key is
//! then answered as a duplicate).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Row, SqlStr};
use switchboard_protocol::HistoryRange;
use tokio::sync::{Notify, mpsc, oneshot};

use super::history::{self, HistorySql, PageFill};
use super::{CommitLog, Gap, Page, Store, StoreError, StoreStats, StoredMessage, bind_offset};
use crate::metrics::Metrics;
use crate::position::{Position, new_epoch};

mod users;
mod writer;

use super::writer::{Counters, Job, Writer};
use writer::PostgresBackend;

/// Drafts waiting for the writer before `append` makes senders wait.
const QUEUE: usize = 16 * 1024;
/// How often an unhealthy store asks the database whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A writer's transaction left idle this long (its node hangs) is ended by the
/// server, so that the room heads it locked do not stop the other nodes.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// What the PostgreSQL store needs from the config.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// How long an idempotency key is remembered.
    pub dedupe_window: Duration,
    /// Connections for reads; the writer has one more of its own.
    pub max_connections: u32,
    /// How long a statement waits for a connection (including connecting) before the
    /// store answers [`StoreError::Unavailable`].
    pub acquire_timeout: Duration,
}

impl PostgresOptions {
    /// The defaults for `url`: a 10-minute dedupe window, 8 read connections and a
    /// 2-second acquire timeout.
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            dedupe_window: Duration::from_secs(600),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

/// The URL without its credentials.
impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***{}", &self.url[..scheme], &self.url[at..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("PostgresOptions")
            .field("url", &url)
            .field("dedupe_window", &self.dedupe_window)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

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
            include_str!("migrations/postgres/0001_messages.sql"),
        ),
        migration(
            2,
            "positions",
            include_str!("migrations/postgres/0002_positions.sql"),
        ),
        migration(
            3,
            "users",
            include_str!("migrations/postgres/0003_users.sql"),
        ),
    ])
}

pub struct PostgresStore {
    jobs: mpsc::Sender<Job>,
    reads: PgPool,
    epoch: Arc<str>,
    health: Arc<Health>,
    counters: Arc<Counters>,
}

/// Whether the database answers: false from a failure of the connection (or of
/// connecting) until a statement succeeds again. A flag, so `/ready` costs nothing.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    /// Wakes the probe when the store turns unhealthy: one connection killed while the
    /// database is fine costs a moment of refusals, not `PROBE_EVERY`.
    wake: Notify,
}

impl Health {
    fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    fn up(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("PostgreSQL answers again");
        }
    }

    fn lost(&self, error: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "PostgreSQL is unreachable");
            self.wake.notify_one();
        }
    }

    fn saw<T>(&self, result: &Result<T, sqlx::Error>) {
        match result {
            Ok(_) => self.up(),
            Err(e) if connection_lost(e) => self.lost(e),
            Err(_) => {}
        }
    }
}

/// Whether `e` says the connection, or the database as a whole, failed (rather than
/// one statement).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        // 08: connection exception; 57P: the server shut down or is starting;
        // 53300: too many connections; 3D000: no such database; 28: authorization.
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("28")
                || c == "53300"
                || c == "3D000"
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A failed statement of the writer: bad data (a constraint, a value out of range, a
/// query the database refuses) concerns the rows at hand; anything else (the
/// connection, a deadlock, a timeout, a full disk) the whole store, and a retry may
/// work.
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d)
            if d.code().is_some_and(|c| {
                c.starts_with("22") || c.starts_with("23") || c.starts_with("42")
            }) =>
        {
            StoreError::Rejected(d.to_string())
        }
        _ => unavailable(e),
    }
}

/// History in PostgreSQL's dialect.
const HISTORY: HistorySql = HistorySql {
    since: "SELECT seq, data FROM messages WHERE room = $1 AND seq > $2 \
            ORDER BY seq ASC LIMIT $3",
    between: "SELECT seq, data FROM messages WHERE room = $1 AND seq > $2 AND seq < $3 \
              ORDER BY seq ASC LIMIT $4",
    before: "SELECT seq, data FROM messages WHERE room = $1 AND seq < $2 \
             ORDER BY seq DESC LIMIT $3",
    latest: "SELECT seq, data FROM messages WHERE room = $1 ORDER BY seq DESC LIMIT $2",
};

impl PostgresStore {
    /// Connects to `opts.url`, applies migrations (one node at a time: sqlx holds an
    /// advisory lock meanwhile) and starts the writer, which hands its outcomes to
    /// `commits`.
    pub async fn open(
        opts: &PostgresOptions,
        commits: CommitLog,
        metrics: Arc<Metrics>,
    ) -> Result<PostgresStore, StoreError> {
        let connect: PgConnectOptions = opts
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL url: {e}")))?;
        let connect = connect.application_name("switchboard");
        let writes = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_lazy_with(connect.clone().options([
                (
                    "idle_in_transaction_session_timeout",
                    format!("{}ms", IDLE_IN_TRANSACTION.as_millis()),
                ),
                // What the writer's reasoning assumes, whatever the server's default:
                // each statement sees what committed before it, and a bump waits for
                // the room's lock rather than failing to serialize.
                (
                    "default_transaction_isolation",
                    "read committed".to_string(),
                ),
            ]));
        let reads = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_lazy_with(connect);
        let mut conn = writes.acquire().await.map_err(unavailable)?;
        migrator()
            .run(&mut *conn)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating the database: {e}")))?;
        // The first node to open the database makes its epoch; every node reads it.
        sqlx::query("INSERT INTO meta (key, value) VALUES ('epoch', $1) ON CONFLICT DO NOTHING")
            .bind(new_epoch())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        let epoch: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
        drop(conn);
        let epoch: Arc<str> = epoch.into();
        let health = Arc::new(Health::default());
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(QUEUE);
        let backend =
            PostgresBackend::new(writes, epoch.clone(), health.clone(), opts.dedupe_window);
        tokio::spawn(Writer::new(backend, commits, counters.clone(), metrics).run(rx));
        tokio::spawn(probe(Arc::downgrade(&health), reads.clone()));
        Ok(PostgresStore {
            jobs: tx,
            reads,
            epoch,
            health,
            counters,
        })
    }

    /// Runs a read, noting in the health flag how it went.
    async fn reading<T>(
        &self,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let result = query.await;
        self.health.saw(&result);
        result.map_err(unavailable)
    }
}

/// While the store is unhealthy, asks the database whether it is back: at once, then
/// every `PROBE_EVERY`, so that `/ready` recovers without traffic. Ends with the store.
async fn probe(health: Weak<Health>, reads: PgPool) {
    loop {
        let Some(health) = health.upgrade() else {
            return;
        };
        if reads.is_closed() {
            return;
        }
        if !health.is_up() {
            health.saw(&sqlx::query("SELECT 1").execute(&reads).await);
        }
        // A permit is kept if the store turned unhealthy since: no wake-up is lost.
        let _ = tokio::time::timeout(PROBE_EVERY, health.wake.notified()).await;
    }
}

impl Store for PostgresStore {
    fn append(&self, draft: super::Draft, done: super::Completion) -> BoxFuture<'_, ()> {
        async move {
            // A closed queue gives the job back; dropping it answers `Closed`.
            let _ = self.jobs.send(Job::Append(draft, done)).await;
        }
        .boxed()
    }

    fn head<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Position, StoreError>> {
        async move {
            let head: Option<i64> = self
                .reading(
                    sqlx::query_scalar("SELECT head FROM rooms WHERE room = $1")
                        .bind(room)
                        .fetch_optional(&self.reads),
                )
                .await?;
            Ok(Position::new(head.unwrap_or(0) as u64, self.epoch.clone()))
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
            while let Some(row) = self.reading(rows.try_next()).await? {
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
            let (messages, bytes): (i64, i64) = self
                .reading(
                    sqlx::query_as(
                        "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM (SELECT size \
                         FROM messages WHERE room = $1 AND seq > $2 AND seq <= $3 \
                         ORDER BY seq LIMIT $4) g",
                    )
                    .bind(room)
                    .bind(bind_offset(after))
                    .bind(bind_offset(upto))
                    .bind(i64::from(max_messages) + 1)
                    .fetch_one(&self.reads),
                )
                .await?;
            Ok(Gap {
                messages: messages as u64,
                bytes: bytes as u64,
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
        let health = &self.health;
        sqlx::query(
            "SELECT seq, data FROM messages WHERE room = $1 AND seq > $2 AND seq <= $3 \
             ORDER BY seq ASC",
        )
        .bind(room)
        .bind(bind_offset(after))
        .bind(bind_offset(upto))
        .fetch(&self.reads)
        .map(move |row| {
            health.saw(&row);
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
        !self.jobs.is_closed() && !self.reads.is_closed() && self.health.is_up()
    }

    fn stats(&self) -> StoreStats {
        self.counters.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::PostgresOptions;

    #[test]
    fn options_print_without_credentials() {
        let opts = PostgresOptions::new("postgres://sb:s3cret@db:5432/switchboard");
        let printed = format!("{opts:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("postgres://***@db:5432/switchboard"),
            "{printed}"
        );
        let bare = PostgresOptions::new("postgres://db/switchboard");
        assert!(format!("{bare:?}").contains("postgres://db/switchboard"));
    }
}
