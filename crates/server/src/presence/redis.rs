//! Presence of a cluster, in one Redis shared by every node: devices, room members and
//! counts over all nodes, kept alive by each node's heartbeat so that a dead node's
//! entries expire, and reaped (exactly once in the cluster) by the nodes still alive.
//!
//! Each operation is one call of one Lua script (presence.lua), so it is atomic and one
//! round trip; all of a node's calls go through one ordered queue (queue.rs); the node
//! keeps its own connections in memory (local.rs) to re-assert them on each heartbeat.
//! Key layout, rules and costs: docs/presence-redis.md.

mod heartbeat;
mod local;
mod queue;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use redis::aio::ConnectionManager;
use redis::{Cmd, FromRedisValue, Script, Value};
use switchboard_protocol::{Member, UserInfo};
use tokio::sync::{mpsc, oneshot};

use self::local::{Local, Shard};
use self::queue::{Job, Reply, unavailable};
use super::{Answer, Device, MemberPage, PeerEntry, Presence, PresenceError, Reaped, RoomCounts};

/// Expired connections removed per reap call at most (each call is one script run).
const REAP_BATCH: usize = 256;
/// Rooms per page of `rooms` (one SSCAN page per script run).
const ROOMS_PAGE: usize = 256;

pub struct RedisPresenceOptions {
    /// Prefix of every key, e.g. `sb:`; nodes of one cluster share it.
    pub prefix: String,
    /// This node's name, stored with its connections (for operators).
    pub node_id: String,
    /// How long an entry lives without a heartbeat: a dead node's connections vanish
    /// within it. Usually three heartbeat periods.
    pub ttl: Duration,
    /// How often the hub calls [`Presence::heartbeat`].
    pub heartbeat: Duration,
}

impl RedisPresenceOptions {
    /// Options with the default expiry: three heartbeat periods.
    pub fn new(
        prefix: impl Into<String>,
        node_id: impl Into<String>,
        heartbeat: Duration,
    ) -> RedisPresenceOptions {
        RedisPresenceOptions {
            prefix: prefix.into(),
            node_id: node_id.into(),
            ttl: heartbeat * 3,
            heartbeat,
        }
    }
}

/// Presence shared by the nodes of a cluster through Redis. Cheap to share: one
/// connection (the node's), one task running the queue.
pub struct RedisPresence {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Job>,
    sha: String,
    prefix: String,
    node: String,
    /// This instance, distinct from a previous run of the same node: what it reaps of
    /// its own it has already announced.
    inst: String,
    ttl_ms: u64,
    /// How long any key outlives its last write, so that nothing stays forever even
    /// if no node is left to reap.
    keep_ms: u64,
    timeout: Arc<Timeout>,
    local: Arc<Local>,
    beating: AtomicBool,
}

/// The answer timeout, in ms, shared with the queue.
struct Timeout(AtomicU64);

impl Timeout {
    fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

impl RedisPresence {
    /// How long an answer may take before it is `Unavailable`, unless set otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// Starts the node's presence queue: call within a Tokio runtime.
    pub fn new(conn: ConnectionManager, opts: RedisPresenceOptions) -> RedisPresence {
        if opts.ttl <= opts.heartbeat {
            tracing::warn!(
                ttl_ms = opts.ttl.as_millis() as u64,
                heartbeat_ms = opts.heartbeat.as_millis() as u64,
                "presence TTL not longer than the heartbeat period: live entries will expire"
            );
        }
        let script = Arc::new(Script::new(include_str!("redis/presence.lua")));
        let local = Arc::new(Local::default());
        let timeout = Arc::new(Timeout(AtomicU64::new(
            Self::DEFAULT_TIMEOUT.as_millis() as u64
        )));
        let ttl_ms = (opts.ttl.as_millis() as u64).max(1);
        let inner = Inner {
            tx: queue::spawn(conn, script.clone(), local.clone(), timeout.clone()),
            sha: script.get_hash().to_string(),
            prefix: opts.prefix,
            node: opts.node_id,
            inst: format!("{:016x}", rand::random::<u64>()),
            ttl_ms,
            keep_ms: (ttl_ms * 10).max(60_000),
            timeout,
            local,
            beating: AtomicBool::new(false),
        };
        RedisPresence {
            inner: Arc::new(inner),
        }
    }

    /// Sets how long an answer may take before it is `Unavailable` (default 2 s).
    pub fn with_timeout(self, timeout: Duration) -> RedisPresence {
        let ms = (timeout.as_millis() as u64).max(1);
        self.inner.timeout.0.store(ms, Ordering::Relaxed);
        self
    }

    /// How many connections of this node it keeps alive.
    pub fn local_connections(&self) -> usize {
        self.inner.local.len()
    }
}

impl Inner {
    /// A call of the script's operation `op`; arguments follow.
    fn script(&self, op: &str) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(0).arg(op).arg(&self.prefix);
        cmd
    }

    /// Queues a call whose answer is awaited.
    fn send(&self, cmd: Cmd) -> Result<oneshot::Receiver<Reply>, PresenceError> {
        let (tx, rx) = oneshot::channel();
        queue::try_send(
            &self.tx,
            Job {
                cmds: vec![cmd],
                reply: Some(tx),
                removals: Vec::new(),
            },
        )?;
        Ok(rx)
    }

    /// A read: queued behind this node's earlier operations, so it sees them.
    fn ask<T: FromRedisValue>(
        &self,
        cmd: Cmd,
    ) -> impl Future<Output = Result<T, PresenceError>> + Send + 'static {
        let sent = self.send(cmd);
        let timeout = self.timeout.get();
        async move { parse(queue::answer(sent?, timeout).await?) }
    }

    /// Queues a removal of `client` (user `uid`), under its shard's lock: if the queue
    /// is full it is left to the next heartbeat.
    fn remove(&self, shard: &mut Shard, cmd: Cmd, client: &Arc<str>, uid: &str) {
        let job = Job {
            cmds: vec![cmd],
            reply: None,
            removals: vec![(client.clone(), uid.into())],
        };
        if queue::try_send(&self.tx, job).is_err() {
            shard.forget_later(client.clone(), uid.into());
        }
    }

    fn leave(&self, room: &str, client: &Arc<str>, uid: &str) {
        let mut shard = self.local.shard(client).lock();
        if let Some(conn) = shard.conns.get_mut(client) {
            conn.rooms.retain(|r| &**r != room);
            if !conn.device && conn.rooms.is_empty() {
                shard.conns.remove(client);
            }
        }
        let mut cmd = self.script("leave");
        cmd.arg(room).arg(&**client).arg(uid).arg(&self.inst);
        self.remove(&mut shard, cmd, client, uid);
    }

    fn disconnect(&self, client: &Arc<str>, uid: &str) {
        let mut shard = self.local.shard(client).lock();
        shard.conns.remove(client);
        let mut cmd = self.script("disconnect");
        cmd.arg(&**client).arg(uid).arg(&self.inst);
        self.remove(&mut shard, cmd, client, uid);
    }
}

/// Undoes an operation whose future did not resolve `Ok` (it failed, timed out or was
/// dropped): such an operation has not happened, whatever Redis did with it. A connect
/// of a known device or a join of a room already joined changed nothing: not undone.
struct Undo<'a> {
    inner: &'a Inner,
    client: Arc<str>,
    uid: Box<str>,
    /// The room joined; None for a connect.
    room: Option<Box<str>>,
    armed: bool,
}

impl Undo<'_> {
    fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match &self.room {
            Some(room) => self.inner.leave(room, &self.client, &self.uid),
            None => self.inner.disconnect(&self.client, &self.uid),
        }
    }
}

fn failed<'a, T: Send + 'a>(e: PresenceError) -> Answer<'a, T> {
    std::future::ready(Err(e)).boxed()
}

fn parse<T: FromRedisValue>(v: Value) -> Result<T, PresenceError> {
    redis::from_redis_value(v).map_err(|e| unavailable(format!("unexpected reply: {e}")))
}

fn user_json(user: &UserInfo) -> String {
    serde_json::to_string(user).unwrap_or_default()
}

/// A member's record in a room: `<joinedAt>:<user json>`.
fn member_info(info: &str) -> Option<(u64, UserInfo)> {
    let (joined_at, user) = info.split_once(':')?;
    Some((joined_at.parse().ok()?, serde_json::from_str(user).ok()?))
}

fn counts((users, connections): (u64, u64)) -> RoomCounts {
    RoomCounts { users, connections }
}

impl Presence for RedisPresence {
    fn connect<'a>(&'a self, device: Device<'a>) -> Answer<'a, u64> {
        let inner = &*self.inner;
        let (client, uid) = (device.client_id, device.user.id.as_str());
        let user = user_json(device.user);
        let mut cmd = inner.script("connect");
        cmd.arg(&**client)
            .arg(uid)
            .arg(&user)
            .arg(device.transport)
            .arg(&inner.node)
            .arg(&inner.inst)
            .arg(inner.ttl_ms)
            .arg(inner.keep_ms);
        let (rx, fresh) = {
            let mut shard = inner.local.shard(client).lock();
            let rx = match inner.send(cmd) {
                Ok(rx) => rx,
                Err(e) => return failed(e),
            };
            let conn = shard.conn(client, uid, &user, device.transport);
            let fresh = !conn.device;
            conn.device = true;
            (rx, fresh)
        };
        // Only what this call added is undone.
        let undo = Undo {
            inner,
            client: client.clone(),
            uid: uid.into(),
            room: None,
            armed: fresh,
        };
        let timeout = inner.timeout.get();
        async move {
            let n: u64 = parse(queue::answer(rx, timeout).await?)?;
            undo.done();
            Ok(n)
        }
        .boxed()
    }

    fn disconnect(&self, device: Device<'_>) {
        self.inner.disconnect(device.client_id, &device.user.id);
    }

    fn devices<'a>(&'a self, user: &'a str) -> Answer<'a, u64> {
        let mut cmd = self.inner.script("devices");
        cmd.arg(user);
        self.inner.ask(cmd).boxed()
    }

    fn device_ids<'a>(&'a self, user: &'a str) -> Answer<'a, Vec<Arc<str>>> {
        let mut cmd = self.inner.script("device_ids");
        cmd.arg(user);
        let ids = self.inner.ask::<Vec<String>>(cmd);
        async move { Ok(ids.await?.into_iter().map(Arc::from).collect()) }.boxed()
    }

    fn join<'a>(&'a self, room: &'a str, device: Device<'a>) -> Answer<'a, RoomCounts> {
        let inner = &*self.inner;
        let (client, uid) = (device.client_id, device.user.id.as_str());
        let user = user_json(device.user);
        let mut cmd = inner.script("join");
        cmd.arg(room)
            .arg(&**client)
            .arg(uid)
            .arg(&user)
            .arg(device.transport)
            .arg(&inner.node)
            .arg(&inner.inst)
            .arg(inner.ttl_ms)
            .arg(inner.keep_ms);
        let (rx, fresh) = {
            let mut shard = inner.local.shard(client).lock();
            let rx = match inner.send(cmd) {
                Ok(rx) => rx,
                Err(e) => return failed(e),
            };
            let conn = shard.conn(client, uid, &user, device.transport);
            let fresh = !conn.rooms.iter().any(|r| &**r == room);
            if fresh {
                conn.rooms.push(room.into());
            }
            (rx, fresh)
        };
        let undo = Undo {
            inner,
            client: client.clone(),
            uid: uid.into(),
            room: Some(room.into()),
            armed: fresh,
        };
        let timeout = inner.timeout.get();
        async move {
            let n = parse(queue::answer(rx, timeout).await?)?;
            undo.done();
            Ok(counts(n))
        }
        .boxed()
    }

    fn leave(&self, room: &str, device: Device<'_>) {
        self.inner.leave(room, device.client_id, &device.user.id);
    }

    fn counts<'a>(&'a self, room: &'a str) -> Answer<'a, RoomCounts> {
        let mut cmd = self.inner.script("counts");
        cmd.arg(room);
        self.inner.ask(cmd).map(|r| r.map(counts)).boxed()
    }

    fn members<'a>(
        &'a self,
        room: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> Answer<'a, MemberPage> {
        let mut cmd = self.inner.script("members");
        cmd.arg(room).arg(cursor.unwrap_or("")).arg(limit);
        let reply = self.inner.ask::<Vec<String>>(cmd);
        async move {
            let mut reply = reply.await?.into_iter();
            let next = reply.next().filter(|c| !c.is_empty());
            let mut members = Vec::with_capacity(limit.min(reply.len() / 2));
            while let (Some(id), Some(info)) = (reply.next(), reply.next()) {
                let Some((joined_at, user)) = member_info(&info) else {
                    continue;
                };
                members.push(Member {
                    id,
                    username: user.username,
                    avatar: user.avatar,
                    status: "online".into(),
                    joined_at,
                    last_seen: None,
                });
            }
            Ok(MemberPage {
                members,
                next_cursor: next,
            })
        }
        .boxed()
    }

    fn peers<'a>(
        &'a self,
        room: &'a str,
        except: &'a str,
        limit: usize,
    ) -> Answer<'a, Vec<PeerEntry>> {
        let mut cmd = self.inner.script("peers");
        cmd.arg(room).arg(except).arg(limit);
        let reply = self.inner.ask::<Vec<String>>(cmd);
        async move {
            let mut reply = reply.await?.into_iter();
            let mut peers = Vec::with_capacity(reply.len() / 2);
            while let (Some(client), Some(info)) = (reply.next(), reply.next()) {
                if let Some((joined_at, user)) = member_info(&info) {
                    peers.push(PeerEntry {
                        client_id: client.into(),
                        user,
                        joined_at,
                    });
                }
            }
            Ok(peers)
        }
        .boxed()
    }

    fn in_any<'a>(&'a self, client_id: &'a str, rooms: &'a [Arc<str>]) -> Answer<'a, bool> {
        if rooms.is_empty() {
            return std::future::ready(Ok(false)).boxed();
        }
        let mut cmd = self.inner.script("in_any");
        cmd.arg(client_id);
        for room in rooms {
            cmd.arg(&**room);
        }
        self.inner.ask::<u8>(cmd).map(|r| r.map(|n| n == 1)).boxed()
    }

    fn has_user<'a>(&'a self, room: &'a str, user: &'a str) -> Answer<'a, bool> {
        let mut cmd = self.inner.script("has_user");
        cmd.arg(room).arg(user);
        self.inner.ask::<u8>(cmd).map(|r| r.map(|n| n == 1)).boxed()
    }

    fn rooms(&self) -> Answer<'_, Vec<(String, RoomCounts)>> {
        async move {
            // SSCAN may repeat a room across pages: the last counts win.
            let mut rooms = HashMap::new();
            let mut cursor = "0".to_string();
            loop {
                let mut cmd = self.inner.script("rooms");
                cmd.arg(&cursor).arg(ROOMS_PAGE);
                let page: Vec<Value> = self.inner.ask(cmd).await?;
                let mut page = page.into_iter();
                cursor = parse(page.next().unwrap_or(Value::Nil))?;
                while let (Some(room), Some(users), Some(conns)) =
                    (page.next(), page.next(), page.next())
                {
                    rooms.insert(
                        parse::<String>(room)?,
                        counts((parse(users)?, parse(conns)?)),
                    );
                }
                if cursor == "0" {
                    return Ok(rooms.into_iter().collect());
                }
            }
        }
        .boxed()
    }

    fn heartbeat(&self) {
        self.inner.heartbeat();
    }

    fn reap(&self) -> Answer<'_, Vec<Reaped>> {
        async move {
            let mut reaped = Vec::new();
            loop {
                let mut cmd = self.inner.script("reap");
                cmd.arg(&self.inner.inst).arg(REAP_BATCH);
                type Entry = (String, String, String, u8, Vec<String>);
                let (popped, entries): (usize, Vec<Entry>) = self.inner.ask(cmd).await?;
                for (client, user, transport, last, rooms) in entries {
                    let Ok(user) = serde_json::from_str(&user) else {
                        continue;
                    };
                    reaped.push(Reaped {
                        client_id: client.into(),
                        user,
                        transport,
                        rooms,
                        last: last == 1,
                    });
                }
                if popped < REAP_BATCH {
                    return Ok(reaped);
                }
            }
        }
        .boxed()
    }
}
