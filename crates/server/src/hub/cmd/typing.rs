//! `typing {roomId, isTyping}`: the room's others get `typing_status`.

use std::sync::Arc;

use switchboard_protocol::{ErrorKind, TypingStatus, now_millis};

use crate::encode::Event;
use crate::hub::{Hub, Session};

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    room_id: String,
    is_typing: bool,
) -> Result<(), ErrorKind> {
    if !session.in_room(&room_id) {
        return Err(ErrorKind::NotInRoom);
    }
    let event = TypingStatus {
        user: session.user().clone(),
        room_id: room_id.clone(),
        is_typing,
        timestamp: now_millis(),
    };
    let event = Arc::new(Event::new("typing_status", &event));
    hub.publish_event(room_id.into(), event, Some(session.client_id.clone()))
        .await;
    Ok(())
}
