//! The HTTP surface: the WebSocket endpoint and the operations routes.

mod ops;

use axum::Router;
use axum::routing::get;

use crate::app::App;
use crate::transport::ws;

pub fn router(app: App) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .with_state(app)
}
