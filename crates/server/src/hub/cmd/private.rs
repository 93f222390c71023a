//! `send_private_message`: the recipient's devices and the sender's other devices get
//! `private_message`, through the two users' personal rooms.

use std::sync::Arc;

use switchboard_protocol::{
    Ack, ErrorKind, PrivateMessage, Recipient, Ref, SendPrivateMessage, now_millis, personal_room,
};

use crate::encode::Event;
use crate::hub::{Hub, Session};

pub(super) async fn run(
    hub: &Hub,
    session: &Session,
    p: SendPrivateMessage,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    let message = PrivateMessage {
        id: uuid::Uuid::now_v7().to_string(),
        sender: session.user().clone(),
        recipient: Recipient {
            id: p.recipient_id.clone(),
        },
        content: p.content,
        kind: p.kind,
        timestamp: now_millis(),
    };
    let event = Arc::new(Event::new("private_message", &message));
    let own = personal_room(&session.user().id);
    let theirs = personal_room(&p.recipient_id);
    if theirs != own {
        hub.publish_event(theirs.into(), event.clone(), None).await;
    }
    hub.publish_event(own.into(), event, Some(session.client_id.clone()))
        .await;
    if r.is_some() {
        let ack = Ack {
            id: message.id,
            offset: None,
            duplicate: false,
        };
        session.reply("ack", &ack, r);
    }
    Ok(())
}
