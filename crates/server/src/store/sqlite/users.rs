//! The user layer in SQLite: the writer's [`apply`] of each [`WriteOp`] (inside its
//! batch transaction) and the reads of [`UserStore`] on the read pool.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{SqliteStore, classify, unavailable};
use crate::store::{
    FileRecord, MemberRecord, NotificationRecord, PushRecord, StoreError, UserRecord, UserStore,
    WriteOp, WriteOutcome,
};

/// Profiles stored per statement when a batch holds many (`3` binds each).
const PROFILES_PER_INSERT: usize = 256;

/// Stores the profiles of a run of [`WriteOp::UpsertUser`] in as few statements as
/// possible: a storm of connects is a storm of these. Each answers `Changed(true)`
/// (nobody waits on the figure).
pub(super) async fn upsert_users(
    conn: &mut SqliteConnection,
    ops: &[&WriteOp],
) -> Result<Vec<WriteOutcome>, StoreError> {
    let profiles: Vec<(&str, &str, Option<&str>)> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::UpsertUser {
                id,
                username,
                avatar,
            } => Some((id.as_str(), username.as_str(), avatar.as_deref())),
            _ => None,
        })
        .collect();
    for chunk in profiles.chunks(PROFILES_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO users (id, username, avatar) ");
        q.push_values(chunk, |mut b, (id, username, avatar)| {
            b.push_bind(*id).push_bind(*username).push_bind(*avatar);
        });
        // A user twice in one statement takes its last profile.
        q.push(
            " ON CONFLICT (id) DO UPDATE SET username = excluded.username, \
             avatar = excluded.avatar \
             WHERE username IS NOT excluded.username OR avatar IS NOT excluded.avatar",
        );
        q.build().execute(&mut *conn).await.map_err(classify)?;
    }
    Ok(ops.iter().map(|_| WriteOutcome::Changed(true)).collect())
}

/// Applies one write inside the writer's transaction.
pub(super) async fn apply(
    conn: &mut SqliteConnection,
    op: &WriteOp,
) -> Result<WriteOutcome, StoreError> {
    let changed = |r: sqlx::sqlite::SqliteQueryResult| WriteOutcome::Changed(r.rows_affected() > 0);
    Ok(match op {
        WriteOp::UpsertUser {
            id,
            username,
            avatar,
        } => changed(
            sqlx::query(
                "INSERT INTO users (id, username, avatar) VALUES (?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET username = excluded.username, \
                 avatar = excluded.avatar \
                 WHERE username IS NOT excluded.username OR avatar IS NOT excluded.avatar",
            )
            .bind(id)
            .bind(username)
            .bind(avatar)
            .execute(&mut *conn)
            .await
            .map_err(classify)?,
        ),
        WriteOp::SetStatus { user, status } => changed(
            sqlx::query(
                "INSERT INTO users (id, username, status) VALUES (?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status",
            )
            .bind(user)
            .bind(user)
            .bind(status)
            .execute(&mut *conn)
            .await
            .map_err(classify)?,
        ),
        WriteOp::SetLastSeen { user, at } => changed(
            sqlx::query("UPDATE users SET last_seen = ? WHERE id = ?")
                .bind(*at as i64)
                .bind(user)
                .execute(&mut *conn)
                .await
                .map_err(classify)?,
        ),
        WriteOp::ReplaceContacts { user, contacts } => {
            sqlx::query("DELETE FROM contacts WHERE user_id = ?")
                .bind(user)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
            for chunk in contacts.chunks(400) {
                let mut q: QueryBuilder<Sqlite> =
                    QueryBuilder::new("INSERT OR IGNORE INTO contacts (user_id, contact_id) ");
                q.push_values(chunk, |mut b, c| {
                    b.push_bind(user).push_bind(c);
                });
                q.build().execute(&mut *conn).await.map_err(classify)?;
            }
            WriteOutcome::Done
        }
        WriteOp::AddMember { room, user, at } => changed(
            sqlx::query(
                "INSERT OR IGNORE INTO memberships (room, user_id, joined_at) VALUES (?, ?, ?)",
            )
            .bind(room)
            .bind(user)
            .bind(*at as i64)
            .execute(&mut *conn)
            .await
            .map_err(classify)?,
        ),
        WriteOp::RemoveMember { room, user } => changed(
            sqlx::query("DELETE FROM memberships WHERE room = ? AND user_id = ?")
                .bind(room)
                .bind(user)
                .execute(&mut *conn)
                .await
                .map_err(classify)?,
        ),
        WriteOp::MarkRead { room, user, offset } => {
            let marker: Option<i64> = sqlx::query_scalar(
                "UPDATE memberships SET last_read = MAX(last_read, ?) \
                 WHERE room = ? AND user_id = ? RETURNING last_read",
            )
            .bind(*offset as i64)
            .bind(room)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await
            .map_err(classify)?;
            let marker =
                marker.ok_or_else(|| StoreError::Rejected("not a member of the room".into()))?;
            WriteOutcome::Marker(marker as u64)
        }
        WriteOp::Notify {
            room,
            kind,
            first_offset,
            at,
            entries,
        } => {
            let mut opened = Vec::new();
            for e in entries {
                let inserted = sqlx::query(
                    "INSERT OR IGNORE INTO notifications \
                     (id, user_id, room, type, first_offset, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&e.id)
                .bind(&e.user)
                .bind(room)
                .bind(kind)
                .bind(*first_offset as i64)
                .bind(*at as i64)
                .execute(&mut *conn)
                .await
                .map_err(classify)?
                .rows_affected()
                    > 0;
                let mut push = e.push.clone();
                if !inserted {
                    // An unread entry the user came back to, then left: it takes this
                    // offline spell on, and is pushed again with its whole count.
                    let reopened: Option<(String, i64)> = sqlx::query_as(
                        "UPDATE notifications SET \
                         base_count = base_count + last_offset - first_offset + 1, \
                         first_offset = ?, last_offset = NULL \
                         WHERE user_id = ? AND room = ? AND read = 0 AND last_offset IS NOT NULL \
                         RETURNING id, base_count",
                    )
                    .bind(*first_offset as i64)
                    .bind(&e.user)
                    .bind(room)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(classify)?;
                    let Some((id, base)) = reopened else {
                        continue;
                    };
                    push = push.map(|body| reopened_push(&body, &id, base as u64 + 1));
                }
                if let Some(body) = &push {
                    sqlx::query("INSERT INTO pushes (body, next_at, created_at) VALUES (?, ?, ?)")
                        .bind(body)
                        .bind(*at as i64)
                        .bind(*at as i64)
                        .execute(&mut *conn)
                        .await
                        .map_err(classify)?;
                }
                opened.push((e.id.clone(), e.user.clone()));
            }
            WriteOutcome::Opened(opened)
        }
        WriteOp::FreezeNotifications { user } => changed(
            sqlx::query(
                "UPDATE notifications SET last_offset = MAX(first_offset - 1, COALESCE(\
                 (SELECT r.head FROM rooms r WHERE r.room = notifications.room), 0)) \
                 WHERE user_id = ? AND read = 0 AND last_offset IS NULL",
            )
            .bind(user)
            .execute(&mut *conn)
            .await
            .map_err(classify)?,
        ),
        WriteOp::ReadNotifications { user, ids } => {
            // Freezes what the entry shows from its room at the moment it is read.
            let v = shown();
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                "UPDATE notifications SET read = 1, count = {}, message = {}, sender_id = {}, \
                 sender_name = {}, timestamp = {} WHERE read = 0 AND user_id = ",
                v.count, v.message, v.sender_id, v.sender_name, v.timestamp
            ));
            q.push_bind(user);
            if let Some(ids) = ids {
                if ids.is_empty() {
                    return Ok(WriteOutcome::Count(0));
                }
                q.push(" AND id IN (");
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind(id);
                }
                q.push(")");
            }
            WriteOutcome::Count(
                q.build()
                    .execute(&mut *conn)
                    .await
                    .map_err(classify)?
                    .rows_affected(),
            )
        }
        WriteOp::InsertFile { file: f, quota } => changed(
            sqlx::query(
                "INSERT INTO files (id, owner, name, size, type, sha256, created_at) \
                 SELECT ?, ?, ?, ?, ?, ?, ? WHERE ? IS NULL \
                 OR (SELECT COALESCE(SUM(size), 0) FROM files WHERE owner = ?) + ? <= ?",
            )
            .bind(&f.id)
            .bind(&f.owner)
            .bind(&f.name)
            .bind(f.size as i64)
            .bind(&f.kind)
            .bind(&f.sha256)
            .bind(f.created_at as i64)
            .bind(quota.map(|q| q as i64))
            .bind(&f.owner)
            .bind(f.size as i64)
            .bind(quota.map(|q| q as i64))
            .execute(&mut *conn)
            .await
            .map_err(classify)?,
        ),
        WriteOp::ShareFile { file, room } => {
            let found = sqlx::query("UPDATE files SET shared = 1 WHERE id = ?")
                .bind(file)
                .execute(&mut *conn)
                .await
                .map_err(classify)?
                .rows_affected();
            if found > 0 {
                sqlx::query("INSERT OR IGNORE INTO file_rooms (file_id, room) VALUES (?, ?)")
                    .bind(file)
                    .bind(room)
                    .execute(&mut *conn)
                    .await
                    .map_err(classify)?;
            }
            WriteOutcome::Changed(found > 0)
        }
        WriteOp::DeleteOrphanFile { id } => changed(
            sqlx::query("DELETE FROM files WHERE id = ? AND shared = 0")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?,
        ),
        WriteOp::PushAttempted {
            id,
            attempts,
            retry_at,
        } => changed(match retry_at {
            None => sqlx::query("DELETE FROM pushes WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?,
            Some(at) => sqlx::query("UPDATE pushes SET attempts = ?, next_at = ? WHERE id = ?")
                .bind(*attempts as i64)
                .bind(*at as i64)
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?,
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

/// What an unread entry shows, read from its room: how many messages since its first
/// offset, and the newest one's content (first 100 characters), sender and time. A
/// private message's payload has the same `content`, `sender` and `timestamp`.
struct Shown {
    count: String,
    message: String,
    sender_id: String,
    sender_name: String,
    timestamp: String,
}

fn shown() -> Shown {
    const LAST: &str = "COALESCE(notifications.last_offset, \
         (SELECT r.head FROM rooms r WHERE r.room = notifications.room))";
    let latest = |path: &str| {
        format!(
            "json_extract((SELECT m.data FROM messages m WHERE m.room = notifications.room \
             AND m.seq = {LAST}), '{path}')"
        )
    };
    Shown {
        count: format!("notifications.base_count + {LAST} - notifications.first_offset + 1"),
        message: format!("substr({}, 1, 100)", latest("$.content")),
        sender_id: latest("$.sender.id"),
        sender_name: latest("$.sender.username"),
        timestamp: latest("$.timestamp"),
    }
}

fn user_record(row: &SqliteRow) -> UserRecord {
    UserRecord {
        id: row.get("id"),
        username: row.get("username"),
        avatar: row.get("avatar"),
        status: row.get("status"),
        last_seen: row.get::<Option<i64>, _>("last_seen").map(|v| v as u64),
    }
}

fn file_record(row: &SqliteRow) -> FileRecord {
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

impl UserStore for SqliteStore {
    fn write(&self, op: WriteOp) -> BoxFuture<'_, Result<WriteOutcome, StoreError>> {
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.jobs
                .send(super::Job::Write(op, tx))
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn write_later(&self, op: WriteOp) {
        match self.jobs.try_send(super::Job::Later(op)) {
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
            let row = sqlx::query("SELECT * FROM users WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.reads)
                .await
                .map_err(unavailable)?;
            Ok(row.as_ref().map(user_record))
        }
        .boxed()
    }

    fn users<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<UserRecord>, StoreError>> {
        async move {
            let mut out = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(500) {
                let mut q: QueryBuilder<Sqlite> =
                    QueryBuilder::new("SELECT * FROM users WHERE id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id);
                }
                q.push(")");
                let rows = q
                    .build()
                    .fetch_all(&self.reads)
                    .await
                    .map_err(unavailable)?;
                out.extend(rows.iter().map(user_record));
            }
            Ok(out)
        }
        .boxed()
    }

    fn contacts<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            sqlx::query_scalar(
                "SELECT contact_id FROM contacts WHERE user_id = ? ORDER BY contact_id",
            )
            .bind(user)
            .fetch_all(&self.reads)
            .await
            .map_err(unavailable)
        }
        .boxed()
    }

    fn lists_contact<'a>(
        &'a self,
        user: &'a str,
        contact: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM contacts WHERE user_id = ? AND contact_id = ?")
                    .bind(user)
                    .bind(contact)
                    .fetch_optional(&self.reads)
                    .await
                    .map_err(unavailable)?;
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
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM memberships x JOIN memberships y ON x.room = y.room \
                 WHERE x.user_id = ? AND y.user_id = ? LIMIT 1",
            )
            .bind(a)
            .bind(b)
            .fetch_optional(&self.reads)
            .await
            .map_err(unavailable)?;
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
            let marker: Option<i64> = sqlx::query_scalar(
                "SELECT last_read FROM memberships WHERE room = ? AND user_id = ?",
            )
            .bind(room)
            .bind(user)
            .fetch_optional(&self.reads)
            .await
            .map_err(unavailable)?;
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
            let rows = sqlx::query(
                "SELECT m.user_id, m.joined_at, u.username, u.avatar, u.status, u.last_seen \
                 FROM memberships m LEFT JOIN users u ON u.id = m.user_id \
                 WHERE m.room = ? AND m.user_id > ? ORDER BY m.user_id LIMIT ?",
            )
            .bind(room)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await
            .map_err(unavailable)?;
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
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT 1 FROM memberships WHERE room = ? LIMIT ?)",
            )
            .bind(room)
            .bind(i64::from(cap) + 1)
            .fetch_one(&self.reads)
            .await
            .map_err(unavailable)?;
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
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT room, last_read FROM memberships WHERE user_id = ? AND room > ? \
                 ORDER BY room LIMIT ?",
            )
            .bind(user)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await
            .map_err(unavailable)?;
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
            let v = shown();
            let sql = format!(
                "SELECT id, user_id, room, type, read, \
                 CASE read WHEN 0 THEN {} ELSE count END AS n, \
                 CASE read WHEN 0 THEN {} ELSE message END AS msg, \
                 CASE read WHEN 0 THEN {} ELSE sender_id END AS sid, \
                 CASE read WHEN 0 THEN {} ELSE sender_name END AS sname, \
                 CASE read WHEN 0 THEN {} ELSE timestamp END AS ts \
                 FROM notifications WHERE user_id = ? {} ORDER BY created_at DESC LIMIT ?",
                v.count,
                v.message,
                v.sender_id,
                v.sender_name,
                v.timestamp,
                if unread_only { "AND read = 0" } else { "" }
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(user)
                .bind(i64::from(limit))
                .fetch_all(&self.reads)
                .await
                .map_err(unavailable)?;
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
                    read: r.get::<i64, _>("read") != 0,
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
            let rows: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT id, body, attempts FROM pushes WHERE next_at <= ? ORDER BY next_at, id LIMIT ?",
            )
            .bind(now as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await
            .map_err(unavailable)?;
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
            let row = sqlx::query("SELECT * FROM files WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.reads)
                .await
                .map_err(unavailable)?;
            Ok(row.as_ref().map(file_record))
        }
        .boxed()
    }

    fn file_rooms<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            sqlx::query_scalar("SELECT room FROM file_rooms WHERE file_id = ? ORDER BY room")
                .bind(id)
                .fetch_all(&self.reads)
                .await
                .map_err(unavailable)
        }
        .boxed()
    }

    fn usage<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM files WHERE owner = ?")
                    .bind(owner)
                    .fetch_one(&self.reads)
                    .await
                    .map_err(unavailable)?;
            Ok(n as u64)
        }
        .boxed()
    }

    fn interesting_users(
        &self,
    ) -> BoxFuture<'_, Result<super::super::users::InterestingUsers, StoreError>> {
        async move {
            let with_contacts = sqlx::query_scalar("SELECT DISTINCT user_id FROM contacts")
                .fetch_all(&self.reads)
                .await
                .map_err(unavailable)?;
            let with_unread =
                sqlx::query_scalar("SELECT DISTINCT user_id FROM notifications WHERE read = 0")
                    .fetch_all(&self.reads)
                    .await
                    .map_err(unavailable)?;
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
            let rows = sqlx::query(
                "SELECT * FROM files WHERE shared = 0 AND created_at < ? ORDER BY created_at LIMIT ?",
            )
            .bind(before as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await
            .map_err(unavailable)?;
            Ok(rows.iter().map(file_record).collect())
        }
        .boxed()
    }
}
