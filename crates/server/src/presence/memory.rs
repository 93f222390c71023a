//! Presence of one node, in memory: users' devices and rooms' members in sharded maps.
//!
//! A room keeps its users in a `BTreeMap` (ordered, so pages resume after a cursor in
//! O(log N)) and its connections in an `IndexMap` (insert and remove in O(1), and the
//! first `limit` listed without scanning): filling a room of N costs O(N log N) here.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::sync::Arc;

use futures_util::FutureExt;
use indexmap::IndexMap;
use parking_lot::Mutex;
use smallvec::SmallVec;
use switchboard_protocol::{Member, UserInfo, now_millis};

use super::{Answer, Device, MemberPage, PeerEntry, Presence, RoomCounts};

const SHARDS: usize = 64;

struct RoomUser {
    info: UserInfo,
    joined_at: u64,
    connections: u32,
}

#[derive(Default)]
struct RoomPresence {
    users: BTreeMap<String, RoomUser>,
    /// Client id -> user id.
    connections: IndexMap<Arc<str>, Arc<str>>,
}

impl RoomPresence {
    fn counts(&self) -> RoomCounts {
        RoomCounts {
            users: self.users.len() as u64,
            connections: self.connections.len() as u64,
        }
    }
}

/// A user's connections, inline for the usual one.
type Devices = SmallVec<[Arc<str>; 1]>;

pub struct MemoryPresence {
    users: Box<[Mutex<HashMap<String, Devices>>]>,
    rooms: Box<[Mutex<HashMap<String, RoomPresence>>]>,
    hasher: RandomState,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        MemoryPresence {
            users: (0..SHARDS).map(|_| Mutex::default()).collect(),
            rooms: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> Answer<'a, T> {
    std::future::ready(Ok(value)).boxed()
}

impl MemoryPresence {
    fn user_shard(&self, user: &str) -> &Mutex<HashMap<String, Devices>> {
        &self.users[self.hasher.hash_one(user) as usize % SHARDS]
    }

    fn room_shard(&self, room: &str) -> &Mutex<HashMap<String, RoomPresence>> {
        &self.rooms[self.hasher.hash_one(room) as usize % SHARDS]
    }

    fn remove_from_room(&self, room: &str, client_id: &str) {
        let mut shard = self.room_shard(room).lock();
        let Some(r) = shard.get_mut(room) else {
            return;
        };
        let Some(user) = r.connections.swap_remove(client_id) else {
            return;
        };
        if let Some(u) = r.users.get_mut(&*user) {
            u.connections -= 1;
            if u.connections == 0 {
                r.users.remove(&*user);
            }
        }
        if r.connections.is_empty() {
            shard.remove(room);
        }
    }
}

impl Presence for MemoryPresence {
    fn connect<'a>(&'a self, device: Device<'a>) -> Answer<'a, u64> {
        let mut shard = self.user_shard(&device.user.id).lock();
        let devices = shard.entry(device.user.id.clone()).or_default();
        if !devices.contains(device.client_id) {
            devices.push(device.client_id.clone());
        }
        ready(devices.len() as u64)
    }

    fn disconnect(&self, device: Device<'_>) {
        let mut shard = self.user_shard(&device.user.id).lock();
        if let Some(devices) = shard.get_mut(&device.user.id) {
            devices.retain(|d| d != device.client_id);
            if devices.is_empty() {
                shard.remove(&device.user.id);
            }
        }
    }

    fn devices<'a>(&'a self, user: &'a str) -> Answer<'a, u64> {
        let n = self
            .user_shard(user)
            .lock()
            .get(user)
            .map_or(0, |d| d.len() as u64);
        ready(n)
    }

    fn device_ids<'a>(&'a self, user: &'a str) -> Answer<'a, Vec<Arc<str>>> {
        let ids = self
            .user_shard(user)
            .lock()
            .get(user)
            .map(|d| d.to_vec())
            .unwrap_or_default();
        ready(ids)
    }

    fn join<'a>(&'a self, room: &'a str, device: Device<'a>) -> Answer<'a, RoomCounts> {
        let mut shard = self.room_shard(room).lock();
        let r = shard.entry(room.to_string()).or_default();
        if !r.connections.contains_key(&**device.client_id) {
            let user_id: Arc<str> = device.user.id.as_str().into();
            r.connections.insert(device.client_id.clone(), user_id);
            r.users
                .entry(device.user.id.clone())
                .or_insert_with(|| RoomUser {
                    info: device.user.clone(),
                    joined_at: now_millis(),
                    connections: 0,
                })
                .connections += 1;
        }
        ready(r.counts())
    }

    fn leave(&self, room: &str, device: Device<'_>) {
        self.remove_from_room(room, device.client_id);
    }

    fn counts<'a>(&'a self, room: &'a str) -> Answer<'a, RoomCounts> {
        let counts = self
            .room_shard(room)
            .lock()
            .get(room)
            .map(RoomPresence::counts)
            .unwrap_or_default();
        ready(counts)
    }

    fn members<'a>(
        &'a self,
        room: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> Answer<'a, MemberPage> {
        let shard = self.room_shard(room).lock();
        let Some(r) = shard.get(room) else {
            return ready(MemberPage::default());
        };
        let start = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let mut members = Vec::with_capacity(limit.min(r.users.len()));
        let mut more = false;
        for (_, u) in r.users.range::<str, _>((start, Bound::Unbounded)) {
            if members.len() == limit {
                more = true;
                break;
            }
            members.push(Member {
                id: u.info.id.clone(),
                username: u.info.username.clone(),
                avatar: u.info.avatar.clone(),
                status: "online".into(),
                joined_at: u.joined_at,
                last_seen: None,
            });
        }
        let next_cursor = more.then(|| members.last().map(|m| m.id.clone())).flatten();
        ready(MemberPage {
            members,
            next_cursor,
        })
    }

    fn peers<'a>(
        &'a self,
        room: &'a str,
        except: &'a str,
        limit: usize,
    ) -> Answer<'a, Vec<PeerEntry>> {
        let shard = self.room_shard(room).lock();
        let Some(r) = shard.get(room) else {
            return ready(Vec::new());
        };
        let peers = r
            .connections
            .iter()
            .filter(|(c, _)| &***c != except)
            .take(limit)
            .filter_map(|(c, u)| {
                let user = r.users.get(&**u)?;
                Some(PeerEntry {
                    client_id: c.clone(),
                    user: user.info.clone(),
                    joined_at: user.joined_at,
                })
            })
            .collect();
        ready(peers)
    }

    fn in_any<'a>(&'a self, client_id: &'a str, rooms: &'a [Arc<str>]) -> Answer<'a, bool> {
        let found = rooms.iter().any(|room| {
            self.room_shard(room)
                .lock()
                .get(&**room)
                .is_some_and(|r| r.connections.contains_key(client_id))
        });
        ready(found)
    }

    fn has_user<'a>(&'a self, room: &'a str, user: &'a str) -> Answer<'a, bool> {
        let found = self
            .room_shard(room)
            .lock()
            .get(room)
            .is_some_and(|r| r.users.contains_key(user));
        ready(found)
    }

    fn rooms(&self) -> Answer<'_, Vec<(String, RoomCounts)>> {
        let mut out = Vec::new();
        for shard in self.rooms.iter() {
            out.extend(shard.lock().iter().map(|(k, r)| (k.clone(), r.counts())));
        }
        ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserInfo {
        UserInfo {
            id: id.into(),
            username: id.to_uppercase(),
            avatar: None,
        }
    }

    fn device<'a>(c: &'a Arc<str>, u: &'a UserInfo) -> Device<'a> {
        Device {
            client_id: c,
            user: u,
            transport: "websocket",
        }
    }

    #[tokio::test]
    async fn devices_and_rooms_count_and_page() {
        let p = MemoryPresence::default();
        let (a, b) = (user("a"), user("b"));
        let (c1, c2, c3): (Arc<str>, Arc<str>, Arc<str>) = ("1".into(), "2".into(), "3".into());
        assert_eq!(p.connect(device(&c1, &a)).await.unwrap(), 1);
        assert_eq!(p.connect(device(&c2, &a)).await.unwrap(), 2);
        p.connect(device(&c3, &b)).await.unwrap();
        p.join("r", device(&c1, &a)).await.unwrap();
        p.join("r", device(&c2, &a)).await.unwrap();
        let counts = p.join("r", device(&c3, &b)).await.unwrap();
        assert_eq!(
            counts,
            RoomCounts {
                users: 2,
                connections: 3
            }
        );

        let page = p.members("r", None, 1).await.unwrap();
        assert_eq!(page.members[0].id, "a");
        assert_eq!(page.next_cursor.as_deref(), Some("a"));
        let page = p.members("r", Some("a"), 1).await.unwrap();
        assert_eq!(page.members[0].id, "b");
        assert_eq!(page.next_cursor, None);

        let peers = p.peers("r", "1", 10).await.unwrap();
        assert_eq!(peers.len(), 2);
        assert!(p.in_any("3", &["x".into(), "r".into()]).await.unwrap());

        p.leave("r", device(&c1, &a));
        assert_eq!(
            p.counts("r").await.unwrap(),
            RoomCounts {
                users: 2,
                connections: 2
            }
        );
        p.leave("r", device(&c2, &a));
        assert!(!p.has_user("r", "a").await.unwrap());
        p.disconnect(device(&c1, &a));
        assert_eq!(p.devices("a").await.unwrap(), 1);
        p.leave("r", device(&c3, &b));
        assert!(
            p.rooms().await.unwrap().is_empty(),
            "empty rooms are forgotten"
        );
    }
}
