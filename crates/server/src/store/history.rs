//! A room's history page, read the same way from every database: only the SQL
//! dialect differs.

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};
use switchboard_protocol::HistoryRange;

use super::{Page, StoredMessage, bind_offset};

/// A dialect's statements for each kind of range, each selecting `seq, data` in the
/// order the page is read. Their parameters: the room, the range's bounds, the limit.
pub(super) struct HistorySql {
    pub since: &'static str,
    pub between: &'static str,
    pub before: &'static str,
    pub latest: &'static str,
}

/// The query for `range` of `room`, at most `limit` rows.
pub(super) fn query<'q, DB>(
    sql: &HistorySql,
    room: &str,
    range: HistoryRange,
    limit: u32,
) -> Query<'q, DB, DB::Arguments>
where
    DB: Database,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
{
    let limit = i64::from(limit);
    match range {
        HistoryRange::Since(after) => sqlx::query(sql.since)
            .bind(room)
            .bind(bind_offset(after))
            .bind(limit),
        HistoryRange::Between { since, before } => sqlx::query(sql.between)
            .bind(room)
            .bind(bind_offset(since))
            .bind(bind_offset(before))
            .bind(limit),
        HistoryRange::Before(before) => sqlx::query(sql.before)
            .bind(room)
            .bind(bind_offset(before))
            .bind(limit),
        HistoryRange::Latest => sqlx::query(sql.latest).bind(room).bind(limit),
    }
}

/// A page filled row by row, in the order the query reads them, until the byte bound:
/// reading stops there, so a page of large messages never sits in memory whole.
pub(super) struct PageFill {
    page: Page,
    bytes: usize,
    max_bytes: usize,
}

impl PageFill {
    pub(super) fn new(max_bytes: usize) -> PageFill {
        PageFill {
            page: Page::default(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds a message; past the byte bound (the first message always fits), marks the
    /// page truncated instead and answers false: reading stops.
    pub(super) fn push(&mut self, offset: u64, data: String) -> bool {
        if !self.page.messages.is_empty() && self.bytes + data.len() > self.max_bytes {
            self.page.truncated = true;
            return false;
        }
        self.bytes += data.len();
        self.page.messages.push(StoredMessage { offset, data });
        true
    }

    /// The page in ascending offset order (`Before` and `Latest` read newest first).
    pub(super) fn finish(mut self, range: HistoryRange) -> Page {
        if matches!(range, HistoryRange::Before(_) | HistoryRange::Latest) {
            self.page.messages.reverse();
        }
        self.page
    }
}
