//! The user API, behind the user's JWT ([`User`]): what a client application calls
//! over HTTP.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::{HISTORY_MAX_LIMIT, HistoryRange, now_millis};
use utoipa::{IntoParams, ToSchema};

use super::extract::User;
use super::{RoomPath, room_param};
use crate::app::App;
use crate::auth::turn_credential;
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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
    /// The epoch of the room's history: offsets belong to it.
    epoch: String,
    /// `new_message` payloads in ascending offset order.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<Box<RawValue>>,
    /// The page was cut short by `store.history_max_bytes`: ask again from its first
    /// (with `before`) or last (with `since`) offset.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// A room's history, for a member of the room or a user with a connection in it.
#[utoipa::path(get, path = "/api/rooms/{room}/messages", tag = "user",
    security(("bearer" = [])),
    params(RoomPath, MessagesQuery),
    responses((status = 200, body = MessagesResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn messages(
    User(identity): User,
    State(app): State<App>,
    Path(RoomPath { room }): Path<RoomPath>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Json<MessagesResponse>, ApiError> {
    room_param(&room)?;
    let Query(q) = query?;
    let range = HistoryRange::new(q.before, q.since);
    let hub = &app.hub;
    let member = hub
        .user_in_room(&identity.user.id, &room)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "presence failed");
            ApiError::internal()
        })?
        || hub
            .store()
            .membership(&room, &identity.user.id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "reading a membership failed");
                ApiError::internal()
            })?
            .is_some();
    if !hub.verifier().may_join(&identity, &room) || !member {
        return Err(ApiError::forbidden(
            "Not in room: connect and join it first",
        ));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, HISTORY_MAX_LIMIT);
    let failed = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "history read failed");
        ApiError::internal()
    };
    let head = hub.head(&room).await.map_err(failed)?;
    let page = hub
        .store()
        .read(&room, range, limit, hub.settings().history_max_bytes)
        .await
        .map_err(failed)?;
    let messages = page
        .messages
        .into_iter()
        .filter_map(|m| RawValue::from_string(m.data).ok())
        .collect();
    Ok(Json(MessagesResponse {
        room_id: room,
        epoch: head.epoch.to_string(),
        messages,
        truncated: page.truncated,
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
pub async fn ice_servers(User(identity): User, State(app): State<App>) -> Json<IceServers> {
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
    Json(IceServers {
        ice_servers: servers,
        ttl: ice.turn_ttl_secs,
    })
}
