//! `history {roomId, before|since, limit}`: a page of the room's stored messages in
//! ascending offset order, bounded by `limit` and by `store.history_max_bytes`.

use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_protocol::{ErrorKind, HistoryQuery, Ref};

use super::store_error;
use crate::hub::{Hub, Session};

/// The `history` reply: stored payloads pass through without being parsed again.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryReply<'a> {
    room_id: &'a str,
    epoch: &'a str,
    messages: Vec<Box<RawValue>>,
    /// The byte bound cut the page short: page on from its first or last offset.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    q: HistoryQuery,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    let store = hub.store();
    if !hub.verifier().may_join(&session.identity, &q.room_id) {
        return Err(ErrorKind::Forbidden);
    }
    super::in_room_or_member(hub, session, &q.room_id).await?;
    let head = store
        .head(&q.room_id)
        .await
        .map_err(|e| store_error("reading a room's head", e))?;
    let page = store
        .read(
            &q.room_id,
            q.range,
            q.limit,
            hub.settings().history_max_bytes,
        )
        .await
        .map_err(|e| store_error("history read", e))?;
    let messages = page
        .messages
        .into_iter()
        .filter_map(|m| RawValue::from_string(m.data).ok())
        .collect();
    let reply = HistoryReply {
        room_id: &q.room_id,
        epoch: &head.epoch,
        messages,
        truncated: page.truncated,
    };
    session.reply("history", &reply, r);
    Ok(())
}
