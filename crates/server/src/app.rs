//! What every HTTP handler and connection task shares.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
use crate::transport::socketio::Engine;

#[derive(Clone)]
pub struct App {
    pub hub: Hub,
    pub config: Arc<Config>,
    /// Connection tasks, so a drain can wait for them.
    pub tracker: TaskTracker,
    /// The Socket.IO endpoint's Engine.IO server.
    pub socketio: Engine,
}

impl axum::extract::FromRef<App> for Engine {
    fn from_ref(app: &App) -> Engine {
        app.socketio.clone()
    }
}
