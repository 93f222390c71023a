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
mod cluster;
pub mod config;
pub mod encode;
pub mod error;
pub mod files;
mod http;
pub mod hub;
pub mod metrics;
pub mod notify;
pub mod position;
pub mod presence;
pub mod store;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::IntoFuture;

use futures_util::FutureExt;
use serde_json::Value;
use switchboard_protocol::CloseCode;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use hub::{HandlerContext, Hub};

use crate::app::App;
use crate::hub::{HubParts, HubSettings, MessageHandler};

/// Commit batches the store may hand over before its writer waits for the hub.
const COMMIT_LOG: usize = 64;
/// The longest wait between two sweeps of orphan files (shorter with a short TTL).
const ORPHAN_SWEEP_MAX_SECS: u64 = 600;
/// How often the metrics' histograms are folded (see [`metrics::Metrics::upkeep`]).
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Key(#[from] auth::KeyError),
    #[error("cannot open the store: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot open the file storage: {0}")]
    Files(std::io::Error),
    #[error("cannot reach Redis: {0}")]
    Broker(#[from] broker::BrokerError),
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
        let (commits, commit_log) = tokio::sync::mpsc::channel(COMMIT_LOG);
        let tracker = TaskTracker::new();
        let parts = cluster::open(&config, commits, metrics.clone(), &tracker).await?;
        let cluster::Parts {
            store,
            broker,
            presence,
            files,
            stashes,
        } = parts;
        let parts = HubParts {
            settings: HubSettings::from_config(&config),
            verifier,
            store,
            broker,
            presence,
            handlers: self.handlers,
            metrics,
            files,
        };
        let hub = Hub::new(parts, commit_log);
        hub.load_interest().await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let socketio = transport::socketio::Engine::for_hub_with(
            hub.clone(),
            &config,
            tracker.clone(),
            stashes,
        );
        Ok(Server {
            listener,
            app: App {
                hub,
                config: Arc::new(config),
                tracker,
                socketio,
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
    /// accepting, closes every connection with 1001, waits for them and commits what
    /// the store still holds. The drain ends within `drain_timeout_secs` whatever the
    /// clients do (a stalled reader, a stream opened at the last moment).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Server { listener, app } = self;
        let hub = app.hub.clone();
        let every = |secs: u64| Duration::from_secs(secs);
        // The other nodes see this one from the start, not one stats period later.
        tokio::spawn({
            let hub = hub.clone();
            let ttl = every(app.config.sse.stats_interval_secs * 3);
            async move { hub.report_node(ttl).await }
        });
        let background = [
            periodic(every(app.config.ws.ping_interval_secs), {
                let hub = hub.clone();
                move || {
                    hub.sweep();
                    std::future::ready(())
                }
            }),
            periodic(every(app.config.sse.stats_interval_secs), {
                let hub = hub.clone();
                // A report outlives a missed tick or two, not a dead node.
                let ttl = every(app.config.sse.stats_interval_secs * 3);
                move || {
                    let hub = hub.clone();
                    async move {
                        hub.publish_system_stats().await;
                        hub.report_node(ttl).await;
                    }
                }
            }),
            periodic(METRICS_UPKEEP, {
                let metrics = hub.metrics().clone();
                move || {
                    metrics.upkeep();
                    std::future::ready(())
                }
            }),
            periodic(
                every(
                    app.config
                        .files
                        .orphan_ttl_secs
                        .clamp(1, ORPHAN_SWEEP_MAX_SECS),
                ),
                {
                    let files = hub.files().clone();
                    move || {
                        let files = files.clone();
                        async move {
                            files.sweep_orphans().await;
                        }
                    }
                },
            ),
            app.socketio.start_sweep(),
            match notify::Pusher::new(
                &app.config.notifications,
                hub.store().clone(),
                hub.pushes_due(),
            ) {
                Some(pusher) => tokio::spawn(pusher.run()),
                None => tokio::spawn(std::future::ready(())),
            },
        ];
        let (started, drain_started) = tokio::sync::oneshot::channel();
        let draining = {
            let hub = hub.clone();
            let socketio = app.socketio.clone();
            async move {
                shutdown.await;
                tracing::info!(connections = hub.connections(), "draining");
                hub.drain(CloseCode::ServiceRestart);
                socketio.drain();
                let _ = started.send(tokio::time::Instant::now());
            }
        };
        let timeout = Duration::from_secs(app.config.drain_timeout_secs);
        let deadline = async move {
            match drain_started.await {
                Ok(at) => tokio::time::sleep_until(at + timeout).await,
                Err(_) => std::future::pending().await,
            }
        };
        let router = http::router(app.clone());
        let write_timeout = Duration::from_secs(app.config.ws.write_timeout_secs);
        let listener = http::listener::GuardedListener::new(listener, write_timeout);
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(draining)
            .into_future();
        tokio::pin!(deadline);
        let mut timed_out = false;
        tokio::select! {
            served = serve => if let Err(e) = served {
                tracing::error!(error = %e, "server failed");
                hub.drain(CloseCode::ServiceRestart);
            },
            _ = &mut deadline => timed_out = true,
        }
        for task in background {
            task.abort();
        }
        app.tracker.close();
        if !timed_out {
            tokio::select! {
                _ = app.tracker.wait() => {}
                _ = &mut deadline => timed_out = true,
            }
        }
        if timed_out {
            tracing::warn!(left = hub.connections(), "drain timed out");
        }
        hub.store().close().await;
        tracing::info!("stopped");
    }
}

/// Runs `tick` every `period` (the first after one period) until aborted.
fn periodic<F, Fut>(period: Duration, mut tick: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            tick().await;
        }
    })
}
