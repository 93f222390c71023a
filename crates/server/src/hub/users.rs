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

use std::collections::HashMap;
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

    fn contains(&self, user: &str) -> bool {
        self.users.lock().contains_key(user)
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
        self.store().write_later(WriteOp::UpsertUser {
            id: user.id.clone(),
            username: user.username.clone(),
            avatar: user.avatar.clone(),
        });
        self.tell_devices(session, "device_connected");
        self.deliver_inbox(session);
        let returning = devices == 1 && self.inner.leaving.cancel(&user.id);
        if devices != 1 || returning {
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
        self.tell_devices(session, "device_disconnected");
        let hub = self.clone();
        let id = session.user().id.clone();
        let grace = Duration::from_secs(self.inner.settings.offline_grace_secs);
        self.run_detached(async move {
            if hub.presence().devices(&id).await.unwrap_or(0) > 0 {
                return;
            }
            let token = hub.inner.leaving.start(&id);
            tokio::time::sleep(grace).await;
            let gone = hub.inner.leaving.finish(&id, token)
                && hub.presence().devices(&id).await.unwrap_or(0) == 0;
            if gone && let Err(e) = hub.went_offline(&id).await {
                tracing::warn!(error = %e, user = %id, "recording an offline user failed");
            }
        });
    }

    /// The user's last device is gone for good: store when, tell the contacts.
    async fn went_offline(&self, user: &str) -> Result<(), StoreError> {
        let at = now_millis();
        self.store()
            .write(WriteOp::SetLastSeen {
                user: user.to_string(),
                at,
            })
            .await?;
        // Its rooms owe it notification entries from now on.
        self.unsettle_rooms_of(user).await;
        let invisible = self
            .store()
            .user(user)
            .await?
            .is_some_and(|r| r.status == "offline");
        // An invisible user already looked offline.
        if !invisible {
            self.tell_contacts(user, "offline", Some(at)).await;
        }
        Ok(())
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

    /// Whether `user` counts as online: a device connected, or within the grace after
    /// its last one.
    pub async fn is_online(&self, user: &str) -> bool {
        self.inner.leaving.contains(user) || self.presence().devices(user).await.unwrap_or(0) > 0
    }

    /// `{status, lastSeen}` of `user` as the others see it.
    pub async fn seen_as(&self, record: Option<&UserRecord>, user: &str) -> (String, Option<u64>) {
        let online = self.is_online(user).await;
        let status = visible_status(record, online).to_string();
        let last_seen = if online {
            Some(now_millis())
        } else {
            record.and_then(|r| r.last_seen)
        };
        (status, last_seen)
    }
}
