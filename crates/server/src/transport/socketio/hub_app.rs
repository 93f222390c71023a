//! The hub behind Socket.IO: the main namespace's sockets are hub sessions (events
//! become the native protocol's requests), `/webrtc`'s are signaling peers; a CONNECT
//! may recover a dropped socket's state.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_protocol::socketio::{self, EventName, Kind};
use switchboard_protocol::{
    Dialect, ErrorKind, Ref, Request, RoomMembersQuery, UserInfo, now_millis,
};

use super::apps::{Work, connect_error, connect_ok};
use super::conn::{CloseReason, Socket};
use super::recovery::{self, Stashes};
use super::{Conn, Engine};
use crate::encode::socketio as socketio_encode;
use crate::encode::socketio::{ROOT, WEBRTC};
use crate::hub::{ConnectError, Hub, Session, Wire};

pub struct HubApp {
    pub(super) hub: Hub,
    /// Largest event payload handed to the hub (the native protocol's message limit).
    pub(super) max_event_bytes: usize,
    /// Connection state recovery: zero when off.
    pub(super) window: Duration,
    pub(super) stashes: Arc<Stashes>,
}

/// The CONNECT packet's auth: the token, and (a recovering client) its private
/// session id and the position of the last durable event it received.
#[derive(Deserialize, Default)]
struct Auth {
    token: Option<String>,
    pid: Option<String>,
    offset: Option<String>,
    /// `/webrtc`: the peer id wanted (as the `peerId` query value).
    #[serde(rename = "peerId")]
    peer_id: Option<String>,
}

impl HubApp {
    pub(super) fn packet(
        &self,
        _engine: &Engine,
        conn: &Arc<Conn>,
        packet: socketio::Packet<'_>,
        attachments: Vec<Bytes>,
    ) -> Result<Option<Work>, CloseReason> {
        let ns = packet.namespace;
        match packet.kind {
            Kind::Connect => {
                if ns != ROOT && ns != WEBRTC {
                    conn.push_text(connect_error(ns, "Invalid namespace"));
                    return Ok(None);
                }
                if conn.has_namespace(ns) {
                    return Ok(None);
                }
                let auth: Auth = packet
                    .data
                    .and_then(|d| serde_json::from_str(d).ok())
                    .unwrap_or_default();
                if ns == WEBRTC {
                    return Ok(Some(
                        connect_webrtc(self.hub.clone(), conn.clone(), auth).boxed(),
                    ));
                }
                let recovery = (!self.window.is_zero()).then(|| self.stashes.clone());
                Ok(Some(
                    connect(self.hub.clone(), conn.clone(), auth, recovery).boxed(),
                ))
            }
            Kind::Disconnect => {
                drop(conn.remove_socket(ns));
                Ok(None)
            }
            Kind::Event | Kind::BinaryEvent => {
                let Some(session) = conn.session(ns) else {
                    // Not connected to that namespace: nothing to answer to.
                    return Ok(None);
                };
                Ok(self.event(&session, packet, attachments.is_empty()))
            }
            // The server asks for no acks; a client's is ignored.
            Kind::Ack | Kind::BinaryAck => Ok(None),
            Kind::ConnectError => Err(CloseReason::ProtocolError),
        }
    }

    /// An event for the hub: decoded into a request, answered (with the ack, if the
    /// client asked for one) by the hub.
    fn event(
        &self,
        session: &Arc<Session>,
        packet: socketio::Packet<'_>,
        text: bool,
    ) -> Option<Work> {
        let r = packet.id.map(|id| Ref::Number(id.into()));
        if !self.hub.admit(session) {
            // Told by an `error` event; a callback is answered too.
            if r.is_some() {
                session.error(&ErrorKind::RateLimited, r.as_ref());
            }
            return None;
        }
        let refuse = |e: ErrorKind| {
            session.error(&e, r.as_ref());
            None
        };
        if packet.data.is_some_and(|d| d.len() > self.max_event_bytes) {
            return refuse(ErrorKind::InvalidPayload(format!(
                "an event may carry at most {} bytes",
                self.max_event_bytes
            )));
        }
        if !text || packet.kind == Kind::BinaryEvent {
            return refuse(ErrorKind::InvalidPayload(
                "binary payloads are not accepted here".into(),
            ));
        }
        let (name, args) = match packet.event() {
            Ok((EventName::Text(name), args)) => (name, args),
            _ => return refuse(ErrorKind::InvalidFormat),
        };
        let data: Option<&RawValue> = args.first().copied();
        // A known type's payload must be an object (the protocol crate says so); a
        // custom type's may be any JSON.
        let request = match data {
            None => return refuse(ErrorKind::InvalidPayload("the event has no payload".into())),
            Some(d) => Request::from_event(&name, Some(d), Dialect::SocketIo),
        };
        let request = match request {
            Ok(request) => request,
            Err(e) => return refuse(e),
        };
        let hub = self.hub.clone();
        let session = session.clone();
        if session.wire == Wire::SocketIoRtc {
            let name = name.into_owned();
            return Some(
                async move {
                    let result = match request {
                        Request::JoinRoom(j) => {
                            hub.rtc_join(&session, &j.room_id, r.as_ref()).await
                        }
                        Request::LeaveRoom { room_id } => {
                            hub.rtc_leave(&session, &room_id, r.as_ref()).await
                        }
                        request @ (Request::Rtc(_) | Request::Ping) => {
                            hub.handle(&session, request, r.as_ref()).await
                        }
                        _ => Err(ErrorKind::UnknownType(name)),
                    };
                    if let Err(e) = &result {
                        session.error(e, r.as_ref());
                    }
                    if let Some(Ref::Number(n)) = &r
                        && let Some(id) = n.as_u64()
                    {
                        session.finish_ack(id);
                    }
                }
                .boxed(),
            );
        }
        Some(
            async move {
                let members_of = match &request {
                    Request::JoinRoom(j) => Some(j.room_id.clone()),
                    _ => None,
                };
                // These answer once the message is durable (or refused), later.
                let answers_itself = matches!(
                    request,
                    Request::SendMessage(_)
                        | Request::SendPrivateMessage(_)
                        | Request::ShareFile { .. }
                );
                let result = hub.handle(&session, request, r.as_ref()).await;
                match &result {
                    Err(e) => {
                        session.error(e, r.as_ref());
                    }
                    Ok(()) => {
                        // The original design follows `room_joined` with the members.
                        if let Some(room_id) = members_of {
                            let q = RoomMembersQuery {
                                room_id,
                                cursor: None,
                                limit: switchboard_protocol::ROOM_MEMBERS_DEFAULT_LIMIT,
                            };
                            let _ = hub.handle(&session, Request::RoomMembers(q), None).await;
                        }
                    }
                }
                if let Some(Ref::Number(n)) = &r
                    && let Some(id) = n.as_u64()
                    && (result.is_err() || !answers_itself)
                {
                    session.finish_ack(id);
                }
            }
            .boxed(),
        )
    }
}

/// Socket.IO's `connected`, as the original design has it: `socketId` (the native
/// protocol's `clientId`).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Connected<'a> {
    user: &'a UserInfo,
    socket_id: &'a str,
    timestamp: u64,
}

/// CONNECT to the main namespace: authenticate, then recover the socket's state if
/// the client asks and it can be, else register a new hub session. The session's first
/// packets are the CONNECT answer and `connected`.
async fn connect(hub: Hub, conn: Arc<Conn>, auth: Auth, recovery: Option<Arc<Stashes>>) {
    let identity = match hub.authenticate(auth.token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            hub.metrics().auth_failures.increment(1);
            tracing::debug!(reason = %e, "socket.io authentication failed");
            conn.push_text(connect_error(ROOT, "Authentication failed"));
            return;
        }
    };
    let user = identity.user.id.clone();
    // A recovering client: its stash, and where each of its rooms resumes.
    let mut resume = None;
    let found = match (&recovery, &auth.pid) {
        (Some(stashes), Some(pid)) => stashes.take(pid, &user).await,
        _ => None,
    };
    if let Some(found) = found {
        let captured = found.captured;
        let marker = auth
            .offset
            .as_deref()
            .and_then(socketio_encode::parse_marker)
            .map(|(room, offset, _)| (room, offset));
        if let Some(mut points) = recovery::resume_points(&captured, marker) {
            points.extend(recovery::new_conversations(&hub, &user, &captured).await);
            resume = Some((found.client_id, captured, points));
        }
    }
    let greet = |session: &Session| {
        let mut answer = serde_json::json!({ "sid": &*session.client_id });
        // The private session id: the socket's id signed, so it is kept nowhere.
        if let Some(stashes) = &recovery {
            answer["pid"] = serde_json::Value::from(stashes.pid(&session.client_id));
        }
        let answer = socketio::message(Kind::Connect, 0, ROOT, None, Some(&answer.to_string()));
        session.push_frame(answer.into());
        let hello = Connected {
            user: session.user(),
            socket_id: &session.client_id,
            timestamp: now_millis(),
        };
        session.reply("connected", &hello, None);
    };
    let client_id = resume.as_ref().map(|(id, ..)| id.clone());
    let registration = match hub
        .connect_as(identity, Wire::SocketIo, client_id, greet)
        .await
    {
        Ok(registration) => registration,
        Err(ConnectError::TooManyConnections) => {
            conn.push_text(connect_error(ROOT, "Too many connections"));
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "socket.io connection refused");
            conn.push_text(connect_error(ROOT, "Internal error"));
            return;
        }
    };
    let session = registration.session().clone();
    if recovery.is_some() {
        session.keep_trail();
    }
    let mut recovered = true;
    if let Some((_, captured, points)) = &resume {
        for (room, since) in points {
            let ok = if captured.rooms.contains(room) {
                hub.rejoin(&session, room, *since, None)
                    .await
                    .map(|j| j.recovered == Some(true))
            } else if room.starts_with(switchboard_protocol::DM_ROOM_PREFIX) {
                hub.replay_conversation(&session, room, *since).await
            } else {
                Ok(true)
            };
            if !matches!(ok, Ok(true)) {
                recovered = false;
                break;
            }
        }
    }
    let socket = Socket {
        namespace: ROOT,
        registration: Some(registration),
    };
    // A connection closed meanwhile drops the registration here.
    if conn.add_socket(socket).is_err() {
        return;
    }
    if !recovered {
        // Part of the state could not be replayed: the client reconnects and, its
        // stash gone, learns it must reload (`recovered` false).
        tracing::info!(client = %session.client_id, "socket.io recovery incomplete; closing");
        session.close(switchboard_protocol::CloseCode::SlowConsumer);
    }
}

/// CONNECT to `/webrtc`: a signaling peer whose id is its socket id, or the `peerId`
/// the client asks for (query or auth) when it is well-formed and unused.
async fn connect_webrtc(hub: Hub, conn: Arc<Conn>, auth: Auth) {
    let identity = match hub.authenticate(auth.token.as_deref()) {
        Ok(identity) => identity,
        Err(_) => {
            hub.metrics().auth_failures.increment(1);
            conn.push_text(connect_error(WEBRTC, "Authentication failed"));
            return;
        }
    };
    let wanted = auth
        .peer_id
        .or_else(|| conn.peer_id.as_deref().map(str::to_string))
        .filter(|p| switchboard_protocol::is_valid_client_message_id(p))
        .map(Arc::<str>::from);
    let greet = |session: &Session| {
        session.push_frame(connect_ok(WEBRTC, &session.client_id));
    };
    let registration = match hub
        .connect_as(identity, Wire::SocketIoRtc, wanted, greet)
        .await
    {
        Ok(registration) => registration,
        Err(e) => {
            tracing::error!(error = %e, "socket.io /webrtc connection refused");
            conn.push_text(connect_error(WEBRTC, "Internal error"));
            return;
        }
    };
    let socket = Socket {
        namespace: WEBRTC,
        registration: Some(registration),
    };
    let _ = conn.add_socket(socket);
}
