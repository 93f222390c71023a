//! The one typed configuration: TOML file < environment (`SWITCHBOARD_*`) < flags.
//!
//! Defaults live in the `Default` impls below and nowhere else; docs/operations.md lists
//! every key. This is the only module that reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Directory of the SQLite store (created if missing).
    pub data_dir: PathBuf,
    /// Identifies this node in `/health` and logs; generated when empty.
    pub node_id: String,
    /// Key of the server/admin HTTP API; admin routes are closed without it.
    pub api_key: Option<String>,
    /// `tracing` filter, e.g. `info` or `switchboard=debug,info`.
    pub log: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Seconds a drain (SIGTERM) waits for connections to close before exiting.
    pub drain_timeout_secs: u64,
    /// Origins allowed to call the HTTP API and SSE from a browser; empty allows none.
    pub cors_origins: Vec<String>,
    /// Largest HTTP request body; larger is refused with 413.
    pub max_body_bytes: usize,
    pub auth: AuthConfig,
    pub ws: WsConfig,
    pub rate_limit: RateLimitConfig,
    pub store: StoreConfig,
    pub rooms: RoomsConfig,
    pub presence: PresenceConfig,
    pub files: FilesConfig,
    pub notifications: NotificationsConfig,
    pub sse: SseConfig,
    pub socketio: SocketIoConfig,
    pub ice: IceConfig,
    pub cluster: ClusterConfig,
}

/// Many nodes: Redis joins them (broker, presence, Socket.IO recovery), PostgreSQL
/// keeps what is durable (messages, the user layer, files). Each is optional: without
/// them a node runs alone on its SQLite file and in-process broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port/db`: the broker, presence and Socket.IO recovery in Redis.
    pub redis_url: Option<String>,
    /// `postgres://user@host:port/db`: the store (and file bytes) in PostgreSQL.
    pub database_url: Option<String>,
    /// Prefix of every Redis key and channel, so clusters can share a Redis.
    pub redis_prefix: String,
    /// Milliseconds a Redis command may take before it fails (a publish answers an
    /// error instead of hanging while Redis is down).
    pub redis_timeout_ms: u64,
    /// Seconds a dead node's connections stay in presence, at most.
    pub presence_ttl_secs: u64,
    /// Connections to PostgreSQL per node.
    pub database_max_connections: u32,
    /// Where file bytes live: `auto` (PostgreSQL with a database URL, else the data
    /// dir), `postgres` or `local`.
    pub file_storage: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            database_url: None,
            redis_prefix: "sb:".into(),
            redis_timeout_ms: 2_000,
            presence_ttl_secs: 60,
            database_max_connections: 16,
            file_storage: "auto".into(),
        }
    }
}

/// The Socket.IO endpoint, `/socket.io/` (Engine.IO v4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Milliseconds between the server's pings (Engine.IO `pingInterval`).
    pub ping_interval_ms: u64,
    /// Milliseconds a client has to answer a ping (Engine.IO `pingTimeout`).
    pub ping_timeout_ms: u64,
    /// Largest Engine.IO payload a client may send, in bytes (`maxPayload`).
    pub max_payload: usize,
    /// Seconds a dropped socket's state (id, rooms, position) is kept for connection
    /// state recovery; 0 turns recovery off.
    pub recovery_window_secs: u64,
    /// Socket read chunk of a Socket.IO WebSocket, resident per connection: a client's
    /// events are small JSON (a larger one takes more reads, not more memory).
    pub read_buffer_bytes: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_payload: 1_000_000,
            recovery_window_secs: 120,
            read_buffer_bytes: 512,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Seconds a user stays online after its last device is gone: a device that comes
    /// back within them causes no offline/online flap.
    pub offline_grace_secs: u64,
    /// Most contacts a user may list.
    pub max_contacts: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Largest upload; larger is refused with 413.
    pub max_bytes: u64,
    /// Bytes of files one user may keep; an upload past it is refused with 413
    /// `quota_exceeded`. 0 = no quota.
    pub user_quota_bytes: u64,
    /// Seconds an uploaded file that was never shared is kept.
    pub orphan_ttl_secs: u64,
    /// Seconds a signed file URL stays valid.
    pub url_ttl_secs: u64,
    /// Key of the signed file URLs (the same on every node of a cluster); none = a
    /// random key kept in `<data_dir>/files/url.key`.
    pub url_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Rooms with more members than this do not notify offline members.
    pub max_room_members: u32,
    /// Where new notification entries are POSTed for push (FCM, APNs, Web Push);
    /// none = no pushes.
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key of the `X-Switchboard-Signature` header; required with a
    /// webhook URL.
    pub webhook_secret: Option<String>,
    /// Attempts per push before it is given up.
    pub webhook_max_attempts: u32,
    /// Seconds one webhook request may take.
    pub webhook_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// Most members and peers listed in `room_joined` (totals are always given).
    pub join_list_limit: usize,
    /// Joins, leaves and disconnects are announced while a room has at most this many
    /// connections; above it the room is quiet about them.
    pub announce_max_members: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Seconds between `ping` events on an SSE stream.
    pub ping_secs: u64,
    /// Seconds between `stats` events on the `system` channel.
    pub stats_interval_secs: u64,
    /// Channels one stream may name.
    pub max_channels: usize,
}

/// STUN and TURN servers handed to clients by `GET /api/ice-servers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    /// Shared secret of the TURN server (coturn `static-auth-secret`).
    pub turn_secret: Option<String>,
    /// Lifetime of TURN credentials.
    pub turn_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret. Required unless a public key is configured.
    pub jwt_secret: Option<String>,
    /// `HS256`, `RS256` or `ES256`.
    pub jwt_algorithm: String,
    /// PEM public key file for RS256/ES256.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud`, when set.
    pub jwt_audience: Option<String>,
    /// Accept tokens without `exp`.
    pub allow_tokens_without_exp: bool,
    /// Users may join only rooms matching their token's `rooms` patterns.
    pub room_permissions: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest frame or message a client may send; larger closes with 1009.
    pub max_message_bytes: usize,
    /// Frames a connection's outbox holds before the connection is a slow consumer (1013).
    pub outbox_max_frames: usize,
    /// Bytes a connection's outbox holds before the connection is a slow consumer (1013).
    pub outbox_max_bytes: usize,
    /// Socket read chunk per connection; resident (zero-filled) for every connection,
    /// so it is small: a larger message takes more reads, not more memory.
    pub read_buffer_bytes: usize,
    /// Bytes written per flush at most; resident once a connection has sent a batch.
    pub write_buffer_bytes: usize,
    /// Seconds one batch may take to reach a client's socket before the connection is
    /// dropped (a client that stopped reading).
    pub write_timeout_secs: u64,
    /// Server ping period.
    pub ping_interval_secs: u64,
    /// A connection silent for this long is terminated.
    pub ping_timeout_secs: u64,
    /// Rooms one connection may be in at once, its personal room excluded.
    pub max_rooms_per_connection: usize,
    /// WebSocket connections one user may hold at once; 0 for no limit.
    pub max_connections_per_user: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Messages per second per connection; 0 turns the limit off.
    pub per_sec: u32,
    /// Messages a connection may send at once above the rate.
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite `synchronous`: `full` (fsync every commit; survives power loss) or
    /// `normal` (survives a process crash, may lose the last commits on power loss).
    pub synchronous: String,
    /// Most messages a `join_room` with `since` replays; a larger gap is reported
    /// with `recovered: false` and left to `history`.
    pub recovery_max_messages: u32,
    /// Most payload bytes one recovery replays (an SSE stream: over all its channels);
    /// a larger gap is reported with `recovered: false`. Below `ws.outbox_max_bytes`.
    pub recovery_max_bytes: usize,
    /// Most payload bytes of one `history` page (at least one message is sent);
    /// a page cut short says `truncated: true`. Below `ws.outbox_max_bytes`.
    pub history_max_bytes: usize,
    /// Seconds a `clientMessageId` or `Idempotency-Key` is remembered.
    pub dedupe_window_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".parse().expect("valid default"),
            data_dir: PathBuf::from("data"),
            node_id: String::new(),
            api_key: None,
            log: "info".into(),
            log_format: "text".into(),
            drain_timeout_secs: 10,
            cors_origins: Vec::new(),
            max_body_bytes: 1024 * 1024,
            auth: AuthConfig::default(),
            ws: WsConfig::default(),
            rate_limit: RateLimitConfig::default(),
            store: StoreConfig::default(),
            rooms: RoomsConfig::default(),
            presence: PresenceConfig::default(),
            files: FilesConfig::default(),
            notifications: NotificationsConfig::default(),
            sse: SseConfig::default(),
            socketio: SocketIoConfig::default(),
            ice: IceConfig {
                turn_ttl_secs: 86400,
                ..IceConfig::default()
            },
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            ping_secs: 30,
            stats_interval_secs: 10,
            max_channels: 16,
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            offline_grace_secs: 5,
            max_contacts: 1000,
        }
    }
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            max_bytes: 25 * 1024 * 1024,
            user_quota_bytes: 1024 * 1024 * 1024,
            orphan_ttl_secs: 24 * 3600,
            url_ttl_secs: 3600,
            url_secret: None,
        }
    }
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            max_room_members: 1000,
            webhook_url: None,
            webhook_secret: None,
            webhook_max_attempts: 8,
            webhook_timeout_secs: 10,
        }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            join_list_limit: 100,
            announce_max_members: 1000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_algorithm: "HS256".into(),
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            allow_tokens_without_exp: false,
            room_permissions: false,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message_bytes: 1024 * 1024,
            outbox_max_frames: 4096,
            outbox_max_bytes: 8 * 1024 * 1024,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 16 * 1024,
            write_timeout_secs: 30,
            ping_interval_secs: 30,
            ping_timeout_secs: 60,
            max_rooms_per_connection: 100,
            max_connections_per_user: 100,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_sec: 100,
            burst: 200,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            synchronous: "full".into(),
            recovery_max_messages: 1000,
            recovery_max_bytes: 4 * 1024 * 1024,
            history_max_bytes: 1024 * 1024,
            dedupe_window_secs: 600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

type Setter = fn(&mut Config, &str) -> Result<(), String>;

fn parse<T: std::str::FromStr>(v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse::<T>().map_err(|e| e.to_string())
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn some(v: &str) -> Option<String> {
    Some(v.to_string()).filter(|s| !s.is_empty())
}

/// Every environment override, in the order applied: a later name wins, so
/// `SWITCHBOARD_JWT_SECRET` beats the plain `JWT_SECRET`.
const ENV: &[(&str, Setter)] = &[
    ("SWITCHBOARD_LISTEN", |c, v| {
        c.listen = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_DATA_DIR", |c, v| {
        c.data_dir = v.into();
        Ok(())
    }),
    ("SWITCHBOARD_NODE_ID", |c, v| {
        c.node_id = v.into();
        Ok(())
    }),
    ("SWITCHBOARD_REDIS_URL", |c, v| {
        c.cluster.redis_url = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_DATABASE_URL", |c, v| {
        c.cluster.database_url = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_REDIS_PREFIX", |c, v| {
        c.cluster.redis_prefix = v.into();
        Ok(())
    }),
    ("SWITCHBOARD_REDIS_TIMEOUT_MS", |c, v| {
        c.cluster.redis_timeout_ms = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_PRESENCE_TTL_SECS", |c, v| {
        c.cluster.presence_ttl_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_DATABASE_MAX_CONNECTIONS", |c, v| {
        c.cluster.database_max_connections = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_FILE_STORAGE", |c, v| {
        c.cluster.file_storage = v.into();
        Ok(())
    }),
    ("SWITCHBOARD_API_KEY", |c, v| {
        c.api_key = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_LOG", |c, v| {
        c.log = v.into();
        Ok(())
    }),
    ("SWITCHBOARD_LOG_FORMAT", |c, v| {
        c.log_format = v.into();
        Ok(())
    }),
    ("SWITCHBOARD_DRAIN_TIMEOUT_SECS", |c, v| {
        c.drain_timeout_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_CORS_ORIGINS", |c, v| {
        c.cors_origins = list(v);
        Ok(())
    }),
    ("SWITCHBOARD_MAX_BODY_BYTES", |c, v| {
        c.max_body_bytes = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_SOCKETIO_PING_INTERVAL_MS", |c, v| {
        c.socketio.ping_interval_ms = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_SOCKETIO_PING_TIMEOUT_MS", |c, v| {
        c.socketio.ping_timeout_ms = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_SOCKETIO_MAX_PAYLOAD", |c, v| {
        c.socketio.max_payload = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_SOCKETIO_READ_BUFFER_BYTES", |c, v| {
        c.socketio.read_buffer_bytes = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_SOCKETIO_RECOVERY_WINDOW_SECS", |c, v| {
        c.socketio.recovery_window_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_SSE_PING_SECS", |c, v| {
        c.sse.ping_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_STATS_INTERVAL_SECS", |c, v| {
        c.sse.stats_interval_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_STUN_URLS", |c, v| {
        c.ice.stun_urls = list(v);
        Ok(())
    }),
    ("SWITCHBOARD_TURN_URLS", |c, v| {
        c.ice.turn_urls = list(v);
        Ok(())
    }),
    ("SWITCHBOARD_TURN_SECRET", |c, v| {
        c.ice.turn_secret = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_TURN_TTL", |c, v| {
        c.ice.turn_ttl_secs = parse(v)?;
        Ok(())
    }),
    ("JWT_SECRET", |c, v| {
        c.auth.jwt_secret = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_JWT_SECRET", |c, v| {
        c.auth.jwt_secret = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_JWT_ALGORITHM", |c, v| {
        c.auth.jwt_algorithm = v.into();
        Ok(())
    }),
    ("SWITCHBOARD_JWT_PUBLIC_KEY_FILE", |c, v| {
        c.auth.jwt_public_key_file = some(v).map(Into::into);
        Ok(())
    }),
    ("SWITCHBOARD_JWT_ISSUER", |c, v| {
        c.auth.jwt_issuer = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_JWT_AUDIENCE", |c, v| {
        c.auth.jwt_audience = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_ALLOW_TOKENS_WITHOUT_EXP", |c, v| {
        c.auth.allow_tokens_without_exp = parse_bool(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_ROOM_PERMISSIONS", |c, v| {
        c.auth.room_permissions = parse_bool(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_MAX_MESSAGE_BYTES", |c, v| {
        c.ws.max_message_bytes = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_OUTBOX_MAX_FRAMES", |c, v| {
        c.ws.outbox_max_frames = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_OUTBOX_MAX_BYTES", |c, v| {
        c.ws.outbox_max_bytes = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_WRITE_TIMEOUT_SECS", |c, v| {
        c.ws.write_timeout_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_PING_INTERVAL_SECS", |c, v| {
        c.ws.ping_interval_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_PING_TIMEOUT_SECS", |c, v| {
        c.ws.ping_timeout_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_MAX_ROOMS_PER_CONNECTION", |c, v| {
        c.ws.max_rooms_per_connection = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", |c, v| {
        c.ws.max_connections_per_user = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_RATE_LIMIT_PER_SEC", |c, v| {
        c.rate_limit.per_sec = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_RATE_LIMIT_BURST", |c, v| {
        c.rate_limit.burst = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_STORE_SYNC", |c, v| {
        c.store.synchronous = v.into();
        Ok(())
    }),
    ("SWITCHBOARD_RECOVERY_MAX_MESSAGES", |c, v| {
        c.store.recovery_max_messages = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_RECOVERY_MAX_BYTES", |c, v| {
        c.store.recovery_max_bytes = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_HISTORY_MAX_BYTES", |c, v| {
        c.store.history_max_bytes = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_DEDUPE_WINDOW_SECS", |c, v| {
        c.store.dedupe_window_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_JOIN_LIST_LIMIT", |c, v| {
        c.rooms.join_list_limit = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_ANNOUNCE_MAX_MEMBERS", |c, v| {
        c.rooms.announce_max_members = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_MAX_SSE_CHANNELS", |c, v| {
        c.sse.max_channels = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_PRESENCE_OFFLINE_GRACE_SECS", |c, v| {
        c.presence.offline_grace_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_MAX_CONTACTS", |c, v| {
        c.presence.max_contacts = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_FILES_MAX_BYTES", |c, v| {
        c.files.max_bytes = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_FILES_USER_QUOTA_BYTES", |c, v| {
        c.files.user_quota_bytes = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_FILES_ORPHAN_TTL_SECS", |c, v| {
        c.files.orphan_ttl_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_FILES_URL_TTL_SECS", |c, v| {
        c.files.url_ttl_secs = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_FILES_URL_SECRET", |c, v| {
        c.files.url_secret = Some(v.to_string());
        Ok(())
    }),
    ("SWITCHBOARD_NOTIFICATIONS_MAX_ROOM_MEMBERS", |c, v| {
        c.notifications.max_room_members = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_NOTIFICATIONS_WEBHOOK_URL", |c, v| {
        c.notifications.webhook_url = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_NOTIFICATIONS_WEBHOOK_SECRET", |c, v| {
        c.notifications.webhook_secret = some(v);
        Ok(())
    }),
    ("SWITCHBOARD_NOTIFICATIONS_WEBHOOK_MAX_ATTEMPTS", |c, v| {
        c.notifications.webhook_max_attempts = parse(v)?;
        Ok(())
    }),
    ("SWITCHBOARD_NOTIFICATIONS_WEBHOOK_TIMEOUT_SECS", |c, v| {
        c.notifications.webhook_timeout_secs = parse(v)?;
        Ok(())
    }),
];

/// The names of every environment variable the config reads.
pub fn env_names() -> impl Iterator<Item = &'static str> {
    ENV.iter().map(|(name, _)| *name)
}

impl Config {
    /// Reads a TOML config file; unknown keys are errors, missing keys take defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })
    }

    /// Applies overrides from `lookup` (the process environment in production).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for (name, set) in ENV {
            if let Some(value) = lookup(name) {
                set(self, &value).map_err(|message| ConfigError::Env { name, message })?;
            }
        }
        Ok(())
    }

    /// Applies overrides from the process environment.
    pub fn apply_process_env(&mut self) -> Result<(), ConfigError> {
        self.apply_env(|name| std::env::var(name).ok())
    }

    /// Checks what types cannot: enumerations, ranges, and that a key exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        match self.auth.jwt_algorithm.as_str() {
            "HS256" => {
                if self.auth.jwt_secret.as_deref().is_none_or(str::is_empty) {
                    return bad(
                        "no JWT secret: set SWITCHBOARD_JWT_SECRET (or JWT_SECRET, --jwt-secret, \
                         auth.jwt_secret), or run `serve --dev` for a throwaway one"
                            .into(),
                    );
                }
            }
            "RS256" | "ES256" => {
                if self.auth.jwt_public_key_file.is_none() {
                    return bad(format!(
                        "{} needs auth.jwt_public_key_file (SWITCHBOARD_JWT_PUBLIC_KEY_FILE)",
                        self.auth.jwt_algorithm
                    ));
                }
            }
            other => {
                return bad(format!(
                    "auth.jwt_algorithm {other:?}: use HS256, RS256 or ES256"
                ));
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad(format!(
                "log_format {:?}: use text or json",
                self.log_format
            ));
        }
        if !matches!(self.store.synchronous.as_str(), "full" | "normal") {
            return bad(format!(
                "store.synchronous {:?}: use full or normal",
                self.store.synchronous
            ));
        }
        if self.ws.max_message_bytes < 128 {
            return bad("ws.max_message_bytes must be at least 128".into());
        }
        if self.ws.outbox_max_frames == 0 || self.ws.outbox_max_bytes == 0 {
            return bad("ws.outbox_max_frames and ws.outbox_max_bytes must be positive".into());
        }
        if self.socketio.read_buffer_bytes < 64 {
            return bad("socketio.read_buffer_bytes must be at least 64".into());
        }
        if self.ws.read_buffer_bytes < 256 {
            return bad("ws.read_buffer_bytes must be at least 256".into());
        }
        if self.socketio.ping_interval_ms == 0
            || self.socketio.ping_timeout_ms == 0
            || self.socketio.max_payload == 0
        {
            return Err(ConfigError::Invalid(
                "socketio.ping_interval_ms, socketio.ping_timeout_ms and socketio.max_payload \
                 must be positive"
                    .into(),
            ));
        }
        if self.ws.ping_interval_secs == 0 || self.ws.ping_timeout_secs < self.ws.ping_interval_secs
        {
            return bad(
                "ws.ping_interval_secs must be positive and at most ws.ping_timeout_secs".into(),
            );
        }
        for (name, bytes) in [
            ("store.recovery_max_bytes", self.store.recovery_max_bytes),
            ("store.history_max_bytes", self.store.history_max_bytes),
        ] {
            if bytes == 0 || bytes >= self.ws.outbox_max_bytes {
                return bad(format!(
                    "{name} must be positive and below ws.outbox_max_bytes ({}): a reply \
                     larger than the outbox would cut its own connection off",
                    self.ws.outbox_max_bytes
                ));
            }
        }
        if !(1..=1000).contains(&self.rooms.join_list_limit) {
            return bad("rooms.join_list_limit must be between 1 and 1000".into());
        }
        if let Some(url) = &self.notifications.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(format!(
                    "notifications.webhook_url {url:?} must be an http:// or https:// URL"
                ));
            }
            if self
                .notifications
                .webhook_secret
                .as_deref()
                .is_none_or(str::is_empty)
            {
                return bad(
                    "notifications.webhook_url needs notifications.webhook_secret \
                     (SWITCHBOARD_NOTIFICATIONS_WEBHOOK_SECRET) to sign the pushes"
                        .into(),
                );
            }
        }
        if self.files.url_ttl_secs == 0 || self.files.orphan_ttl_secs == 0 {
            return bad("files.url_ttl_secs and files.orphan_ttl_secs must be positive".into());
        }
        if self
            .files
            .url_secret
            .as_deref()
            .is_some_and(|s| s.len() < 16)
        {
            return bad("files.url_secret must be at least 16 bytes".into());
        }
        if self.notifications.webhook_max_attempts == 0
            || self.notifications.webhook_timeout_secs == 0
        {
            return bad(
                "notifications.webhook_max_attempts and webhook_timeout_secs must be positive"
                    .into(),
            );
        }
        if self.files.max_bytes == 0 || self.files.url_ttl_secs == 0 {
            return bad("files.max_bytes and files.url_ttl_secs must be positive".into());
        }
        if self.sse.max_channels == 0 {
            return bad("sse.max_channels must be positive".into());
        }
        if self.sse.ping_secs == 0 || self.sse.stats_interval_secs == 0 {
            return bad("sse.ping_secs and sse.stats_interval_secs must be positive".into());
        }
        if !self.ice.turn_urls.is_empty() && self.ice.turn_secret.is_none() {
            return bad("ice.turn_urls needs ice.turn_secret (SWITCHBOARD_TURN_SECRET)".into());
        }
        for origin in &self.cors_origins {
            if axum::http::HeaderValue::from_str(origin).is_err() || !origin.contains("://") {
                return bad(format!(
                    "cors_origins entry {origin:?} is not an origin like https://app.example"
                ));
            }
        }
        let c = &self.cluster;
        if let Some(url) = &c.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return bad("cluster.redis_url must start with redis:// or rediss://".into());
        }
        if let Some(url) = &c.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return bad("cluster.database_url must start with postgres:// or postgresql://".into());
        }
        if !["auto", "local", "postgres"].contains(&c.file_storage.as_str()) {
            return bad(format!(
                "cluster.file_storage {:?}: use auto, local or postgres",
                c.file_storage
            ));
        }
        if c.file_storage == "postgres" && c.database_url.is_none() {
            return bad("cluster.file_storage = postgres needs cluster.database_url".into());
        }
        if c.redis_timeout_ms == 0 || c.database_max_connections == 0 {
            return bad(
                "cluster.redis_timeout_ms and cluster.database_max_connections must be positive"
                    .into(),
            );
        }
        if c.presence_ttl_secs <= self.ws.ping_interval_secs {
            return bad(format!(
                "cluster.presence_ttl_secs ({}) must exceed ws.ping_interval_secs ({}): presence \
                 is kept alive once per ping period",
                c.presence_ttl_secs, self.ws.ping_interval_secs
            ));
        }
        if self.rate_limit.per_sec > 0 && self.rate_limit.burst == 0 {
            return bad("rate_limit.burst must be positive when rate_limit.per_sec is".into());
        }
        Ok(())
    }

    /// The effective config as TOML, secrets masked: for `check-config`.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        let mask = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("********".into());
            }
        };
        mask(&mut shown.api_key);
        mask(&mut shown.auth.jwt_secret);
        mask(&mut shown.ice.turn_secret);
        mask(&mut shown.notifications.webhook_secret);
        for url in [
            &mut shown.cluster.redis_url,
            &mut shown.cluster.database_url,
        ]
        .into_iter()
        .flatten()
        {
            *url = mask_password(url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// `scheme://user:secret@host` -> `scheme://user:********@host`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_overrides_file() {
        let mut c: Config =
            toml::from_str("listen = \"127.0.0.1:1\"\n[rate_limit]\nper_sec = 5").unwrap();
        c.apply_env(env(&[
            ("SWITCHBOARD_LISTEN", "127.0.0.1:2"),
            ("SWITCHBOARD_RATE_LIMIT_BURST", "9"),
        ]))
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.rate_limit.per_sec, 5);
        assert_eq!(c.rate_limit.burst, 9);
    }

    #[test]
    fn prefixed_secret_wins() {
        let mut c = Config::default();
        c.apply_env(env(&[
            ("JWT_SECRET", "plain"),
            ("SWITCHBOARD_JWT_SECRET", "prefixed"),
        ]))
        .unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("prefixed"));
        let mut c = Config::default();
        c.apply_env(env(&[("JWT_SECRET", "plain")])).unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("plain"));
    }

    #[test]
    fn bad_env_names_the_variable() {
        let err = Config::default()
            .apply_env(env(&[("SWITCHBOARD_RATE_LIMIT_PER_SEC", "lots")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("SWITCHBOARD_RATE_LIMIT_PER_SEC"),
            "{err}"
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }

    #[test]
    fn validation() {
        let mut c = Config::default();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("no JWT secret")
        );
        c.auth.jwt_secret = Some("s".into());
        c.validate().unwrap();
        c.store.synchronous = "sometimes".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn example_file_shows_the_defaults() {
        let text = include_str!("../../../deploy/switchboard.example.toml");
        let example: Config = toml::from_str(text).unwrap();
        assert_eq!(example, Config::default());
        // Every environment name is documented in the example.
        for name in env_names().filter(|n| *n != "JWT_SECRET") {
            let documented = name == "SWITCHBOARD_JWT_SECRET" || text.contains(name);
            assert!(
                documented,
                "{name} is missing from deploy/switchboard.example.toml"
            );
        }
    }

    #[test]
    fn masked_output_hides_secrets() {
        let mut c = Config::default();
        c.auth.jwt_secret = Some("topsecret".into());
        c.api_key = Some("key123".into());
        let shown = c.to_masked_toml();
        assert!(!shown.contains("topsecret") && !shown.contains("key123"));
        assert!(shown.contains("********"));
        let back: Config = toml::from_str(&shown).unwrap();
        assert_eq!(back.listen, c.listen);
    }

    #[test]
    fn cluster_urls_are_checked_and_their_passwords_masked() {
        let mut c = Config::default();
        c.auth.jwt_secret = Some("s".into());
        c.apply_env(env(&[
            (
                "SWITCHBOARD_REDIS_URL",
                "redis://:redispass@10.0.0.1:6379/0",
            ),
            (
                "SWITCHBOARD_DATABASE_URL",
                "postgres://app:pgpass@db/switchboard",
            ),
        ]))
        .unwrap();
        c.validate().unwrap();
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("redispass") && !shown.contains("pgpass"),
            "{shown}"
        );
        assert!(shown.contains("postgres://app:********@db/switchboard"));
        c.cluster.redis_url = Some("10.0.0.1:6379".into());
        assert!(c.validate().unwrap_err().to_string().contains("redis://"));
        c.cluster.redis_url = None;
        c.cluster.presence_ttl_secs = c.ws.ping_interval_secs;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("presence_ttl_secs")
        );
    }
}
