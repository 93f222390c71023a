//! This node's own connections and their rooms, in memory: what its heartbeat
//! re-asserts in Redis. It is the node's truth: an operation changes it and queues its
//! Redis call under the same shard lock, so that Redis sees each connection's
//! operations in the order the map saw them.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

const SHARDS: usize = 64;
/// Failed removals kept per shard for the next heartbeat; beyond, they are left to
/// expire (within the TTL).
const MAX_FORGOTTEN: usize = 1024;

/// One connection of this node: ~200 bytes with its user and a room or two.
pub(super) struct Conn {
    pub uid: Box<str>,
    /// The user as JSON, as Redis stores it.
    pub user: Box<str>,
    pub transport: &'static str,
    /// Recorded by `connect` (a device), not only by joins.
    pub device: bool,
    pub rooms: SmallVec<[Box<str>; 2]>,
}

#[derive(Default)]
pub(super) struct Shard {
    pub conns: HashMap<Arc<str>, Conn>,
    /// Connections gone from this node whose removal did not reach Redis: (client id,
    /// user id), removed by the next heartbeat.
    pub forgotten: Vec<(Arc<str>, Box<str>)>,
}

pub(super) struct Local {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Local {
    pub fn shard(&self, client: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(client) as usize % SHARDS]
    }

    pub fn shards(&self) -> impl Iterator<Item = &Mutex<Shard>> {
        self.shards.iter()
    }

    /// A removal that did not reach Redis: the next heartbeat retries it, unless the
    /// connection is back on this node by then (its heartbeat entry then re-asserts
    /// exactly its rooms).
    pub fn removal_failed(&self, client: Arc<str>, uid: Box<str>) {
        self.shard(&client).lock().forget_later(client, uid);
    }

    /// How many connections this node has.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().conns.len()).sum()
    }
}

impl Shard {
    /// See [`Local::removal_failed`].
    pub fn forget_later(&mut self, client: Arc<str>, uid: Box<str>) {
        if self.conns.contains_key(&client) || self.forgotten.iter().any(|(c, _)| *c == client) {
            return;
        }
        if self.forgotten.len() >= MAX_FORGOTTEN {
            tracing::warn!(client = %client, "presence removal left to expire");
            return;
        }
        self.forgotten.push((client, uid));
    }

    pub fn conn(
        &mut self,
        client: &Arc<str>,
        uid: &str,
        user: &str,
        transport: &'static str,
    ) -> &mut Conn {
        self.forgotten.retain(|(c, _)| c != client);
        self.conns.entry(client.clone()).or_insert_with(|| Conn {
            uid: uid.into(),
            user: user.into(),
            transport,
            device: false,
            rooms: SmallVec::new(),
        })
    }
}
