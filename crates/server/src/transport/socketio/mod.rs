//! Socket.IO: Engine.IO v4 (WebSocket, HTTP long-polling, and the upgrade from one to
//! the other) carrying Socket.IO v5 packets, as a third transport of the hub.
//!
//! An Engine.IO connection is a [`Conn`], found by its sid in the engine's map. Its
//! Socket.IO sockets (one per namespace it connected) are hub sessions whose outboxes
//! hold Engine.IO message packets, encoded once per room event like every format.
//! What is not a hub event (the open packet, pings, connect answers, a conformance
//! echo) waits in the connection's own small queue. Whoever holds the transport, a
//! WebSocket task or the pending long-poll, drains both.
//!
//! Liveness is Engine.IO's heartbeat, run by one sweep over every connection instead of
//! a timer each: the sweep sends a ping when one is due and closes a connection whose
//! pong is late; every request that touches a connection checks the deadline too, so a
//! dead connection is never answered as alive. A connection is undone on every exit
//! path: closing it removes it from the map and drops its sockets' registrations.

mod apps;
mod conn;
mod echo;
mod hub_app;
mod polling;
pub(crate) mod recovery;
mod websocket;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio_util::task::TaskTracker;

pub use apps::Application;
pub use conn::Conn;
use conn::{CloseReason, Sid, Transport};

use crate::config::Config;
use crate::hub::Hub;

const SHARDS: usize = 16;

/// How the engine behaves: Engine.IO's handshake values and Socket.IO's timeouts.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Largest payload a client may send (a polling body, a WebSocket message).
    pub max_payload: usize,
    /// A connection that has not connected a namespace by then is closed.
    pub connect_timeout: Duration,
    /// How long a dropped socket's state is kept for recovery; zero turns it off.
    pub recovery_window: Duration,
    /// Most binary attachments of one packet.
    pub max_attachments: usize,
    /// Largest event payload handed to the hub.
    pub max_event_bytes: usize,
    /// A WebSocket probe that has not completed its upgrade by then is dropped; the
    /// session goes on polling.
    pub upgrade_timeout: Duration,
    /// WebSocket buffer sizes.
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        Settings {
            ping_interval: Duration::from_millis(cfg.socketio.ping_interval_ms),
            ping_timeout: Duration::from_millis(cfg.socketio.ping_timeout_ms),
            max_payload: cfg.socketio.max_payload,
            connect_timeout: Duration::from_secs(45),
            recovery_window: Duration::from_secs(cfg.socketio.recovery_window_secs),
            max_attachments: 10,
            max_event_bytes: cfg.ws.max_message_bytes,
            upgrade_timeout: Duration::from_secs(10),
            read_buffer_bytes: cfg.socketio.read_buffer_bytes,
            write_buffer_bytes: cfg.ws.write_buffer_bytes,
        }
    }

    /// The reference servers of the official protocol test suites.
    pub fn conformance() -> Settings {
        Settings {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            max_payload: 1_000_000,
            connect_timeout: Duration::from_millis(1000),
            recovery_window: Duration::ZERO,
            max_attachments: 10,
            max_event_bytes: 1_000_000,
            upgrade_timeout: Duration::from_secs(10),
            read_buffer_bytes: 4096,
            write_buffer_bytes: 4096,
        }
    }

    /// How often the heartbeat sweep runs: a small part of the shorter timer.
    fn tick(&self) -> Duration {
        (self.ping_interval.min(self.ping_timeout) / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

type Shard = Mutex<HashMap<Sid, Arc<Conn>>>;

/// The Engine.IO server of one path. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    app: Application,
    conns: Box<[Shard]>,
    hasher: RandomState,
    started: Instant,
    tracker: TaskTracker,
    /// The open packet's JSON for polling (which may upgrade) and for WebSocket.
    open_polling: String,
    open_websocket: String,
}

impl Engine {
    pub fn new(settings: Settings, app: Application, tracker: TaskTracker) -> Engine {
        let open = |upgrades: &str| {
            format!(
                r#"{{"upgrades":{upgrades},"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
                settings.ping_interval.as_millis(),
                settings.ping_timeout.as_millis(),
                settings.max_payload
            )
        };
        Engine {
            inner: Arc::new(Inner {
                open_polling: open(r#"["websocket"]"#),
                open_websocket: open("[]"),
                settings,
                app,
                conns: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
                started: Instant::now(),
                tracker,
            }),
        }
    }

    /// The engine of the hub's `/socket.io/` endpoint.
    pub fn for_hub(hub: Hub, config: &Config, tracker: TaskTracker) -> Engine {
        Engine::for_hub_with(hub, config, tracker, recovery::Stashes::default())
    }

    /// [`Engine::for_hub`] with recovery stashes of its own (a cluster's, in Redis).
    pub(crate) fn for_hub_with(
        hub: Hub,
        config: &Config,
        tracker: TaskTracker,
        stashes: recovery::Stashes,
    ) -> Engine {
        let settings = Settings::from_config(config);
        let app = Application::hub(hub, &settings, stashes);
        Engine::new(settings, app, tracker)
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub(crate) fn app(&self) -> &Application {
        &self.inner.app
    }

    /// Milliseconds on the engine's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    fn shard(&self, sid: &Sid) -> &Shard {
        &self.inner.conns[self.inner.hasher.hash_one(sid) as usize % SHARDS]
    }

    /// Open Engine.IO connections.
    pub fn connections(&self) -> usize {
        self.inner.conns.iter().map(|s| s.lock().len()).sum()
    }

    fn find(&self, sid: &str) -> Option<Arc<Conn>> {
        let sid = Sid::parse(sid)?;
        self.shard(&sid).lock().get(&sid).cloned()
    }

    /// A new connection, registered under a fresh sid.
    fn open(&self, transport: Transport, peer_id: Option<String>) -> Arc<Conn> {
        let now = self.now_ms();
        let conn = Arc::new(Conn::new(
            Sid::random(),
            transport,
            now,
            now + self.inner.settings.ping_interval.as_millis() as u64,
            peer_id.map(String::into_boxed_str),
        ));
        self.shard(&conn.sid).lock().insert(conn.sid, conn.clone());
        let open = match transport {
            Transport::Polling => &self.inner.open_polling,
            Transport::WebSocket => &self.inner.open_websocket,
        };
        let packet = format!(r#"0{{"sid":"{}",{}"#, conn.sid.as_str(), &open[1..]);
        conn.push_text(packet.into());
        conn
    }

    /// Closes `conn` for good: out of the map, its sockets dropped (each registration
    /// undoes itself), its transport woken to end.
    pub(crate) fn close(&self, conn: &Arc<Conn>, reason: CloseReason) {
        self.shard(&conn.sid).lock().remove(&conn.sid);
        let sockets = conn.shut(reason);
        self.inner.app.closed(conn, sockets, reason);
    }

    /// Marks a request of `conn` done (see [`Conn::set_idle`]).
    pub(crate) fn idle(&self, conn: &Conn) {
        conn.set_idle(
            self.now_ms(),
            self.inner.settings.ping_timeout.as_millis() as u64,
        );
    }

    /// Whether `conn` missed its pong deadline; if so it is closed now. A ping that is
    /// due goes out now (the sweep may not have come by yet).
    pub(crate) fn expired(&self, conn: &Arc<Conn>) -> bool {
        let now = self.now_ms();
        let timeout = self.inner.settings.ping_timeout.as_millis() as u64;
        if conn.overdue(now, timeout) {
            self.close(conn, CloseReason::PingTimeout);
            return true;
        }
        conn.ping_if_due(now, timeout);
        false
    }

    /// One heartbeat pass: pings where due, closes the late and the never-connected.
    pub fn sweep(&self) {
        let now = self.now_ms();
        let s = &self.inner.settings;
        let timeout = s.ping_timeout.as_millis() as u64;
        let connect_timeout = s.connect_timeout.as_millis() as u64;
        self.inner.app.upkeep();
        for shard in self.inner.conns.iter() {
            let conns: Vec<Arc<Conn>> = shard.lock().values().cloned().collect();
            for conn in conns {
                if let Some(reason) = conn.closed() {
                    self.close(&conn, reason);
                } else if conn.overdue(now, timeout) {
                    self.close(&conn, CloseReason::PingTimeout);
                } else if !conn.has_sockets() && now >= conn.opened_ms + connect_timeout {
                    self.close(&conn, CloseReason::ConnectTimeout);
                } else {
                    conn.ping_if_due(now, timeout);
                }
            }
        }
    }

    /// Closes every connection (a drain): the clients reconnect elsewhere.
    pub fn drain(&self) {
        for shard in self.inner.conns.iter() {
            let conns: Vec<Arc<Conn>> = shard.lock().values().cloned().collect();
            for conn in conns {
                self.close(&conn, CloseReason::ServerClosing);
            }
        }
    }

    /// Runs the heartbeat sweep until the returned handle is aborted.
    pub fn start_sweep(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        let tick = self.inner.settings.tick();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                engine.sweep();
            }
        })
    }
}

/// 20 characters of `A-Za-z0-9`: Engine.IO and Socket.IO ids.
pub(crate) fn random_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EngineParams {
    /// Engine.IO protocol version: 4.
    #[serde(rename = "EIO")]
    eio: Option<String>,
    /// `polling` or `websocket`.
    transport: Option<String>,
    /// The session id, after the handshake.
    sid: Option<String>,
    /// `/webrtc`: the peer id wanted (used only if no connection has it).
    #[serde(rename = "peerId")]
    peer_id: Option<String>,
}

/// Engine.IO's error answer: `{"code": N, "message": "..."}` with status 400.
fn engine_error(code: u8, message: &str) -> Response {
    let body = format!(r#"{{"code":{code},"message":"{message}"}}"#);
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

pub(crate) fn unknown_sid() -> Response {
    engine_error(1, "Session ID unknown")
}

pub(crate) fn bad_request() -> Response {
    engine_error(3, "Bad request")
}

/// `GET`/`POST /socket.io/`: the Engine.IO handshake, long-polling and WebSocket.
#[utoipa::path(get, path = "/socket.io/", tag = "events", params(EngineParams),
    responses(
        (status = 101, description = "WebSocket upgrade (transport=websocket): Engine.IO v4 carrying Socket.IO v5"),
        (status = 200, description = "Engine.IO packets (transport=polling)", content_type = "text/plain"),
        (status = 400, description = "Engine.IO error `{code, message}`: unknown transport, session or protocol version, bad handshake method or request", body = Object),
    ))]
pub async fn endpoint(
    State(engine): State<Engine>,
    Query(params): Query<EngineParams>,
    headers: HeaderMap,
    req: Request<Body>,
) -> Response {
    handle(engine, params, headers, req).await
}

/// `POST /socket.io/`: packets from a long-polling client.
#[utoipa::path(post, path = "/socket.io/", tag = "events", params(EngineParams),
    request_body(content = String, content_type = "text/plain", description = "Engine.IO packets separated by \\x1e"),
    responses(
        (status = 200, description = "`ok`", content_type = "text/html"),
        (status = 400, description = "Engine.IO error `{code, message}`", body = Object),
        (status = 413, description = "the payload exceeds maxPayload"),
    ))]
pub async fn endpoint_post(
    State(engine): State<Engine>,
    Query(params): Query<EngineParams>,
    headers: HeaderMap,
    req: Request<Body>,
) -> Response {
    handle(engine, params, headers, req).await
}

async fn handle(
    engine: Engine,
    params: EngineParams,
    headers: HeaderMap,
    req: Request<Body>,
) -> Response {
    if params.eio.as_deref() != Some("4") {
        return engine_error(5, "Unsupported protocol version");
    }
    let method = req.method().clone();
    match (params.transport.as_deref(), params.sid) {
        (Some("websocket"), sid) if method == Method::GET => {
            websocket::upgrade(engine, sid, params.peer_id, &headers, req)
        }
        (Some("polling"), None) if method == Method::GET => {
            if engine.app().is_draining() {
                return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
            }
            let conn = engine.open(Transport::Polling, params.peer_id);
            polling::get(engine, conn).await
        }
        (Some("polling"), None) => engine_error(2, "Bad handshake method"),
        (Some("polling"), Some(sid)) => {
            let Some(conn) = engine.find(&sid) else {
                return unknown_sid();
            };
            if engine.expired(&conn) {
                return unknown_sid();
            }
            if method == Method::GET {
                polling::get(engine, conn).await
            } else if method == Method::POST {
                polling::post(engine, conn, req.into_body()).await
            } else {
                bad_request()
            }
        }
        _ => engine_error(0, "Transport unknown"),
    }
}

/// The reference servers of the official protocol test suites on one router:
/// Socket.IO on `/socket.io/` (namespaces `/` and `/custom` echo, see
/// [`Application::SocketIoEcho`]) and a plain Engine.IO echo on `/engine.io/`, with
/// CORS for any origin. Returns the router and the two heartbeat sweeps' handles.
pub fn conformance_router() -> (axum::Router, [tokio::task::JoinHandle<()>; 2]) {
    conformance_router_with(Settings::conformance())
}

/// [`conformance_router`] with other settings (tests use short timeouts).
pub fn conformance_router_with(
    settings: Settings,
) -> (axum::Router, [tokio::task::JoinHandle<()>; 2]) {
    use axum::routing::any;
    let tracker = TaskTracker::new();
    let socketio = Engine::new(settings.clone(), Application::SocketIoEcho, tracker.clone());
    let engineio = Engine::new(settings, Application::EngineEcho, tracker);
    let sweeps = [socketio.start_sweep(), engineio.start_sweep()];
    let route = |path: &str, engine: Engine| {
        axum::Router::new()
            .route(path, any(raw_endpoint))
            .with_state(engine)
    };
    let router = route("/socket.io/", socketio)
        .merge(route("/engine.io/", engineio))
        .layer(tower_http::cors::CorsLayer::very_permissive());
    (router, sweeps)
}

async fn raw_endpoint(
    State(engine): State<Engine>,
    Query(params): Query<EngineParams>,
    headers: HeaderMap,
    req: Request<Body>,
) -> Response {
    handle(engine, params, headers, req).await
}
