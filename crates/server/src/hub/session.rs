//! One connection as the hub sees it: who it is, its wire format, which rooms it is in,
//! and its bounded outbox.
//!
//! The outbox is a plain vector behind a short mutex. Producers (fan-out, replies)
//! push and wake the connection's writer; the writer swaps the whole vector out in one
//! step and writes it as one batch. An idle outbox holds no allocation, and a full one
//! marks the connection a slow consumer instead of growing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use switchboard_protocol::{CloseCode, ErrorData, ErrorKind, Ref, UserInfo, now_millis};
use tokio::sync::Notify;

use super::ratelimit::RateLimiter;
use crate::auth::Identity;
use crate::encode::{Event, Format, Frame, encode, reply, socketio};
use crate::position::Position;
use crate::presence::Device;

/// What a connection's writer sends next.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Frame(Frame),
    /// A durable room event, for writers that track positions (SSE event ids).
    Positioned {
        frame: Frame,
        room: Arc<str>,
        offset: u64,
        epoch: Arc<str>,
    },
    Ping,
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Frame(f) | Outgoing::Positioned { frame: f, .. } => f.len(),
            Outgoing::Ping => 0,
        }
    }
}

/// How a session reaches its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The native WebSocket protocol: a participant that sends requests and answers
    /// pings.
    WebSocket,
    /// A Server-Sent Events stream: a listener. It never sends, so liveness is not
    /// asked of it, and rooms are not told when it comes and goes.
    Sse,
    /// A Socket.IO socket (main namespace): a participant like the native protocol,
    /// whose liveness is Engine.IO's heartbeat and whose `ref`s are ack ids.
    SocketIo,
    /// A Socket.IO socket of the `/webrtc` signaling namespace: a peer in signaling
    /// rooms only, not a device of its user and not a member of chat rooms.
    SocketIoRtc,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::WebSocket => "websocket",
            Wire::Sse => "sse",
            Wire::SocketIo | Wire::SocketIoRtc => "socketio",
        }
    }

    pub fn format(self) -> Format {
        match self {
            Wire::WebSocket => Format::Native,
            Wire::Sse => Format::Sse,
            Wire::SocketIo => Format::SocketIo,
            Wire::SocketIoRtc => Format::SocketIoRtc,
        }
    }

    /// A participant is announced to rooms, listed among members and peers, answers
    /// pings, and is in its user's personal room from the start. A listener receives
    /// only the rooms it names.
    pub fn participates(self) -> bool {
        matches!(self, Wire::WebSocket | Wire::SocketIo)
    }

    /// A device of its user: counted, announced to its other devices, online.
    pub fn is_device(self) -> bool {
        self != Wire::SocketIoRtc
    }
}

/// Bounds of every outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

#[derive(Default)]
struct Outbox {
    frames: Vec<Outgoing>,
    bytes: usize,
    /// Set once; the writer sends what it was told to send before, then this close.
    closing: Option<CloseCode>,
    /// Rooms just recovered, with the last offset replayed: a durable event at or
    /// below it was already sent (it was committed, read and replayed before it was
    /// published). Cleared by the first later offset; empty almost always.
    floors: Vec<(Arc<str>, u64)>,
    /// Socket.IO connection state recovery: what was queued (see [`Trail`]), made on
    /// first use once `keeps_trail` is set.
    trail: Option<Box<Trail>>,
    keeps_trail: bool,
}

/// Durable events queued to a Socket.IO session, in queue order, so that the position
/// a reconnecting client reports (that of the last one it received) tells, for every
/// room, what it got and what it missed.
#[derive(Debug, Default, Clone)]
pub struct Trail {
    /// `(room, offset)` of each durable event queued, oldest first, at most
    /// [`TRAIL_MAX`].
    pub events: std::collections::VecDeque<(Arc<str>, u64)>,
    /// Each room's position before its first event in `events`: where its join began,
    /// or the last event that fell off the front.
    pub bases: Vec<(Arc<str>, u64)>,
    /// Events fell off the front: a position older than `events` can not be placed.
    pub trimmed: bool,
}

/// Most events a trail keeps.
pub const TRAIL_MAX: usize = 1024;

impl Trail {
    fn record(&mut self, room: &Arc<str>, offset: u64) {
        if self.events.len() >= TRAIL_MAX
            && let Some((old, k)) = self.events.pop_front()
        {
            self.set_base(old, k);
            self.trimmed = true;
        }
        self.events.push_back((room.clone(), offset));
    }

    fn set_base(&mut self, room: Arc<str>, offset: u64) {
        match self.bases.iter_mut().find(|(r, _)| *r == room) {
            Some(b) => b.1 = offset,
            None => self.bases.push((room, offset)),
        }
    }

    /// `room` starts over at `offset` (a join): earlier events of it are forgotten.
    fn restart(&mut self, room: &Arc<str>, offset: u64) {
        self.events.retain(|(r, _)| r != room);
        self.set_base(room.clone(), offset);
    }

    pub fn base(&self, room: &str) -> Option<u64> {
        self.bases.iter().find(|(r, _)| &**r == room).map(|b| b.1)
    }
}

pub struct Session {
    /// Node-local number, used to compare sessions cheaply.
    pub id: u64,
    /// The id clients see (`clientId`, `peerId`).
    pub client_id: Arc<str>,
    pub identity: Identity,
    pub wire: Wire,
    pub format: Format,
    /// Rooms the client joined, its personal room excluded.
    rooms: Mutex<Vec<Arc<str>>>,
    outbox: Mutex<Outbox>,
    ready: Notify,
    limits: OutboxLimits,
    /// Hub-clock second of the last sign of life: a frame received, or a request
    /// finished (a request the server is slow to answer does not make its sender
    /// look dead).
    last_seen: AtomicU64,
    /// A request of this connection is in progress: the server is the one to wait
    /// for, so liveness does not count the time against the client.
    busy: AtomicBool,
    /// Its user's other devices were told it arrived (so they may hear it leave).
    pub(super) arrived: AtomicBool,
    /// Socket.IO: one more than the last ack id answered (each is answered once).
    answered: AtomicU64,
    pub(super) rate: Mutex<RateLimiter>,
}

impl Session {
    pub(super) fn new(
        id: u64,
        client_id: Arc<str>,
        identity: Identity,
        wire: Wire,
        limits: OutboxLimits,
        rate: RateLimiter,
        now_secs: u64,
    ) -> Session {
        Session {
            id,
            client_id,
            identity,
            wire,
            format: wire.format(),
            rooms: Mutex::new(Vec::new()),
            outbox: Mutex::new(Outbox::default()),
            ready: Notify::new(),
            limits,
            last_seen: AtomicU64::new(now_secs),
            busy: AtomicBool::new(false),
            arrived: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            rate: Mutex::new(rate),
        }
    }

    pub fn user(&self) -> &UserInfo {
        &self.identity.user
    }

    /// This connection as presence records it.
    pub fn device(&self) -> Device<'_> {
        Device {
            client_id: &self.client_id,
            user: &self.identity.user,
            transport: self.wire.as_str(),
        }
    }

    /// Queues a frame. Returns false when the connection is closing; an overflow makes
    /// it a slow consumer: its queue is dropped and it will be closed with 1013.
    pub fn push(&self, frame: Outgoing) -> bool {
        let q = self.outbox.lock();
        self.push_locked(q, frame)
    }

    pub fn push_frame(&self, frame: Frame) -> bool {
        self.push(Outgoing::Frame(frame))
    }

    /// Sends `{type: kind, data, ref}` to this session, in its format.
    ///
    /// On Socket.IO a `ref` is the ack id of the request: its first reply answers the
    /// ack with `{ok: true, ...data}` (an `ack` reply only does that; others are
    /// emitted as events as well).
    pub fn reply<T: Serialize + ?Sized>(&self, kind: &str, data: &T, r: Option<&Ref>) -> bool {
        if let Some(id) = self.ack_id(r) {
            let json = serde_json::to_string(data).expect("event payloads serialize");
            if kind != "ack" && !self.push_frame(encode(self.format, kind, &json)) {
                return false;
            }
            return self.answer(id, &socketio::ok_with(&json));
        }
        self.push_frame(reply(self.format, kind, data, r))
    }

    /// Sends an `error` for `err`, with the request's `ref` (on Socket.IO, answers
    /// the ack with `{ok: false, error, code}` instead).
    pub fn error(&self, err: &ErrorKind, r: Option<&Ref>) -> bool {
        let message = err.to_string();
        if let Some(id) = self.ack_id(r) {
            let json = serde_json::json!({"ok": false, "error": message, "code": err.code()});
            return self.answer(id, &json.to_string());
        }
        let data = ErrorData {
            message,
            code: err.code().to_string(),
            timestamp: now_millis(),
        };
        self.reply("error", &data, r)
    }

    /// The ack id a Socket.IO request's `ref` carries.
    fn ack_id(&self, r: Option<&Ref>) -> Option<u64> {
        match (self.wire, r) {
            (Wire::SocketIo | Wire::SocketIoRtc, Some(Ref::Number(n))) => n.as_u64(),
            _ => None,
        }
    }

    /// Answers ack `id` with `data` (JSON) unless it was answered already.
    fn answer(&self, id: u64, data: &str) -> bool {
        if self.answered.swap(id + 1, Ordering::Relaxed) == id + 1 {
            return true;
        }
        let namespace = match self.wire {
            Wire::SocketIoRtc => socketio::WEBRTC,
            _ => socketio::ROOT,
        };
        self.push_frame(socketio::ack(namespace, id, data))
    }

    /// Answers ack `id` with `{ok: true}` if nothing answered it: a request without a
    /// reply of its own has finished.
    pub fn finish_ack(&self, id: u64) {
        if self.answered.load(Ordering::Relaxed) != id + 1 {
            self.answer(id, r#"{"ok":true}"#);
        }
    }

    /// Queues a room event (its encoding in this session's format must be prepared),
    /// skipping a durable one this session already got by replay.
    pub fn push_event(&self, room: &Arc<str>, event: &Event) -> bool {
        // A private message reaches a personal room but is a position of its `dm:` room.
        let history = event.history_room().unwrap_or(room);
        self.push_room_frame(history, event.position(), event.frame(self.format).clone())
    }

    /// Queues an event of `room` (durable if it has a position) in the form this
    /// session's writer needs.
    pub fn push_room_frame(
        &self,
        room: &Arc<str>,
        position: Option<&Position>,
        frame: Frame,
    ) -> bool {
        let mut q = self.outbox.lock();
        if let (Some(p), false) = (position, q.floors.is_empty())
            && let Some(i) = q.floors.iter().position(|(r, _)| r == room)
        {
            if p.offset <= q.floors[i].1 {
                return true;
            }
            q.floors.swap_remove(i);
        }
        if let (Some(p), true) = (position, q.keeps_trail) {
            q.trail.get_or_insert_default().record(room, p.offset);
        }
        let frame = match (self.format, position) {
            (Format::Sse, Some(p)) => Outgoing::Positioned {
                frame,
                room: room.clone(),
                offset: p.offset,
                epoch: p.epoch.clone(),
            },
            _ => Outgoing::Frame(frame),
        };
        self.push_locked(q, frame)
    }

    /// Starts recording a trail for connection state recovery (Socket.IO).
    pub fn keep_trail(&self) {
        self.outbox.lock().keeps_trail = true;
    }

    /// Marks where `room`'s deliveries begin (a join): after `offset`.
    pub(super) fn trail_base(&self, room: &Arc<str>, offset: u64) {
        let mut q = self.outbox.lock();
        if q.keeps_trail {
            q.trail.get_or_insert_default().restart(room, offset);
        }
    }

    /// The trail so far (for a recovery stash).
    pub fn trail(&self) -> Option<Trail> {
        self.outbox.lock().trail.as_deref().cloned()
    }

    /// Whether a durable event of `room` at `offset` was queued to this session.
    pub fn queued(&self, room: &str, offset: u64) -> bool {
        self.outbox
            .lock()
            .trail
            .as_ref()
            .is_some_and(|t| t.events.iter().any(|(r, k)| *k == offset && &**r == room))
    }

    /// Forgets what an earlier membership of `room` replayed: a new join starts over.
    pub(super) fn clear_floor(&self, room: &str) {
        let mut q = self.outbox.lock();
        if !q.floors.is_empty() {
            q.floors.retain(|(r, _)| &**r != room);
        }
    }

    /// Marks `room` as replayed up to `offset` (see `floors`).
    pub(crate) fn set_floor(&self, room: Arc<str>, offset: u64) {
        let mut q = self.outbox.lock();
        q.floors.retain(|(r, _)| *r != room);
        q.floors.push((room, offset));
    }

    fn push_locked(&self, mut q: parking_lot::MutexGuard<'_, Outbox>, frame: Outgoing) -> bool {
        let len = frame.len();
        if q.closing.is_some() {
            return false;
        }
        if q.frames.len() >= self.limits.max_frames || q.bytes + len > self.limits.max_bytes {
            q.frames = Vec::new();
            q.bytes = 0;
            q.closing = Some(CloseCode::SlowConsumer);
            drop(q);
            self.ready.notify_one();
            return false;
        }
        q.frames.push(frame);
        q.bytes += len;
        let first = q.frames.len() == 1;
        drop(q);
        // The writer takes everything at once, so only the first frame needs to wake it.
        if first {
            self.ready.notify_one();
        }
        true
    }

    /// The outbox's bounds.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// Asks the writer to close the connection with `code` once what is queued is sent.
    /// The first reason wins.
    pub fn close(&self, code: CloseCode) {
        let mut q = self.outbox.lock();
        if q.closing.is_none() {
            q.closing = Some(code);
        }
        drop(q);
        self.ready.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.outbox.lock().closing.is_some()
    }

    /// Waits until there is something to write or a close to send.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Swaps the queued frames into `batch` (which must be empty) and returns the close
    /// to send after them, if any.
    pub fn take(&self, batch: &mut Vec<Outgoing>) -> Option<CloseCode> {
        debug_assert!(batch.is_empty());
        let mut q = self.outbox.lock();
        std::mem::swap(&mut q.frames, batch);
        q.bytes = 0;
        q.closing
    }

    pub fn touch(&self, now_secs: u64) {
        self.last_seen.store(now_secs, Ordering::Relaxed);
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Marks a request of this connection as in progress (or done).
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms.lock().clone()
    }

    pub fn in_room(&self, room: &str) -> bool {
        self.rooms.lock().iter().any(|r| &**r == room)
    }

    pub(super) fn add_room(&self, room: Arc<str>) {
        let mut rooms = self.rooms.lock();
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }

    pub(super) fn remove_room(&self, room: &str) -> bool {
        let mut rooms = self.rooms.lock();
        let before = rooms.len();
        rooms.retain(|r| &**r != room);
        rooms.len() != before
    }

    pub(super) fn room_count(&self) -> usize {
        self.rooms.lock().len()
    }

    pub(super) fn take_rooms(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *self.rooms.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(max_frames: usize, max_bytes: usize) -> Session {
        Session::new(
            1,
            "c".into(),
            Identity {
                user: UserInfo {
                    id: "u".into(),
                    username: "u".into(),
                    avatar: None,
                },
                rooms: None,
            },
            Wire::WebSocket,
            OutboxLimits {
                max_frames,
                max_bytes,
            },
            RateLimiter::new(0, 0),
            0,
        )
    }

    fn text(s: &'static str) -> Frame {
        Frame::from_static(s)
    }

    #[test]
    fn take_drains_in_order() {
        let s = session(10, 1000);
        assert!(s.push_frame(text("a")));
        assert!(s.push_frame(text("b")));
        let mut batch = Vec::new();
        assert_eq!(s.take(&mut batch), None);
        let texts: Vec<_> = batch
            .iter()
            .map(|f| match f {
                Outgoing::Frame(t) => t.as_str().to_string(),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(texts, ["a", "b"]);
        batch.clear();
        assert_eq!(s.take(&mut batch), None);
        assert!(batch.is_empty());
    }

    #[test]
    fn overflow_makes_a_slow_consumer() {
        let s = session(2, 1000);
        assert!(s.push_frame(text("a")));
        assert!(s.push_frame(text("b")));
        assert!(!s.push_frame(text("c")));
        let mut batch = Vec::new();
        assert_eq!(s.take(&mut batch), Some(CloseCode::SlowConsumer));
        assert!(batch.is_empty(), "a slow consumer's queue is dropped");
        assert!(!s.push_frame(text("d")));
    }

    #[test]
    fn byte_bound() {
        let s = session(100, 3);
        assert!(s.push_frame(text("ab")));
        assert!(!s.push_frame(text("cd")));
        assert!(s.is_closing());
    }

    #[test]
    fn first_close_wins() {
        let s = session(10, 100);
        s.push_frame(text("x"));
        s.close(CloseCode::GoingAway);
        s.close(CloseCode::Timeout);
        let mut batch = Vec::new();
        assert_eq!(s.take(&mut batch), Some(CloseCode::GoingAway));
        assert_eq!(batch.len(), 1, "queued frames go out before the close");
    }

    #[test]
    fn a_replayed_offset_is_not_delivered_twice() {
        let s = session(10, 1000);
        let room: Arc<str> = "r".into();
        let epoch: Arc<str> = "e".into();
        s.set_floor(room.clone(), 5);
        assert!(s.push_room_frame(&room, Some(&Position::new(5, epoch.clone())), text("5")));
        assert!(s.push_room_frame(&room, Some(&Position::new(6, epoch.clone())), text("6")));
        assert!(s.push_room_frame(&room, Some(&Position::new(4, epoch)), text("4")));
        let mut batch = Vec::new();
        s.take(&mut batch);
        assert_eq!(batch.len(), 2, "5 was replayed; after 6 the floor is gone");
    }
}
