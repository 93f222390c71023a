//! The native protocol's requests, one file per command (as mini-redis's `cmd/`), and
//! the dispatch that routes a decoded request to its command.
//!
//! A command answers its requester through the session (in the session's own wire
//! format, with the request's `ref`) and reaches rooms through the broker. An `Err`
//! becomes an `error` frame with the `ref`.

mod custom;
mod history;
mod join;
mod leave;
mod mark_read;
mod members;
mod ping;
mod private;
mod rtc;
mod send;
mod share;
pub(crate) mod signaling;
mod status;
mod typing;

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use switchboard_protocol::{CloseCode, ErrorKind, Ref, Request};

pub use custom::{HandlerContext, MessageHandler};
pub use join::{Announce, JoinOptions, Joined};

use super::{Hub, Session, Verdict};
use crate::store::StoreError;

impl Hub {
    /// Counts one frame from `session` against its rate limit. False: drop the frame
    /// (the client was told, or is being closed for flooding).
    pub fn admit(&self, session: &Session) -> bool {
        self.inner.metrics.frames_received.increment(1);
        let verdict = session.rate.lock().check();
        match verdict {
            Verdict::Allow => true,
            Verdict::Reject => {
                self.inner.metrics.rate_limited.increment(1);
                session.error(&ErrorKind::RateLimited, None);
                false
            }
            Verdict::Disconnect => {
                self.inner.metrics.rate_limited.increment(1);
                tracing::info!(client = %session.client_id, user = %session.user().id, "rate limit persistently exceeded");
                session.close(CloseCode::RateLimited);
                false
            }
        }
    }

    /// Handles one decoded request. A `ping` is answered at once; anything else comes
    /// back as a boxed future for the caller to await (requests of one connection run
    /// one after another), so a connection's task stays small while idle.
    pub fn dispatch<'a>(
        &'a self,
        session: &'a Arc<Session>,
        request: Request,
        reference: Option<Ref>,
    ) -> Option<BoxFuture<'a, ()>> {
        if let Request::Ping = request {
            ping::run(session, reference.as_ref());
            return None;
        }
        Some(
            async move {
                let r = reference.as_ref();
                if let Err(e) = self.handle(session, request, r).await {
                    session.error(&e, r);
                }
            }
            .boxed(),
        )
    }

    pub(crate) async fn handle(
        &self,
        session: &Arc<Session>,
        request: Request,
        r: Option<&Ref>,
    ) -> Result<(), ErrorKind> {
        match request {
            Request::Ping => {
                ping::run(session, r);
                Ok(())
            }
            Request::JoinRoom(j) => join::run(self, session, j, r, JoinOptions::request(self))
                .await
                .map(|_| ()),
            Request::LeaveRoom { room_id } => leave::run(self, session, &room_id, r).await,
            Request::SendMessage(m) => send::run(self, session, m, r).await,
            Request::Typing { room_id, is_typing } => {
                typing::run(self, session, room_id, is_typing).await
            }
            Request::SendPrivateMessage(p) => private::run(self, session, p, r).await,
            Request::UpdateStatus { status } => status::run(self, session, status, r).await,
            Request::MarkRead { room_id, offset } => {
                mark_read::run(self, session, room_id, offset, r).await
            }
            Request::ShareFile { room_id, file_id } => {
                share::run(self, session, room_id, file_id, r).await
            }
            Request::History(q) => history::run(self, session, q, r).await,
            Request::RoomMembers(q) => members::run(self, session, q, r).await,
            Request::Rtc(signal) => rtc::run(self, session, signal).await,
            Request::Custom { kind, data } => custom::run(self, session, kind, data, r).await,
        }
    }
}

/// `Not in room` unless the session is in `room` or its user is a durable member of it
/// (a conversation's two users are).
async fn in_room_or_member(hub: &Hub, session: &Session, room: &str) -> Result<(), ErrorKind> {
    if session.in_room(room) {
        return Ok(());
    }
    match hub.store().membership(room, &session.user().id).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ErrorKind::NotInRoom),
        Err(e) => Err(store_error("reading a membership", e)),
    }
}

/// Logs a failure the client cannot fix and answers it with the generic error.
fn internal(what: &str, e: impl std::fmt::Display) -> ErrorKind {
    tracing::error!(error = %e, "{what} failed");
    ErrorKind::Internal
}

/// A store failure as the client hears it: a store that is shutting down or out of
/// reach is `Service unavailable` (retry later), anything else internal.
fn store_error(what: &str, e: StoreError) -> ErrorKind {
    match e {
        StoreError::Closed | StoreError::Unavailable(_) => {
            tracing::warn!(error = %e, "{what} failed");
            ErrorKind::Unavailable
        }
        StoreError::Rejected(_) => internal(what, e),
    }
}
