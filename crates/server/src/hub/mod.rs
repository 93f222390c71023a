//! The engine: sessions, rooms, and the one API every transport calls.
//!
//! The hub knows no HTTP and no socket. A transport authenticates, registers a
//! [`Session`], feeds it parsed [`Frame`]s through [`Hub::dispatch`] and writes what
//! the session's outbox yields. Everything a room receives goes through the broker;
//! durable messages go through the store first.

mod dispatch;
mod ratelimit;
mod rooms;
mod session;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use switchboard_protocol::{
    CloseCode, PERSONAL_ROOM_PREFIX, RoomMembership, UserDisconnected, encode, now_millis,
    personal_room,
};

pub use dispatch::{HandlerContext, MessageHandler};
pub use ratelimit::{RateLimiter, Verdict};
pub use rooms::RoomIndex;
pub use session::{OutboxLimits, Outgoing, Session, Text};

use crate::auth::{AuthError, Identity, Verifier};
use crate::broker::{Broker, Envelope};
use crate::config::Config;
use crate::store::Store;

const SESSION_SHARDS: usize = 32;

type SessionShard = Mutex<HashMap<Box<str>, Arc<Session>>>;

/// What the hub needs from the config, copied once.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub node_id: String,
    pub outbox: OutboxLimits,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub max_rooms_per_connection: usize,
    pub recovery_max_messages: u32,
    pub ping_timeout_secs: u64,
}

impl HubSettings {
    pub fn from_config(cfg: &Config) -> HubSettings {
        HubSettings {
            node_id: cfg.node_id.clone(),
            outbox: OutboxLimits {
                max_frames: cfg.ws.outbox_max_frames,
                max_bytes: cfg.ws.outbox_max_bytes,
            },
            rate_per_sec: cfg.rate_limit.per_sec,
            rate_burst: cfg.rate_limit.burst,
            max_rooms_per_connection: cfg.ws.max_rooms_per_connection,
            recovery_max_messages: cfg.store.recovery_max_messages,
            ping_timeout_secs: cfg.ws.ping_timeout_secs,
        }
    }
}

/// Cheap to clone: every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    settings: HubSettings,
    verifier: Verifier,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    handlers: HashMap<String, MessageHandler>,
    rooms: RoomIndex,
    /// Sessions by client id, sharded.
    sessions: Box<[SessionShard]>,
    hasher: RandomState,
    connections: AtomicU64,
    next_session: AtomicU64,
    started: Instant,
    draining: AtomicBool,
}

impl Hub {
    pub fn new(
        settings: HubSettings,
        verifier: Verifier,
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        handlers: HashMap<String, MessageHandler>,
    ) -> Hub {
        let inner = Arc::new(Inner {
            settings,
            verifier,
            store,
            broker: broker.clone(),
            handlers,
            rooms: RoomIndex::default(),
            sessions: (0..SESSION_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
            connections: AtomicU64::new(0),
            next_session: AtomicU64::new(1),
            started: Instant::now(),
            draining: AtomicBool::new(false),
        });
        // The broker holds the hub weakly: the hub owns the broker, not the reverse.
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        broker.subscribe(Arc::new(move |env: &Envelope| {
            if let Some(inner) = weak.upgrade() {
                inner.rooms.deliver(env);
            }
        }));
        Hub { inner }
    }

    pub fn settings(&self) -> &HubSettings {
        &self.inner.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Seconds since the hub started: the clock of liveness checks.
    pub fn clock_secs(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }

    pub fn uptime_secs(&self) -> u64 {
        self.clock_secs()
    }

    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    pub fn room_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.inner.rooms.counts()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        self.inner.verifier.verify(token)
    }

    fn session_shard(&self, client_id: &str) -> &SessionShard {
        let i = self.inner.hasher.hash_one(client_id) as usize % SESSION_SHARDS;
        &self.inner.sessions[i]
    }

    /// Registers a new connection and puts it in its personal room.
    pub fn connect(&self, identity: Identity) -> Arc<Session> {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let client_id: Box<str> = uuid::Uuid::now_v7().to_string().into();
        let s = &self.inner.settings;
        let session = Arc::new(Session::new(
            id,
            client_id.clone(),
            identity,
            s.outbox,
            RateLimiter::new(s.rate_per_sec, s.rate_burst),
            self.clock_secs(),
        ));
        self.session_shard(&client_id)
            .lock()
            .insert(client_id, session.clone());
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
        let personal: Arc<str> = personal_room(&session.user().id).into();
        self.inner
            .rooms
            .finish_join(&personal, &session, None, |_| {});
        session
    }

    /// Removes a closed connection from every room; the rooms it was in hear
    /// `user_disconnected`.
    pub fn disconnect(&self, session: &Arc<Session>) {
        let removed = self
            .session_shard(&session.client_id)
            .lock()
            .remove(&session.client_id)
            .is_some();
        if !removed {
            return;
        }
        self.inner.connections.fetch_sub(1, Ordering::Relaxed);
        self.inner
            .rooms
            .leave(&personal_room(&session.user().id), session.id);
        let event = UserDisconnected {
            user: session.user().clone(),
            timestamp: now_millis(),
        };
        let frame: Text = encode("user_disconnected", &event, None).into();
        for room in session.take_rooms() {
            self.inner.rooms.leave(&room, session.id);
            self.publish_frame(room, frame.clone(), None);
        }
    }

    /// Finds a connection of this node by its client id.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.session_shard(client_id).lock().get(client_id).cloned()
    }

    /// Publishes an ephemeral event to a room on every node.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        room: Arc<str>,
        kind: &str,
        data: &T,
        exclude: Option<u64>,
    ) {
        self.publish_frame(room, encode(kind, data, None).into(), exclude);
    }

    fn publish_frame(&self, room: Arc<str>, frame: Text, exclude: Option<u64>) {
        self.inner.broker.publish(Envelope {
            room,
            frame,
            offset: None,
            exclude,
        });
    }

    /// Tells the others in `room` that `session` left it.
    fn announce_leave(&self, session: &Session, room: Arc<str>) {
        let event = RoomMembership {
            user: session.user().clone(),
            room_id: room.to_string(),
            peer_id: session.client_id.to_string(),
            timestamp: now_millis(),
        };
        self.publish(room, "user_left_room", &event, Some(session.id));
    }

    /// Leaves every joined room except `keep` (an exclusive join).
    fn leave_all_except(&self, session: &Session, keep: &str) {
        for room in session.rooms() {
            if &*room != keep && !room.starts_with(PERSONAL_ROOM_PREFIX) {
                session.remove_room(&room);
                self.inner.rooms.leave(&room, session.id);
                self.announce_leave(session, room);
            }
        }
    }

    /// One pass of liveness over every session: ping the live, close the silent.
    /// One sweep for the node instead of a timer per connection.
    pub fn sweep(&self) {
        let now = self.clock_secs();
        let timeout = self.inner.settings.ping_timeout_secs;
        for shard in self.inner.sessions.iter() {
            let sessions: Vec<Arc<Session>> = shard.lock().values().cloned().collect();
            for s in sessions {
                if now.saturating_sub(s.last_seen()) >= timeout {
                    s.close(CloseCode::Timeout);
                } else {
                    s.push(Outgoing::Ping);
                }
            }
        }
    }

    /// Starts a drain: the node reports unready and every connection is asked to close
    /// with `code`.
    pub fn drain(&self, code: CloseCode) {
        self.inner.draining.store(true, Ordering::Relaxed);
        for shard in self.inner.sessions.iter() {
            for s in shard.lock().values() {
                s.close(code);
            }
        }
    }
}
