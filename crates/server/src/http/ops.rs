//! Operations routes: `/health` (the process runs), `/ready` (send it traffic) and
//! `/metrics` (Prometheus).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::App;
use crate::error::{ApiError, ErrorBody};

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    status: &'static str,
    node_id: String,
    /// Open connections on this node, all transports.
    connections: u64,
    /// Seconds since start.
    uptime: u64,
}

/// Always 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Health)))]
pub async fn health(State(app): State<App>) -> Json<Health> {
    Json(Health {
        status: "ok",
        node_id: app.hub.settings().node_id.clone(),
        connections: app.hub.connections(),
        uptime: app.hub.uptime_secs(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    status: &'static str,
}

/// 503 while draining or while the store or the broker (Redis, in a cluster) is
/// unavailable, so a load balancer stops sending new clients here.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
pub async fn ready(State(app): State<App>) -> Result<Json<Ready>, ApiError> {
    let unavailable = |code, message| {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            message,
        ))
    };
    if app.hub.is_draining() {
        unavailable("draining", "server is draining")
    } else if !app.hub.store().is_healthy() {
        unavailable("store_unavailable", "the message store is unavailable")
    } else if !app.hub.broker().is_healthy() {
        unavailable("broker_unavailable", "the broker (Redis) is unavailable")
    } else {
        Ok(Json(Ready { status: "ready" }))
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let m = app.hub.metrics();
    m.rooms.set(app.hub.local_rooms().len() as f64);
    m.joins_pending.set(app.hub.pending_joins() as f64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}
