//! The user layer over HTTP, behind the user's JWT: profiles as others may see them, the
//! user's contacts and rooms (with unread counts), and its notification inbox.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::User;
use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::hub::notification_entry;
use crate::store::{StoreError, UserRecord};

fn failed(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store read failed");
    match e {
        StoreError::Closed | StoreError::Unavailable(_) => {
            ApiError::unavailable("unavailable", "the store is unavailable")
        }
        StoreError::Rejected(_) => ApiError::internal(),
    }
}

/// A user as another may see it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    id: String,
    username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar: Option<String>,
    /// `online`, `away`, `busy`, or `offline` (gone, or invisible).
    status: String,
    /// When the user was last online (ms): now if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
}

async fn profile(app: &App, id: &str, record: Option<UserRecord>) -> Profile {
    let (status, last_seen) = app.hub.seen_as(record.as_ref(), id).await;
    let (username, avatar) = match record {
        Some(r) => (r.username, r.avatar),
        None => (id.to_string(), None),
    };
    Profile {
        id: id.to_string(),
        username,
        avatar,
        status,
        last_seen,
    }
}

/// A user's profile: for the user itself, the users it lists as contacts, and users
/// who are members of a room with it. Anyone else gets 404, as for an unknown id.
#[utoipa::path(get, path = "/api/users/{id}", tag = "user",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Profile), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn user(
    User(me): User,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    let store = app.hub.store();
    let me = &me.user.id;
    let visible = *me == id
        || store.lists_contact(&id, me).await.map_err(failed)?
        || store.share_a_room(&id, me).await.map_err(failed)?;
    let record = match visible {
        true => store.user(&id).await.map_err(failed)?,
        false => None,
    };
    if record.is_none() && *me != id {
        return Err(ApiError::not_found("no such user"));
    }
    Ok(Json(profile(&app, &id, record).await))
}

#[derive(Serialize, ToSchema)]
pub struct Contacts {
    contacts: Vec<Profile>,
}

/// The users the caller lists as contacts (set by the server API), with their status.
#[utoipa::path(get, path = "/api/users/me/contacts", tag = "user",
    security(("bearer" = [])),
    responses((status = 200, body = Contacts), (status = 401, body = ErrorBody)))]
pub async fn my_contacts(
    User(me): User,
    State(app): State<App>,
) -> Result<Json<Contacts>, ApiError> {
    let store = app.hub.store();
    let ids = store.contacts(&me.user.id).await.map_err(failed)?;
    let mut records = store.users(&ids).await.map_err(failed)?;
    let mut contacts = Vec::with_capacity(ids.len());
    for id in ids {
        let record = records
            .iter()
            .position(|r| r.id == id)
            .map(|i| records.swap_remove(i));
        contacts.push(profile(&app, &id, record).await);
    }
    Ok(Json(Contacts { contacts }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rooms {
    rooms: Vec<RoomPlace>,
    /// Where the next page starts (`?after=`), when there may be more.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Where the user stands in one of its rooms.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomPlace {
    room_id: String,
    /// The room's last offset.
    last_offset: u64,
    /// The user's read marker (0 before any `mark_read`).
    last_read_offset: u64,
    /// Messages after the read marker.
    unread: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomsQuery {
    /// Rooms after this one, in room id order (a page's `nextCursor`).
    after: Option<String>,
    /// At most this many (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The rooms the caller is a member of (private conversations included), with unread
/// counts, by room id, one page at a time.
#[utoipa::path(get, path = "/api/users/me/rooms", tag = "user",
    security(("bearer" = [])),
    params(RoomsQuery),
    responses((status = 200, body = Rooms), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn my_rooms(
    User(me): User,
    State(app): State<App>,
    query: Result<Query<RoomsQuery>, QueryRejection>,
) -> Result<Json<Rooms>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1-1000"));
    }
    let memberships = app
        .hub
        .store()
        .rooms_of(&me.user.id, q.after.as_deref(), limit)
        .await
        .map_err(failed)?;
    let full = memberships.len() == limit as usize;
    let mut rooms = Vec::with_capacity(memberships.len());
    for (room_id, last_read) in memberships {
        let head = app.hub.head(&room_id).await.map_err(failed)?.offset;
        rooms.push(RoomPlace {
            room_id,
            last_offset: head,
            last_read_offset: last_read.min(head),
            unread: head.saturating_sub(last_read),
        });
    }
    let next_cursor = full
        .then(|| rooms.last().map(|r| r.room_id.clone()))
        .flatten();
    Ok(Json(Rooms { rooms, next_cursor }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// Only unread entries.
    unread: Option<bool>,
    /// At most this many (1-100, default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct Inbox {
    /// Newest first: `{id, type, roomId, message, sender: {id, username}, count,
    /// timestamp, read}`.
    #[schema(value_type = Vec<Object>)]
    notifications: Vec<switchboard_protocol::NotificationEntry>,
}

/// The caller's offline notifications: one entry per room while unread.
#[utoipa::path(get, path = "/api/notifications", tag = "user",
    security(("bearer" = [])),
    params(InboxQuery),
    responses((status = 200, body = Inbox), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn notifications(
    User(me): User,
    State(app): State<App>,
    query: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Json<Inbox>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1-100"));
    }
    let entries = app
        .hub
        .store()
        .notifications(&me.user.id, q.unread.unwrap_or(false), limit)
        .await
        .map_err(failed)?;
    Ok(Json(Inbox {
        notifications: entries.iter().map(notification_entry).collect(),
    }))
}

/// `{"ids": [...]}` (at most 1000; `"all": false` may go with it) or `{"all": true}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// Entries to mark read.
    #[serde(default, deserialize_with = "present")]
    ids: Option<Vec<String>>,
    /// Mark every entry read.
    #[serde(default, deserialize_with = "present")]
    all: Option<bool>,
}

/// A field that may be absent but not null.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

impl utoipa::ToSchema for ReadRequest {}

impl utoipa::PartialSchema for ReadRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        read_request().into()
    }
}

fn read_request() -> utoipa::openapi::schema::Schema {
    use serde_json::json;
    use utoipa::openapi::schema::{
        AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type,
    };
    let by_ids = ObjectBuilder::new()
        .property(
            "ids",
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .max_items(Some(1000)),
        )
        .required("ids")
        .property(
            "all",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([json!(false)])),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let all = ObjectBuilder::new()
        .property(
            "all",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([json!(true)])),
        )
        .required("all")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    Schema::OneOf(OneOfBuilder::new().item(by_ids).item(all).build())
}

#[derive(Serialize, ToSchema)]
pub struct Read {
    /// Entries that were unread and are read now.
    read: u64,
}

/// Marks entries read: `{ids: [...]}` or `{all: true}`.
#[utoipa::path(post, path = "/api/notifications/read", tag = "user",
    security(("bearer" = [])), request_body = ReadRequest,
    responses((status = 200, body = Read), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn read_notifications(
    User(me): User,
    State(app): State<App>,
    body: Result<Json<ReadRequest>, JsonRejection>,
) -> Result<Json<Read>, ApiError> {
    let Json(req) = body?;
    let ids = match (req.ids, req.all) {
        (None, Some(true)) => None,
        (Some(ids), None | Some(false)) if ids.len() <= 1000 => Some(ids),
        _ => {
            return Err(ApiError::bad_request(
                "give {\"ids\": [...]} (at most 1000) or {\"all\": true}",
            ));
        }
    };
    let read = app
        .hub
        .read_notifications(&me.user.id, ids)
        .await
        .map_err(failed)?;
    Ok(Json(Read { read }))
}
