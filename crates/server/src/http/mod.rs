//! The HTTP surface: the WebSocket and SSE endpoints, the HTTP API, operations routes,
//! and the OpenAPI document made from the same route table.

mod extract;
mod files_api;
pub mod listener;
mod ops;
mod server_api;
mod user_api;
mod users_api;

use std::sync::OnceLock;

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::IntoParams;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::error::ApiError;
use crate::transport::{socketio, sse, ws};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "HTTP API of the Switchboard real-time server. The native WebSocket protocol on /ws is described in docs/protocol.md."
    ),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The route table and the OpenAPI document built from it.
pub fn router(app: App) -> axum::Router {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ws::upgrade))
        .routes(routes!(sse::events))
        .routes(routes!(socketio::endpoint, socketio::endpoint_post))
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(server_api::admin_stats))
        .routes(routes!(server_api::socket_stats))
        .routes(routes!(server_api::admin_broadcast))
        .routes(routes!(server_api::events_broadcast))
        .routes(routes!(server_api::notify))
        .routes(routes!(server_api::publish))
        .routes(routes!(server_api::disconnect_user))
        .routes(routes!(server_api::set_contacts))
        .routes(routes!(user_api::messages))
        .routes(routes!(user_api::ice_servers))
        .routes(routes!(users_api::user))
        .routes(routes!(users_api::my_contacts))
        .routes(routes!(users_api::my_rooms))
        .routes(routes!(users_api::notifications))
        .routes(routes!(users_api::read_notifications))
        .routes(routes!(files_api::upload))
        .routes(routes!(files_api::download))
        .routes(routes!(files_api::meta))
        .routes(routes!(openapi))
        .split_for_parts();
    // The same code makes the same document: the first server's serves them all.
    let _ = DOCUMENT.set(doc);
    let cors = cors(&app.config.cors_origins);
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .layer(cors)
        .with_state(app)
}

static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();

/// This document: every HTTP route, generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3 document", body = Object)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(DOCUMENT.get().cloned().unwrap_or_else(ApiDoc::openapi))
}

/// CORS for the configured origins only; none by default.
fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-file-name"),
            axum::http::header::RANGE,
        ])
}

/// A room id in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RoomPath {
    /// Room id: 1-128 characters of `A-Za-z0-9_-.:@`.
    #[param(pattern = r"^[A-Za-z0-9_.:@-]{1,128}$")]
    room: String,
}

fn room_param(room: &str) -> Result<(), ApiError> {
    if switchboard_protocol::is_valid_room_id(room) {
        Ok(())
    } else {
        Err(ApiError::bad_request("Invalid room ID"))
    }
}
