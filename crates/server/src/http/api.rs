//! The HTTP API: the server API behind the API key, and the user API behind a user's
//! JWT. Every route is annotated for the OpenAPI document, so the document is made
//! from the same code as the router.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use switchboard_protocol::{
    CloseCode, HISTORY_MAX_LIMIT, HistoryRange, Notification, SystemMessage, UserInfo,
    is_valid_room_id, now_millis, personal_room,
};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use crate::app::App;
use crate::auth::{Identity, bearer, turn_credential};
use crate::hub::{Stats, Wire};
use crate::store::Draft;

/// Checks the server API key (`Authorization: Bearer` or `X-API-Key`).
fn require_key(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = app.config.api_key.as_deref() else {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "admin_disabled",
            "the server API is closed: no API key is configured (SWITCHBOARD_API_KEY)",
        ));
    };
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| bearer(headers));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => {
            app.hub.metrics().auth_failures.increment(1);
            Err(ApiError::unauthorized("missing or wrong API key"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies the user's JWT (`Authorization: Bearer`).
fn require_user(app: &App, headers: &HeaderMap) -> Result<Identity, ApiError> {
    app.hub
        .authenticate(bearer(headers).as_deref())
        .map_err(|_| {
            app.hub.metrics().auth_failures.increment(1);
            ApiError::unauthorized("Authentication failed")
        })
}

/// A room id in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RoomPath {
    /// Room id: 1-128 characters of `A-Za-z0-9_-.:@`.
    #[param(pattern = r"^[A-Za-z0-9_.:@-]{1,128}$")]
    room: String,
}

/// Schema of a field that takes any JSON value except null and the empty string.
fn any_but_null() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Object))
        .item(ArrayBuilder::new())
        .build();
    Schema::OneOf(one_of)
}

fn room_param(room: &str) -> Result<(), ApiError> {
    if is_valid_room_id(room) {
        Ok(())
    } else {
        Err(ApiError::bad_request("Invalid room ID"))
    }
}

/// `getStats` of this node, with its id and the split by transport.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminStats {
    node_id: String,
    #[serde(flatten)]
    stats: Stats,
    transports: Transports,
}

#[derive(Serialize, ToSchema)]
pub struct Transports {
    websocket: usize,
    sse: usize,
}

#[utoipa::path(get, path = "/admin/stats", tag = "server",
    security(("api_key" = [])),
    responses((status = 200, body = AdminStats), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn admin_stats(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<AdminStats>, ApiError> {
    require_key(&app, &headers)?;
    let hub = &app.hub;
    Ok(Json(AdminStats {
        node_id: hub.settings().node_id.clone(),
        stats: hub.stats(None),
        transports: Transports {
            websocket: hub.stats(Some(Wire::WebSocket)).total_clients,
            sse: hub.stats(Some(Wire::Sse)).total_clients,
        },
    }))
}

/// `getStats` of the native WebSocket transport alone.
#[utoipa::path(get, path = "/admin/socket-stats", tag = "server",
    security(("api_key" = [])),
    responses((status = 200, body = Stats), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn socket_stats(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<Stats>, ApiError> {
    require_key(&app, &headers)?;
    Ok(Json(app.hub.stats(Some(Wire::WebSocket))))
}

#[derive(Deserialize, ToSchema)]
pub struct BroadcastRequest {
    /// The announcement.
    #[schema(min_length = 1)]
    message: String,
    /// Its kind, e.g. `maintenance` (default `announcement`).
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Delivered {
    /// Connections of this node it was queued to.
    delivered: usize,
}

/// `system_message {type, content, timestamp}` to every connection, every transport.
#[utoipa::path(post, path = "/admin/broadcast", tag = "server",
    security(("api_key" = [])), request_body = BroadcastRequest,
    responses((status = 200, body = Delivered), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn admin_broadcast(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<BroadcastRequest>, JsonRejection>,
) -> Result<Json<Delivered>, ApiError> {
    require_key(&app, &headers)?;
    let Json(req) = body?;
    if req.message.is_empty() {
        return Err(ApiError::bad_request("message is required"));
    }
    let event = SystemMessage {
        kind: req
            .kind
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "announcement".into()),
        content: Value::String(req.message),
        timestamp: now_millis(),
    };
    let delivered = app.hub.broadcast_all("system_message", &event);
    Ok(Json(Delivered { delivered }))
}

#[derive(Deserialize, ToSchema)]
pub struct EventRequest {
    /// Event type the members receive (`[A-Za-z0-9_.:-]`, at most 64 characters).
    #[schema(pattern = r"^[A-Za-z0-9_.:-]{1,64}$")]
    event: String,
    /// The event's payload: any JSON.
    data: Value,
    /// The room (channel) to publish to.
    #[schema(pattern = r"^[A-Za-z0-9_.:@-]{1,128}$")]
    channel: String,
}

#[derive(Serialize, ToSchema)]
pub struct Published {
    published: bool,
}

fn valid_event_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// An ephemeral event `{type: event, data}` to every member of a room, on every
/// transport (SSE subscribers get an event named `event`).
#[utoipa::path(post, path = "/events/broadcast", tag = "server",
    security(("api_key" = [])), request_body = EventRequest,
    responses((status = 200, body = Published), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn events_broadcast(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<EventRequest>, JsonRejection>,
) -> Result<Json<Published>, ApiError> {
    require_key(&app, &headers)?;
    let Json(req) = body?;
    if !valid_event_name(&req.event) {
        return Err(ApiError::bad_request(
            "event must be 1-64 characters of A-Za-z0-9_.:-",
        ));
    }
    room_param(&req.channel)?;
    app.hub
        .publish(req.channel.into(), &req.event, &req.data, None);
    Ok(Json(Published { published: true }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRequest {
    /// The user: 1-123 characters of `A-Za-z0-9_-.:@`.
    #[schema(pattern = r"^[A-Za-z0-9_.:@-]{1,123}$")]
    user_id: String,
    /// Any JSON but null or the empty string.
    #[schema(schema_with = any_but_null)]
    message: Value,
    /// Default `info`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `notification {type, message, timestamp}` to every connection of a user (its
/// `user:<id>` room).
#[utoipa::path(post, path = "/notifications", tag = "server",
    security(("api_key" = [])), request_body = NotificationRequest,
    responses((status = 200, body = Published), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn notify(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<NotificationRequest>, JsonRejection>,
) -> Result<Json<Published>, ApiError> {
    require_key(&app, &headers)?;
    let Json(req) = body?;
    let room = personal_room(&req.user_id);
    if req.user_id.is_empty() || !is_valid_room_id(&room) {
        return Err(ApiError::bad_request(
            "userId must be 1-123 characters of A-Za-z0-9_-.:@",
        ));
    }
    if req.message.is_null() || req.message.as_str() == Some("") {
        return Err(ApiError::bad_request("message is required"));
    }
    let event = Notification {
        kind: req
            .kind
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "info".into()),
        message: req.message,
        timestamp: now_millis(),
    };
    app.hub.publish(room.into(), "notification", &event, None);
    Ok(Json(Published { published: true }))
}

#[derive(Deserialize, ToSchema)]
pub struct PublishRequest {
    /// Any JSON but null or the empty string.
    #[schema(schema_with = any_but_null)]
    content: Value,
    /// Default `text`.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// An object, default `{}`.
    #[schema(value_type = Option<Object>, required = false)]
    metadata: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct PublishResponse {
    id: String,
    offset: u64,
}

/// The sender of messages published through the server API.
fn server_sender() -> UserInfo {
    UserInfo {
        id: "server".into(),
        username: "Server".into(),
        avatar: None,
    }
}

/// A durable message to a room, as if sent by `{id: "server"}`: members get the usual
/// `new_message`; answers once it is stored.
#[utoipa::path(post, path = "/api/rooms/{room}/publish", tag = "server",
    security(("api_key" = [])), request_body = PublishRequest,
    params(RoomPath),
    responses((status = 200, body = PublishResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn publish(
    State(app): State<App>,
    Path(RoomPath { room }): Path<RoomPath>,
    headers: HeaderMap,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    require_key(&app, &headers)?;
    room_param(&room)?;
    let Json(req) = body?;
    let empty = matches!(&req.content, Value::Null) || req.content.as_str() == Some("");
    if empty {
        return Err(ApiError::bad_request("content is required"));
    }
    let metadata = match req.metadata {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
    };
    let draft = Draft {
        id: uuid::Uuid::now_v7().to_string(),
        room: room.into(),
        sender: server_sender(),
        content: req.content,
        kind: req
            .kind
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "text".into()),
        metadata,
        timestamp: now_millis(),
    };
    let committed = app.hub.publish_durable(draft).await.map_err(|e| {
        tracing::error!(error = %e, "publish failed");
        ApiError::internal()
    })?;
    Ok(Json(PublishResponse {
        id: committed.id,
        offset: committed.offset,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Disconnected {
    disconnected: usize,
}

/// Closes every connection of a user (WebSocket close 1000, SSE stream ended).
#[utoipa::path(post, path = "/api/users/{id}/disconnect", tag = "server",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Disconnected), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn disconnect_user(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Disconnected>, ApiError> {
    require_key(&app, &headers)?;
    let disconnected = app.hub.disconnect_user(&id, CloseCode::Disconnected);
    Ok(Json(Disconnected { disconnected }))
}

#[derive(Deserialize, IntoParams)]
pub struct MessagesQuery {
    /// Newest messages with an offset below this (with `since`: the oldest between).
    before: Option<u64>,
    /// Oldest messages with an offset above this.
    since: Option<u64>,
    /// At most this many (1-100, default 50).
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagesResponse {
    room_id: String,
    /// `new_message` payloads in ascending offset order.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<Box<RawValue>>,
}

/// A room's history, for a user with a connection in the room.
#[utoipa::path(get, path = "/api/rooms/{room}/messages", tag = "user",
    security(("bearer" = [])),
    params(RoomPath, MessagesQuery),
    responses((status = 200, body = MessagesResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn messages(
    State(app): State<App>,
    Path(RoomPath { room }): Path<RoomPath>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<MessagesResponse>, ApiError> {
    let identity = require_user(&app, &headers)?;
    room_param(&room)?;
    let Query(q) = query?;
    let range = HistoryRange::new(q.before, q.since);
    if !app.hub.verifier().may_join(&identity, &room)
        || !app.hub.user_in_room(&identity.user.id, &room)
    {
        return Err(ApiError::forbidden(
            "Not in room: connect and join it first",
        ));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, HISTORY_MAX_LIMIT);
    let stored = app
        .hub
        .store()
        .range(&room, range, limit)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "history read failed");
            ApiError::internal()
        })?;
    let messages = stored
        .into_iter()
        .filter_map(|m| RawValue::from_string(m.data).ok())
        .collect();
    Ok(Json(MessagesResponse {
        room_id: room,
        messages,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IceServers {
    /// Ready to pass to `new RTCPeerConnection({iceServers})`.
    ice_servers: Vec<IceServer>,
    /// Seconds the TURN credentials stay valid.
    ttl: u64,
}

#[derive(Serialize, ToSchema)]
pub struct IceServer {
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

/// STUN and TURN servers for WebRTC, with time-limited TURN credentials.
#[utoipa::path(get, path = "/api/ice-servers", tag = "user",
    security(("bearer" = [])),
    responses((status = 200, body = IceServers), (status = 401, body = ErrorBody)))]
pub async fn ice_servers(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<IceServers>, ApiError> {
    let identity = require_user(&app, &headers)?;
    let ice = &app.config.ice;
    let mut servers = Vec::new();
    if !ice.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: ice.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if let (false, Some(secret)) = (ice.turn_urls.is_empty(), ice.turn_secret.as_deref()) {
        let expiry = now_millis() / 1000 + ice.turn_ttl_secs;
        let (username, credential) = turn_credential(secret, &identity.user.id, expiry);
        servers.push(IceServer {
            urls: ice.turn_urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    Ok(Json(IceServers {
        ice_servers: servers,
        ttl: ice.turn_ttl_secs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        assert!(valid_event_name("order.updated"));
        assert!(!valid_event_name(""));
        assert!(!valid_event_name("has space"));
        assert!(!valid_event_name(&"x".repeat(65)));
    }
}
