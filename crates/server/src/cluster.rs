//! Which parts a node runs on: alone (SQLite, the in-process broker and presence,
//! files on disk), or in a cluster (Redis for the broker, presence and Socket.IO
//! recovery; PostgreSQL for the store and file bytes), as the config says.

use std::sync::Arc;
use std::time::Duration;

use crate::StartError;
use crate::broker::{Broker, MemoryBroker, RedisBroker, RedisBrokerOptions};
use crate::config::Config;
use crate::files::{Files, PostgresStorage, shared_url_key};
use crate::metrics::Metrics;
use crate::presence::{MemoryPresence, Presence, RedisPresence, RedisPresenceOptions};
use crate::store::{CommitLog, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store};
use crate::transport::socketio::recovery::{SharedStashes, Stashes};

/// How long a store operation waits for PostgreSQL before it fails (no hang while the
/// database is down).
const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections to PostgreSQL for file bytes, per node.
const FILE_CONNECTIONS: u32 = 4;

pub(crate) struct Parts {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub files: Arc<Files>,
    pub stashes: Stashes,
}

pub(crate) async fn open(
    config: &Config,
    commits: CommitLog,
    metrics: Arc<Metrics>,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<Parts, StartError> {
    let c = &config.cluster;
    let dedupe_window = Duration::from_secs(config.store.dedupe_window_secs);
    let store: Arc<dyn Store> = match &c.database_url {
        None => {
            let options = SqliteOptions {
                dir: config.data_dir.clone(),
                synchronous_full: config.store.synchronous == "full",
                dedupe_window,
            };
            Arc::new(SqliteStore::open(&options, commits, metrics.clone()).await?)
        }
        Some(url) => {
            let options = PostgresOptions {
                url: url.clone(),
                dedupe_window,
                max_connections: c.database_max_connections,
                acquire_timeout: STORE_TIMEOUT,
            };
            Arc::new(PostgresStore::open(&options, commits, metrics.clone()).await?)
        }
    };
    let files = open_files(config, store.clone()).await?;
    let timeout = Duration::from_millis(c.redis_timeout_ms);
    let (broker, presence, stashes): (Arc<dyn Broker>, Arc<dyn Presence>, Stashes) =
        match &c.redis_url {
            None => (
                Arc::new(MemoryBroker::default()),
                Arc::new(MemoryPresence::default()),
                Stashes::default(),
            ),
            Some(url) => {
                let broker = RedisBroker::connect(
                    url,
                    RedisBrokerOptions {
                        prefix: c.redis_prefix.clone(),
                        timeout,
                    },
                )
                .await?;
                let conn = broker.connection();
                let key = shared_key(&conn, &format!("{}pid-key", c.redis_prefix), timeout)
                    .await
                    .map_err(|e| StartError::Broker(crate::broker::BrokerError::Unavailable(e)))?;
                let stashes = Stashes::shared(
                    SharedStashes {
                        conn,
                        prefix: c.redis_prefix.clone(),
                        timeout,
                    },
                    key,
                    tracker.clone(),
                );
                let presence = RedisPresence::new(
                    broker.connection(),
                    RedisPresenceOptions {
                        prefix: format!("{}p:", c.redis_prefix),
                        node_id: config.node_id.clone(),
                        ttl: Duration::from_secs(c.presence_ttl_secs),
                        heartbeat: Duration::from_secs(config.ws.ping_interval_secs),
                    },
                )
                .with_timeout(timeout);
                (Arc::new(broker), Arc::new(presence), stashes)
            }
        };
    Ok(Parts {
        store,
        broker,
        presence,
        files: Arc::new(files),
        stashes,
    })
}

/// File bytes on the local disk, or in PostgreSQL for every node (links then signed
/// with `files.url_secret`, or a key kept in the database).
async fn open_files(config: &Config, store: Arc<dyn Store>) -> Result<Files, StartError> {
    let c = &config.cluster;
    let shared = match (c.file_storage.as_str(), &c.database_url) {
        ("local", _) | (_, None) => None,
        (_, Some(url)) => Some(url),
    };
    let Some(url) = shared else {
        return Files::open(&config.data_dir, &config.files, store)
            .await
            .map_err(StartError::Files);
    };
    let files_err = |e: sqlx::Error| StartError::Files(std::io::Error::other(e.to_string()));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(FILE_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(files_err)?;
    let key = match &config.files.url_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => shared_url_key(&pool).await.map_err(StartError::Files)?,
    };
    let storage = PostgresStorage::open(pool)
        .await
        .map_err(StartError::Files)?;
    Ok(Files::open_with(
        Arc::new(storage),
        key,
        &config.files,
        store,
    ))
}

/// A random key shared by every node: the first node to start creates it.
async fn shared_key(
    conn: &redis::aio::ConnectionManager,
    name: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut conn = conn.clone();
    let fresh = hex::encode(rand::random::<[u8; 32]>());
    let mut set = redis::cmd("SET");
    set.arg(name).arg(&fresh).arg("NX");
    let mut get = redis::cmd("GET");
    get.arg(name);
    let work = async {
        let _: Option<String> = set.query_async(&mut conn).await?;
        get.query_async::<String>(&mut conn).await
    };
    let key = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "Redis did not answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    hex::decode(key).map_err(|e| format!("the shared key {name} is not hex: {e}"))
}
