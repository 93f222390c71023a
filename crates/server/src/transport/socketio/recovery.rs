//! Connection state recovery: a Socket.IO socket that drops and comes back within the
//! window gets its id, its rooms, and every durable event it missed, once, in order.
//!
//! Every durable event reaches a socket with its position as the last argument
//! (`"<offset>-<epoch>-<room>"`); the official client keeps the last one it saw and
//! sends it back with its private session id (`pid`) when it reconnects. When a
//! socket's connection closes, its state is stashed under the pid: its rooms and the
//! trail of durable events queued to it (see [`Trail`]). The reported position cuts
//! the trail: what precedes it arrived, what follows was lost; each room resumes after
//! the last offset that arrived, by the hub's own replay.
//!
//! Private messages reach a socket through its user's personal room with the
//! positions of their `dm:` rooms. The stash also keeps the head of each of the user's
//! conversations, read while the closed session still receives (so a message is in
//! the trail or after that head); a conversation resumes after the last offset that
//! arrived, or after that head if nothing of it arrived.
//!
//! In a cluster the client may come back through another node: stashes then live in
//! Redis ([`SharedStashes`]), under a key every node signs pids with. A stash is marked
//! pending in Redis the moment its socket closes and written whole once captured; a
//! node asked for a pending stash waits for it (a client that reconnects at once), and
//! takes it with one atomic `GETDEL`, so it recovers on one node only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_protocol::DM_ROOM_PREFIX;

use crate::hub::{Hub, Registration, Trail};

/// Most stashes kept at once; past it the oldest is dropped first.
const MAX_STASHES: usize = 100_000;
/// Most conversations whose heads are read for one stash.
const MAX_CONVERSATIONS: u32 = 1000;
/// How long a node waits for a stash another node is still writing.
const PENDING_WAIT: Duration = Duration::from_secs(3);
/// What a stash in Redis holds until it is written whole.
const PENDING: &str = "pending";

/// What a closed socket left for its recovery.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub rooms: Vec<Arc<str>>,
    pub trail: Trail,
    /// `(dm room, head)` of the user's conversations when the socket closed.
    pub conversations: Vec<(Arc<str>, u64)>,
}

pub struct Stash {
    pub user: String,
    pub client_id: Arc<str>,
    expires: Instant,
    /// Resolves once the closed session is gone from the hub.
    pub captured: Shared<BoxFuture<'static, Arc<Captured>>>,
}

/// A stash found for a recovering socket.
pub struct Found {
    pub client_id: Arc<str>,
    pub captured: Arc<Captured>,
}

pub struct Stashes {
    map: Mutex<HashMap<Arc<str>, Stash>>,
    /// Signs socket ids into private session ids.
    key: Vec<u8>,
    /// In a cluster: stashes in Redis, not in `map`.
    shared: Option<SharedStashes>,
    /// Writes to Redis run here, so that a drain waits for them.
    tracker: tokio_util::task::TaskTracker,
}

/// Stashes kept in Redis, for every node.
#[derive(Clone)]
pub struct SharedStashes {
    pub conn: ConnectionManager,
    /// Key prefix (`<prefix>stash:<pid>`).
    pub prefix: String,
    pub timeout: Duration,
}

impl Default for Stashes {
    fn default() -> Stashes {
        Stashes {
            map: Mutex::default(),
            key: rand::random::<[u8; 32]>().to_vec(),
            shared: None,
            tracker: Default::default(),
        }
    }
}

/// A stash as Redis keeps it.
#[derive(Serialize, Deserialize)]
struct Stored {
    user: String,
    client_id: String,
    rooms: Vec<String>,
    events: Vec<(String, u64)>,
    bases: Vec<(String, u64)>,
    trimmed: bool,
    conversations: Vec<(String, u64)>,
}

impl Stored {
    fn new(user: &str, client_id: &str, c: &Captured) -> Stored {
        let pairs = |v: &mut dyn Iterator<Item = &(Arc<str>, u64)>| {
            v.map(|(r, o)| (r.to_string(), *o)).collect()
        };
        Stored {
            user: user.to_string(),
            client_id: client_id.to_string(),
            rooms: c.rooms.iter().map(|r| r.to_string()).collect(),
            events: pairs(&mut c.trail.events.iter()),
            bases: pairs(&mut c.trail.bases.iter()),
            trimmed: c.trail.trimmed,
            conversations: pairs(&mut c.conversations.iter()),
        }
    }

    fn found(self) -> Found {
        let pairs = |v: Vec<(String, u64)>| v.into_iter().map(|(r, o)| (Arc::from(r), o));
        Found {
            client_id: self.client_id.into(),
            captured: Arc::new(Captured {
                rooms: self.rooms.into_iter().map(Arc::from).collect(),
                trail: Trail {
                    events: pairs(self.events).collect(),
                    bases: pairs(self.bases).collect(),
                    trimmed: self.trimmed,
                },
                conversations: pairs(self.conversations).collect(),
            }),
        }
    }
}

impl SharedStashes {
    fn key(&self, pid: &str) -> String {
        format!("{}stash:{pid}", self.prefix)
    }

    async fn run<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Option<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "recovery stash: Redis failed");
                None
            }
            Err(_) => {
                tracing::warn!("recovery stash: Redis did not answer in time");
                None
            }
        }
    }

    /// Marks `pid` pending, then writes its stash once captured.
    async fn keep(
        self,
        pid: Arc<str>,
        user: String,
        capture: Shared<BoxFuture<'static, Arc<Captured>>>,
        window: Duration,
        client_id: Arc<str>,
    ) {
        let key = self.key(&pid);
        let secs = window.as_secs().max(1);
        let mut pending = ::redis::cmd("SET");
        pending.arg(&key).arg(PENDING).arg("EX").arg(secs);
        let _: Option<()> = self.run(&pending).await;
        let captured = capture.await;
        let stored = Stored::new(&user, &client_id, &captured);
        let json = serde_json::to_string(&stored).expect("a stash serializes");
        let mut set = ::redis::cmd("SET");
        set.arg(&key).arg(json).arg("EX").arg(secs);
        let _: Option<()> = self.run(&set).await;
    }

    /// Takes `pid`'s stash, waiting a moment for one still being written.
    async fn take(&self, pid: &str, user: &str) -> Option<Found> {
        let key = self.key(pid);
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let mut get = ::redis::cmd("GET");
            get.arg(&key);
            let value: Option<String> = self.run(&get).await?;
            match value.as_deref() {
                None => return None,
                Some(PENDING) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(PENDING) => return None,
                Some(_) => break,
            }
        }
        let mut take = ::redis::cmd("GETDEL");
        take.arg(&key);
        let value: Option<String> = self.run(&take).await?;
        let stored: Stored = serde_json::from_str(&value?).ok()?;
        (stored.user == user).then(|| stored.found())
    }
}

impl Stashes {
    /// Stashes in Redis, pids signed with `key` (the same on every node).
    /// Stashes are written by tasks of `tracker` (the server's, which a drain waits
    /// for).
    pub fn shared(
        shared: SharedStashes,
        key: Vec<u8>,
        tracker: tokio_util::task::TaskTracker,
    ) -> Stashes {
        Stashes {
            map: Mutex::default(),
            key,
            shared: Some(shared),
            tracker,
        }
    }

    /// The private session id of socket `client_id`: the id signed with this node's
    /// key (HMAC-SHA256, 128 bits in base64url), so nothing is stored per socket and
    /// another socket's id does not give it.
    pub fn pid(&self, client_id: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(client_id.as_bytes());
        let tag = mac.finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..16])
    }

    /// Stashes the state of a socket whose connection closed: its rooms, its trail
    /// and its user's conversations, read while `registration` (dropped at the end)
    /// keeps the session receiving.
    pub fn keep(&self, hub: Hub, pid: Arc<str>, registration: Registration, window: Duration) {
        let session = registration.session().clone();
        let user = session.user().id.clone();
        let client_id = session.client_id.clone();
        let capture = {
            let user = user.clone();
            async move {
                let conversations = conversations(&hub, &user).await;
                let captured = Captured {
                    rooms: session.rooms(),
                    trail: session.trail().unwrap_or_default(),
                    conversations,
                };
                drop(registration);
                Arc::new(captured)
            }
        }
        .boxed()
        .shared();
        // Driven now, whether or not the client comes back.
        tokio::spawn(capture.clone());
        if let Some(shared) = &self.shared {
            self.tracker
                .spawn(shared.clone().keep(pid, user, capture, window, client_id));
            return;
        }
        let stash = Stash {
            user,
            client_id,
            expires: Instant::now() + window,
            captured: capture,
        };
        let mut map = self.map.lock();
        if map.len() >= MAX_STASHES
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(pid, stash);
    }

    /// Takes the stash of `pid` if it is `user`'s and still within its window.
    pub async fn take(&self, pid: &str, user: &str) -> Option<Found> {
        if let Some(shared) = &self.shared {
            return shared.take(pid, user).await;
        }
        let stash = self.map.lock().remove(pid)?;
        if stash.user != user || Instant::now() >= stash.expires {
            return None;
        }
        Some(Found {
            client_id: stash.client_id,
            captured: stash.captured.await,
        })
    }

    /// Drops the expired stashes.
    pub fn purge(&self) {
        let now = Instant::now();
        self.map.lock().retain(|_, s| now < s.expires);
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// Conversations `user` began since its socket closed (a first private message while
/// it was away): they resume from their start.
pub async fn new_conversations(hub: &Hub, user: &str, captured: &Captured) -> Vec<(Arc<str>, u64)> {
    if captured.conversations.len() >= MAX_CONVERSATIONS as usize {
        // The stash could not list them all: what is new is unknown.
        return Vec::new();
    }
    conversations(hub, user)
        .await
        .into_iter()
        .filter(|(room, _)| {
            !captured.conversations.iter().any(|(r, _)| r == room)
                && !captured.trail.events.iter().any(|(r, _)| r == room)
        })
        .map(|(room, _)| (room, 0))
        .collect()
}

/// The heads of `user`'s conversations (at most [`MAX_CONVERSATIONS`]).
async fn conversations(hub: &Hub, user: &str) -> Vec<(Arc<str>, u64)> {
    let rooms = match hub
        .store()
        .rooms_of(user, Some(DM_ROOM_PREFIX), MAX_CONVERSATIONS)
        .await
    {
        Ok(rooms) => rooms,
        Err(e) => {
            tracing::warn!(error = %e, "reading conversations for a recovery failed");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (room, _) in rooms {
        if !room.starts_with(DM_ROOM_PREFIX) {
            break;
        }
        if let Ok(head) = hub.head(&room).await {
            out.push((Arc::from(room), head.offset));
        }
    }
    out
}

/// Where each room and conversation resumes, given the position of the last durable
/// event the client received (`(room, offset)`, or none). None when that position can
/// not be placed (the trail lost it): the client must reload.
pub fn resume_points(
    captured: &Captured,
    marker: Option<(&str, u64)>,
) -> Option<Vec<(Arc<str>, u64)>> {
    let trail = &captured.trail;
    let found = marker.and_then(|(room, offset)| {
        trail
            .events
            .iter()
            .rposition(|(r, o)| *o == offset && &**r == room)
    });
    let cut = match found {
        Some(i) => i + 1,
        // Nothing of this connection arrived (or the client names a position of an
        // earlier one); unless the trail lost its oldest events.
        None if trail.trimmed => return None,
        None => 0,
    };
    let mut rooms: Vec<Arc<str>> = captured.rooms.clone();
    let mut add = |r: &Arc<str>| {
        if !rooms.contains(r) {
            rooms.push(r.clone());
        }
    };
    for (r, _) in &trail.events {
        if r.starts_with(DM_ROOM_PREFIX) {
            add(r);
        }
    }
    for (r, _) in &captured.conversations {
        add(r);
    }
    let mut out = Vec::with_capacity(rooms.len());
    for room in rooms {
        let arrived = trail
            .events
            .iter()
            .take(cut)
            .rev()
            .find(|(r, _)| *r == room)
            .map(|(_, o)| *o);
        let lost_first = trail
            .events
            .iter()
            .skip(cut)
            .find(|(r, _)| *r == room)
            .map(|(_, o)| o.saturating_sub(1));
        let head = captured
            .conversations
            .iter()
            .find(|(r, _)| *r == room)
            .map(|(_, o)| *o);
        let since = arrived
            .or_else(|| trail.base(&room))
            .or(lost_first)
            .or(head);
        if let Some(since) = since {
            out.push((room, since));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(events: &[(&str, u64)], bases: &[(&str, u64)], trimmed: bool) -> Trail {
        Trail {
            events: events.iter().map(|(r, o)| (Arc::from(*r), *o)).collect(),
            bases: bases.iter().map(|(r, o)| (Arc::from(*r), *o)).collect(),
            trimmed,
        }
    }

    fn points(c: &Captured, marker: Option<(&str, u64)>) -> Option<Vec<(String, u64)>> {
        resume_points(c, marker).map(|v| v.into_iter().map(|(r, o)| (r.to_string(), o)).collect())
    }

    #[test]
    fn the_reported_position_cuts_the_trail() {
        let c = Captured {
            rooms: vec!["a".into(), "b".into()],
            trail: trail(
                &[("a", 5), ("b", 2), ("a", 6), ("b", 3)],
                &[("a", 4), ("b", 1)],
                false,
            ),
            conversations: vec![],
        };
        // Got a5 and b2: a resumes after 5, b after 2.
        assert_eq!(
            points(&c, Some(("b", 2))),
            Some(vec![("a".into(), 5), ("b".into(), 2)])
        );
        // Got everything.
        assert_eq!(
            points(&c, Some(("b", 3))),
            Some(vec![("a".into(), 6), ("b".into(), 3)])
        );
        // Got nothing of this connection: from where the joins began.
        assert_eq!(
            points(&c, None),
            Some(vec![("a".into(), 4), ("b".into(), 1)])
        );
        assert_eq!(
            points(&c, Some(("z", 9))),
            Some(vec![("a".into(), 4), ("b".into(), 1)])
        );
    }

    #[test]
    fn a_lost_position_can_not_be_placed_once_the_trail_was_trimmed() {
        let c = Captured {
            rooms: vec!["a".into()],
            trail: trail(&[("a", 7)], &[("a", 6)], true),
            conversations: vec![],
        };
        assert_eq!(points(&c, Some(("a", 3))), None);
        assert_eq!(points(&c, Some(("a", 7))), Some(vec![("a".into(), 7)]));
    }

    #[test]
    fn conversations_resume_after_what_arrived_or_their_head() {
        let c = Captured {
            rooms: vec![],
            trail: trail(&[("dm:a:b", 3), ("dm:a:c", 8)], &[], false),
            conversations: vec![
                ("dm:a:b".into(), 4),
                ("dm:a:c".into(), 8),
                ("dm:a:d".into(), 2),
            ],
        };
        assert_eq!(
            points(&c, Some(("dm:a:b", 3))),
            Some(vec![
                ("dm:a:b".into(), 3),
                ("dm:a:c".into(), 7),
                ("dm:a:d".into(), 2)
            ])
        );
    }
}
