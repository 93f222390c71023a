//! The PostgreSQL side of a node's writer: each batch's transaction, which takes the
//! batch's offsets from the rooms' heads in the database, bounded in time, and noted in
//! the store's health.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Row};
use switchboard_protocol::now_millis;

use super::{Health, bind_offset, classify, users};
use crate::position::Position;
use crate::store::writer::{Backend, Item, Outcome, Work, duplicate_of, items};
use crate::store::{Committed, DedupeKey, Draft, StoreError};

/// Rows per INSERT statement (each column is one array parameter).
const ROWS_PER_INSERT: usize = 512;
/// Longest a batch's transaction may take once it has its connection: past it the
/// database is taken for unreachable (a network that drops packets answers nothing).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a batch's transaction failed (it is rolled back).
pub(super) enum Failure {
    Db(sqlx::Error),
    /// One item cannot be stored (a payload that does not encode, a write refused).
    Refused(String),
    /// Another node stored one of the batch's new idempotency keys first.
    Raced,
    /// The database did not answer within `WRITE_TIMEOUT`.
    Timeout,
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        Failure::Db(e)
    }
}

pub(super) struct PostgresBackend {
    /// A pool of one connection: it reconnects after a failure.
    pool: PgPool,
    epoch: Arc<str>,
    health: Arc<Health>,
    dedupe_window_ms: u64,
}

/// What a batch's message becomes, before and after its room's offsets are known.
enum Slot<'a> {
    Done(Outcome),
    /// A new message of its room.
    New(&'a Draft),
    /// Repeats the idempotency key of the new message in slot `.0`.
    Repeat(usize),
}

impl PostgresBackend {
    pub(super) fn new(
        pool: PgPool,
        epoch: Arc<str>,
        health: Arc<Health>,
        dedupe_window: Duration,
    ) -> PostgresBackend {
        PostgresBackend {
            pool,
            epoch,
            health,
            dedupe_window_ms: dedupe_window.as_millis() as u64,
        }
    }

    /// One transaction on the writer's connection, bounded in time. A connection
    /// that timed out is closed, not reused: its state is unknown.
    async fn transaction(&mut self, work: &[Work]) -> Result<Vec<Outcome>, Failure> {
        let mut conn = self.pool.acquire().await?;
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.write_on(&mut conn, work)).await;
        written.unwrap_or_else(|_| {
            conn.close_on_drop();
            Err(Failure::Timeout)
        })
    }

    /// Writes `work` in one transaction, in order: a user-layer write is applied; a
    /// message gets the next offset of its room (a repeat of a recent idempotency key
    /// gets the original's outcome).
    ///
    /// Locks are taken in one order by every node: the writes' rows, then the batch's
    /// rooms (sorted, in one statement), then its new idempotency keys (sorted). The
    /// rooms' heads are locked from their bump to the commit, and nothing is waited on
    /// meanwhile but other keys and the commit.
    async fn write_on(
        &self,
        conn: &mut PgConnection,
        work: &[Work],
    ) -> Result<Vec<Outcome>, Failure> {
        let mut tx = conn.begin().await?;
        let now = now_millis();
        let cutoff = now.saturating_sub(self.dedupe_window_ms);
        let stored = self.stored_keys(&mut tx, work, cutoff).await?;
        let mut slots: Vec<Slot> = Vec::with_capacity(work.len());
        // A new key's slot, to answer its repeats within the batch.
        let mut new_keys: HashMap<&DedupeKey, usize> = HashMap::new();
        // Messages per room: a BTreeMap, so rooms are bumped in one order.
        let mut per_room: BTreeMap<&str, i64> = BTreeMap::new();
        for item in items(work) {
            let d = match item {
                Item::Message(d) => d,
                Item::Profiles(run) => {
                    let done = users::upsert_users(&mut tx, &run).await?;
                    slots.extend(done.into_iter().map(|o| Slot::Done(Outcome::Write(o))));
                    continue;
                }
                Item::Write(op) => {
                    let done = users::apply(&mut tx, op).await?;
                    slots.push(Slot::Done(Outcome::Write(done)));
                    continue;
                }
            };
            if let Some(key) = &d.dedupe {
                if let Some(&original) = new_keys.get(key) {
                    slots.push(Slot::Repeat(original));
                    continue;
                }
                if let Some(original) = stored.get(key) {
                    slots.push(Slot::Done(Outcome::Message(original.clone())));
                    continue;
                }
                new_keys.insert(key, slots.len());
            }
            *per_room.entry(&d.room).or_default() += 1;
            slots.push(Slot::New(d));
        }
        let mut next = bump_heads(&mut tx, &per_room).await?;
        let mut out: Vec<Outcome> = Vec::with_capacity(slots.len());
        let mut rows = Rows::default();
        for slot in slots {
            let outcome = match slot {
                Slot::Done(o) => o,
                Slot::Repeat(original) => {
                    let Outcome::Message(original) = &out[original] else {
                        unreachable!("keys index messages")
                    };
                    Outcome::Message(duplicate_of(original))
                }
                Slot::New(d) => {
                    let offset = next.get_mut(&*d.room).ok_or_else(|| {
                        Failure::Refused(format!("no offset for room {}", d.room))
                    })?;
                    let c = rows.push(d, *offset, &self.epoch)?;
                    *offset += 1;
                    Outcome::Message(c)
                }
            };
            out.push(outcome);
        }
        rows.insert(&mut tx).await?;
        let keys: Vec<(&DedupeKey, &Committed)> = new_keys
            .into_iter()
            .map(|(key, slot)| match &out[slot] {
                Outcome::Message(c) => (key, c),
                Outcome::Write(_) => unreachable!("keys index messages"),
            })
            .collect();
        store_keys(&mut tx, &keys, now, cutoff).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// The batch's idempotency keys stored within the window, with their originals'
    /// outcomes.
    async fn stored_keys(
        &self,
        conn: &mut PgConnection,
        work: &[Work],
        cutoff: u64,
    ) -> Result<HashMap<DedupeKey, Committed>, Failure> {
        let (scopes, keys): (Vec<&str>, Vec<&str>) = work
            .iter()
            .filter_map(|w| match w {
                Work::Append(Draft {
                    dedupe: Some(k), ..
                }) => Some((k.scope.as_str(), k.key.as_str())),
                _ => None,
            })
            .unzip();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(
            "SELECT d.scope, d.key, d.room, d.id, d.seq FROM dedupe d \
             JOIN unnest($1::text[], $2::text[]) AS t(scope, key) \
             ON d.scope = t.scope AND d.key = t.key WHERE d.ts >= $3",
        )
        .bind(&scopes)
        .bind(&keys)
        .bind(bind_offset(cutoff))
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let key = DedupeKey {
                    scope: row.get(0),
                    key: row.get(1),
                };
                let original = Committed {
                    id: row.get(3),
                    room: row.get::<String, _>(2).into(),
                    position: Position::new(row.get::<i64, _>(4) as u64, self.epoch.clone()),
                    payload: Default::default(),
                    duplicate: true,
                    private: None,
                };
                (key, original)
            })
            .collect())
    }
}

impl Backend for PostgresBackend {
    /// Writes `work` in one transaction; once more if another node took one of its new
    /// idempotency keys first (that node has committed by then, so this time the
    /// repeat is found and answered as a duplicate).
    async fn write(&mut self, work: &[Work]) -> Result<Vec<Outcome>, StoreError> {
        let mut written = self.transaction(work).await;
        if matches!(written, Err(Failure::Raced)) {
            written = self.transaction(work).await;
        }
        match written {
            Ok(outcomes) => {
                self.health.up();
                Ok(outcomes)
            }
            Err(Failure::Db(e)) => {
                if super::connection_lost(&e) {
                    self.health.lost(&e);
                }
                Err(classify(e))
            }
            Err(Failure::Refused(why)) => Err(StoreError::Rejected(why)),
            Err(Failure::Raced) => Err(StoreError::Rejected(
                "another node is storing a message with the same idempotency key".into(),
            )),
            Err(Failure::Timeout) => {
                let e = StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {WRITE_TIMEOUT:?}"
                ));
                self.health.lost(&e);
                Err(e)
            }
        }
    }

    /// While the store is unhealthy, nothing is tried: the probe says when it is back.
    fn unreachable(&self) -> Option<StoreError> {
        (!self.health.is_up()).then(|| StoreError::Unavailable("PostgreSQL is unreachable".into()))
    }

    /// Deletes idempotency keys older than the window (any node may; they agree).
    async fn prune(&mut self) {
        if !self.health.is_up() {
            return;
        }
        let cutoff = now_millis().saturating_sub(self.dedupe_window_ms);
        if let Err(e) = sqlx::query("DELETE FROM dedupe WHERE ts < $1")
            .bind(bind_offset(cutoff))
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "pruning idempotency keys failed");
        }
    }

    async fn close(self) {
        self.pool.close().await;
    }
}

/// Takes `n` offsets of each room of `per_room` in one statement, which locks the
/// rooms' heads in room order until the transaction ends; answers each room's first
/// offset taken.
async fn bump_heads(
    conn: &mut PgConnection,
    per_room: &BTreeMap<&str, i64>,
) -> Result<HashMap<String, u64>, Failure> {
    if per_room.is_empty() {
        return Ok(HashMap::new());
    }
    let (rooms, counts): (Vec<&str>, Vec<i64>) = per_room.iter().map(|(r, n)| (*r, *n)).unzip();
    let heads: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO rooms AS r (room, head) \
         SELECT t.room, t.n FROM unnest($1::text[], $2::bigint[]) AS t(room, n) \
         ORDER BY t.room COLLATE \"C\" \
         ON CONFLICT (room) DO UPDATE SET head = r.head + excluded.head \
         RETURNING room, head",
    )
    .bind(&rooms)
    .bind(&counts)
    .fetch_all(&mut *conn)
    .await?;
    Ok(heads
        .into_iter()
        .map(|(room, head)| {
            let n = per_room.get(room.as_str()).copied().unwrap_or(0);
            (room, (head - n + 1) as u64)
        })
        .collect())
}

/// Records the batch's new idempotency keys, in key order. A key still in the table
/// but past the window is taken over; one another node stored meanwhile fails the
/// batch with [`Failure::Raced`] (the statement waited for that node's commit).
async fn store_keys(
    conn: &mut PgConnection,
    keys: &[(&DedupeKey, &Committed)],
    now: u64,
    cutoff: u64,
) -> Result<(), Failure> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut scopes = Vec::with_capacity(keys.len());
    let mut names = Vec::with_capacity(keys.len());
    let mut rooms = Vec::with_capacity(keys.len());
    let mut ids = Vec::with_capacity(keys.len());
    let mut seqs = Vec::with_capacity(keys.len());
    for (key, c) in keys {
        scopes.push(key.scope.as_str());
        names.push(key.key.as_str());
        rooms.push(&*c.room);
        ids.push(c.id.as_str());
        seqs.push(bind_offset(c.position.offset));
    }
    let taken: Vec<i32> = sqlx::query_scalar(
        "INSERT INTO dedupe AS d (scope, key, room, id, seq, ts) \
         SELECT t.scope, t.key, t.room, t.id, t.seq, $6 \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         AS t(scope, key, room, id, seq) \
         ORDER BY t.scope COLLATE \"C\", t.key COLLATE \"C\" \
         ON CONFLICT (scope, key) DO UPDATE SET room = excluded.room, id = excluded.id, \
         seq = excluded.seq, ts = excluded.ts WHERE d.ts < $7 \
         RETURNING 1",
    )
    .bind(&scopes)
    .bind(&names)
    .bind(&rooms)
    .bind(&ids)
    .bind(&seqs)
    .bind(bind_offset(now))
    .bind(bind_offset(cutoff))
    .fetch_all(&mut *conn)
    .await?;
    if taken.len() < keys.len() {
        return Err(Failure::Raced);
    }
    Ok(())
}

/// The batch's new messages, as columns.
#[derive(Default)]
struct Rows {
    rooms: Vec<Arc<str>>,
    seqs: Vec<i64>,
    sizes: Vec<i32>,
    ids: Vec<String>,
    timestamps: Vec<i64>,
    data: Vec<String>,
}

impl Rows {
    /// Adds `d` at `offset`; answers its outcome.
    fn push(&mut self, d: &Draft, offset: u64, epoch: &Arc<str>) -> Result<Committed, Failure> {
        let data = d
            .payload(offset)
            .map_err(|e| Failure::Refused(format!("encode: {e}")))?;
        let size = i32::try_from(data.len())
            .map_err(|_| Failure::Refused(format!("a payload of {} bytes", data.len())))?;
        let committed = d.committed(Position::new(offset, epoch.clone()), data.clone().into());
        self.rooms.push(d.room.clone());
        self.seqs.push(bind_offset(offset));
        self.sizes.push(size);
        self.ids.push(d.id.clone());
        self.timestamps.push(bind_offset(d.timestamp));
        self.data.push(data);
        Ok(committed)
    }

    async fn insert(&self, conn: &mut PgConnection) -> Result<(), Failure> {
        for start in (0..self.seqs.len()).step_by(ROWS_PER_INSERT) {
            let end = (start + ROWS_PER_INSERT).min(self.seqs.len());
            let rooms: Vec<&str> = self.rooms[start..end].iter().map(|r| &**r).collect();
            sqlx::query(
                "INSERT INTO messages (room, seq, size, id, ts, data) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[], \
                 $5::bigint[], $6::text[])",
            )
            .bind(&rooms)
            .bind(&self.seqs[start..end])
            .bind(&self.sizes[start..end])
            .bind(&self.ids[start..end])
            .bind(&self.timestamps[start..end])
            .bind(&self.data[start..end])
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
