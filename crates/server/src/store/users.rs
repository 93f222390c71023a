//! The user layer's reads: profiles, contacts, memberships and read markers, the
//! notification inbox, pending pushes and files. Writes are [`WriteOp`]s through
//! [`UserStore::write`], committed by the store's one writer.

use futures_util::future::BoxFuture;

use super::StoreError;
pub use super::records::{
    FileRecord, MemberRecord, NewEntry, NotificationRecord, PushRecord, UserRecord, WriteOp,
    WriteOutcome,
};

/// Users with a contact list, and users with an unread notification entry.
pub type InterestingUsers = (Vec<String>, Vec<String>);

pub trait UserStore: Send + Sync {
    /// Applies `op` in the writer's next transaction; answers once it is committed.
    fn write(&self, op: WriteOp) -> BoxFuture<'_, Result<WriteOutcome, StoreError>>;

    /// Applies `op` in a coming transaction, without waiting for it (a failure is
    /// logged): for what is worth keeping but nobody waits on, like a profile. It may be
    /// held a moment (SQLite: up to 200 ms) to ride along with other writes; it is
    /// applied before any write queued after it.
    fn write_later(&self, op: WriteOp);

    fn user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<UserRecord>, StoreError>>;

    /// The users of `ids` the store knows, in no particular order.
    fn users<'a>(&'a self, ids: &'a [String])
    -> BoxFuture<'a, Result<Vec<UserRecord>, StoreError>>;

    /// The ids `user` lists as contacts.
    fn contacts<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Whether `user` lists `contact` as a contact.
    fn lists_contact<'a>(
        &'a self,
        user: &'a str,
        contact: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Whether `a` and `b` are members of a room in common.
    fn share_a_room<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// `user`'s read marker in `room` if it is a member.
    fn membership<'a>(
        &'a self,
        room: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

    /// Up to `limit` members of `room` whose user id sorts after `after`, in order.
    fn members<'a>(
        &'a self,
        room: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<MemberRecord>, StoreError>>;

    /// How many members `room` has, counting at most `cap + 1`.
    fn member_count<'a>(
        &'a self,
        room: &'a str,
        cap: u32,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Up to `limit` of the rooms `user` is a member of, after `after` in room order,
    /// with its read marker in each.
    fn rooms_of<'a>(
        &'a self,
        user: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StoreError>>;

    /// `user`'s notification entries, newest first.
    fn notifications<'a>(
        &'a self,
        user: &'a str,
        unread_only: bool,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<NotificationRecord>, StoreError>>;

    /// Pushes due at `now`, oldest first. A store shared by several nodes claims them
    /// for a while, so that no two nodes send the same push at once.
    fn due_pushes(
        &self,
        now: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PushRecord>, StoreError>>;

    fn file<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<FileRecord>, StoreError>>;

    /// The rooms a file was shared in.
    fn file_rooms<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Bytes of files `owner` has stored.
    fn usage<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// The users with a contact list, and those with an unread notification entry.
    fn interesting_users(&self) -> BoxFuture<'_, Result<InterestingUsers, StoreError>>;

    /// Files never shared and created before `before`.
    fn orphan_files(
        &self,
        before: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FileRecord>, StoreError>>;
}
