//! `join_room {roomId, exclusive, since, epoch}`: subscribe, answer `room_joined`,
//! replay what was missed, announce. SSE subscriptions and `?room=` joins take the
//! same path.
//!
//! The steps, each undone by [`JoinGuard`] if a later one fails or the join is dropped
//! halfway (a client that goes away mid-recovery leaves nothing registered):
//!
//! 1. pending in the room index: from here on the room's live events are buffered for
//!    the joiner;
//! 2. the broker subscription (resolves once the room's traffic reaches this node);
//! 3. presence, and the user's durable membership of the room;
//! 4. the room's head, `{offset, epoch}`, from the store;
//! 5. with `since`: whether the gap can be replayed (same epoch, not beyond the head,
//!    within the count and byte bounds);
//! 6. `room_joined`, built and encoded outside any lock, with at most
//!    `join_list_limit` members and peers;
//! 7. the replay, streamed from the store into the outbox one message at a time;
//! 8. membership, with the events buffered since step 1 that follow the head, in one
//!    step under the room's lock;
//! 9. the announcement, while the room has at most `announce_max_members`.
//!
//! A message published after step 1 reaches the joiner live; one committed before
//! step 4 is at or below the head: replayed, or (without `since`) before the point
//! `room_joined` reports. None falls between, none arrives twice.

use std::sync::Arc;

use futures_util::StreamExt;
use switchboard_protocol::{
    DM_ROOM_PREFIX, ErrorKind, JoinRoom, Peer, Ref, RoomJoined, RoomMembership, SYSTEM_ROOM,
    UserInfo, UserJoined, is_valid_room_id, now_millis, personal_room,
};

use super::{internal, leave, store_error};
use crate::encode::{Event, Frame, encode_at, reply};
use crate::hub::{Hub, Session};
use crate::position::Position;
use crate::presence::RoomCounts;
use crate::store::{WriteOp, WriteOutcome};

/// How the room hears about a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// `user_joined_room`: an explicit `join_room`.
    JoinedRoom,
    /// `user_joined`: the `room` query parameter at connect.
    Joined,
    /// Nothing: a listener (an SSE stream).
    Quiet,
}

#[derive(Debug, Clone, Copy)]
pub struct JoinOptions {
    pub announce: Announce,
    /// Most payload bytes the replay may send.
    pub replay_budget: usize,
    /// Whether the joiner gets `room_joined` (a recovery restores rooms silently).
    pub reply: bool,
}

impl JoinOptions {
    /// A client's `join_room`.
    pub fn request(hub: &Hub) -> JoinOptions {
        JoinOptions {
            announce: Announce::JoinedRoom,
            replay_budget: hub.settings().recovery_max_bytes,
            reply: true,
        }
    }
}

/// What a join found.
#[derive(Debug, Clone)]
pub struct Joined {
    /// With `since`: whether every missed message was replayed.
    pub recovered: Option<bool>,
    /// The room's head when the joiner became a member.
    pub position: Position,
    /// Payload bytes replayed.
    pub replayed_bytes: usize,
}

/// Undoes a join's registrations unless it completed.
struct JoinGuard<'a> {
    hub: &'a Hub,
    session: &'a Arc<Session>,
    room: Arc<str>,
    subscribed: bool,
    in_presence: bool,
    done: bool,
}

impl<'a> JoinGuard<'a> {
    fn begin(hub: &'a Hub, session: &'a Arc<Session>, room: Arc<str>) -> JoinGuard<'a> {
        hub.rooms().begin_join(&room, session);
        JoinGuard {
            hub,
            session,
            room,
            subscribed: false,
            in_presence: false,
            done: false,
        }
    }
}

impl Drop for JoinGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.hub.rooms().abort_join(&self.room, self.session.id);
        if self.subscribed {
            self.hub.broker().unsubscribe(&self.room);
        }
        if self.in_presence {
            self.hub.presence().leave(&self.room, self.session.device());
        }
    }
}

pub(super) async fn run(
    hub: &Hub,
    session: &Arc<Session>,
    j: JoinRoom,
    r: Option<&Ref>,
    opts: JoinOptions,
) -> Result<Joined, ErrorKind> {
    // A signaling room is allowed as the room it signals for.
    let allowed = j
        .room_id
        .strip_prefix(super::signaling::RTC_ROOM_PREFIX)
        .unwrap_or(&j.room_id);
    if !hub.verifier().may_join(&session.identity, allowed) {
        return Err(ErrorKind::Forbidden);
    }
    let room: Arc<str> = j.room_id.into();
    let participant = session.wire.participates();
    let own_personal = participant && *room == *personal_room(&session.user().id);
    if session.in_room(&room) || own_personal {
        // Already there: answer with the room as it is.
        let head = hub
            .head(&room)
            .await
            .map_err(|e| store_error("reading a room's head", e))?;
        if participant {
            let counts = hub
                .presence()
                .counts(&room)
                .await
                .map_err(|e| internal("presence", e))?;
            let joined = room_joined(hub, session, &room, counts, &head, None, r).await?;
            session.push_frame(joined);
        }
        return Ok(Joined {
            recovered: None,
            position: head,
            replayed_bytes: 0,
        });
    }
    if j.exclusive {
        // Moving on ends the subscriptions, not the memberships.
        for other in session.rooms() {
            if other != room {
                leave::leave(hub, session, &other).await;
            }
        }
    }
    if session.room_count() >= hub.settings().max_rooms_per_connection {
        return Err(ErrorKind::TooManyRooms);
    }

    // A member from now on, before it hears it joined: what it does next may need it.
    // Stored before the room sees the joiner, so that this wait does not open a window
    // in which others join, are listed in its `room_joined` and hear of it again.
    if participant && &*room != SYSTEM_ROOM {
        remember_member(hub, session, &room).await?;
    }
    let mut guard = JoinGuard::begin(hub, session, room.clone());
    hub.broker()
        .subscribe(&room)
        .await
        .map_err(|e| internal("subscribing to a room", e))?;
    guard.subscribed = true;
    let counts = if participant {
        let counts = hub
            .presence()
            .join(&room, session.device())
            .await
            .map_err(|e| internal("presence", e))?;
        guard.in_presence = true;
        Some(counts)
    } else {
        None
    };
    let head = hub
        .head(&room)
        .await
        .map_err(|e| store_error("reading a room's head", e))?;
    let recovered = match j.since {
        Some(since) => Some(
            recoverable(
                hub,
                &room,
                since,
                j.epoch.as_deref(),
                &head,
                opts.replay_budget,
            )
            .await?,
        ),
        None => None,
    };
    // What this membership delivers starts after here (Socket.IO recovery's trail).
    let start = match (recovered, j.since) {
        (Some(true), Some(since)) => since,
        _ => head.offset,
    };
    session.trail_base(&room, start);
    if let (Some(counts), true) = (counts, opts.reply) {
        let joined = room_joined(hub, session, &room, counts, &head, recovered, r).await?;
        session.push_frame(joined);
    }
    let mut replayed_bytes = 0;
    if let (Some(true), Some(since)) = (recovered, j.since) {
        replayed_bytes = replay(hub, session, &room, since, &head).await?;
    }
    // Every join starts after the head it reports: what the joiner has (replayed) or
    // was told it must load (`recovered: false`) ends there, live delivery follows.
    hub.rooms().finish_join(&room, session, Some(head.offset));
    guard.done = true;
    session.add_room(room.clone());

    if let Some(counts) = counts
        && counts.connections <= hub.settings().announce_max_members
    {
        announce(hub, session, room, opts.announce).await;
    }
    Ok(Joined {
        recovered,
        position: head,
        replayed_bytes,
    })
}

/// Records that the user is a member of `room` (a disconnect does not end that; only
/// `leave_room` does). A new member may be owed notification entries later.
async fn remember_member(hub: &Hub, session: &Session, room: &str) -> Result<(), ErrorKind> {
    let added = hub
        .store()
        .write(WriteOp::AddMember {
            room: room.to_string(),
            user: session.user().id.clone(),
            at: now_millis(),
        })
        .await
        .map_err(|e| store_error("storing a membership", e))?;
    if added == WriteOutcome::Changed(true) {
        hub.unsettle(vec![room.to_string()]).await;
    }
    Ok(())
}

/// Whether the messages after `since` can be replayed now.
async fn recoverable(
    hub: &Hub,
    room: &str,
    since: u64,
    epoch: Option<&str>,
    head: &Position,
    budget: usize,
) -> Result<bool, ErrorKind> {
    // Another history, or a position this one never reached: trusting it would
    // skip messages or replay the wrong ones.
    if epoch.is_some_and(|e| e != &*head.epoch) || since > head.offset {
        return Ok(false);
    }
    if since == head.offset {
        return Ok(true);
    }
    let max = hub.settings().recovery_max_messages;
    let gap = hub
        .store()
        .gap(room, since, head.offset, max)
        .await
        .map_err(|e| store_error("measuring a recovery", e))?;
    Ok(gap.messages <= u64::from(max) && gap.bytes <= budget as u64)
}

/// Streams the messages after `since` up to the head into the session's outbox;
/// returns the payload bytes sent.
async fn replay(
    hub: &Hub,
    session: &Session,
    room: &Arc<str>,
    since: u64,
    head: &Position,
) -> Result<usize, ErrorKind> {
    let mut rows = hub.store().replay(room, since, head.offset);
    let kind = if room.starts_with(DM_ROOM_PREFIX) {
        "private_message"
    } else {
        "new_message"
    };
    let mut bytes = 0;
    while let Some(message) = rows.next().await {
        let message = message.map_err(|e| store_error("recovery read", e))?;
        bytes += message.data.len();
        let position = Position::new(message.offset, head.epoch.clone());
        let frame = encode_at(session.format, kind, &message.data, Some((room, &position)));
        if !session.push_room_frame(room, Some(&position), frame) {
            // Closing (its outbox overflowed): the rest would go nowhere.
            break;
        }
    }
    Ok(bytes)
}

/// `room_joined` for `session`: at most `join_list_limit` members (the joiner first)
/// and peers, with the totals beside them.
async fn room_joined(
    hub: &Hub,
    session: &Session,
    room: &str,
    counts: RoomCounts,
    head: &Position,
    recovered: Option<bool>,
    r: Option<&Ref>,
) -> Result<Frame, ErrorKind> {
    let limit = hub.settings().join_list_limit;
    let presence = hub.presence();
    let page = presence
        .members(room, None, limit)
        .await
        .map_err(|e| internal("presence", e))?;
    let me = session.user();
    let mut members = Vec::with_capacity(limit.min(page.members.len() + 1));
    members.push(me.clone());
    members.extend(
        page.members
            .into_iter()
            .filter(|m| m.id != me.id)
            .take(limit.saturating_sub(1))
            .map(|m| UserInfo {
                id: m.id,
                username: m.username,
                avatar: m.avatar,
            }),
    );
    let peers = presence
        .peers(room, &session.client_id, limit)
        .await
        .map_err(|e| internal("presence", e))?
        .into_iter()
        .map(|p| Peer {
            peer_id: p.client_id.to_string(),
            user: p.user,
        })
        .collect();
    let joined = RoomJoined {
        room_id: room.to_string(),
        timestamp: now_millis(),
        members,
        peers,
        member_count: counts.users.max(1),
        peer_count: counts.connections.saturating_sub(1),
        epoch: head.epoch.to_string(),
        offset: head.offset,
        recovered,
    };
    Ok(reply(session.format, "room_joined", &joined, r))
}

async fn announce(hub: &Hub, session: &Session, room: Arc<str>, how: Announce) {
    let (user, timestamp) = (session.user().clone(), now_millis());
    let event = match how {
        Announce::Quiet => return,
        Announce::JoinedRoom => Event::new(
            "user_joined_room",
            &RoomMembership {
                user,
                room_id: room.to_string(),
                peer_id: session.client_id.to_string(),
                timestamp,
            },
        ),
        Announce::Joined => Event::new("user_joined", &UserJoined { user, timestamp }),
    };
    hub.publish_event(room, Arc::new(event), Some(session.client_id.clone()))
        .await;
}

impl Hub {
    /// Joins the room named at connect (`?room=`); the room hears `user_joined`. A
    /// failure is told to the client as an `error`; the connection stays.
    pub async fn join_at_connect(&self, session: &Arc<Session>, room_id: String) {
        let result = if is_valid_room_id(&room_id) {
            let join = JoinRoom {
                room_id,
                exclusive: true,
                since: None,
                epoch: None,
            };
            let opts = JoinOptions {
                announce: Announce::Joined,
                ..JoinOptions::request(self)
            };
            run(self, session, join, None, opts).await.map(|_| ())
        } else {
            Err(ErrorKind::InvalidRoomId)
        };
        if let Err(e) = result {
            session.error(&e, None);
        }
    }

    /// Joins `room` again after a reconnect, replaying what followed `since` (of
    /// `epoch`), without `room_joined`: Socket.IO's connection state recovery.
    pub async fn rejoin(
        &self,
        session: &Arc<Session>,
        room: &str,
        since: u64,
        epoch: Option<String>,
    ) -> Result<Joined, ErrorKind> {
        let join = JoinRoom {
            room_id: room.to_string(),
            exclusive: false,
            since: Some(since),
            epoch,
        };
        let opts = JoinOptions {
            reply: false,
            ..JoinOptions::request(self)
        };
        run(self, session, join, None, opts).await
    }

    /// Replays the private messages of conversation `room` after `since` to `session`
    /// (a recovery: its user's personal room already delivers new ones live; what it
    /// queued is not sent twice). False when the gap is too large to replay.
    pub async fn replay_conversation(
        &self,
        session: &Arc<Session>,
        room: &Arc<str>,
        since: u64,
    ) -> Result<bool, ErrorKind> {
        let head = self
            .head(room)
            .await
            .map_err(|e| store_error("reading a room's head", e))?;
        if since >= head.offset {
            return Ok(since == head.offset);
        }
        let budget = self.settings().recovery_max_bytes;
        if !recoverable(self, room, since, None, &head, budget).await? {
            return Ok(false);
        }
        let mut rows = self.store().replay(room, since, head.offset);
        while let Some(message) = rows.next().await {
            let message = message.map_err(|e| store_error("recovery read", e))?;
            if session.queued(room, message.offset) {
                continue;
            }
            let position = Position::new(message.offset, head.epoch.clone());
            let frame = encode_at(
                session.format,
                "private_message",
                &message.data,
                Some((room, &position)),
            );
            if !session.push_room_frame(room, Some(&position), frame) {
                break;
            }
        }
        session.set_floor(room.clone(), head.offset);
        Ok(true)
    }

    /// Subscribes a listener (an SSE stream) to a room quietly, replaying what follows
    /// `since` within `replay_budget` bytes.
    pub async fn subscribe(
        &self,
        session: &Arc<Session>,
        room_id: String,
        since: Option<u64>,
        epoch: Option<String>,
        replay_budget: usize,
    ) -> Result<Joined, ErrorKind> {
        let join = JoinRoom {
            room_id,
            exclusive: false,
            since,
            epoch,
        };
        let opts = JoinOptions {
            announce: Announce::Quiet,
            replay_budget,
            reply: true,
        };
        run(self, session, join, None, opts).await
    }
}
