//! The server API, behind the API key ([`ApiKey`]): what the application's backend
//! calls. Every route is annotated for the OpenAPI document, so the document is made
//! from the same code as the router.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_protocol::{
    CloseCode, Notification, SystemMessage, UserInfo, is_valid_client_message_id, is_valid_room_id,
    is_valid_user_id, now_millis, personal_room,
};
use utoipa::ToSchema;

use super::extract::ApiKey;
use super::{RoomPath, room_param};
use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::hub::{Stats, Wire};
use crate::store::{DedupeKey, Draft, WriteOp};

/// The idempotency scope of the server API's publishes.
const API_SCOPE: &str = "api";

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

fn contact_ids() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[A-Za-z0-9_.:@-]{1,123}$")),
        )
        .max_items(Some(1000))
        .build()
}

/// The original design's getStats.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsBody {
    total_clients: usize,
    total_rooms: usize,
    clients_by_room: Vec<RoomCount>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomCount {
    room_id: String,
    client_count: usize,
}

impl From<Stats> for StatsBody {
    fn from(s: Stats) -> StatsBody {
        StatsBody {
            total_clients: s.total_clients,
            total_rooms: s.total_rooms,
            clients_by_room: s
                .clients_by_room
                .into_iter()
                .map(|(room_id, client_count)| RoomCount {
                    room_id,
                    client_count,
                })
                .collect(),
        }
    }
}

/// `getStats` of this node, with its id and the split by transport, and in a cluster
/// the same of every node.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminStats {
    node_id: String,
    #[serde(flatten)]
    stats: StatsBody,
    transports: Transports,
    /// Every node of the cluster, this one included (as last reported; a node reports
    /// every `sse.stats_interval_secs`); only this node when it runs alone.
    cluster: ClusterStats,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    nodes: Vec<crate::hub::NodeReport>,
    /// Connections of every node.
    total_clients: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Transports {
    websocket: u64,
    sse: u64,
    /// Socket.IO sockets, both namespaces.
    socketio: u64,
}

#[utoipa::path(get, path = "/admin/stats", tag = "server",
    security(("api_key" = [])),
    responses((status = 200, body = AdminStats), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn admin_stats(_: ApiKey, State(app): State<App>) -> Json<AdminStats> {
    let hub = &app.hub;
    let nodes = hub.cluster_reports().await;
    Json(AdminStats {
        node_id: hub.settings().node_id.clone(),
        stats: hub.stats(None).into(),
        transports: Transports {
            websocket: hub.connections_on(Wire::WebSocket),
            sse: hub.connections_on(Wire::Sse),
            socketio: hub.connections_on(Wire::SocketIo) + hub.connections_on(Wire::SocketIoRtc),
        },
        cluster: ClusterStats {
            total_clients: nodes.iter().map(|n| n.total_clients).sum(),
            nodes,
        },
    })
}

/// `getStats` of the native WebSocket transport alone.
#[utoipa::path(get, path = "/admin/socket-stats", tag = "server",
    security(("api_key" = [])),
    responses((status = 200, body = StatsBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn socket_stats(_: ApiKey, State(app): State<App>) -> Json<StatsBody> {
    Json(app.hub.stats(Some(Wire::WebSocket)).into())
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
    _: ApiKey,
    State(app): State<App>,
    body: Result<Json<BroadcastRequest>, JsonRejection>,
) -> Result<Json<Delivered>, ApiError> {
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
    let delivered = app.hub.broadcast_all("system_message", &event).await;
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
    _: ApiKey,
    State(app): State<App>,
    body: Result<Json<EventRequest>, JsonRejection>,
) -> Result<Json<Published>, ApiError> {
    let Json(req) = body?;
    if !valid_event_name(&req.event) {
        return Err(ApiError::bad_request(
            "event must be 1-64 characters of A-Za-z0-9_.:-",
        ));
    }
    room_param(&req.channel)?;
    app.hub
        .publish(req.channel.into(), &req.event, &req.data)
        .await;
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
    _: ApiKey,
    State(app): State<App>,
    body: Result<Json<NotificationRequest>, JsonRejection>,
) -> Result<Json<Published>, ApiError> {
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
    app.hub.publish(room.into(), "notification", &event).await;
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
    /// The epoch of the room's history the offset belongs to.
    epoch: String,
    /// The `Idempotency-Key` was used before: nothing new was stored; `id` and `offset`
    /// are the original's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
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
/// `new_message`; answers once it is stored. With an `Idempotency-Key` header, a
/// repeat within the dedupe window answers the original's id and offset.
#[utoipa::path(post, path = "/api/rooms/{room}/publish", tag = "server",
    security(("api_key" = [])), request_body = PublishRequest,
    params(RoomPath, ("Idempotency-Key" = Option<String>, Header, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "1-64 characters of A-Za-z0-9_-: a retry with the same key is stored once")),
    responses((status = 200, body = PublishResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn publish(
    _: ApiKey,
    State(app): State<App>,
    Path(RoomPath { room }): Path<RoomPath>,
    headers: HeaderMap,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    room_param(&room)?;
    let dedupe = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| is_valid_client_message_id(k))
                .ok_or_else(|| {
                    ApiError::bad_request("Idempotency-Key must be 1-64 characters of A-Za-z0-9_-")
                })?;
            Some(DedupeKey {
                scope: API_SCOPE.into(),
                key: key.to_string(),
            })
        }
    };
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
        dedupe,
        recipient: None,
        origin: None,
    };
    let committed = app.hub.publish_durable(draft).await.map_err(|e| {
        tracing::error!(error = %e, "publish failed");
        match e {
            crate::store::StoreError::Closed => {
                ApiError::unavailable("unavailable", "the store is shutting down")
            }
            _ => ApiError::internal(),
        }
    })?;
    Ok(Json(PublishResponse {
        id: committed.id,
        offset: committed.position.offset,
        epoch: committed.position.epoch.to_string(),
        duplicate: committed.duplicate,
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct ContactsRequest {
    /// User ids, each 1-123 characters of `A-Za-z0-9_-.:@` (the user itself is
    /// dropped); at most `presence.max_contacts` (default 1000).
    #[schema(schema_with = contact_ids)]
    contacts: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactsSet {
    contacts: usize,
}

/// Replaces the user's contact list: the users its status changes go to, and whose
/// status it sees in `GET /api/users/me/contacts`.
#[utoipa::path(put, path = "/api/users/{id}/contacts", tag = "server",
    security(("api_key" = [])), request_body = ContactsRequest,
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:@-]{1,123}$", description = "user id")),
    responses((status = 200, body = ContactsSet), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn set_contacts(
    _: ApiKey,
    State(app): State<App>,
    Path(id): Path<String>,
    body: Result<Json<ContactsRequest>, JsonRejection>,
) -> Result<Json<ContactsSet>, ApiError> {
    if !is_valid_user_id(&id) {
        return Err(ApiError::bad_request("invalid user id"));
    }
    let Json(req) = body?;
    let max = app.config.presence.max_contacts;
    if req.contacts.len() > max {
        return Err(ApiError::bad_request(format!("at most {max} contacts")));
    }
    if let Some(bad) = req.contacts.iter().find(|c| !is_valid_user_id(c)) {
        return Err(ApiError::bad_request(format!("invalid contact id {bad:?}")));
    }
    // The user itself is no contact of its own.
    let mut contacts = req.contacts;
    contacts.retain(|c| *c != id);
    contacts.sort();
    contacts.dedup();
    let n = contacts.len();
    let user = id.clone();
    app.hub
        .store()
        .write(WriteOp::ReplaceContacts { user: id, contacts })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "storing contacts failed");
            ApiError::unavailable("unavailable", "the store is unavailable")
        })?;
    app.hub.contacts_changed(&user, n > 0);
    Ok(Json(ContactsSet { contacts: n }))
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
    _: ApiKey,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Json<Disconnected> {
    let disconnected = app.hub.disconnect_user(&id, CloseCode::Disconnected).await;
    Json(Disconnected { disconnected })
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
