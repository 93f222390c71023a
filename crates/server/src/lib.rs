//! Switchboard: a real-time communication server, as a library.
//!
//! The `switchboard` binary is a thin CLI over this. Embed it to add custom message
//! types:
//!
//! ```no_run
//! # async fn run() -> Result<(), switchboard::StartError> {
//! use switchboard::{Config, Server};
//!
//! let mut config = Config::default();
//! config.auth.jwt_secret = Some("change-me".into());
//! let server = Server::builder()
//!     .config(config)
//!     .on_message("custom_action", |ctx, data| async move {
//!         ctx.reply("custom_result", &data);
//!         Ok(())
//!     })
//!     .bind()
//!     .await?;
//! server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

mod app;
pub mod auth;
pub mod broker;
pub mod config;
mod http;
pub mod hub;
pub mod metrics;
pub mod store;
mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;
use switchboard_protocol::CloseCode;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use hub::{HandlerContext, Hub};

use crate::app::App;
use crate::broker::{Broker, MemoryBroker};
use crate::hub::{HubSettings, MessageHandler};
use crate::store::{SqliteStore, Store};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Key(#[from] auth::KeyError),
    #[error("cannot open the store: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Default)]
pub struct ServerBuilder {
    config: Config,
    handlers: HashMap<String, MessageHandler>,
}

impl ServerBuilder {
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Registers the handler of a custom message type. A client frame
    /// `{"type": kind, "data": ...}` calls it with the sender's context and the data.
    pub fn on_message<F, Fut>(mut self, kind: &str, handler: F) -> Self
    where
        F: Fn(HandlerContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let handler: MessageHandler = Arc::new(move |ctx, data| handler(ctx, data).boxed());
        self.handlers.insert(kind.to_string(), handler);
        self
    }

    /// Validates the config, opens the store and binds the listener.
    pub async fn bind(self) -> Result<Server, StartError> {
        let mut config = self.config;
        config.validate()?;
        if config.node_id.is_empty() {
            let random = uuid::Uuid::now_v7().simple().to_string();
            config.node_id = format!("node-{}", &random[random.len() - 8..]);
        }
        let verifier = auth::Verifier::new(&config.auth)?;
        let metrics = Arc::new(metrics::Metrics::new());
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(
                &config.data_dir,
                config.store.synchronous == "full",
                broker.clone(),
                metrics.clone(),
            )
            .await?,
        );
        let hub = Hub::new(
            HubSettings::from_config(&config),
            verifier,
            store,
            broker,
            self.handlers,
            metrics,
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Ok(Server {
            listener,
            app: App {
                hub,
                config: Arc::new(config),
                tracker: TaskTracker::new(),
            },
        })
    }
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    app: App,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn hub(&self) -> &Hub {
        &self.app.hub
    }

    /// Serves until `shutdown` completes, then drains: reports unready, stops
    /// accepting, closes every connection with 1001, waits for them (up to the drain
    /// timeout) and commits what the store still holds.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Server { listener, app } = self;
        let hub = app.hub.clone();
        let sweeper = {
            let hub = hub.clone();
            let period = Duration::from_secs(app.config.ws.ping_interval_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    hub.sweep();
                }
            })
        };
        let stats = {
            let hub = hub.clone();
            let period = Duration::from_secs(app.config.sse.stats_interval_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let stats = hub.stats(None);
                    hub.publish(
                        switchboard_protocol::SYSTEM_ROOM.into(),
                        "stats",
                        &stats,
                        None,
                    );
                }
            })
        };
        let draining = {
            let hub = hub.clone();
            async move {
                shutdown.await;
                tracing::info!(connections = hub.connections(), "draining");
                hub.drain(CloseCode::GoingAway);
            }
        };
        let router = http::router(app.clone());
        let write_timeout = Duration::from_secs(app.config.ws.write_timeout_secs);
        let listener = http::listener::GuardedListener::new(listener, write_timeout);
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(draining)
            .await
        {
            tracing::error!(error = %e, "server failed");
            hub.drain(CloseCode::GoingAway);
        }
        sweeper.abort();
        stats.abort();
        app.tracker.close();
        let timeout = Duration::from_secs(app.config.drain_timeout_secs);
        if tokio::time::timeout(timeout, app.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(left = hub.connections(), "drain timed out");
        }
        hub.store().close().await;
        tracing::info!("stopped");
    }
}
