//! The node's room membership index and fan-out.
//!
//! Rooms are spread over shards by name; each shard is a short mutex, never held across
//! an `.await`. Fan-out pushes the same shared bytes into every member's outbox while
//! holding the room's shard, so every member of a room sees one order of events.
//!
//! A session that joins with `since` is first *recovering*: live events for the room
//! are buffered for it while its missed messages are read from the store, then
//! [`RoomIndex::finish_join`] queues the reply, the replay and the buffered events
//! (without the ones the replay already had) and makes it a member, in one step.
//! A message can be committed (so replayed) before it is published; the session's
//! floor for the room drops that one when it arrives live.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::session::{Session, Text};
use crate::broker::Envelope;

const SHARDS: usize = 64;

#[derive(Default)]
struct Room {
    /// Inline for one member: most rooms are personal rooms with one device.
    members: SmallVec<[Arc<Session>; 1]>,
    recovering: Vec<Recovery>,
}

struct Recovery {
    session: u64,
    /// Live events that arrived meanwhile, with their offsets if durable.
    buffered: Vec<(Option<u64>, Text)>,
}

type Shard = HashMap<Arc<str>, Room>;

pub struct RoomIndex {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Default for RoomIndex {
    fn default() -> Self {
        RoomIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl RoomIndex {
    fn shard(&self, room: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(room) as usize % SHARDS]
    }

    /// Queues `env` for every member of its room. Returns how many received it.
    pub fn deliver(&self, env: &Envelope) -> usize {
        let mut shard = self.shard(&env.room).lock();
        let Some(room) = shard.get_mut(&env.room) else {
            return 0;
        };
        for r in &mut room.recovering {
            if Some(r.session) != env.exclude {
                r.buffered.push((env.offset, env.frame.clone()));
            }
        }
        let mut delivered = 0;
        for s in &room.members {
            if Some(s.id) != env.exclude && s.push_event(env) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Starts buffering the room's live events for `session` (a join with `since`).
    pub fn begin_recovery(&self, room: &Arc<str>, session: u64) {
        let mut shard = self.shard(room).lock();
        shard
            .entry(room.clone())
            .or_default()
            .recovering
            .push(Recovery {
                session,
                buffered: Vec::new(),
            });
    }

    /// Drops a recovery that failed, without joining.
    pub fn abort_recovery(&self, room: &str, session: u64) {
        let mut shard = self.shard(room).lock();
        if let Some(r) = shard.get_mut(room) {
            r.recovering.retain(|x| x.session != session);
            if r.members.is_empty() && r.recovering.is_empty() {
                shard.remove(room);
            }
        }
    }

    /// Makes `session` a member. Under the room's lock, so before any live event can
    /// reach it: calls `first` with the current members (the joiner not yet among them)
    /// to queue the reply and replay, then queues the events buffered during recovery
    /// whose offset is past `replayed_to`. Returns false if it was a member already.
    pub fn finish_join(
        &self,
        room: &Arc<str>,
        session: &Arc<Session>,
        replayed_to: Option<u64>,
        first: impl FnOnce(&[Arc<Session>]),
    ) -> bool {
        let mut shard = self.shard(room).lock();
        let r = shard.entry(room.clone()).or_default();
        let buffered = match r.recovering.iter().position(|x| x.session == session.id) {
            Some(i) => r.recovering.swap_remove(i).buffered,
            None => Vec::new(),
        };
        if r.members.iter().any(|m| m.id == session.id) {
            return false;
        }
        first(&r.members);
        let mut last = replayed_to;
        for (offset, frame) in buffered {
            let seen = matches!((offset, last), (Some(o), Some(upto)) if o <= upto);
            if !seen {
                session.push_room_frame(room, offset, frame);
                last = offset.or(last);
            }
        }
        // What was committed and replayed but is not yet published will still arrive
        // live; the floor drops it then.
        if let Some(upto) = last {
            session.set_floor(room.clone(), upto);
        }
        r.members.push(session.clone());
        true
    }

    /// Removes `session` from `room`; returns whether it was a member.
    pub fn leave(&self, room: &str, session: u64) -> bool {
        let mut shard = self.shard(room).lock();
        let Some(r) = shard.get_mut(room) else {
            return false;
        };
        let before = r.members.len();
        r.members.retain(|m| m.id != session);
        let was = r.members.len() != before;
        if r.members.is_empty() && r.recovering.is_empty() {
            shard.remove(room);
        }
        was
    }

    /// The room's current members.
    pub fn members(&self, room: &str) -> Vec<Arc<Session>> {
        self.shard(room)
            .lock()
            .get(room)
            .map(|r| r.members.to_vec())
            .unwrap_or_default()
    }

    /// How many sessions are in `room`.
    pub fn member_count(&self, room: &str) -> usize {
        self.shard(room)
            .lock()
            .get(room)
            .map_or(0, |r| r.members.len())
    }

    /// Rooms with at least one member, and their member counts.
    pub fn counts(&self) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(
                shard
                    .lock()
                    .iter()
                    .filter(|(_, r)| !r.members.is_empty())
                    .map(|(k, r)| (k.clone(), r.members.len())),
            );
        }
        out
    }
}
