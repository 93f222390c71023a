//! The user layer in PostgreSQL: the writer's [`apply`] of each [`WriteOp`] (inside its
//! batch transaction) and the reads of [`UserStore`] on the read pool.
//!
//! Other nodes write the same rows at the same time, so a write that reads before it
//! writes does both in one statement that locks what it reads (a read marker, a
//! reopened entry), or first takes a transaction-scoped advisory lock on what it
//! decides about (a user's contact list, an owner's quota).

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgQueryResult, PgRow};

use super::writer::Failure;
use super::{Job, PostgresStore};
use crate::store::users::InterestingUsers;
use crate::store::{
    FileRecord, MemberRecord, NotificationRecord, PushRecord, StoreError, UserRecord, UserStore,
    WriteOp, WriteOutcome,
};

/// Profiles stored per statement when a batch holds many.
const PROFILES_PER_INSERT: usize = 1024;
/// How long a claimed push is left to the node that claimed it (longer than a webhook
/// request may take).
const PUSH_LEASE_MS: u64 = 60_000;
/// The first key of the advisory locks taken here (the second is a hash of the id).
const LOCK_CONTACTS: i32 = 0x5357_0001;
const LOCK_QUOTA: i32 = 0x5357_0002;

/// Stores the profiles of a run of [`WriteOp::UpsertUser`] in as few statements as
/// possible: a storm of connects is a storm of these. A user twice in the run takes
/// its last profile (PostgreSQL refuses to update one row twice in a statement), and
/// rows are written in id order, the order every node locks them in. Each answers
/// `Changed(true)` (nobody waits on the figure).
pub(super) async fn upsert_users(
    conn: &mut PgConnection,
    ops: &[&WriteOp],
) -> Result<Vec<WriteOutcome>, Failure> {
    let mut latest: BTreeMap<&str, (&str, Option<&str>)> = BTreeMap::new();
    for op in ops {
        if let WriteOp::UpsertUser {
            id,
            username,
            avatar,
        } = op
        {
            latest.insert(id, (username, avatar.as_deref()));
        }
    }
    let profiles: Vec<_> = latest.into_iter().collect();
    for chunk in profiles.chunks(PROFILES_PER_INSERT) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| *id).collect();
        let names: Vec<&str> = chunk.iter().map(|(_, (name, _))| *name).collect();
        let avatars: Vec<Option<&str>> = chunk.iter().map(|(_, (_, avatar))| *avatar).collect();
        sqlx::query(
            "INSERT INTO users AS u (id, username, avatar) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
             ON CONFLICT (id) DO UPDATE SET username = excluded.username, \
             avatar = excluded.avatar \
             WHERE u.username IS DISTINCT FROM excluded.username \
             OR u.avatar IS DISTINCT FROM excluded.avatar",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&avatars)
        .execute(&mut *conn)
        .await?;
    }
    Ok(ops.iter().map(|_| WriteOutcome::Changed(true)).collect())
}

/// Applies one write inside the writer's transaction.
pub(super) async fn apply(conn: &mut PgConnection, op: &WriteOp) -> Result<WriteOutcome, Failure> {
    let changed = |r: PgQueryResult| WriteOutcome::Changed(r.rows_affected() > 0);
    Ok(match op {
        WriteOp::UpsertUser {
            id,
            username,
            avatar,
        } => changed(
            sqlx::query(
                "INSERT INTO users AS u (id, username, avatar) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET username = excluded.username, \
                 avatar = excluded.avatar \
                 WHERE u.username IS DISTINCT FROM excluded.username \
                 OR u.avatar IS DISTINCT FROM excluded.avatar",
            )
            .bind(id)
            .bind(username)
            .bind(avatar)
            .execute(&mut *conn)
            .await?,
        ),
        WriteOp::SetStatus { user, status } => changed(
            sqlx::query(
                "INSERT INTO users (id, username, status) VALUES ($1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status",
            )
            .bind(user)
            .bind(status)
            .execute(&mut *conn)
            .await?,
        ),
        WriteOp::SetLastSeen { user, at } => changed(
            sqlx::query("UPDATE users SET last_seen = $1 WHERE id = $2")
                .bind(*at as i64)
                .bind(user)
                .execute(&mut *conn)
                .await?,
        ),
        WriteOp::ReplaceContacts { user, contacts } => {
            // Two nodes replacing one list at once: one list wins, not their union.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(LOCK_CONTACTS)
                .bind(user)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM contacts WHERE user_id = $1")
                .bind(user)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO contacts (user_id, contact_id) \
                 SELECT $1, c FROM unnest($2::text[]) AS t(c) ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(contacts)
            .execute(&mut *conn)
            .await?;
            WriteOutcome::Done
        }
        WriteOp::AddMember { room, user, at } => changed(
            sqlx::query(
                "INSERT INTO memberships (room, user_id, joined_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(room)
            .bind(user)
            .bind(*at as i64)
            .execute(&mut *conn)
            .await?,
        ),
        WriteOp::RemoveMember { room, user } => changed(
            sqlx::query("DELETE FROM memberships WHERE room = $1 AND user_id = $2")
                .bind(room)
                .bind(user)
                .execute(&mut *conn)
                .await?,
        ),
        WriteOp::MarkRead { room, user, offset } => {
            let marker: Option<i64> = sqlx::query_scalar(
                "UPDATE memberships SET last_read = GREATEST(last_read, $1) \
                 WHERE room = $2 AND user_id = $3 RETURNING last_read",
            )
            .bind(super::bind_offset(*offset))
            .bind(room)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
            let marker =
                marker.ok_or_else(|| Failure::Refused("not a member of the room".into()))?;
            WriteOutcome::Marker(marker as u64)
        }
        WriteOp::Notify {
            room,
            kind,
            first_offset,
            at,
            entries,
        } => {
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            let users: Vec<&str> = entries.iter().map(|e| e.user.as_str()).collect();
            // A user with an unread entry in the room gets none: the partial unique
            // index, whichever node opened it.
            let inserted: HashSet<String> = sqlx::query_scalar(
                "INSERT INTO notifications (id, user_id, room, type, first_offset, created_at) \
                 SELECT t.id, t.u, $3, $4, $5, $6 FROM unnest($1::text[], $2::text[]) AS t(id, u) \
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(&ids)
            .bind(&users)
            .bind(room)
            .bind(kind)
            .bind(super::bind_offset(*first_offset))
            .bind(*at as i64)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
            let others: Vec<&str> = entries
                .iter()
                .filter(|e| !inserted.contains(&e.id))
                .map(|e| e.user.as_str())
                .collect();
            // An unread entry the user came back to, then left: it takes this offline
            // spell on, and is pushed again with its whole count.
            let reopened: HashMap<String, (String, i64)> = if others.is_empty() {
                HashMap::new()
            } else {
                sqlx::query_as::<_, (String, String, i64)>(
                    "UPDATE notifications SET \
                     base_count = base_count + last_offset - first_offset + 1, \
                     first_offset = $1, last_offset = NULL \
                     WHERE room = $2 AND user_id = ANY($3) AND NOT read \
                     AND last_offset IS NOT NULL \
                     RETURNING user_id, id, base_count",
                )
                .bind(super::bind_offset(*first_offset))
                .bind(room)
                .bind(&others)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .map(|(user, id, base)| (user, (id, base)))
                .collect()
            };
            let mut opened = Vec::new();
            let mut pushes = Vec::new();
            for e in entries {
                let push = if inserted.contains(&e.id) {
                    e.push.clone()
                } else if let Some((id, base)) = reopened.get(&e.user) {
                    e.push
                        .as_deref()
                        .map(|body| reopened_push(body, id, *base as u64 + 1))
                } else {
                    continue;
                };
                pushes.extend(push);
                opened.push((e.id.clone(), e.user.clone()));
            }
            if !pushes.is_empty() {
                sqlx::query(
                    "INSERT INTO pushes (body, next_at, created_at) \
                     SELECT b, $2, $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(b, i) \
                     ORDER BY i",
                )
                .bind(&pushes)
                .bind(*at as i64)
                .execute(&mut *conn)
                .await?;
            }
            WriteOutcome::Opened(opened)
        }
        WriteOp::FreezeNotifications { user } => changed(
            sqlx::query(
                "UPDATE notifications n SET last_offset = GREATEST(n.first_offset - 1, \
                 COALESCE((SELECT r.head FROM rooms r WHERE r.room = n.room), 0)) \
                 WHERE n.user_id = $1 AND NOT n.read AND n.last_offset IS NULL",
            )
            .bind(user)
            .execute(&mut *conn)
            .await?,
        ),
        WriteOp::ReadNotifications { user, ids } => {
            if ids.as_ref().is_some_and(|ids| ids.is_empty()) {
                return Ok(WriteOutcome::Count(0));
            }
            // Freezes what the entry shows from its room at the moment it is read.
            let sql = format!(
                "UPDATE notifications n SET read = true, \
                 (count, message, sender_id, sender_name, timestamp) = \
                 (SELECT {COUNT}, {MESSAGE}, {SENDER_ID}, {SENDER_NAME}, {TIMESTAMP} \
                 FROM ({SHOWN}) s) \
                 WHERE NOT n.read AND n.user_id = $1 AND ($2::text[] IS NULL OR n.id = ANY($2))"
            );
            WriteOutcome::Count(
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(user)
                    .bind(ids)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected(),
            )
        }
        WriteOp::InsertFile { file: f, quota } => {
            if quota.is_some() {
                // Uploads of one owner on two nodes: the second checks the quota once
                // the first is committed (each statement sees what committed before it).
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(LOCK_QUOTA)
                    .bind(&f.owner)
                    .execute(&mut *conn)
                    .await?;
            }
            changed(
                sqlx::query(
                    "INSERT INTO files (id, owner, name, size, type, sha256, created_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7 WHERE $8::BIGINT IS NULL \
                     OR (SELECT COALESCE(SUM(size), 0) FROM files WHERE owner = $2) + $4 <= $8",
                )
                .bind(&f.id)
                .bind(&f.owner)
                .bind(&f.name)
                .bind(f.size as i64)
                .bind(&f.kind)
                .bind(&f.sha256)
                .bind(f.created_at as i64)
                .bind(quota.map(|q| q as i64))
                .execute(&mut *conn)
                .await?,
            )
        }
        WriteOp::ShareFile { file, room } => {
            let found = sqlx::query("UPDATE files SET shared = true WHERE id = $1")
                .bind(file)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if found > 0 {
                sqlx::query(
                    "INSERT INTO file_rooms (file_id, room) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(file)
                .bind(room)
                .execute(&mut *conn)
                .await?;
            }
            WriteOutcome::Changed(found > 0)
        }
        WriteOp::DeleteOrphanFile { id } => changed(
            sqlx::query("DELETE FROM files WHERE id = $1 AND NOT shared")
                .bind(id)
                .execute(&mut *conn)
                .await?,
        ),
        WriteOp::PushAttempted {
            id,
            attempts,
            retry_at,
        } => changed(match retry_at {
            None => {
                sqlx::query("DELETE FROM pushes WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?
            }
            Some(at) => {
                sqlx::query("UPDATE pushes SET attempts = $1, next_at = $2 WHERE id = $3")
                    .bind(*attempts as i32)
                    .bind(*at as i64)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?
            }
        }),
    })
}

/// A push body made for a new entry (`{userId, notification}`), given the id and count
/// of the entry it reopened instead.
fn reopened_push(body: &str, id: &str, count: u64) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(mut v) => {
            v["notification"]["id"] = id.into();
            v["notification"]["count"] = count.into();
            v.to_string()
        }
        Err(_) => body.to_string(),
    }
}

/// What an unread entry `n` shows, read from its room: `s.last`, the offset it counts
/// to, and `s.d`, the payload of that message (the newest it covers); both NULL for a
/// read entry, which reads nothing. `OFFSET 0` keeps the subquery whole, so a payload
/// is parsed once rather than once per field. A private message's payload has the
/// same `content`, `sender` and `timestamp`.
const SHOWN: &str = "SELECT l.last, m.data::json AS d \
     FROM (SELECT CASE WHEN n.read THEN NULL ELSE COALESCE(n.last_offset, \
     (SELECT r.head FROM rooms r WHERE r.room = n.room)) END AS last) l \
     LEFT JOIN messages m ON m.room = n.room AND m.seq = l.last OFFSET 0";
/// How many messages since the entry's first offset, and the newest one's content
/// (first 100 characters), sender and time.
const COUNT: &str = "n.base_count + s.last - n.first_offset + 1";
const MESSAGE: &str = "left(s.d ->> 'content', 100)";
const SENDER_ID: &str = "s.d #>> '{sender,id}'";
const SENDER_NAME: &str = "s.d #>> '{sender,username}'";
const TIMESTAMP: &str = "(s.d ->> 'timestamp')::BIGINT";

fn user_record(row: &PgRow) -> UserRecord {
    UserRecord {
        id: row.get("id"),
        username: row.get("username"),
        avatar: row.get("avatar"),
        status: row.get("status"),
        last_seen: row.get::<Option<i64>, _>("last_seen").map(|v| v as u64),
    }
}

fn file_record(row: &PgRow) -> FileRecord {
    FileRecord {
        id: row.get("id"),
        owner: row.get("owner"),
        name: row.get("name"),
        size: row.get::<i64, _>("size") as u64,
        kind: row.get("type"),
        sha256: row.get("sha256"),
        created_at: row.get::<i64, _>("created_at") as u64,
    }
}

impl UserStore for PostgresStore {
    fn write(&self, op: WriteOp) -> BoxFuture<'_, Result<WriteOutcome, StoreError>> {
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.jobs
                .send(Job::Write(op, tx))
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn write_later(&self, op: WriteOp) {
        match self.jobs.try_send(Job::Later(op)) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(job)) => {
                let jobs = self.jobs.clone();
                tokio::spawn(async move {
                    let _ = jobs.send(job).await;
                });
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("store closed: a later write is dropped");
            }
        }
    }

    fn user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<UserRecord>, StoreError>> {
        async move {
            let row = self
                .reading(
                    sqlx::query("SELECT * FROM users WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.reads),
                )
                .await?;
            Ok(row.as_ref().map(user_record))
        }
        .boxed()
    }

    fn users<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<UserRecord>, StoreError>> {
        async move {
            let rows = self
                .reading(
                    sqlx::query("SELECT * FROM users WHERE id = ANY($1)")
                        .bind(ids)
                        .fetch_all(&self.reads),
                )
                .await?;
            Ok(rows.iter().map(user_record).collect())
        }
        .boxed()
    }

    fn contacts<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.reading(
            sqlx::query_scalar(
                "SELECT contact_id FROM contacts WHERE user_id = $1 ORDER BY contact_id",
            )
            .bind(user)
            .fetch_all(&self.reads),
        )
        .boxed()
    }

    fn lists_contact<'a>(
        &'a self,
        user: &'a str,
        contact: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let found: Option<i32> = self
                .reading(
                    sqlx::query_scalar(
                        "SELECT 1 FROM contacts WHERE user_id = $1 AND contact_id = $2",
                    )
                    .bind(user)
                    .bind(contact)
                    .fetch_optional(&self.reads),
                )
                .await?;
            Ok(found.is_some())
        }
        .boxed()
    }

    fn share_a_room<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let found: Option<i32> = self
                .reading(
                    sqlx::query_scalar(
                        "SELECT 1 FROM memberships x JOIN memberships y ON x.room = y.room \
                         WHERE x.user_id = $1 AND y.user_id = $2 LIMIT 1",
                    )
                    .bind(a)
                    .bind(b)
                    .fetch_optional(&self.reads),
                )
                .await?;
            Ok(found.is_some())
        }
        .boxed()
    }

    fn membership<'a>(
        &'a self,
        room: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        async move {
            let marker: Option<i64> = self
                .reading(
                    sqlx::query_scalar(
                        "SELECT last_read FROM memberships WHERE room = $1 AND user_id = $2",
                    )
                    .bind(room)
                    .bind(user)
                    .fetch_optional(&self.reads),
                )
                .await?;
            Ok(marker.map(|m| m as u64))
        }
        .boxed()
    }

    fn members<'a>(
        &'a self,
        room: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<MemberRecord>, StoreError>> {
        async move {
            let rows = self
                .reading(
                    sqlx::query(
                        "SELECT m.user_id, m.joined_at, u.username, u.avatar, u.status, \
                         u.last_seen FROM memberships m LEFT JOIN users u ON u.id = m.user_id \
                         WHERE m.room = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT $3",
                    )
                    .bind(room)
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.reads),
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| MemberRecord {
                    user_id: r.get("user_id"),
                    username: r.get("username"),
                    avatar: r.get("avatar"),
                    status: r.get("status"),
                    last_seen: r.get::<Option<i64>, _>("last_seen").map(|v| v as u64),
                    joined_at: r.get::<i64, _>("joined_at") as u64,
                })
                .collect())
        }
        .boxed()
    }

    fn member_count<'a>(
        &'a self,
        room: &'a str,
        cap: u32,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let n: i64 = self
                .reading(
                    sqlx::query_scalar(
                        "SELECT COUNT(*) FROM (SELECT 1 FROM memberships WHERE room = $1 \
                         LIMIT $2) m",
                    )
                    .bind(room)
                    .bind(i64::from(cap) + 1)
                    .fetch_one(&self.reads),
                )
                .await?;
            Ok(n as u64)
        }
        .boxed()
    }

    fn rooms_of<'a>(
        &'a self,
        user: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StoreError>> {
        async move {
            let rows: Vec<(String, i64)> = self
                .reading(
                    sqlx::query_as(
                        "SELECT room, last_read FROM memberships WHERE user_id = $1 \
                         AND room > $2 ORDER BY room LIMIT $3",
                    )
                    .bind(user)
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.reads),
                )
                .await?;
            Ok(rows.into_iter().map(|(r, m)| (r, m as u64)).collect())
        }
        .boxed()
    }

    fn notifications<'a>(
        &'a self,
        user: &'a str,
        unread_only: bool,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<NotificationRecord>, StoreError>> {
        async move {
            let sql = format!(
                "SELECT n.id, n.user_id, n.room, n.type, n.read, \
                 CASE WHEN n.read THEN n.count ELSE {COUNT} END AS n, \
                 CASE WHEN n.read THEN n.message ELSE {MESSAGE} END AS msg, \
                 CASE WHEN n.read THEN n.sender_id ELSE {SENDER_ID} END AS sid, \
                 CASE WHEN n.read THEN n.sender_name ELSE {SENDER_NAME} END AS sname, \
                 CASE WHEN n.read THEN n.timestamp ELSE {TIMESTAMP} END AS ts \
                 FROM notifications n \
                 CROSS JOIN LATERAL ({SHOWN}) s \
                 WHERE n.user_id = $1 {} ORDER BY n.created_at DESC LIMIT $2",
                if unread_only { "AND NOT n.read" } else { "" }
            );
            let rows = self
                .reading(
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(user)
                        .bind(i64::from(limit))
                        .fetch_all(&self.reads),
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| NotificationRecord {
                    id: r.get("id"),
                    user_id: r.get("user_id"),
                    room: r.get("room"),
                    kind: r.get("type"),
                    count: r.get::<Option<i64>, _>("n").unwrap_or(0).max(0) as u64,
                    message: r.get::<Option<String>, _>("msg").unwrap_or_default(),
                    sender_id: r.get::<Option<String>, _>("sid").unwrap_or_default(),
                    sender_name: r.get::<Option<String>, _>("sname").unwrap_or_default(),
                    timestamp: r.get::<Option<i64>, _>("ts").unwrap_or(0) as u64,
                    read: r.get("read"),
                })
                .collect())
        }
        .boxed()
    }

    fn due_pushes(
        &self,
        now: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PushRecord>, StoreError>> {
        async move {
            let rows: Vec<(i64, String, i32)> = self
                .reading(
                    // Claimed, not only read: every node runs a pusher, and a push
                    // claimed by one is skipped by the others until its lease ends
                    // (then another node retries it, if this one died meanwhile).
                    sqlx::query_as(
                        "UPDATE pushes SET next_at = $3 WHERE id IN (\
                         SELECT id FROM pushes WHERE next_at <= $1 \
                         ORDER BY next_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                         RETURNING id, body, attempts",
                    )
                    .bind(super::bind_offset(now))
                    .bind(i64::from(limit))
                    .bind(super::bind_offset(now + PUSH_LEASE_MS))
                    .fetch_all(&self.reads),
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|(id, body, attempts)| PushRecord {
                    id,
                    body,
                    attempts: attempts as u32,
                })
                .collect())
        }
        .boxed()
    }

    fn file<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<FileRecord>, StoreError>> {
        async move {
            let row = self
                .reading(
                    sqlx::query("SELECT * FROM files WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.reads),
                )
                .await?;
            Ok(row.as_ref().map(file_record))
        }
        .boxed()
    }

    fn file_rooms<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.reading(
            sqlx::query_scalar("SELECT room FROM file_rooms WHERE file_id = $1 ORDER BY room")
                .bind(id)
                .fetch_all(&self.reads),
        )
        .boxed()
    }

    fn usage<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let n: i64 = self
                .reading(
                    sqlx::query_scalar(
                        "SELECT COALESCE(SUM(size), 0)::BIGINT FROM files WHERE owner = $1",
                    )
                    .bind(owner)
                    .fetch_one(&self.reads),
                )
                .await?;
            Ok(n as u64)
        }
        .boxed()
    }

    fn interesting_users(&self) -> BoxFuture<'_, Result<InterestingUsers, StoreError>> {
        async move {
            let with_contacts = self
                .reading(
                    sqlx::query_scalar("SELECT DISTINCT user_id FROM contacts")
                        .fetch_all(&self.reads),
                )
                .await?;
            let with_unread = self
                .reading(
                    sqlx::query_scalar("SELECT DISTINCT user_id FROM notifications WHERE NOT read")
                        .fetch_all(&self.reads),
                )
                .await?;
            Ok((with_contacts, with_unread))
        }
        .boxed()
    }

    fn orphan_files(
        &self,
        before: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FileRecord>, StoreError>> {
        async move {
            let rows = self
                .reading(
                    sqlx::query(
                        "SELECT * FROM files WHERE NOT shared AND created_at < $1 \
                         ORDER BY created_at LIMIT $2",
                    )
                    .bind(super::bind_offset(before))
                    .bind(i64::from(limit))
                    .fetch_all(&self.reads),
                )
                .await?;
            Ok(rows.iter().map(file_record).collect())
        }
        .boxed()
    }
}
