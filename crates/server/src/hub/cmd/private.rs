//! `send_private_message {recipientId, content, type, clientMessageId}`: a durable
//! message of the conversation `dm:<a>:<b>`. Once stored, the recipient's devices and
//! the sender's other devices get `private_message` (with its offset in the
//! conversation), and with a `ref` the sender gets `ack {id, offset}`. Both users are
//! members of the conversation, so it is in their rooms, their recovery and history.

use std::sync::Arc;

use switchboard_protocol::{
    ErrorKind, Ref, SendPrivateMessage, dm_peer, dm_room, is_valid_room_id, is_valid_user_id,
    now_millis,
};

use super::send::user_scope;
use crate::hub::{Hub, Session};
use crate::store::{DedupeKey, Draft, WriteOp};

pub(super) async fn run(
    hub: &Hub,
    session: &Arc<Session>,
    p: SendPrivateMessage,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    let sender = session.user();
    let room = dm_room(&sender.id, &p.recipient_id);
    if !is_valid_user_id(&p.recipient_id) || dm_peer(&room, &sender.id).is_none() {
        return Err(ErrorKind::InvalidPayload(
            "recipientId must be a user id of A-Za-z0-9_-.@ (no ':'), with a sender id alike"
                .into(),
        ));
    }
    // The conversation must be a room id that join_room and history accept.
    if !is_valid_room_id(&room) {
        return Err(ErrorKind::InvalidPayload(
            "the two user ids are too long for a conversation: dm:<a>:<b> is at most 128 \
             characters"
                .into(),
        ));
    }
    let at = now_millis();
    for user in [&sender.id, &p.recipient_id] {
        hub.store().write_later(WriteOp::AddMember {
            room: room.clone(),
            user: user.clone(),
            at,
        });
    }
    let draft = Draft {
        id: uuid::Uuid::now_v7().to_string(),
        room: room.into(),
        sender: sender.clone(),
        content: p.content,
        kind: p.kind,
        metadata: serde_json::Value::Object(Default::default()),
        timestamp: at,
        // A scope of its own: a room message's key never swallows a private one.
        dedupe: p.client_message_id.map(|key| DedupeKey {
            scope: format!("{}:private", user_scope(&sender.id)),
            key,
        }),
        recipient: Some(p.recipient_id),
        origin: Some(session.client_id.clone()),
    };
    super::send::append(hub, session, draft, r).await;
    Ok(())
}
