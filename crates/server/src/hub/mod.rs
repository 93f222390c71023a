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
pub use session::{OutboxLimits, Outgoing, Session, Text, Wire};

use crate::auth::{AuthError, Identity, Verifier};
use crate::broker::{Broker, Envelope};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Committed, Draft, Store, StoreError};

const SESSION_SHARDS: usize = 32;

/// Keyed by the session's own client id string (shared, not copied).
type SessionShard = Mutex<HashMap<Arc<str>, Arc<Session>>>;

/// What the hub needs from the config, copied once.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub node_id: String,
    pub outbox: OutboxLimits,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub max_rooms_per_connection: usize,
    pub max_connections_per_user: usize,
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
            max_connections_per_user: cfg.ws.max_connections_per_user,
            recovery_max_messages: cfg.store.recovery_max_messages,
            ping_timeout_secs: cfg.ws.ping_timeout_secs,
        }
    }
}

/// `getStats`: connections and rooms of this node.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total_clients: usize,
    pub total_rooms: usize,
    pub clients_by_room: Vec<RoomCount>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomCount {
    pub room_id: String,
    pub client_count: usize,
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
    metrics: Arc<Metrics>,
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
        metrics: Arc<Metrics>,
    ) -> Hub {
        let inner = Arc::new(Inner {
            settings,
            verifier,
            store,
            broker: broker.clone(),
            handlers,
            metrics,
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
                let n = inner.rooms.deliver(env);
                inner.metrics.deliveries.increment(n as u64);
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

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
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

    fn connection_gauge(&self, wire: Wire) -> &metrics::Gauge {
        match wire {
            Wire::WebSocket => &self.inner.metrics.connections_websocket,
            Wire::Sse => &self.inner.metrics.connections_sse,
        }
    }

    /// Whether `user_id` may open another WebSocket connection. Checked before the
    /// connection registers, so two racing connects may both pass: the limit is a
    /// guard against runaway clients, not an exact quota.
    pub fn may_connect(&self, user_id: &str) -> bool {
        let max = self.inner.settings.max_connections_per_user;
        max == 0 || self.inner.rooms.member_count(&personal_room(user_id)) < max
    }

    /// Registers a new connection and puts it in its personal room.
    pub fn connect(&self, identity: Identity, wire: Wire) -> Arc<Session> {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let client_id: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        let s = &self.inner.settings;
        let session = Arc::new(Session::new(
            id,
            client_id.clone(),
            identity,
            wire,
            s.outbox,
            RateLimiter::new(s.rate_per_sec, s.rate_burst),
            self.clock_secs(),
        ));
        self.session_shard(&client_id)
            .lock()
            .insert(client_id, session.clone());
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
        self.connection_gauge(wire).increment(1.0);
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
        self.connection_gauge(session.wire).decrement(1.0);
        self.inner
            .rooms
            .leave(&personal_room(&session.user().id), session.id);
        if session.wire == Wire::Sse {
            for room in session.take_rooms() {
                self.inner.rooms.leave(&room, session.id);
            }
            return;
        }
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
            for s in sessions.into_iter().filter(|s| s.wire == Wire::WebSocket) {
                if now.saturating_sub(s.last_seen()) >= timeout {
                    s.close(CloseCode::Timeout);
                } else {
                    s.push(Outgoing::Ping);
                }
            }
        }
    }

    /// Every session of this node.
    fn all_sessions(&self) -> Vec<Arc<Session>> {
        let mut out = Vec::with_capacity(self.connections() as usize);
        for shard in self.inner.sessions.iter() {
            out.extend(shard.lock().values().cloned());
        }
        out
    }

    /// Sends `{type: kind, data}` to every connection of this node, on every transport.
    pub fn broadcast_all<T: Serialize + ?Sized>(&self, kind: &str, data: &T) -> usize {
        let frame: Text = encode(kind, data, None).into();
        let mut n = 0;
        for s in self.all_sessions() {
            if s.push(Outgoing::Text(frame.clone())) {
                n += 1;
            }
        }
        self.inner.metrics.deliveries.increment(n as u64);
        n
    }

    /// Closes every connection of `user_id` with `code`; returns how many.
    pub fn disconnect_user(&self, user_id: &str, code: CloseCode) -> usize {
        let sessions: Vec<_> = self
            .all_sessions()
            .into_iter()
            .filter(|s| s.user().id == user_id)
            .collect();
        for s in &sessions {
            s.close(code);
        }
        sessions.len()
    }

    /// Whether `user_id` has a connection (any transport) in `room`.
    pub fn user_in_room(&self, user_id: &str, room: &str) -> bool {
        self.inner
            .rooms
            .members(room)
            .iter()
            .any(|s| s.user().id == user_id)
    }

    /// A room's last committed offset (0 for an empty room).
    pub async fn head(&self, room: &str) -> Result<u64, StoreError> {
        let last = self
            .inner
            .store
            .range(room, switchboard_protocol::HistoryRange::Latest, 1)
            .await?;
        Ok(last.last().map_or(0, |m| m.offset))
    }

    /// Stores and publishes a message from the server itself (the HTTP API), and waits
    /// until it is durable.
    pub async fn publish_durable(&self, draft: Draft) -> Result<Committed, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner
            .store
            .append(
                draft,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            )
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The original design's getStats: totals and per-room connection counts, of all
    /// transports or of one.
    pub fn stats(&self, wire: Option<Wire>) -> Stats {
        let mut by_room: HashMap<Arc<str>, usize> = HashMap::new();
        let mut total = 0;
        for s in self.all_sessions() {
            if wire.is_some_and(|w| w != s.wire) {
                continue;
            }
            total += 1;
            for room in s.rooms() {
                *by_room.entry(room).or_default() += 1;
            }
        }
        let mut clients_by_room: Vec<RoomCount> = by_room
            .into_iter()
            .map(|(room, n)| RoomCount {
                room_id: room.to_string(),
                client_count: n,
            })
            .collect();
        clients_by_room.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        Stats {
            total_clients: total,
            total_rooms: clients_by_room.len(),
            clients_by_room,
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
