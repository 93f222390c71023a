//! `mark_read {roomId, offset}`: stores the user's read position in a room it is a
//! member of (a live subscription is not needed), clamped to the room's last offset and
//! never moved backwards; every device of the user gets `read_marker` (the sender's
//! with the `ref`).

use std::sync::Arc;

use switchboard_protocol::{ErrorKind, ReadMarker, Ref, personal_room};

use super::store_error;
use crate::encode::Event;
use crate::hub::{Hub, Session};
use crate::store::{WriteOp, WriteOutcome};

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    room_id: String,
    offset: u64,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    let user = &session.user().id;
    let store = hub.store();
    let member = store
        .membership(&room_id, user)
        .await
        .map_err(|e| store_error("reading a membership", e))?;
    if member.is_none() {
        return Err(ErrorKind::NotInRoom);
    }
    let head = hub
        .head(&room_id)
        .await
        .map_err(|e| store_error("reading a room's head", e))?;
    let outcome = store
        .write(WriteOp::MarkRead {
            room: room_id.clone(),
            user: user.clone(),
            offset: offset.min(head.offset),
        })
        .await
        .map_err(|e| store_error("storing a read marker", e))?;
    let WriteOutcome::Marker(offset) = outcome else {
        return Err(ErrorKind::Internal);
    };
    let marker = ReadMarker { room_id, offset };
    hub.publish_event(
        personal_room(user).into(),
        Arc::new(Event::new("read_marker", &marker)),
        Some(session.client_id.clone()),
    )
    .await;
    session.reply("read_marker", &marker, r);
    Ok(())
}
