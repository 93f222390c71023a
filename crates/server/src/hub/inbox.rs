//! Offline notifications: when a durable message reaches a room, each member with no
//! device online gets an entry in its inbox, one per room while unread; its count and
//! preview follow the room (the store reads them from the room's head and newest
//! message), so later messages write nothing.
//!
//! A room is *settled* once every offline member has its unread entry: messages after
//! that cost no store work. It is unsettled again when a member joins, goes offline or
//! reads its entry, and at start (nothing is known then). Rooms above
//! `notifications.max_room_members` do not notify.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_protocol::{
    DM_ROOM_PREFIX, NotificationEntry, PERSONAL_ROOM_PREFIX, SYSTEM_ROOM, UserRef, now_millis,
};

use super::Hub;
use crate::store::{Committed, NewEntry, NotificationRecord, WriteOp, WriteOutcome};

/// Settled rooms remembered at most; past it the set starts over (rooms are then
/// checked again once).
const MAX_SETTLED: usize = 100_000;

/// Rooms whose offline members all have an unread entry.
#[derive(Default)]
pub(super) struct Settled(Mutex<HashSet<Arc<str>>>);

impl Settled {
    /// Marks `room` settled; false if it already was.
    fn settle(&self, room: &Arc<str>) -> bool {
        let mut rooms = self.0.lock();
        if rooms.len() >= MAX_SETTLED {
            rooms.clear();
        }
        rooms.insert(room.clone())
    }

    pub(super) fn unsettle(&self, room: &str) {
        self.0.lock().remove(room);
    }
}

/// An entry as clients and the webhook see it.
pub fn entry(r: &NotificationRecord) -> NotificationEntry {
    NotificationEntry {
        id: r.id.clone(),
        kind: r.kind.clone(),
        room_id: r.room.clone(),
        message: r.message.clone(),
        sender: UserRef {
            id: r.sender_id.clone(),
            username: r.sender_name.clone(),
        },
        count: r.count,
        timestamp: r.timestamp,
        read: r.read,
    }
}

/// The first 100 characters of a message's content, as its preview.
fn preview(content: &serde_json::Value) -> String {
    let text = match content {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().take(100).collect()
}

impl Hub {
    /// Opens the entries a stored message calls for (see the module doc).
    pub(super) async fn notify_offline(&self, c: &Committed) {
        let room = &c.room;
        if room.starts_with(PERSONAL_ROOM_PREFIX) || &**room == SYSTEM_ROOM {
            return;
        }
        if !self.inner.settled.settle(room) {
            return;
        }
        // The members are read and the entries written off the publishing path.
        let hub = self.clone();
        let c = c.clone();
        tokio::spawn(async move {
            if let Err(e) = hub.open_entries(&c).await {
                // Not settled after all: the next message tries again.
                hub.inner.settled.unsettle(&c.room);
                tracing::warn!(error = %e, room = %c.room, "opening notification entries failed");
            }
        });
    }

    async fn open_entries(&self, c: &Committed) -> Result<(), crate::store::StoreError> {
        let max = self.inner.settings.notify_max_members;
        let store = self.store();
        let members = store.members(&c.room, None, max + 1).await?;
        if members.len() > max as usize {
            return Ok(());
        }
        let mut offline = Vec::new();
        for m in members {
            if !self.is_online(&m.user_id).await {
                offline.push(m.user_id);
            }
        }
        if offline.is_empty() {
            return Ok(());
        }
        // A room message and a private one have these fields under the same names.
        let payload: serde_json::Value = serde_json::from_str(c.payload.as_str())
            .map_err(|e| crate::store::StoreError::Rejected(e.to_string()))?;
        let sender = UserRef {
            id: payload["sender"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            username: payload["sender"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        let message = preview(&payload["content"]);
        let timestamp = payload["timestamp"].as_u64().unwrap_or_default();
        let kind = if c.room.starts_with(DM_ROOM_PREFIX) {
            "private_message"
        } else {
            "new_message"
        };
        let at = now_millis();
        let push = self.inner.settings.push;
        let entries = offline
            .into_iter()
            .map(|user| {
                let id = uuid::Uuid::now_v7().to_string();
                let body = push.then(|| {
                    let e = NotificationEntry {
                        id: id.clone(),
                        kind: kind.to_string(),
                        room_id: c.room.to_string(),
                        message: message.clone(),
                        sender: sender.clone(),
                        count: 1,
                        timestamp,
                        read: false,
                    };
                    serde_json::json!({"userId": user, "notification": e}).to_string()
                });
                NewEntry {
                    id,
                    user,
                    push: body,
                }
            })
            .collect();
        let opened = store
            .write(WriteOp::Notify {
                room: c.room.to_string(),
                kind: kind.to_string(),
                first_offset: c.position.offset,
                at,
                entries,
            })
            .await?;
        if let WriteOutcome::Opened(opened) = opened {
            for (_, user) in opened {
                self.inner.interest.set_unread(&user, true);
            }
        }
        if push {
            self.inner.pushes_due.notify_one();
        }
        Ok(())
    }

    /// `rooms` may owe entries again, on every node (the other nodes of a cluster
    /// settled them on what they knew).
    pub(super) async fn unsettle(&self, rooms: Vec<String>) {
        for room in &rooms {
            self.inner.settled.unsettle(room);
        }
        if self.inner.settings.shared_store && !rooms.is_empty() {
            self.tell_cluster(super::Action::Unsettle { rooms }).await;
        }
    }

    /// Unsettles rooms at another node's word.
    pub(super) fn unsettle_local(&self, rooms: &[String]) {
        for room in rooms {
            self.inner.settled.unsettle(room);
        }
    }

    /// The rooms of `user` may owe it entries again (it went offline, or read some).
    pub(super) async fn unsettle_rooms_of(&self, user: &str) {
        const PAGE: u32 = 1000;
        let mut after: Option<String> = None;
        loop {
            let page = match self.store().rooms_of(user, after.as_deref(), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, user, "reading a user's rooms failed");
                    return;
                }
            };
            let rooms: Vec<String> = page.iter().map(|(room, _)| room.clone()).collect();
            self.unsettle(rooms).await;
            if page.len() < PAGE as usize {
                return;
            }
            after = page.last().map(|(room, _)| room.clone());
        }
    }

    /// Marks `user`'s entries read (`ids`, or all); answers how many.
    pub async fn read_notifications(
        &self,
        user: &str,
        ids: Option<Vec<String>>,
    ) -> Result<u64, crate::store::StoreError> {
        let all = ids.is_none();
        let read = self
            .store()
            .write(WriteOp::ReadNotifications {
                user: user.to_string(),
                ids,
            })
            .await?;
        if all {
            self.inner.interest.set_unread(user, false);
        }
        self.unsettle_rooms_of(user).await;
        Ok(match read {
            WriteOutcome::Count(n) => n,
            _ => 0,
        })
    }
}
