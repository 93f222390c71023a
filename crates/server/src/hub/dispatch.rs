//! The native protocol's requests, one method each, and custom message handlers.
//!
//! Replies and errors go to the requesting session's outbox with the request's `ref`;
//! room events go through the broker (and, for `send_message`, the store first).

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use switchboard_protocol::{
    Ack, CloseCode, ErrorKind, Frame, HistoryQuery, HistoryRange, JoinRoom, Peer, Pong,
    PrivateMessage, Recipient, Ref, Request, RoomJoined, RoomLeft, RoomMembership, RtcRelay,
    RtcSignal, SYSTEM_ROOM, SendMessage, SendPrivateMessage, TypingStatus, UserInfo, UserJoined,
    encode, encode_error, now_millis, personal_room,
};

use super::{Hub, Session, Verdict, Wire};
use crate::store::{Draft, OnDurable};

/// A custom message type's handler, registered with
/// `Server::builder().on_message(type, handler)`. It gets the sender's context and the
/// frame's `data`; an `Err` is sent to the client as an `error` with its text.
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
        self.session
            .push_text(encode(kind, data, self.reference.as_ref()));
    }

    /// Sends `{type: kind, data}` to every member of `room` (the sender included), on
    /// every node. The sender must be in the room; `system` is refused.
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
        self.hub.publish(room.into(), kind, data, None);
        Ok(())
    }
}

/// How the room hears about a join.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Announce {
    /// `user_joined_room`: an explicit `join_room`.
    JoinedRoom,
    /// `user_joined`: the `room` query parameter at connect.
    Joined,
}

impl Hub {
    /// Handles one text frame from `session`. Most requests are handled at once;
    /// those that must wait (for the store or a custom handler) come back as a boxed
    /// future for the caller to await, so a connection's task stays small while idle.
    pub fn dispatch_text<'a>(
        &'a self,
        session: &'a Arc<Session>,
        text: &str,
    ) -> Option<BoxFuture<'a, ()>> {
        self.inner.metrics.frames_received.increment(1);
        let verdict = session.rate.lock().check();
        if verdict != Verdict::Allow {
            self.inner.metrics.rate_limited.increment(1);
        }
        match verdict {
            Verdict::Allow => {}
            Verdict::Reject => {
                session.push_text(encode_error(&ErrorKind::RateLimited, None));
                return None;
            }
            Verdict::Disconnect => {
                tracing::info!(client = %session.client_id, user = %session.user().id, "rate limit persistently exceeded");
                session.close(CloseCode::RateLimited);
                return None;
            }
        }
        let frame = match Frame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                session.push_text(encode_error(&e, None));
                return None;
            }
        };
        let r = frame.reference;
        let answer = match frame.request {
            Ok(req) => self.handle_now(session, req, r.as_ref()),
            Err(e) => Ok(Err(e)),
        };
        match answer {
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                session.push_text(encode_error(&e, r.as_ref()));
                None
            }
            Err(req) => Some(Box::pin(async move {
                if let Err(e) = self.handle_later(session, req, r.as_ref()).await {
                    session.push_text(encode_error(&e, r.as_ref()));
                }
            })),
        }
    }

    /// Handles what needs no waiting; gives back the requests that do.
    fn handle_now(
        &self,
        session: &Arc<Session>,
        req: Request,
        r: Option<&Ref>,
    ) -> Result<Result<(), ErrorKind>, Request> {
        Ok(match req {
            Request::Ping => {
                let pong = Pong {
                    timestamp: now_millis(),
                };
                session.push_text(encode("pong", &pong, r));
                Ok(())
            }
            Request::LeaveRoom { room_id } => self.leave_room(session, &room_id, r),
            Request::Typing { room_id, is_typing } => self.typing(session, room_id, is_typing),
            Request::SendPrivateMessage(p) => {
                self.send_private_message(session, p, r);
                Ok(())
            }
            Request::UpdateStatus { .. } => Err(ErrorKind::NotSupported("update_status")),
            Request::ShareFile { .. } => Err(ErrorKind::NotSupported("share_file")),
            Request::Rtc(sig) => self.relay_rtc(session, sig),
            Request::Custom { kind, .. } if !self.inner.handlers.contains_key(&kind) => {
                Err(ErrorKind::UnknownType(kind))
            }
            later => return Err(later),
        })
    }

    /// Handles the requests that wait for the store or a custom handler.
    async fn handle_later(
        &self,
        session: &Arc<Session>,
        req: Request,
        r: Option<&Ref>,
    ) -> Result<(), ErrorKind> {
        match req {
            Request::JoinRoom(j) => self
                .join_room(session, j, r, Announce::JoinedRoom)
                .await
                .map(|_| ()),
            Request::SendMessage(m) => self.send_message(session, m, r).await,
            Request::History(q) => self.history(session, q, r).await,
            Request::Custom { kind, data } => {
                let Some(handler) = self.inner.handlers.get(&kind).cloned() else {
                    return Err(ErrorKind::UnknownType(kind));
                };
                let ctx = HandlerContext {
                    hub: self.clone(),
                    session: session.clone(),
                    reference: r.cloned(),
                };
                handler(ctx, data).await.map_err(ErrorKind::Handler)
            }
            other => self
                .handle_now(session, other, r)
                .unwrap_or(Err(ErrorKind::Internal)),
        }
    }

    fn typing(&self, session: &Session, room_id: String, is_typing: bool) -> Result<(), ErrorKind> {
        if !session.in_room(&room_id) {
            return Err(ErrorKind::NotInRoom);
        }
        let event = TypingStatus {
            user: session.user().clone(),
            room_id: room_id.clone(),
            is_typing,
            timestamp: now_millis(),
        };
        self.publish(room_id.into(), "typing_status", &event, Some(session.id));
        Ok(())
    }

    /// Joins the room named at connect (`?room=`); the room hears `user_joined`.
    pub async fn join_on_connect(&self, session: &Arc<Session>, room_id: String) {
        let result = match switchboard_protocol::is_valid_room_id(&room_id) {
            true => {
                let join = JoinRoom {
                    room_id,
                    exclusive: true,
                    since: None,
                };
                self.join_room(session, join, None, Announce::Joined)
                    .await
                    .map(|_| ())
            }
            false => Err(ErrorKind::InvalidRoomId),
        };
        if let Err(e) = result {
            session.push_text(encode_error(&e, None));
        }
    }

    /// Subscribes a listener (an SSE stream) to a room, replaying from `since`.
    /// Returns whether the replay was complete, when one was asked for.
    pub async fn subscribe(
        &self,
        session: &Arc<Session>,
        room_id: String,
        since: Option<u64>,
    ) -> Result<Option<bool>, ErrorKind> {
        let join = JoinRoom {
            room_id,
            exclusive: false,
            since,
        };
        self.join_room(session, join, None, Announce::JoinedRoom)
            .await
    }

    /// Joins a room. A listener (SSE) joins quietly: no reply, no announcement.
    pub(super) async fn join_room(
        &self,
        session: &Arc<Session>,
        j: JoinRoom,
        r: Option<&Ref>,
        announce: Announce,
    ) -> Result<Option<bool>, ErrorKind> {
        let listener = session.wire == Wire::Sse;
        if !self.inner.verifier.may_join(&session.identity, &j.room_id) {
            return Err(ErrorKind::Forbidden);
        }
        let room: Arc<str> = j.room_id.into();
        // Already there (or the personal room, which a session is always in): answer
        // with the room as it is.
        let own_personal =
            session.wire == Wire::WebSocket && *room == *personal_room(&session.user().id);
        if session.in_room(&room) || own_personal {
            if !listener {
                let members = self.inner.rooms.members(&room);
                let others: Vec<_> = members.into_iter().filter(|m| m.id != session.id).collect();
                session.push_text(room_joined(session, &room, &others, None, r));
            }
            return Ok(None);
        }
        if j.exclusive {
            self.leave_all_except(session, &room);
        }
        if session.room_count() >= self.inner.settings.max_rooms_per_connection {
            return Err(ErrorKind::TooManyRooms);
        }

        let mut replay = Vec::new();
        let mut recovered = None;
        let mut replayed_to = None;
        if let Some(since) = j.since {
            self.inner.rooms.begin_recovery(&room, session.id);
            let max = self.inner.settings.recovery_max_messages;
            let missed = self
                .inner
                .store
                .range(&room, HistoryRange::Since(since), max.saturating_add(1))
                .await;
            // Nothing missed: fine if `since` is a position the room has reached. One
            // beyond the room's head (stale, or from another server's data) cannot be
            // reconciled; trusting it would drop every message up to it.
            let missed = match missed {
                Ok(m) if m.is_empty() => match self.head(&room).await {
                    Ok(head) if since > head => Ok(None),
                    Ok(_) => Ok(Some(m)),
                    Err(e) => Err(e),
                },
                Ok(m) => Ok(Some(m)),
                Err(e) => Err(e),
            };
            match missed {
                Ok(Some(missed)) if missed.len() <= max as usize => {
                    replayed_to = Some(missed.last().map_or(since, |m| m.offset));
                    replay = missed;
                    recovered = Some(true);
                }
                Ok(_) => recovered = Some(false),
                Err(e) => {
                    self.inner.rooms.abort_recovery(&room, session.id);
                    tracing::error!(error = %e, room = %room, "recovery read failed");
                    return Err(ErrorKind::Internal);
                }
            }
        }

        self.inner
            .rooms
            .finish_join(&room, session, replayed_to, |others| {
                if !listener {
                    session.push_text(room_joined(session, &room, others, recovered, r));
                }
                for m in &replay {
                    let frame = format!("{{\"type\":\"new_message\",\"data\":{}}}", m.data);
                    session.push_room_frame(&room, Some(m.offset), frame.into());
                }
            });
        session.add_room(room.clone());
        if listener {
            return Ok(recovered);
        }

        let (user, timestamp) = (session.user().clone(), now_millis());
        match announce {
            Announce::JoinedRoom => {
                let event = RoomMembership {
                    user,
                    room_id: room.to_string(),
                    peer_id: session.client_id.to_string(),
                    timestamp,
                };
                self.publish(room, "user_joined_room", &event, Some(session.id));
            }
            Announce::Joined => {
                self.publish(
                    room,
                    "user_joined",
                    &UserJoined { user, timestamp },
                    Some(session.id),
                );
            }
        }
        Ok(recovered)
    }

    fn leave_room(
        &self,
        session: &Session,
        room_id: &str,
        r: Option<&Ref>,
    ) -> Result<(), ErrorKind> {
        if !session.remove_room(room_id) {
            return Err(ErrorKind::NotInRoom);
        }
        self.inner.rooms.leave(room_id, session.id);
        let left = RoomLeft {
            room_id: room_id.to_string(),
            timestamp: now_millis(),
        };
        session.push_text(encode("room_left", &left, r));
        self.announce_leave(session, room_id.into());
        Ok(())
    }

    async fn send_message(
        &self,
        session: &Arc<Session>,
        m: SendMessage,
        r: Option<&Ref>,
    ) -> Result<(), ErrorKind> {
        if m.room_id == SYSTEM_ROOM {
            return Err(ErrorKind::Forbidden);
        }
        if !session.in_room(&m.room_id) {
            return Err(ErrorKind::NotInRoom);
        }
        let draft = Draft {
            id: uuid::Uuid::now_v7().to_string(),
            room: m.room_id.into(),
            sender: session.user().clone(),
            content: m.content,
            kind: m.kind,
            metadata: m.metadata,
            timestamp: now_millis(),
        };
        let s = session.clone();
        let r = r.cloned();
        let received = std::time::Instant::now();
        let latency = self.inner.metrics.publish_latency.clone();
        let done: OnDurable = Box::new(move |result| {
            match result.inspect(|_| {
                latency.record(received.elapsed().as_secs_f64());
            }) {
                Ok(c) if r.is_some() => {
                    let ack = Ack {
                        id: c.id,
                        offset: Some(c.offset),
                    };
                    s.push_text(encode("ack", &ack, r.as_ref()));
                }
                Ok(_) => {}
                Err(_) => {
                    s.push_text(encode_error(&ErrorKind::Internal, r.as_ref()));
                }
            }
        });
        self.inner.store.append(draft, done).await.map_err(|e| {
            tracing::error!(error = %e, "store append failed");
            ErrorKind::Internal
        })
    }

    fn send_private_message(&self, session: &Arc<Session>, p: SendPrivateMessage, r: Option<&Ref>) {
        let event = PrivateMessage {
            id: uuid::Uuid::now_v7().to_string(),
            sender: session.user().clone(),
            recipient: Recipient {
                id: p.recipient_id.clone(),
            },
            content: p.content,
            kind: p.kind,
            timestamp: now_millis(),
        };
        let frame: super::Text = encode("private_message", &event, None).into();
        let own = personal_room(&session.user().id);
        let theirs = personal_room(&p.recipient_id);
        if theirs != own {
            self.publish_frame(theirs.into(), frame.clone(), None);
        }
        self.publish_frame(own.into(), frame, Some(session.id));
        if r.is_some() {
            let ack = Ack {
                id: event.id,
                offset: None,
            };
            session.push_text(encode("ack", &ack, r));
        }
    }

    async fn history(
        &self,
        session: &Session,
        q: HistoryQuery,
        r: Option<&Ref>,
    ) -> Result<(), ErrorKind> {
        if !session.in_room(&q.room_id) {
            return Err(ErrorKind::NotInRoom);
        }
        let stored = self
            .inner
            .store
            .range(&q.room_id, q.range, q.limit)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "history read failed");
                ErrorKind::Internal
            })?;
        // Stored payloads are JSON already: pass them through without re-parsing.
        let messages: Vec<Box<RawValue>> = stored
            .into_iter()
            .filter_map(|m| RawValue::from_string(m.data).ok())
            .collect();
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw<'a> {
            room_id: &'a str,
            messages: Vec<Box<RawValue>>,
        }
        session.push_text(encode(
            "history",
            &Raw {
                room_id: &q.room_id,
                messages,
            },
            r,
        ));
        Ok(())
    }

    fn relay_rtc(&self, session: &Session, sig: RtcSignal) -> Result<(), ErrorKind> {
        let target = self
            .session(&sig.target_peer_id)
            .filter(|t| t.shares_room_with(session))
            .ok_or(ErrorKind::TargetPeerNotFound)?;
        let relay = RtcRelay {
            sender_peer_id: session.client_id.to_string(),
            payload: sig.payload,
        };
        target.push_text(encode(sig.kind.as_str(), &relay, None));
        Ok(())
    }
}

/// `room_joined` for `session`, given the room's other connections.
fn room_joined(
    session: &Session,
    room: &str,
    others: &[Arc<Session>],
    recovered: Option<bool>,
    r: Option<&Ref>,
) -> String {
    let others: Vec<&Arc<Session>> = others
        .iter()
        .filter(|o| o.wire == Wire::WebSocket)
        .collect();
    let mut seen = HashSet::new();
    let members: Vec<UserInfo> = std::iter::once(session.user())
        .chain(others.iter().map(|o| o.user()))
        .filter(|u| seen.insert(u.id.as_str()))
        .cloned()
        .collect();
    let peers = others
        .iter()
        .map(|o| Peer {
            peer_id: o.client_id.to_string(),
            user: o.user().clone(),
        })
        .collect();
    let joined = RoomJoined {
        room_id: room.to_string(),
        timestamp: now_millis(),
        members,
        peers,
        recovered,
    };
    encode("room_joined", &joined, r)
}
