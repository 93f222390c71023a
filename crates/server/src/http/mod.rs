//! The HTTP surface: the WebSocket and SSE endpoints, the HTTP API, operations routes,
//! and the OpenAPI document made from the same route table.

pub mod api;
pub mod error;
pub mod listener;
mod ops;

use std::sync::OnceLock;

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::transport::{sse, ws};

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
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(api::admin_stats))
        .routes(routes!(api::socket_stats))
        .routes(routes!(api::admin_broadcast))
        .routes(routes!(api::events_broadcast))
        .routes(routes!(api::notify))
        .routes(routes!(api::publish))
        .routes(routes!(api::disconnect_user))
        .routes(routes!(api::messages))
        .routes(routes!(api::ice_servers))
        .routes(routes!(openapi))
        .split_for_parts();
    // The same code makes the same document: the first server's serves them all.
    let _ = DOCUMENT.set(doc);
    let cors = cors(&app.config.cors_origins);
    router
        .fallback(|| async { error::ApiError::not_found("no such route") })
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
        ])
}
