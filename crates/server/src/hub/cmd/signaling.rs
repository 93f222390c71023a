//! The rooms of Socket.IO's `/webrtc` namespace, the original design's signaling
//! manager: peers (sockets of that namespace) join a signaling room and learn who else
//! is there (`room_peers`); the others hear `peer_joined` and, when a peer leaves or
//! goes away, `peer_left`. Offers, answers and ICE candidates are relayed by
//! `rtc::run` to a peer of a shared room only.
//!
//! A signaling room is the hub room `webrtc/<roomId>`: apart from the chat room of the
//! same name (a client can not name it, `/` is not a room id character), on every node
//! through the broker, its peers listed by presence.

use std::sync::Arc;

use switchboard_protocol::{
    ErrorKind, PeerJoined, PeerLeft, Ref, RoomLeft, RoomPeers, RtcPeer, is_valid_room_id,
    now_millis,
};

use super::{internal, leave};
use crate::encode::Event;
use crate::hub::{Hub, Session};

/// The hub rooms of signaling: `webrtc/<roomId>`.
pub const RTC_ROOM_PREFIX: &str = "webrtc/";

fn key(room_id: &str) -> Result<Arc<str>, ErrorKind> {
    if !is_valid_room_id(room_id) {
        return Err(ErrorKind::InvalidRoomId);
    }
    Ok(format!("{RTC_ROOM_PREFIX}{room_id}").into())
}

impl Hub {
    /// `join_room` on `/webrtc`: answers `room_peers`; the room's others get
    /// `peer_joined`.
    pub async fn rtc_join(
        &self,
        session: &Arc<Session>,
        room_id: &str,
        r: Option<&Ref>,
    ) -> Result<(), ErrorKind> {
        let room = key(room_id)?;
        let fresh = !session.in_room(&room);
        if fresh {
            self.subscribe(session, room.to_string(), None, None, 0)
                .await?;
            if let Err(e) = self.presence().join(&room, session.device()).await {
                leave::leave(self, session, &room).await;
                return Err(internal("presence", e));
            }
        }
        let limit = self.settings().join_list_limit;
        let peers = self
            .presence()
            .peers(&room, &session.client_id, limit)
            .await
            .map_err(|e| internal("presence", e))?
            .into_iter()
            .map(|p| RtcPeer {
                id: p.client_id.to_string(),
                user_info: p.user,
                joined_at: p.joined_at,
            })
            .collect();
        let answer = RoomPeers {
            room_id: room_id.to_string(),
            peers,
        };
        session.reply("room_peers", &answer, r);
        if fresh {
            let joined = PeerJoined {
                peer_id: session.client_id.to_string(),
                user_info: session.user().clone(),
                timestamp: now_millis(),
            };
            let event = Arc::new(Event::new("peer_joined", &joined));
            self.publish_event(room, event, Some(session.client_id.clone()))
                .await;
        }
        Ok(())
    }

    /// `leave_room` on `/webrtc`: the room's others get `peer_left`; the peer gets
    /// `room_left`.
    pub async fn rtc_leave(
        &self,
        session: &Arc<Session>,
        room_id: &str,
        r: Option<&Ref>,
    ) -> Result<(), ErrorKind> {
        let room = key(room_id)?;
        if !leave::leave(self, session, &room).await {
            return Err(ErrorKind::NotInRoom);
        }
        self.presence().leave(&room, session.device());
        let left = Arc::new(Event::new("peer_left", &PeerLeft::now(&session.client_id)));
        self.publish_event(room, left, None).await;
        let answer = RoomLeft {
            room_id: room_id.to_string(),
            timestamp: now_millis(),
        };
        session.reply("room_left", &answer, r);
        Ok(())
    }
}
