//! `room_members {roomId, cursor, limit}`: one page of the room's members, for a
//! connection in the room.

use switchboard_protocol::{ErrorKind, Ref, RoomMembers, RoomMembersQuery};

use super::internal;
use crate::hub::{Hub, Session};

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    q: RoomMembersQuery,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    if !session.in_room(&q.room_id) {
        return Err(ErrorKind::NotInRoom);
    }
    let page = hub
        .presence()
        .members(&q.room_id, q.cursor.as_deref(), q.limit as usize)
        .await
        .map_err(|e| internal("presence", e))?;
    let reply = RoomMembers {
        room_id: q.room_id,
        members: page.members,
        next_cursor: page.next_cursor,
    };
    session.reply("room_members", &reply, r);
    Ok(())
}
