//! `share_file {roomId, fileId}`: the uploader shares one of its files in a room it is
//! in. The room gets a durable `new_message` of type `file` whose content is the file
//! with a signed link; from then on the room's members may download it. A file that
//! does not exist or is not the sender's is `File not found` alike.

use std::sync::Arc;

use switchboard_protocol::{ErrorKind, Ref, now_millis};

use super::store_error;
use crate::hub::{Hub, Session};
use crate::store::{Draft, WriteOp, WriteOutcome};

pub(super) async fn run(
    hub: &Hub,
    session: &Arc<Session>,
    room_id: String,
    file_id: String,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    super::send::may_post(session, &room_id)?;
    let user = session.user();
    let file = hub
        .store()
        .file(&file_id)
        .await
        .map_err(|e| store_error("reading a file", e))?
        .filter(|f| f.owner == user.id)
        .ok_or(ErrorKind::FileNotFound)?;
    // Shared before the message goes out, so that a member who sees it can fetch it.
    let op = WriteOp::ShareFile {
        file: file.id.clone(),
        room: room_id.clone(),
    };
    match hub.store().write(op).await {
        Ok(WriteOutcome::Changed(true)) => {}
        Ok(_) => return Err(ErrorKind::FileNotFound),
        Err(e) => return Err(store_error("sharing a file", e)),
    }
    let view = hub.files().view(&file, false);
    let content = serde_json::to_value(&view).map_err(|e| super::internal("encoding a file", e))?;
    let draft = Draft {
        id: uuid::Uuid::now_v7().to_string(),
        room: room_id.into(),
        sender: user.clone(),
        content,
        kind: "file".to_string(),
        metadata: serde_json::Value::Object(Default::default()),
        timestamp: now_millis(),
        dedupe: None,
        recipient: None,
        origin: Some(session.client_id.clone()),
    };
    super::send::append(hub, session, draft, r).await;
    Ok(())
}
