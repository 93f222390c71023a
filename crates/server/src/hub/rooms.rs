//! The node's room subscription index and fan-out.
//!
//! Rooms are spread over shards by name; each shard is a short mutex, never held across
//! an `.await`, and nothing is encoded, formatted or stored while one is held: fan-out
//! only clones bytes prepared before (see [`Event::prepare`]). Members are kept in a map
//! with O(1) insert and remove, so a room of N fills in O(N).
//!
//! A join is *pending* while the hub prepares it (reply, replay from the store): live
//! events of the room are buffered for the joiner meanwhile, then
//! [`RoomIndex::finish_join`] queues them (without the ones the replay already had)
//! and makes it a member, in one step under the room's lock. A message can be
//! committed (so replayed) before it is published; the session's floor for the room
//! drops that one when it arrives live. Pending joins are bounded like an outbox: a
//! joiner whose buffer overflows is a slow consumer.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use indexmap::IndexMap;
use parking_lot::Mutex;
use switchboard_protocol::CloseCode;

use super::session::Session;
use crate::broker::Envelope;
use crate::encode::{Event, FORMATS, Format, FormatSet};

const SHARDS: usize = 64;

/// A room's members on this node. Most rooms are personal rooms with one device:
/// that one is kept inline.
#[derive(Default)]
enum Members {
    #[default]
    Empty,
    One(Arc<Session>),
    /// Boxed: the map is large and most rooms never need it.
    Many(Box<IndexMap<u64, Arc<Session>>>),
}

impl Members {
    fn len(&self) -> usize {
        match self {
            Members::Empty => 0,
            Members::One(_) => 1,
            Members::Many(m) => m.len(),
        }
    }

    fn contains(&self, id: u64) -> bool {
        match self {
            Members::Empty => false,
            Members::One(s) => s.id == id,
            Members::Many(m) => m.contains_key(&id),
        }
    }

    /// Adds `s`; false if it was there.
    fn insert(&mut self, s: Arc<Session>) -> bool {
        match self {
            Members::Empty => *self = Members::One(s),
            Members::One(one) if one.id == s.id => return false,
            Members::One(_) => {
                let Members::One(one) = std::mem::take(self) else {
                    unreachable!()
                };
                let mut m = Box::new(IndexMap::with_capacity(2));
                m.insert(one.id, one);
                m.insert(s.id, s);
                *self = Members::Many(m);
            }
            Members::Many(m) => return m.insert(s.id, s).is_none(),
        }
        true
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Session>> {
        match self {
            Members::One(s) if s.id == id => match std::mem::take(self) {
                Members::One(s) => Some(s),
                _ => unreachable!(),
            },
            Members::Many(m) => m.swap_remove(&id),
            _ => None,
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Arc<Session>)) {
        match self {
            Members::Empty => {}
            Members::One(s) => f(s),
            Members::Many(m) => m.values().for_each(f),
        }
    }
}

struct Pending {
    session: Arc<Session>,
    /// Live events that arrived meanwhile.
    buffered: Vec<Arc<Event>>,
    bytes: usize,
}

#[derive(Default)]
struct Room {
    members: Members,
    pending: Vec<Pending>,
    /// Members by format.
    formats: [u32; FORMATS],
}

impl Room {
    fn is_empty(&self) -> bool {
        self.members.len() == 0 && self.pending.is_empty()
    }
}

type Shard = HashMap<Arc<str>, Room>;

pub struct RoomIndex {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Sessions of this node by format: the formats fan-out prepares.
    live: [AtomicUsize; FORMATS],
}

impl Default for RoomIndex {
    fn default() -> Self {
        RoomIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
            live: Default::default(),
        }
    }
}

/// A room's local members, by format.
#[derive(Debug, Clone)]
pub struct LocalRoom {
    pub room: Arc<str>,
    pub by_format: [u32; FORMATS],
}

impl LocalRoom {
    pub fn total(&self) -> usize {
        self.by_format.iter().map(|n| *n as usize).sum()
    }
}

impl RoomIndex {
    fn shard(&self, room: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(room) as usize % SHARDS]
    }

    pub fn session_opened(&self, format: Format) {
        self.live[format.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_closed(&self, format: Format) {
        self.live[format.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// The formats some session of this node speaks.
    pub fn live_formats(&self) -> FormatSet {
        Format::ALL
            .iter()
            .filter(|f| self.live[f.index()].load(Ordering::Relaxed) > 0)
            .fold(FormatSet::default(), |set, f| set.with(*f))
    }

    /// Queues `env` for every member of its room (and buffers it for pending joins).
    /// Returns how many members received it.
    pub fn deliver(&self, env: &Envelope) -> usize {
        // Encoding happens here, before the lock. A session of a new format that
        // connects and joins in between gets its encoding made under the lock, once.
        env.event.prepare(self.live_formats());
        let excluded = |s: &Session| {
            env.exclude.as_deref() == Some(&*s.client_id)
                || env
                    .only
                    .as_deref()
                    .is_some_and(|only| only != &*s.client_id)
        };
        let mut shard = self.shard(&env.room).lock();
        let Some(room) = shard.get_mut(&env.room) else {
            return 0;
        };
        for p in &mut room.pending {
            if excluded(&p.session) {
                continue;
            }
            let limits = p.session.limits();
            p.bytes += env.event.data().len();
            if p.buffered.len() >= limits.max_frames || p.bytes > limits.max_bytes {
                // The joiner fell behind before it even joined.
                p.buffered = Vec::new();
                p.session.close(CloseCode::SlowConsumer);
                continue;
            }
            p.buffered.push(env.event.clone());
        }
        let mut delivered = 0;
        room.members.for_each(|s| {
            if !excluded(s) && s.push_event(&env.room, &env.event) {
                delivered += 1;
            }
        });
        delivered
    }

    /// Starts a join: the room's live events are buffered for `session` until
    /// [`finish_join`](Self::finish_join) or [`abort_join`](Self::abort_join).
    pub fn begin_join(&self, room: &Arc<str>, session: &Arc<Session>) {
        session.clear_floor(room);
        let mut shard = self.shard(room).lock();
        shard
            .entry(room.clone())
            .or_default()
            .pending
            .push(Pending {
                session: session.clone(),
                buffered: Vec::new(),
                bytes: 0,
            });
    }

    /// Drops a join that did not complete.
    pub fn abort_join(&self, room: &str, session: u64) {
        let mut shard = self.shard(room).lock();
        if let Some(r) = shard.get_mut(room) {
            r.pending.retain(|p| p.session.id != session);
            if r.is_empty() {
                shard.remove(room);
            }
        }
    }

    /// Makes `session` a member, under the room's lock, so before any later live event
    /// can reach it: queues the events buffered since [`begin_join`](Self::begin_join)
    /// whose offset is past `replayed_to`. Returns false if it was a member already.
    pub fn finish_join(
        &self,
        room: &Arc<str>,
        session: &Arc<Session>,
        replayed_to: Option<u64>,
    ) -> bool {
        let mut shard = self.shard(room).lock();
        let r = shard.entry(room.clone()).or_default();
        let buffered = match r.pending.iter().position(|p| p.session.id == session.id) {
            Some(i) => r.pending.swap_remove(i).buffered,
            None => Vec::new(),
        };
        if r.pending.is_empty() {
            // Joins are rare next to the room's life: hold no spare capacity.
            r.pending = Vec::new();
        }
        if r.members.contains(session.id) {
            return false;
        }
        let mut last = replayed_to;
        for event in buffered {
            let offset = event.offset();
            let seen = matches!((offset, last), (Some(o), Some(upto)) if o <= upto);
            if !seen {
                session.push_event(room, &event);
                last = offset.or(last);
            }
        }
        // What was committed and replayed but is not yet published will still arrive
        // live; the floor drops it then.
        if let Some(upto) = last {
            session.set_floor(room.clone(), upto);
        }
        r.formats[session.format.index()] += 1;
        r.members.insert(session.clone());
        true
    }

    /// Makes `session` a member of a room nobody else can be joining: its personal room.
    pub fn insert(&self, room: &Arc<str>, session: &Arc<Session>) {
        let mut shard = self.shard(room).lock();
        let r = shard.entry(room.clone()).or_default();
        if r.members.insert(session.clone()) {
            r.formats[session.format.index()] += 1;
        }
    }

    /// Removes `session` from `room`; returns whether it was a member.
    pub fn leave(&self, room: &str, session: u64) -> bool {
        let mut shard = self.shard(room).lock();
        let Some(r) = shard.get_mut(room) else {
            return false;
        };
        let removed = r.members.remove(session);
        if let Some(s) = &removed {
            r.formats[s.format.index()] -= 1;
        }
        if r.is_empty() {
            shard.remove(room);
        }
        removed.is_some()
    }

    /// How many sessions of this node are in `room`.
    pub fn member_count(&self, room: &str) -> usize {
        self.shard(room)
            .lock()
            .get(room)
            .map_or(0, |r| r.members.len())
    }

    /// Rooms with at least one member on this node, with their members by format.
    pub fn rooms(&self) -> Vec<LocalRoom> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(
                shard
                    .lock()
                    .iter()
                    .filter(|(_, r)| r.members.len() > 0)
                    .map(|(k, r)| LocalRoom {
                        room: k.clone(),
                        by_format: r.formats,
                    }),
            );
        }
        out
    }

    /// Sessions with a join in progress, over every room (0 when nothing is joining).
    pub fn pending_joins(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().map(|r| r.pending.len()).sum::<usize>())
            .sum()
    }
}
