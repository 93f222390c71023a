//! The engine: sessions, rooms, and the one API every transport calls.
//!
//! The hub knows no HTTP, no socket and no wire format. A transport authenticates,
//! registers a [`Session`] with [`Hub::connect`] (whose [`Registration`] undoes it when
//! dropped, on every exit path), decodes frames into requests for [`Hub::dispatch`],
//! and writes what the session's outbox yields. Everything a room receives goes
//! through the broker, durable messages through the store first; who is where is
//! presence's to answer.

mod cmd;
mod delivery;
mod inbox;
mod ratelimit;
mod rooms;
mod session;
mod users;

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use switchboard_protocol::{
    CloseCode, PERSONAL_ROOM_PREFIX, PeerLeft, SYSTEM_ROOM, UserDisconnected, now_millis,
    personal_room,
};
use tokio::sync::mpsc;

pub use cmd::{Announce, HandlerContext, JoinOptions, Joined, MessageHandler};
pub use inbox::entry as notification_entry;
pub use ratelimit::{RateLimiter, Verdict};
pub use rooms::{LocalRoom, RoomIndex};
pub use session::{OutboxLimits, Outgoing, Session, TRAIL_MAX, Trail, Wire};
pub use users::{STATUSES, visible_status};

use crate::auth::{AuthError, Identity, Verifier};
use crate::broker::{Action, Broker, Command, Envelope};
use crate::config::Config;
use crate::encode::Event;
use crate::metrics::Metrics;
use crate::position::Position;
use crate::presence::{Presence, PresenceError};
use crate::store::{Commit, Committed, Completion, Draft, Store, StoreError};

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
    pub recovery_max_bytes: usize,
    pub history_max_bytes: usize,
    pub join_list_limit: usize,
    pub announce_max_members: u64,
    pub ping_timeout_secs: u64,
    pub offline_grace_secs: u64,
    pub max_contacts: usize,
    /// Rooms with more members do not notify offline ones.
    pub notify_max_members: u32,
    /// Whether new notification entries are queued for the webhook.
    pub push: bool,
    /// Whether other nodes share the store (a cluster): nothing the store holds may be
    /// assumed from this node's own writes.
    pub shared_store: bool,
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
            recovery_max_bytes: cfg.store.recovery_max_bytes,
            history_max_bytes: cfg.store.history_max_bytes,
            join_list_limit: cfg.rooms.join_list_limit,
            announce_max_members: cfg.rooms.announce_max_members,
            ping_timeout_secs: cfg.ws.ping_timeout_secs,
            offline_grace_secs: cfg.presence.offline_grace_secs,
            max_contacts: cfg.presence.max_contacts,
            notify_max_members: cfg.notifications.max_room_members,
            push: cfg.notifications.webhook_url.is_some(),
            shared_store: cfg.cluster.database_url.is_some(),
        }
    }
}

/// The seams a hub runs on.
pub struct HubParts {
    pub settings: HubSettings,
    pub verifier: Verifier,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub handlers: HashMap<String, MessageHandler>,
    pub metrics: Arc<Metrics>,
    pub files: Arc<crate::files::Files>,
}

/// One node as the cluster sees it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub node_id: String,
    pub total_clients: u64,
    pub websocket: u64,
    pub sse: u64,
    pub socketio: u64,
    /// Rooms with a member on the node.
    pub total_rooms: usize,
    pub uptime: u64,
    /// When the node made this report (Unix ms).
    pub timestamp: u64,
}

/// The original design's getStats: connections and rooms of this node.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub total_clients: usize,
    pub total_rooms: usize,
    /// Rooms (personal rooms excluded) and their connections, by room id.
    pub clients_by_room: Vec<(String, usize)>,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("too many connections for this user")]
    TooManyConnections,
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error("the broker is unavailable")]
    Broker,
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
    presence: Arc<dyn Presence>,
    handlers: HashMap<String, MessageHandler>,
    metrics: Arc<Metrics>,
    files: Arc<crate::files::Files>,
    rooms: Arc<RoomIndex>,
    /// Sessions by client id, sharded.
    sessions: Box<[SessionShard]>,
    hasher: RandomState,
    /// Open sessions, by wire.
    open: [AtomicU64; 4],
    next_session: AtomicU64,
    started: Instant,
    draining: AtomicBool,
    leaving: users::Leaving,
    interest: users::Interest,
    settled: inbox::Settled,
    /// Wakes the webhook pusher when entries with a push were opened.
    pushes_due: Arc<tokio::sync::Notify>,
}

/// A registered session. Dropping it (the connection ended, its task was cancelled or
/// panicked) removes the session from the hub, its rooms and presence.
pub struct Registration {
    hub: Hub,
    session: Arc<Session>,
}

impl Registration {
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.disconnect(&self.session);
    }
}

impl Hub {
    /// Builds the hub and starts its fan-out: the broker delivers into it, and the
    /// store's commits (read from `commits`) are published in commit order.
    pub fn new(parts: HubParts, commits: mpsc::Receiver<Vec<Commit>>) -> Hub {
        let rooms = Arc::new(RoomIndex::default());
        let shared_store = parts.settings.shared_store;
        let ordering = (!parts.broker.ordered()).then(|| parts.store.clone());
        let fanout = delivery::Fanout::start(rooms.clone(), parts.metrics.clone(), ordering);
        let hub_slot = fanout.hub_slot();
        parts.broker.start(Arc::new(fanout));
        let hub = Hub {
            inner: Arc::new(Inner {
                settings: parts.settings,
                verifier: parts.verifier,
                store: parts.store,
                broker: parts.broker,
                presence: parts.presence,
                handlers: parts.handlers,
                metrics: parts.metrics,
                files: parts.files,
                rooms,
                sessions: (0..SESSION_SHARDS)
                    .map(|_| Mutex::new(HashMap::new()))
                    .collect(),
                hasher: RandomState::new(),
                open: Default::default(),
                next_session: AtomicU64::new(1),
                started: Instant::now(),
                draining: AtomicBool::new(false),
                leaving: users::Leaving::default(),
                interest: if shared_store {
                    users::Interest::everyone()
                } else {
                    users::Interest::default()
                },
                settled: inbox::Settled::default(),
                pushes_due: Arc::new(tokio::sync::Notify::new()),
            }),
        };
        let _ = hub_slot.set(Arc::downgrade(&hub.inner));
        // The publisher holds the hub weakly: it ends when the hub is dropped.
        tokio::spawn(delivery::publish_commits(
            commits,
            Arc::downgrade(&hub.inner),
        ));
        hub
    }

    pub fn settings(&self) -> &HubSettings {
        &self.inner.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn presence(&self) -> &Arc<dyn Presence> {
        &self.inner.presence
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn files(&self) -> &Arc<crate::files::Files> {
        &self.inner.files
    }

    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// Notified whenever entries with a webhook push were queued.
    pub fn pushes_due(&self) -> Arc<tokio::sync::Notify> {
        self.inner.pushes_due.clone()
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    fn rooms(&self) -> &RoomIndex {
        &self.inner.rooms
    }

    /// Seconds since the hub started: the clock of liveness checks.
    pub fn clock_secs(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }

    pub fn uptime_secs(&self) -> u64 {
        self.clock_secs()
    }

    /// Open connections of this node, every transport.
    pub fn connections(&self) -> u64 {
        self.inner
            .open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Open connections of this node on `wire`.
    pub fn connections_on(&self, wire: Wire) -> u64 {
        self.inner.open[wire as usize].load(Ordering::Relaxed)
    }

    /// Rooms of this node with a member, and their members by format.
    pub fn local_rooms(&self) -> Vec<LocalRoom> {
        self.rooms().rooms()
    }

    /// Joins in progress on this node (each buffers its room's live events).
    pub fn pending_joins(&self) -> usize {
        self.rooms().pending_joins()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
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
            Wire::SocketIo | Wire::SocketIoRtc => &self.inner.metrics.connections_socketio,
        }
    }

    /// Registers a new connection. A participant is put in its personal room. Refused
    /// when the user already has `max_connections_per_user` devices (every transport
    /// counts). A connection registered during a drain is closed at once. `greet`
    /// queues the transport's first frame (`connected`) before anything else can reach
    /// the session.
    pub async fn connect(
        &self,
        identity: Identity,
        wire: Wire,
        greet: impl Fn(&Session),
    ) -> Result<Registration, ConnectError> {
        self.connect_as(identity, wire, None, greet).await
    }

    /// [`Hub::connect`] under a given client id (a recovered Socket.IO socket keeps its
    /// id), unless a connection of this node has it.
    pub async fn connect_as(
        &self,
        identity: Identity,
        wire: Wire,
        client_id: Option<Arc<str>>,
        greet: impl Fn(&Session),
    ) -> Result<Registration, ConnectError> {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let s = &self.inner.settings;
        let mut wanted = client_id;
        let mut identity = identity;
        let session = loop {
            let client_id: Arc<str> = wanted
                .take()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string().into());
            let session = Arc::new(Session::new(
                id,
                client_id.clone(),
                identity,
                wire,
                s.outbox,
                RateLimiter::new(s.rate_per_sec, s.rate_burst),
                self.clock_secs(),
            ));
            greet(&session);
            // A wanted id another connection holds (or takes at the same moment) is
            // not taken from it: a generated one is used instead.
            match self.session_shard(&client_id).lock().entry(client_id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(session.clone());
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    identity = session.identity.clone();
                    continue;
                }
            }
            break session;
        };
        self.inner.open[wire as usize].fetch_add(1, Ordering::Relaxed);
        self.connection_gauge(wire).increment(1.0);
        self.rooms().session_opened(session.format);
        // From here on, whatever happens, dropping this undoes the registration.
        let registration = Registration {
            hub: self.clone(),
            session: session.clone(),
        };
        if !wire.is_device() {
            return Ok(registration);
        }
        let devices = self.presence().connect(session.device()).await?;
        let max = s.max_connections_per_user as u64;
        if max > 0 && devices > max {
            return Err(ConnectError::TooManyConnections);
        }
        if wire.participates() {
            let personal: Arc<str> = personal_room(&session.user().id).into();
            self.broker()
                .subscribe(&personal)
                .await
                .map_err(|_| ConnectError::Broker)?;
            self.rooms().insert(&personal, &session);
        }
        self.device_arrived(&session, devices);
        // A drain that began while this one registered may not have seen it.
        if self.is_draining() {
            session.close(CloseCode::ServiceRestart);
        }
        Ok(registration)
    }

    /// Removes a closed connection from the hub, its rooms and presence; the rooms it
    /// was in hear `user_disconnected` (up to `announce_max_members`). Runs once, from
    /// the session's [`Registration`].
    fn disconnect(&self, session: &Arc<Session>) {
        let removed = {
            let mut shard = self.session_shard(&session.client_id).lock();
            // Only this session's entry: never another one's under the same id.
            let mine = shard
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session));
            mine && shard.remove(&session.client_id).is_some()
        };
        if !removed {
            return;
        }
        self.inner.open[session.wire as usize].fetch_sub(1, Ordering::Relaxed);
        self.connection_gauge(session.wire).decrement(1.0);
        self.rooms().session_closed(session.format);
        let presence = self.presence();
        if session.wire.participates() {
            let personal = personal_room(&session.user().id);
            if self.rooms().leave(&personal, session.id) {
                self.broker().unsubscribe(&personal);
            }
        }
        let rooms = session.take_rooms();
        for room in &rooms {
            self.rooms().leave(room, session.id);
            self.broker().unsubscribe(room);
            if session.wire.participates() || session.wire == Wire::SocketIoRtc {
                presence.leave(room, session.device());
            }
        }
        if session.wire == Wire::SocketIoRtc {
            // A signaling peer: its rooms hear `peer_left`, nothing else.
            for room in rooms {
                let left = PeerLeft::now(&session.client_id);
                self.publish_detached(room, Arc::new(Event::new("peer_left", &left)), None);
            }
            return;
        }
        presence.disconnect(session.device());
        self.device_left(session);
        if !session.wire.participates() || rooms.is_empty() {
            return;
        }
        let event = Arc::new(Event::new(
            "user_disconnected",
            &UserDisconnected {
                user: session.user().clone(),
                peer_id: session.client_id.to_string(),
                timestamp: now_millis(),
            },
        ));
        // The original Socket.IO design tells the rooms of a closed socket
        // `user_left_room`, one per room.
        let as_left = (session.wire == Wire::SocketIo).then(|| session.user().clone());
        let hub = self.clone();
        let client_id = session.client_id.clone();
        self.run_detached(async move {
            for room in rooms {
                if hub.announces(&room).await {
                    let event = match &as_left {
                        Some(user) => Arc::new(Event::new(
                            "user_left_room",
                            &switchboard_protocol::RoomMembership {
                                user: user.clone(),
                                room_id: room.to_string(),
                                peer_id: client_id.to_string(),
                                timestamp: now_millis(),
                            },
                        )),
                        None => event.clone(),
                    };
                    hub.publish_event(room, event, Some(client_id.clone()))
                        .await;
                }
            }
        });
    }

    /// Runs `fut` now if it completes without waiting, else as a task of its own: for
    /// the async tail of work started where nothing can wait (a `Drop`).
    fn run_detached(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut fut = Box::pin(fut);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        if Pin::new(&mut fut).poll(&mut cx) == Poll::Ready(()) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(fut);
        }
    }

    /// Whether joins and departures in `room` are announced: while it has at most
    /// `announce_max_members` connections.
    async fn announces(&self, room: &str) -> bool {
        let max = self.inner.settings.announce_max_members;
        match self.presence().counts(room).await {
            Ok(c) => c.connections < max,
            Err(_) => false,
        }
    }

    /// Finds a connection of this node by its client id.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.session_shard(client_id).lock().get(client_id).cloned()
    }

    /// Publishes an ephemeral event `{type: kind, data}` to a room on every node.
    pub async fn publish<T: Serialize + ?Sized>(&self, room: Arc<str>, kind: &str, data: &T) {
        let event = Arc::new(Event::new(kind.to_string(), data));
        self.publish_event(room, event, None).await;
    }

    /// Publishes `event` to `room`, except to the connection `exclude`.
    pub async fn publish_event(
        &self,
        room: Arc<str>,
        event: Arc<Event>,
        exclude: Option<Arc<str>>,
    ) {
        let env = Envelope {
            exclude,
            ..Envelope::new(room, event)
        };
        if let Err(e) = self.broker().publish(env).await {
            tracing::warn!(error = %e, "publish failed");
        }
    }

    /// Publishes without waiting: now if the broker takes it at once, else in the
    /// background.
    pub fn publish_detached(&self, room: Arc<str>, event: Arc<Event>, exclude: Option<Arc<str>>) {
        let hub = self.clone();
        self.run_detached(async move { hub.publish_event(room, event, exclude).await });
    }

    /// One pass of liveness over every session: ping the live, close the silent.
    /// One sweep for the node instead of a timer per connection.
    pub fn sweep(&self) {
        let now = self.clock_secs();
        let timeout = self.inner.settings.ping_timeout_secs;
        for shard in self.inner.sessions.iter() {
            let sessions: Vec<Arc<Session>> = shard.lock().values().cloned().collect();
            // Socket.IO sessions have Engine.IO's own heartbeat.
            for s in sessions.into_iter().filter(|s| s.wire == Wire::WebSocket) {
                if now.saturating_sub(s.last_seen()) >= timeout && !s.is_busy() {
                    s.close(CloseCode::Timeout);
                } else {
                    s.push(Outgoing::Ping);
                }
            }
        }
        self.presence().heartbeat();
        self.reap();
    }

    /// Every session of this node.
    fn all_sessions(&self) -> Vec<Arc<Session>> {
        let mut out = Vec::with_capacity(self.connections() as usize);
        for shard in self.inner.sessions.iter() {
            out.extend(shard.lock().values().cloned());
        }
        out
    }

    /// Sends `{type: kind, data}` to every connection, on every transport and every
    /// node; answers how many connections of this node got it.
    pub async fn broadcast_all<T: Serialize + ?Sized>(&self, kind: &str, data: &T) -> usize {
        let event = Event::new(kind.to_string(), data);
        let n = self.broadcast_local(&event);
        self.tell_cluster(Action::Broadcast {
            kind: kind.to_string(),
            data: event.data().as_str().to_string(),
        })
        .await;
        n
    }

    /// Sends `event` to every connection of this node.
    pub(crate) fn broadcast_local(&self, event: &Event) -> usize {
        event.prepare(self.rooms().live_formats());
        let mut n = 0;
        for s in self.all_sessions() {
            if s.push_frame(event.frame(s.format).clone()) {
                n += 1;
            }
        }
        self.inner.metrics.deliveries.increment(n as u64);
        n
    }

    /// Closes every connection of `user_id` with `code`, on every node; answers how
    /// many of this node it closed.
    pub async fn disconnect_user(&self, user_id: &str, code: CloseCode) -> usize {
        let n = self.disconnect_user_local(user_id, code);
        self.tell_cluster(Action::DisconnectUser {
            user: user_id.to_string(),
        })
        .await;
        n
    }

    pub(crate) fn disconnect_user_local(&self, user_id: &str, code: CloseCode) -> usize {
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

    /// Has the other nodes of a cluster do `action` (nothing alone).
    async fn tell_cluster(&self, action: Action) {
        let cmd = Command {
            from: self.inner.settings.node_id.clone(),
            action,
        };
        if let Err(e) = self.broker().command(cmd).await {
            tracing::warn!(error = %e, "telling the other nodes failed");
        }
    }

    /// Whether `user_id` has a connection in `room`: a member (any node), or a listener
    /// (an SSE stream of this node) subscribed to it.
    pub async fn user_in_room(&self, user_id: &str, room: &str) -> Result<bool, PresenceError> {
        if self.presence().has_user(room, user_id).await? {
            return Ok(true);
        }
        let devices = self.presence().device_ids(user_id).await?;
        Ok(devices
            .iter()
            .filter_map(|id| self.session(id))
            .any(|s| s.in_room(room)))
    }

    /// The room's position now.
    pub async fn head(&self, room: &str) -> Result<Position, StoreError> {
        self.inner.store.head(room).await
    }

    /// Stores and publishes a message from the server itself (the HTTP API), and waits
    /// until it is durable.
    pub async fn publish_durable(&self, draft: Draft) -> Result<Committed, StoreError> {
        if !self.broker().is_healthy() {
            return Err(StoreError::Unavailable("the broker is unavailable".into()));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Completion::new(move |result| {
            let _ = tx.send(result);
        });
        self.inner.store.append(draft, done).await;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The original design's getStats for this node: connections of all transports or
    /// of one, and the rooms they are in (personal rooms excluded).
    pub fn stats(&self, wire: Option<Wire>) -> Stats {
        let total_clients = match wire {
            Some(w) => self.connections_on(w),
            None => self.connections(),
        } as usize;
        let format = wire.map(Wire::format);
        let mut clients_by_room: Vec<(String, usize)> = self
            .local_rooms()
            .into_iter()
            .filter(|r| !r.room.starts_with(PERSONAL_ROOM_PREFIX))
            .map(|r| {
                let n = match format {
                    Some(f) => r.by_format[f.index()] as usize,
                    None => r.total(),
                };
                (r.room.to_string(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        clients_by_room.sort();
        Stats {
            total_clients,
            total_rooms: clients_by_room.len(),
            clients_by_room,
        }
    }

    /// What this node reports to the others (`/admin/stats`).
    pub fn node_report(&self) -> NodeReport {
        NodeReport {
            node_id: self.inner.settings.node_id.clone(),
            total_clients: self.connections(),
            websocket: self.connections_on(Wire::WebSocket),
            sse: self.connections_on(Wire::Sse),
            socketio: self.connections_on(Wire::SocketIo) + self.connections_on(Wire::SocketIoRtc),
            total_rooms: self
                .local_rooms()
                .iter()
                .filter(|r| !r.room.starts_with(PERSONAL_ROOM_PREFIX))
                .count(),
            uptime: self.uptime_secs(),
            timestamp: now_millis(),
        }
    }

    /// Leaves this node's report for the others, valid for `ttl`.
    pub async fn report_node(&self, ttl: std::time::Duration) {
        let report = self.node_report();
        let json = serde_json::to_string(&report).expect("a report serializes");
        let expires = report.timestamp + ttl.as_millis() as u64;
        if let Err(e) = self
            .broker()
            .report(&self.inner.settings.node_id, json, expires)
            .await
        {
            tracing::warn!(error = %e, "reporting this node failed");
        }
    }

    /// Every node's latest report, this one's fresh, sorted by node id.
    pub async fn cluster_reports(&self) -> Vec<NodeReport> {
        let me = self.node_report();
        let mut out: Vec<NodeReport> = match self.broker().reports().await {
            Ok(reports) => reports
                .iter()
                .filter_map(|r| serde_json::from_str::<NodeReport>(r).ok())
                .filter(|r| r.node_id != me.node_id)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the other nodes' reports failed");
                Vec::new()
            }
        };
        out.push(me);
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// The periodic `stats` event on `system`: totals only (room ids are the server
    /// API's), and only when this node has a subscriber there.
    pub async fn publish_system_stats(&self) {
        if self.rooms().member_count(SYSTEM_ROOM) == 0 {
            return;
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct SystemStats<'a> {
            node_id: &'a str,
            total_clients: u64,
            total_rooms: usize,
            timestamp: u64,
        }
        let total_rooms = self
            .local_rooms()
            .iter()
            .filter(|r| !r.room.starts_with(PERSONAL_ROOM_PREFIX))
            .count();
        let stats = SystemStats {
            node_id: &self.inner.settings.node_id,
            total_clients: self.connections(),
            total_rooms,
            timestamp: now_millis(),
        };
        self.publish(SYSTEM_ROOM.into(), "stats", &stats).await;
    }

    /// Starts a drain: the node reports unready and every connection is asked to close
    /// with `code`.
    pub fn drain(&self, code: CloseCode) {
        self.inner.draining.store(true, Ordering::SeqCst);
        for shard in self.inner.sessions.iter() {
            for s in shard.lock().values() {
                s.close(code);
            }
        }
    }
}
