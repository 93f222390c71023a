//! `leave_room {roomId}`: the connection leaves the room; the others hear
//! `user_left_room` (while the room is small enough to announce).

use std::sync::Arc;

use switchboard_protocol::{ErrorKind, Ref, RoomLeft, RoomMembership, now_millis};

use crate::encode::Event;
use crate::hub::{Hub, Session};
use crate::store::WriteOp;

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    room_id: &str,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    if !leave(hub, session, &room_id.into(), true).await {
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
/// leaves this way too); with `forget`, the user's membership ends as well. False if it
/// was not in the room.
pub(super) async fn leave(hub: &Hub, session: &Session, room: &Arc<str>, forget: bool) -> bool {
    if !session.remove_room(room) {
        return false;
    }
    if forget && session.wire.participates() {
        hub.store().write_later(WriteOp::RemoveMember {
            room: room.to_string(),
            user: session.user().id.clone(),
        });
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
