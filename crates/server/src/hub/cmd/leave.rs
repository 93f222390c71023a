//! `leave_room {roomId}`: the connection leaves the room, and its user the room's
//! membership (from any of its connections, subscribed to the room or not); the others
//! hear `user_left_room` (while the room is small enough to announce). The user's other
//! connections subscribed to the room stay so until they leave it or close.

use std::sync::Arc;

use switchboard_protocol::{ErrorKind, Ref, RoomLeft, RoomMembership, now_millis};

use super::store_error;
use crate::encode::Event;
use crate::hub::{Hub, Session};
use crate::store::{WriteOp, WriteOutcome};

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    room_id: &str,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    let subscribed = leave(hub, session, &room_id.into()).await;
    let mut member = false;
    if session.wire.participates() {
        // Stored before the answer: a read after `room_left` no longer lists the room.
        let removed = hub
            .store()
            .write(WriteOp::RemoveMember {
                room: room_id.to_string(),
                user: session.user().id.clone(),
            })
            .await
            .map_err(|e| store_error("removing a membership", e))?;
        member = matches!(removed, WriteOutcome::Changed(true));
    }
    if !subscribed && !member {
        return Err(ErrorKind::NotInRoom);
    }
    let left = RoomLeft {
        room_id: room_id.to_string(),
        timestamp: now_millis(),
    };
    session.reply("room_left", &left, r);
    Ok(())
}

/// Ends `session`'s subscription of `room` and tells the others (an exclusive join
/// leaves this way too, keeping the membership). False if it was not in the room.
pub(super) async fn leave(hub: &Hub, session: &Session, room: &Arc<str>) -> bool {
    if !session.remove_room(room) {
        return false;
    }
    hub.rooms().leave(room, session.id);
    hub.broker().unsubscribe(room);
    if session.wire.participates() {
        hub.presence().leave(room, session.device());
        if hub.announces(room).await {
            let event = Event::new(
                "user_left_room",
                &RoomMembership {
                    user: session.user().clone(),
                    room_id: room.to_string(),
                    peer_id: session.client_id.to_string(),
                    timestamp: now_millis(),
                },
            );
            hub.publish_event(
                room.clone(),
                Arc::new(event),
                Some(session.client_id.clone()),
            )
            .await;
        }
    }
    true
}
