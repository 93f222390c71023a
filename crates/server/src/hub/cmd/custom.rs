//! Custom message types: anything not in the protocol goes to a handler registered by
//! the embedding application (`Server::builder().on_message(type, handler)`).
//!
//! A handler is someone else's code: a panic in it is caught here, logged, and answered
//! as an internal error; the connection and everyone else carry on.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use switchboard_protocol::{ErrorKind, Ref, SYSTEM_ROOM, UserInfo};

use crate::encode::Event;
use crate::hub::{Hub, Session};

/// A custom message type's handler. It gets the sender's context and the frame's
/// `data`; an `Err` is sent to the client as an `error` with its text.
pub type MessageHandler =
    Arc<dyn Fn(HandlerContext, Value) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What a custom handler may see and do.
pub struct HandlerContext {
    hub: Hub,
    session: Arc<Session>,
    reference: Option<Ref>,
}

impl HandlerContext {
    pub fn client_id(&self) -> &str {
        &self.session.client_id
    }

    pub fn user(&self) -> &UserInfo {
        self.session.user()
    }

    /// Rooms the sender has joined.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.session.rooms()
    }

    /// Sends `{type: kind, data, ref}` to the sender.
    pub fn reply<T: Serialize + ?Sized>(&self, kind: &str, data: &T) {
        self.session.reply(kind, data, self.reference.as_ref());
    }

    /// Sends `{type: kind, data}` to every member of `room` (the sender included), on
    /// every node and transport. The sender must be in the room; `system` is refused.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        data: &T,
    ) -> Result<(), ErrorKind> {
        if room == SYSTEM_ROOM {
            return Err(ErrorKind::Forbidden);
        }
        if !self.session.in_room(room) {
            return Err(ErrorKind::NotInRoom);
        }
        let event = Arc::new(Event::new(kind.to_string(), data));
        self.hub.publish_detached(room.into(), event, None);
        Ok(())
    }
}

pub(super) async fn run(
    hub: &Hub,
    session: &Arc<Session>,
    kind: String,
    data: Value,
    r: Option<&Ref>,
) -> Result<(), ErrorKind> {
    let Some(handler) = hub.inner.handlers.get(&kind).cloned() else {
        return Err(ErrorKind::UnknownType(kind));
    };
    let ctx = HandlerContext {
        hub: hub.clone(),
        session: session.clone(),
        reference: r.cloned(),
    };
    match AssertUnwindSafe(handler(ctx, data)).catch_unwind().await {
        Ok(result) => result.map_err(ErrorKind::Handler),
        Err(_) => {
            tracing::error!(kind = %kind, client = %session.client_id, "custom handler panicked");
            Err(ErrorKind::Internal)
        }
    }
}
