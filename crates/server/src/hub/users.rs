//! The user layer on the hub: devices, online and offline with a grace period, and
//! statuses as contacts see them.
//!
//! A user is online while it has a device (a connection on any transport; presence
//! counts them). When its last device goes, it stays online for
//! `presence.offline_grace_secs`, so that a device coming back causes no flap; then it
//! is offline, its `lastSeen` is stored and its contacts are told. Its devices hear of
//! each other (`device_connected`, `device_disconnected`). A status is the user's own
//! choice (`online`, `away`, `busy`, or `offline`: invisible); others see `offline`
//! while the user is invisible or gone.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_protocol::{DeviceEvent, FriendStatusUpdate, now_millis, personal_room};

use super::{Hub, Session};
use crate::encode::Event;
use crate::store::{StoreError, UserRecord, WriteOp};

/// The statuses a user may set; `offline` is invisible.
pub const STATUSES: [&str; 4] = ["online", "away", "busy", "offline"];

/// Users whose last device went, until their grace ends or a device returns.
#[derive(Default)]
pub(super) struct Leaving {
    users: Mutex<HashMap<String, u64>>,
    next: AtomicU64,
}

impl Leaving {
    fn start(&self, user: &str) -> u64 {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.users.lock().insert(user.to_string(), token);
        token
    }

    /// Ends `user`'s grace; true if it was in one.
    fn cancel(&self, user: &str) -> bool {
        self.users.lock().remove(user).is_some()
    }

    /// Ends the grace that `token` started, if it is still that one.
    fn finish(&self, user: &str, token: u64) -> bool {
        let mut users = self.users.lock();
        match users.get(user) {
            Some(t) if *t == token => {
                users.remove(user);
                true
            }
            _ => false,
        }
    }

    /// Whether `user`'s current grace is the one `token` started.
    fn is(&self, user: &str, token: u64) -> bool {
        self.users.lock().get(user) == Some(&token)
    }

    fn contains(&self, user: &str) -> bool {
        self.users.lock().contains_key(user)
    }
}

/// Users worth a look when a device connects: those with a contact list to tell they
/// are online, and those with unread entries to deliver. Kept as hashes of their ids, so
/// that it stays small; a false positive only costs a read. Without it every connect
/// would read the store twice. In a cluster other nodes change the store too, so it
/// answers yes to everyone (`everyone`).
#[derive(Default)]
pub(super) struct Interest {
    contacts: Mutex<HashSet<u64>>,
    unread: Mutex<HashSet<u64>>,
    hasher: RandomState,
    everyone: bool,
}

impl Interest {
    /// An interest that answers yes to everyone.
    pub(super) fn everyone() -> Interest {
        Interest {
            everyone: true,
            ..Default::default()
        }
    }

    fn key(&self, user: &str) -> u64 {
        self.hasher.hash_one(user)
    }

    fn mark(set: &Mutex<HashSet<u64>>, key: u64, yes: bool) {
        let mut set = set.lock();
        if yes {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    pub(super) fn set_contacts(&self, user: &str, yes: bool) {
        Interest::mark(&self.contacts, self.key(user), yes);
    }

    pub(super) fn set_unread(&self, user: &str, yes: bool) {
        Interest::mark(&self.unread, self.key(user), yes);
    }

    fn has_contacts(&self, user: &str) -> bool {
        self.everyone || self.contacts.lock().contains(&self.key(user))
    }

    fn has_unread(&self, user: &str) -> bool {
        self.everyone || self.unread.lock().contains(&self.key(user))
    }
}

/// A user's status as the others see it.
pub fn visible_status(record: Option<&UserRecord>, online: bool) -> &str {
    match record.map(|r| r.status.as_str()) {
        _ if !online => "offline",
        Some(status) => status,
        None => "online",
    }
}

impl Hub {
    /// After a device registered; `devices` is how many its user has now.
    pub(super) fn device_arrived(&self, session: &Arc<Session>, devices: u64) {
        session.arrived.store(true, Ordering::Relaxed);
        let user = session.user();
        // Only the user's other devices hear of it.
        if devices > 1 {
            self.tell_devices(session, "device_connected");
        }
        if self.inner.interest.has_unread(&user.id) {
            // Back online: its entries stop growing (no written-off count of what it
            // sees live, nor its own messages as the news).
            if devices == 1 {
                self.store().write_later(WriteOp::FreezeNotifications {
                    user: user.id.clone(),
                });
            }
            self.deliver_inbox(session);
        }
        // The token's profile is kept as the user's (it may have changed since); an
        // unchanged one costs no write to disk, and a storm of them one statement.
        self.store().write_later(WriteOp::UpsertUser {
            id: user.id.clone(),
            username: user.username.clone(),
            avatar: user.avatar.clone(),
        });
        let returning = devices == 1 && self.inner.leaving.cancel(&user.id);
        if devices != 1 || returning {
            return;
        }
        if !self.inner.interest.has_contacts(&user.id) {
            return;
        }
        // The user comes online: its contacts hear it, unless it is invisible.
        let hub = self.clone();
        let id = user.id.clone();
        self.run_detached(async move {
            match hub.store().user(&id).await {
                Ok(record) => {
                    let status = visible_status(record.as_ref(), true).to_string();
                    if status != "offline" {
                        hub.tell_contacts(&id, &status, None).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, user = %id, "reading a status failed"),
            }
        });
    }

    /// After a device left (from its registration's drop).
    pub(super) fn device_left(&self, session: &Arc<Session>) {
        if !session.arrived.load(Ordering::Relaxed) {
            return;
        }
        let hub = self.clone();
        let session = session.clone();
        let grace = Duration::from_secs(self.inner.settings.offline_grace_secs);
        // The grace starts now, before the device count is read, so that the user is
        // never seen offline without a `lastSeen` in between.
        let left_at = now_millis();
        let token = self.inner.leaving.start(&session.user().id);
        self.run_detached(async move {
            let id = session.user().id.clone();
            if hub.presence().devices(&id).await.unwrap_or(0) > 0 {
                hub.inner.leaving.finish(&id, token);
                hub.tell_devices(&session, "device_disconnected");
                return;
            }
            tokio::time::sleep(grace).await;
            // Still "leaving" (online to the others) until `lastSeen` is stored, so
            // that nobody sees it offline without one.
            let gone = hub.inner.leaving.is(&id, token)
                && hub.presence().devices(&id).await.unwrap_or(0) == 0;
            if gone && let Err(e) = hub.went_offline(&id, token, left_at).await {
                tracing::warn!(error = %e, user = %id, "recording an offline user failed");
            }
            hub.inner.leaving.finish(&id, token);
        });
    }

    /// The user's last device is gone for good (it left at `at`): store when, tell the
    /// contacts. An invisible user already looked offline: its `lastSeen` stays the
    /// one from before it went invisible, and nobody is told.
    async fn went_offline(&self, user: &str, token: u64, at: u64) -> Result<(), StoreError> {
        let invisible = self
            .store()
            .user(user)
            .await?
            .is_some_and(|r| r.status == "offline");
        if !invisible {
            self.store()
                .write(WriteOp::SetLastSeen {
                    user: user.to_string(),
                    at,
                })
                .await?;
        }
        // A device that came back meanwhile ended the grace: it is online after all.
        if !self.inner.leaving.finish(user, token) {
            return Ok(());
        }
        // Its rooms owe it notification entries from now on.
        self.unsettle_rooms_of(user).await;
        if !invisible {
            self.tell_contacts(user, "offline", Some(at)).await;
        }
        Ok(())
    }

    /// Announces the devices of dead nodes that presence removed (their connections are
    /// gone without a word): their rooms hear they left, and a user left with no device
    /// goes offline (its contacts hear it) at once, its grace long past.
    pub(super) fn reap(&self) {
        let hub = self.clone();
        self.run_detached(async move {
            let reaped = match hub.presence().reap().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "reaping dead nodes' devices failed");
                    return;
                }
            };
            for dead in reaped {
                tracing::info!(client = %dead.client_id, user = %dead.user.id, "a dead node's connection removed");
                let left = Arc::new(Event::new(
                    "user_disconnected",
                    &switchboard_protocol::UserDisconnected {
                        user: dead.user.clone(),
                        peer_id: dead.client_id.to_string(),
                        timestamp: now_millis(),
                    },
                ));
                for room in &dead.rooms {
                    if hub.announces(room).await {
                        hub.publish_event(Arc::from(room.as_str()), left.clone(), None)
                            .await;
                    }
                }
                if dead.last && !hub.inner.leaving.contains(&dead.user.id) {
                    let token = hub.inner.leaving.start(&dead.user.id);
                    if let Err(e) = hub.went_offline(&dead.user.id, token, now_millis()).await {
                        tracing::warn!(error = %e, user = %dead.user.id, "recording an offline user failed");
                    }
                    hub.inner.leaving.finish(&dead.user.id, token);
                }
            }
        });
    }

    /// A `notification` event per unread entry, to a device that just connected.
    fn deliver_inbox(&self, session: &Arc<Session>) {
        let hub = self.clone();
        let session = session.clone();
        self.run_detached(async move {
            match hub
                .store()
                .notifications(&session.user().id, true, 100)
                .await
            {
                Ok(entries) => {
                    if entries.is_empty() {
                        hub.inner.interest.set_unread(&session.user().id, false);
                    }
                    for r in &entries {
                        session.reply("notification", &super::inbox::entry(r), None);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the inbox failed"),
            }
        });
    }

    /// `device_connected` or `device_disconnected` to the user's other devices.
    fn tell_devices(&self, session: &Session, kind: &'static str) {
        let event = Event::new(
            kind,
            &DeviceEvent {
                client_id: session.client_id.to_string(),
                socket_id: session.client_id.to_string(),
                transport: session.wire.as_str().to_string(),
                timestamp: now_millis(),
            },
        );
        let room = personal_room(&session.user().id).into();
        self.publish_detached(room, Arc::new(event), Some(session.client_id.clone()));
    }

    /// `friend_status_update` to the users `user` lists as contacts.
    pub(super) async fn tell_contacts(&self, user: &str, status: &str, last_seen: Option<u64>) {
        if !self.inner.interest.has_contacts(user) {
            return;
        }
        let contacts = match self.store().contacts(user).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, user, "reading contacts failed");
                return;
            }
        };
        if contacts.is_empty() {
            return;
        }
        let event = Arc::new(Event::new(
            "friend_status_update",
            &FriendStatusUpdate {
                user_id: user.to_string(),
                status: status.to_string(),
                last_seen,
                timestamp: now_millis(),
            },
        ));
        for contact in contacts {
            self.publish_event(personal_room(&contact).into(), event.clone(), None)
                .await;
        }
    }

    /// Records that `user`'s contact list changed (empty or not).
    pub fn contacts_changed(&self, user: &str, any: bool) {
        self.inner.interest.set_contacts(user, any);
    }

    /// Loads who has contacts and unread entries (at start).
    pub async fn load_interest(&self) -> Result<(), StoreError> {
        let (contacts, unread) = self.store().interesting_users().await?;
        for u in contacts {
            self.inner.interest.set_contacts(&u, true);
        }
        for u in unread {
            self.inner.interest.set_unread(&u, true);
        }
        Ok(())
    }

    /// Whether `user` counts as online: a device connected, or within the grace after
    /// its last one.
    pub async fn is_online(&self, user: &str) -> bool {
        self.inner.leaving.contains(user) || self.presence().devices(user).await.unwrap_or(0) > 0
    }

    /// `{status, lastSeen}` of `user` as the others see it.
    pub async fn seen_as(&self, record: Option<&UserRecord>, user: &str) -> (String, Option<u64>) {
        let online = self.is_online(user).await;
        let status = visible_status(record, online).to_string();
        // An invisible user's `lastSeen` stays put, as if it were gone.
        let last_seen = if status != "offline" {
            Some(now_millis())
        } else {
            record.and_then(|r| r.last_seen)
        };
        (status, last_seen)
    }
}
