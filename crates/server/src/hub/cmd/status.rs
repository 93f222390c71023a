//! `update_status {status}`: `online`, `away`, `busy` or `offline` (invisible). Stored;
//! the user's contacts get `friend_status_update` (an invisible user looks `offline`),
//! and every device of the user gets `status_updated` (the sender's with the `ref`).

use std::sync::Arc;

use switchboard_protocol::{ErrorKind, Ref, StatusUpdated, now_millis, personal_room};

use super::store_error;
use crate::encode::Event;
use crate::hub::{Hub, STATUSES, Session};
use crate::store::WriteOp;

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    status: String,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    if !STATUSES.contains(&status.as_str()) {
        return Err(ErrorKind::InvalidStatus);
    }
    let user = &session.user().id;
    hub.store()
        .write(WriteOp::SetStatus {
            user: user.clone(),
            status: status.clone(),
        })
        .await
        .map_err(|e| store_error("storing a status", e))?;
    hub.tell_contacts(user, &status, None).await;
    let updated = StatusUpdated {
        status,
        timestamp: now_millis(),
    };
    hub.publish_event(
        personal_room(user).into(),
        Arc::new(Event::new("status_updated", &updated)),
        Some(session.client_id.clone()),
    )
    .await;
    session.reply("status_updated", &updated, r);
    Ok(())
}
