//! `send_message {roomId, content, type, metadata, clientMessageId}`: stored, then
//! published to the room; with a `ref`, the sender gets `ack {id, offset}` once it is
//! durable. A repeated `clientMessageId` is acknowledged with the original's id and
//! offset and `duplicate: true`, and neither stored nor delivered again.

use std::sync::Arc;
use std::time::Instant;

use switchboard_protocol::{
    Ack, DM_ROOM_PREFIX, ErrorKind, Ref, SYSTEM_ROOM, SendMessage, now_millis,
};

use crate::hub::{Hub, Session};
use crate::store::{Completion, DedupeKey, Draft};

/// The idempotency scope of a user's sends.
pub(crate) fn user_scope(user_id: &str) -> String {
    format!("user:{user_id}")
}

pub(super) async fn run(
    hub: &Hub,
    session: &Arc<Session>,
    m: SendMessage,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    may_post(session, &m.room_id)?;
    let dedupe = m.client_message_id.map(|key| DedupeKey {
        scope: user_scope(&session.user().id),
        key,
    });
    let draft = Draft {
        id: uuid::Uuid::now_v7().to_string(),
        room: m.room_id.into(),
        sender: session.user().clone(),
        content: m.content,
        kind: m.kind,
        metadata: m.metadata,
        timestamp: now_millis(),
        dedupe,
        recipient: None,
        origin: Some(session.client_id.clone()),
    };
    append(hub, session, draft, r).await;
    Ok(())
}

/// Whether the session may post a room message to `room`: one it is in, neither
/// `system` nor a private conversation (those take `send_private_message`, which
/// reaches the recipient).
pub(super) fn may_post(session: &Session, room: &str) -> Result<(), ErrorKind> {
    if room == SYSTEM_ROOM || room.starts_with(DM_ROOM_PREFIX) {
        return Err(ErrorKind::Forbidden);
    }
    if !session.in_room(room) {
        return Err(ErrorKind::NotInRoom);
    }
    Ok(())
}

/// Stores `draft` (then the room gets it); with a `ref`, the sender gets `ack` once it
/// is durable, or the error.
pub(super) async fn append(hub: &Hub, session: &Arc<Session>, draft: Draft, r: Option<&Ref>) {
    if !hub.broker().is_healthy() {
        // Nothing stored: the message could not reach the room now.
        tracing::warn!("refusing a message: the broker is unavailable");
        session.error(&ErrorKind::Unavailable, r);
        return;
    }
    let s = session.clone();
    let r = r.cloned();
    let received = Instant::now();
    let latency = hub.metrics().publish_latency.clone();
    let done = Completion::new(move |result| match result {
        Ok(c) => {
            latency.record(received.elapsed().as_secs_f64());
            if r.is_some() {
                let ack = Ack {
                    id: c.id,
                    offset: Some(c.position.offset),
                    duplicate: c.duplicate,
                };
                s.reply("ack", &ack, r.as_ref());
            }
        }
        Err(e) => {
            s.error(&super::store_error("storing a message", e), r.as_ref());
        }
    });
    hub.store().append(draft, done).await;
}
