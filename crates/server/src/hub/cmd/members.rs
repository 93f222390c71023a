//! `room_members {roomId, cursor, limit}`: one page of the room's durable members,
//! ordered by user id: online ones with their status, offline ones (gone, or
//! invisible) with when they were last seen. For a member of the room, or a connection
//! in it.

use switchboard_protocol::{ErrorKind, Member, Ref, RoomMembers, RoomMembersQuery};

use super::store_error;
use crate::hub::{Hub, Session};
use crate::store::UserRecord;

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    q: RoomMembersQuery,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    let store = hub.store();
    super::in_room_or_member(hub, session, &q.room_id).await?;
    let mut page = store
        .members(&q.room_id, q.cursor.as_deref(), q.limit + 1)
        .await
        .map_err(|e| store_error("reading members", e))?;
    let more = page.len() > q.limit as usize;
    page.truncate(q.limit as usize);
    let mut members = Vec::with_capacity(page.len());
    for m in page {
        let record = m.status.clone().map(|status| UserRecord {
            id: m.user_id.clone(),
            username: m.username.clone().unwrap_or_else(|| m.user_id.clone()),
            avatar: m.avatar.clone(),
            status,
            last_seen: m.last_seen,
        });
        let (status, last_seen) = hub.seen_as(record.as_ref(), &m.user_id).await;
        let online = status != "offline";
        members.push(Member {
            username: m.username.unwrap_or_else(|| m.user_id.clone()),
            id: m.user_id,
            avatar: if online { m.avatar } else { None },
            status,
            joined_at: m.joined_at,
            last_seen: if online { None } else { last_seen },
        });
    }
    let reply = RoomMembers {
        room_id: q.room_id,
        next_cursor: more.then(|| members.last().map(|m| m.id.clone())).flatten(),
        members,
    };
    session.reply("room_members", &reply, r);
    Ok(())
}
