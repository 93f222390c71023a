//! One Engine.IO connection: its queue, its sockets and its heartbeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::{Either, select, select_all};
use parking_lot::Mutex;
use smallvec::SmallVec;
use switchboard_protocol::CloseCode;
use tokio::sync::Notify;

use crate::encode::Frame;
use crate::hub::{Outgoing, Registration, Session};

/// Which transport carries the connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it (a close packet, or its socket went away).
    Client,
    PingTimeout,
    /// No namespace was connected in time.
    ConnectTimeout,
    /// A malformed packet, a second concurrent poll, an oversized payload.
    ProtocolError,
    /// The server is draining.
    ServerClosing,
    /// One of its hub sessions was closed by the hub with this code.
    Session(CloseCode),
}

impl CloseReason {
    /// Whether the client should not reconnect: its sockets get a DISCONNECT first.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CloseReason::Session(
                CloseCode::Disconnected
                    | CloseCode::AuthenticationFailed
                    | CloseCode::RateLimited
                    | CloseCode::TooManyConnections
            )
        )
    }
}

/// What goes to the client: an Engine.IO text packet, or a binary message.
#[derive(Debug, Clone)]
pub enum Out {
    Text(Frame),
    Binary(Bytes),
}

/// A connected namespace.
pub struct Socket {
    pub namespace: &'static str,
    /// The hub session behind it (none in the conformance echo).
    pub registration: Option<Registration>,
}

impl Socket {
    pub fn session(&self) -> Option<&Arc<Session>> {
        self.registration.as_ref().map(Registration::session)
    }
}

/// A binary packet waiting for its attachments.
pub struct Partial {
    pub text: String,
    pub needed: usize,
    pub parts: Vec<Bytes>,
}

/// Bounds of a connection's own queue (its sockets' events have the hub's outboxes): a
/// client that makes the server answer faster than it reads is cut off.
const MAX_OUT_PACKETS: usize = 1024;
const MAX_OUT_BYTES: usize = 1 << 20;

pub(super) struct State {
    out: Vec<Out>,
    out_bytes: usize,
    closed: Option<CloseReason>,
    pub transport: Transport,
    /// A WebSocket is probing to take the connection over.
    pub upgrading: bool,
    /// The probe was answered: polls end at once (the client waits for its poll to
    /// end before it sends the upgrade packet).
    pub probed: bool,
    /// A long-poll GET is in progress.
    pub polling: bool,
    /// A POST is in progress.
    pub posting: bool,
    pub sockets: SmallVec<[Socket; 1]>,
    pub partial: Option<Box<Partial>>,
}

/// An Engine.IO session id: 20 characters of `A-Za-z0-9`, kept inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid([u8; 20]);

impl Sid {
    pub fn random() -> Sid {
        let mut id = [0u8; 20];
        id.copy_from_slice(super::random_id().as_bytes());
        Sid(id)
    }

    /// A sid given by a client; None if it can not be one.
    pub fn parse(s: &str) -> Option<Sid> {
        let bytes: [u8; 20] = s.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(Sid(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a sid is ASCII")
    }
}

pub struct Conn {
    pub sid: Sid,
    /// Engine clock (ms) of the handshake.
    pub opened_ms: u64,
    state: Mutex<State>,
    wake: Notify,
    /// Engine clock (ms) by which the pong must arrive; 0 while no ping is out.
    pong_due: AtomicU64,
    next_ping: AtomicU64,
    /// A request of this connection is being served: the server is the one late.
    busy: AtomicBool,
    /// The `peerId` of the handshake's query, for the `/webrtc` namespace.
    pub peer_id: Option<Box<str>>,
}

impl Conn {
    pub(super) fn new(
        sid: Sid,
        transport: Transport,
        now: u64,
        next_ping: u64,
        peer_id: Option<Box<str>>,
    ) -> Conn {
        Conn {
            sid,
            opened_ms: now,
            state: Mutex::new(State {
                out: Vec::new(),
                out_bytes: 0,
                closed: None,
                transport,
                upgrading: false,
                probed: false,
                polling: false,
                posting: false,
                sockets: SmallVec::new(),
                partial: None,
            }),
            wake: Notify::new(),
            pong_due: AtomicU64::new(0),
            next_ping: AtomicU64::new(next_ping),
            busy: AtomicBool::new(false),
            peer_id,
        }
    }

    pub(super) fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    fn push(&self, out: Out) -> bool {
        let len = match &out {
            Out::Text(f) => f.len(),
            Out::Binary(b) => b.len(),
        };
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return false;
        }
        if st.out.len() >= MAX_OUT_PACKETS || st.out_bytes + len > MAX_OUT_BYTES {
            // Closed here; whoever touches the connection next (its transport, the
            // sweep) ends it.
            st.out = Vec::new();
            st.out_bytes = 0;
            st.closed = Some(CloseReason::Session(CloseCode::SlowConsumer));
            drop(st);
            self.wake.notify_one();
            return false;
        }
        st.out_bytes += len;
        st.out.push(out);
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Queues an Engine.IO text packet.
    pub fn push_text(&self, frame: Frame) -> bool {
        self.push(Out::Text(frame))
    }

    pub fn push_binary(&self, data: Bytes) -> bool {
        self.push(Out::Binary(data))
    }

    /// Wakes whoever holds the transport (its sockets changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    pub fn closed(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Marks the connection closed and hands back its sockets (to be dropped by the
    /// caller, outside the lock).
    pub(super) fn shut(&self, reason: CloseReason) -> SmallVec<[Socket; 1]> {
        let mut st = self.state.lock();
        if st.closed.is_none() {
            st.closed = Some(reason);
        }
        st.partial = None;
        let sockets = std::mem::take(&mut st.sockets);
        drop(st);
        self.wake.notify_one();
        sockets
    }

    pub fn has_sockets(&self) -> bool {
        !self.state.lock().sockets.is_empty()
    }

    /// The hub session of `namespace`, if it is connected.
    pub fn session(&self, namespace: &str) -> Option<Arc<Session>> {
        let st = self.state.lock();
        st.sockets
            .iter()
            .find(|s| s.namespace == namespace)
            .and_then(|s| s.session().cloned())
    }

    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.state
            .lock()
            .sockets
            .iter()
            .any(|s| s.namespace == namespace)
    }

    /// Adds a connected socket; gives it back if the connection closed meanwhile.
    pub fn add_socket(&self, socket: Socket) -> Result<(), Socket> {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return Err(socket);
        }
        st.sockets.push(socket);
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Removes the socket of `namespace` (dropped by the caller).
    pub fn remove_socket(&self, namespace: &str) -> Option<Socket> {
        let mut st = self.state.lock();
        let i = st.sockets.iter().position(|s| s.namespace == namespace)?;
        Some(st.sockets.remove(i))
    }

    fn sessions(&self) -> SmallVec<[Arc<Session>; 2]> {
        let st = self.state.lock();
        st.sockets
            .iter()
            .filter_map(|s| s.session().cloned())
            .collect()
    }

    /// Moves everything queued for the client into `batch`: the connection's own
    /// packets first, then each socket's outbox. Returns why the connection must end,
    /// if it must (closed, or a session was closed by the hub: its sockets then get a
    /// DISCONNECT when the close is final).
    pub fn take(&self, batch: &mut Vec<Out>) -> Option<CloseReason> {
        let mut st = self.state.lock();
        // An idle connection keeps no queue: the vector goes with its packets.
        if batch.is_empty() {
            std::mem::swap(batch, &mut st.out);
        } else {
            batch.append(&mut st.out);
            st.out = Vec::new();
        }
        st.out_bytes = 0;
        if let Some(reason) = st.closed {
            return Some(reason);
        }
        drop(st);
        let mut frames = Vec::new();
        for session in self.sessions() {
            let closing = session.take(&mut frames);
            batch.extend(frames.drain(..).filter_map(|f| match f {
                Outgoing::Frame(f) | Outgoing::Positioned { frame: f, .. } => Some(Out::Text(f)),
                Outgoing::Ping => None,
            }));
            if let Some(code) = closing {
                let reason = CloseReason::Session(code);
                if reason.is_final() {
                    for s in self.state.lock().sockets.iter() {
                        let packet = switchboard_protocol::socketio::message(
                            switchboard_protocol::socketio::Kind::Disconnect,
                            0,
                            s.namespace,
                            None,
                            None,
                        );
                        batch.push(Out::Text(packet.into()));
                    }
                }
                return Some(reason);
            }
        }
        None
    }

    /// Waits until something may be queued (a packet, an outbox, a close).
    pub async fn changed(&self) {
        let sessions = self.sessions();
        let wake = std::pin::pin!(self.wake.notified());
        match sessions.len() {
            0 => wake.await,
            1 => {
                let ready = std::pin::pin!(sessions[0].ready());
                match select(wake, ready).await {
                    Either::Left(_) | Either::Right(_) => {}
                }
            }
            _ => {
                let readies = sessions.iter().map(|s| Box::pin(s.ready()));
                let _ = select(wake, select_all(readies)).await;
            }
        }
    }

    /// A pong arrived: the next ping is due `interval` from now.
    pub fn pong(&self, now: u64, interval: u64) {
        self.pong_due.store(0, Ordering::Relaxed);
        self.next_ping.store(now + interval, Ordering::Relaxed);
    }

    /// Sends a ping if one is due and none is out. The pong is due `timeout` after the
    /// ping was scheduled, however late the sweep that sends it: the deadline is the
    /// protocol's, not the sweep's.
    pub(super) fn ping_if_due(&self, now: u64, timeout: u64) {
        if self.pong_due.load(Ordering::Relaxed) != 0 {
            return;
        }
        let scheduled = self.next_ping.load(Ordering::Relaxed);
        if now >= scheduled {
            self.pong_due.store(scheduled + timeout, Ordering::Relaxed);
            self.push_text(Frame::from_static("2"));
        }
    }

    /// Whether the connection is dead: its pong is late, or the ping it is owed was
    /// due so long ago that no pong could be in time (unless the server is busy
    /// serving it).
    pub(super) fn overdue(&self, now: u64, timeout: u64) -> bool {
        if self.busy.load(Ordering::Relaxed) {
            return false;
        }
        let due = match self.pong_due.load(Ordering::Relaxed) {
            0 => self.next_ping.load(Ordering::Relaxed) + timeout,
            due => due,
        };
        now > due
    }

    /// A request of the client is being served: its pongs wait unread.
    pub fn set_busy(&self) {
        self.busy.store(true, Ordering::Relaxed);
    }

    /// The request is done: a pong that fell due meanwhile gets `timeout` more to
    /// arrive (it may be waiting, unread).
    pub fn set_idle(&self, now: u64, timeout: u64) {
        self.busy.store(false, Ordering::Relaxed);
        let due = self.pong_due.load(Ordering::Relaxed);
        if due != 0 && due < now {
            self.pong_due.store(now + timeout, Ordering::Relaxed);
        }
    }
}
