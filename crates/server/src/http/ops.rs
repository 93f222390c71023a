//! Operations routes: `/health` (the process runs) and `/ready` (send it traffic).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::App;

/// Always 200 while the process runs.
pub async fn health(State(app): State<App>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "nodeId": app.hub.settings().node_id,
        "connections": app.hub.connections(),
        "uptime": app.hub.uptime_secs(),
    }))
}

/// 503 while draining, so a load balancer stops sending new clients here.
pub async fn ready(State(app): State<App>) -> (StatusCode, Json<Value>) {
    if app.hub.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "draining", "message": "server is draining"}})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    }
}
