//! The hub's delivery stage: the store's commits are published in commit order, and
//! what the broker hands this node is fanned out by a few workers in parallel.
//!
//! A room always goes to the same worker, whose queue is FIFO: each room keeps one
//! order of events on this node, while different rooms fan out on different cores.
//! Queues are bounded; a full one makes the publisher wait (backpressure reaches the
//! store's writer and the connections that publish), it never grows.
//!
//! Behind a broker that is not [`ordered`](crate::broker::Broker::ordered) (Redis:
//! nodes publish one room's messages concurrently, so they can arrive crossed), each
//! worker puts durable messages back in offset order per room, a [`Line`] each. A
//! message ahead of the next offset is held; if the missing one has not come within
//! [`GAP_WAIT`], it is read from the store (which has it: the store commits a room's
//! offsets in order, see `broker`), and the held ones follow. A room's line starts
//! at the store's head when the node subscribes ([`Sink::subscribed`]), and catches
//! up to it again when the broker's connection comes back. Private messages reach a
//! personal room from many conversations: each conversation gets a line of its own
//! under the personal room, started at its first message seen here.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use switchboard_protocol::{CloseCode, DM_ROOM_PREFIX, personal_room};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::rooms::RoomIndex;
use super::{Hub, Inner};
use crate::broker::{Action, Command, Envelope, Sink};
use crate::encode::{Event, Frame};
use crate::metrics::Metrics;
use crate::position::Position;
use crate::store::{Commit, Committed, Store};

/// Items waiting for one worker.
const QUEUE: usize = 4096;
/// Items a worker takes from its queue at once.
const BATCH: usize = 64;
/// How long a message ahead of its room's next offset waits for the missing one
/// before that is read from the store.
pub const GAP_WAIT: Duration = Duration::from_millis(100);
/// How long messages of a room wait for its line to start (the subscription's head
/// read) before they start it themselves.
const START_WAIT: Duration = Duration::from_secs(1);
/// Messages a line holds before it fills its gap from the store at once.
const MAX_HELD: usize = 1024;
/// How long a line keeps trying to fill a gap while the store fails to answer (it is
/// down, say) before it goes on without the missing offsets.
const FILL_GIVE_UP: Duration = Duration::from_secs(30);
/// A conversation line idle this long is forgotten (it starts again at its next
/// message).
const LINE_IDLE: Duration = Duration::from_secs(300);

enum Item {
    Env(Envelope),
    /// The node (re)subscribed to the room: catch up to the store's head.
    Sync(Arc<str>, oneshot::Sender<()>),
    /// The node no longer receives the room.
    Forget(Arc<str>),
}

/// The node's fan-out workers, as the broker's sink.
pub(super) struct Fanout {
    queues: Box<[mpsc::Sender<Item>]>,
    hasher: RandomState,
    hub: Arc<OnceLock<Weak<Inner>>>,
}

impl Fanout {
    /// One worker per core (at least two, so one long fan-out does not hold every room).
    /// With `store`, workers put durable messages in order (see the module doc).
    pub(super) fn start(
        rooms: Arc<RoomIndex>,
        metrics: Arc<Metrics>,
        store: Option<Arc<dyn Store>>,
    ) -> Fanout {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 16);
        let queues = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let worker = Worker {
                    rooms: rooms.clone(),
                    metrics: metrics.clone(),
                    lines: store
                        .clone()
                        .map(|s| Lines::new(s, metrics.clone(), rooms.clone())),
                };
                tokio::spawn(worker.run(rx));
                tx
            })
            .collect();
        Fanout {
            queues,
            hasher: RandomState::new(),
            hub: Arc::default(),
        }
    }

    /// Where cluster commands go, once the hub exists.
    pub(super) fn hub_slot(&self) -> Arc<OnceLock<Weak<Inner>>> {
        self.hub.clone()
    }

    fn queue(&self, room: &str) -> &mpsc::Sender<Item> {
        &self.queues[self.hasher.hash_one(room) as usize % self.queues.len()]
    }
}

impl Sink for Fanout {
    fn deliver(&self, env: Envelope) -> BoxFuture<'_, ()> {
        let queue = self.queue(&env.room);
        async move {
            // Closed only when the hub is gone.
            let _ = queue.send(Item::Env(env)).await;
        }
        .boxed()
    }

    fn subscribed<'a>(&'a self, room: &'a str) -> BoxFuture<'a, ()> {
        async move {
            let (tx, rx) = oneshot::channel();
            if self
                .queue(room)
                .send(Item::Sync(room.into(), tx))
                .await
                .is_ok()
            {
                let _ = rx.await;
            }
        }
        .boxed()
    }

    fn unsubscribed(&self, room: &str) {
        // Best effort: a line left behind is only memory until the next subscription
        // starts it again.
        let _ = self.queue(room).try_send(Item::Forget(room.into()));
    }

    fn command(&self, cmd: Command) {
        let Some(inner) = self.hub.get().and_then(Weak::upgrade) else {
            return;
        };
        let hub = Hub { inner };
        if cmd.from == hub.settings().node_id {
            return;
        }
        match cmd.action {
            Action::Broadcast { kind, data } => {
                hub.broadcast_local(&Event::raw(kind, Frame::from(data), None));
            }
            Action::DisconnectUser { user } => {
                hub.disconnect_user_local(&user, CloseCode::Disconnected);
            }
            Action::Unsettle { rooms } => hub.unsettle_local(&rooms),
        }
    }
}

struct Worker {
    rooms: Arc<RoomIndex>,
    metrics: Arc<Metrics>,
    /// Present when the broker does not deliver in offset order.
    lines: Option<Lines>,
}

impl Worker {
    async fn run(mut self, mut queue: mpsc::Receiver<Item>) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let deadline = self.lines.as_ref().and_then(Lines::deadline);
            let received = match deadline {
                None => queue.recv_many(&mut batch, BATCH).await,
                // `recv_many` is cancel-safe.
                Some(at) => tokio::select! {
                    n = queue.recv_many(&mut batch, BATCH) => n,
                    _ = tokio::time::sleep_until(at) => usize::MAX,
                },
            };
            if received == 0 {
                return;
            }
            let mut out = Out::default();
            for item in batch.drain(..) {
                match (item, &mut self.lines) {
                    (Item::Env(env), None) => out.push(env),
                    (Item::Env(env), Some(lines)) => lines.arrive(env, &mut out).await,
                    (Item::Sync(room, done), Some(lines)) => {
                        lines.sync(&room, &mut out).await;
                        // Delivered before the subscriber hears the room is live.
                        self.flush(&mut out);
                        let _ = done.send(());
                    }
                    (Item::Sync(_, done), None) => {
                        let _ = done.send(());
                    }
                    (Item::Forget(room), Some(lines)) => lines.forget(&room),
                    (Item::Forget(_), None) => {}
                }
            }
            if let Some(lines) = &mut self.lines {
                lines.due(Instant::now(), &mut out).await;
            }
            self.flush(&mut out);
        }
    }

    fn flush(&self, out: &mut Out) {
        let mut delivered = 0;
        for env in out.0.drain(..) {
            delivered += self.rooms.deliver(&env);
        }
        self.metrics.deliveries.increment(delivered as u64);
    }
}

/// Envelopes ready for fan-out, in order.
#[derive(Default)]
struct Out(Vec<Envelope>);

impl Out {
    fn push(&mut self, env: Envelope) {
        self.0.push(env);
    }
}

/// One room's durable messages on this node, in offset order.
struct Line {
    /// The room the messages go to.
    room: Arc<str>,
    /// The room whose offsets they carry (a conversation, for a personal room).
    history: Arc<str>,
    /// The offset to deliver next; 0 until the line starts.
    next: u64,
    /// Offsets below this were never seen here (a conversation's line starts at its
    /// first message seen): one arriving late is delivered, not dropped.
    floor: u64,
    held: BTreeMap<u64, Envelope>,
    /// Since when the first held message waits.
    waiting: Option<Instant>,
    epoch: Option<Arc<str>>,
    touched: Instant,
    /// An offset the line must reach (the store's head at a resubscription) though
    /// nothing after it is held.
    catch_up: u64,
    /// Since when the store fails to fill this line's gap.
    failing: Option<Instant>,
}

impl Line {
    fn new(room: Arc<str>, history: Arc<str>) -> Line {
        Line {
            room,
            history,
            next: 0,
            floor: 0,
            held: BTreeMap::new(),
            waiting: None,
            epoch: None,
            touched: Instant::now(),
            catch_up: 0,
            failing: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let since = self.waiting?;
        Some(since + if self.next == 0 { START_WAIT } else { GAP_WAIT })
    }

    /// Delivers held messages from `next` on while they follow each other.
    fn drain(&mut self, out: &mut Out) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() < self.next {
                entry.remove();
                continue;
            }
            if *entry.key() != self.next {
                break;
            }
            out.push(entry.remove());
            self.next += 1;
        }
        self.waiting = if self.held.is_empty() {
            None
        } else {
            self.waiting.or(Some(Instant::now()))
        };
    }
}

/// A room's line and, for a personal room, one per conversation.
struct RoomLines {
    own: Line,
    conversations: HashMap<Arc<str>, Line>,
}

struct Lines {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Who is where on this node: a room nobody is in loses its lines when idle.
    index: Arc<RoomIndex>,
    rooms: HashMap<Arc<str>, RoomLines>,
    /// Rooms with a line waiting (held messages).
    waiting: std::collections::HashSet<Arc<str>>,
    swept: Instant,
}

impl Lines {
    fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, index: Arc<RoomIndex>) -> Lines {
        Lines {
            store,
            metrics,
            index,
            rooms: HashMap::new(),
            waiting: Default::default(),
            swept: Instant::now(),
        }
    }

    fn room(&mut self, room: &Arc<str>) -> &mut RoomLines {
        self.rooms.entry(room.clone()).or_insert_with(|| RoomLines {
            own: Line::new(room.clone(), room.clone()),
            conversations: HashMap::new(),
        })
    }

    fn deadline(&self) -> Option<Instant> {
        let next_sweep = self.swept + LINE_IDLE;
        self.waiting
            .iter()
            .filter_map(|r| self.rooms.get(r))
            .flat_map(|r| std::iter::once(&r.own).chain(r.conversations.values()))
            .filter_map(Line::deadline)
            .min()
            .map(|d| d.min(next_sweep))
    }

    async fn arrive(&mut self, env: Envelope, out: &mut Out) {
        self.metrics.broker_received.increment(1);
        let (Some(offset), Some(history)) = (env.event.offset(), env.event.history_room()) else {
            // Ephemeral, or a position of no history: as it comes.
            out.push(env);
            return;
        };
        let history = history.clone();
        let room = env.room.clone();
        let lines = self.room(&room);
        let line = if history == room {
            &mut lines.own
        } else {
            lines
                .conversations
                .entry(history.clone())
                .or_insert_with(|| Line::new(room.clone(), history.clone()))
        };
        line.touched = Instant::now();
        if line.epoch.is_none() {
            line.epoch = env.event.position().map(|p| p.epoch.clone());
        }
        if line.next == 0 && history != room {
            // A conversation seen here for the first time starts at this message.
            line.next = offset;
            line.floor = offset;
        }
        if line.next != 0 && offset < line.next {
            if offset < line.floor {
                out.push(env);
            }
            return;
        }
        if offset == line.next {
            out.push(env);
            line.next += 1;
            line.drain(out);
            if line.held.is_empty() {
                return;
            }
        } else {
            line.held.insert(offset, env);
            line.waiting.get_or_insert_with(Instant::now);
        }
        let full = line.held.len() >= MAX_HELD;
        self.waiting.insert(room.clone());
        if full {
            self.fill(&room, Some(&history), out).await;
        }
    }

    /// The node (re)subscribed to `room`: its lines catch up to the store's heads.
    async fn sync(&mut self, room: &Arc<str>, out: &mut Out) {
        let conversations: Vec<Arc<str>> = self.room(room).conversations.keys().cloned().collect();
        for history in std::iter::once(None).chain(conversations.iter().map(Some)) {
            let name = history.unwrap_or(room);
            let head = match self.store.head(name).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, room = %name, "reading a head to catch up failed");
                    continue;
                }
            };
            let lines = self.room(room);
            let line = match history {
                None => &mut lines.own,
                Some(h) => match lines.conversations.get_mut(h) {
                    Some(l) => l,
                    None => continue,
                },
            };
            line.epoch = Some(head.epoch.clone());
            if line.next == 0 {
                // Nobody here needs what came before: joiners read the head after this.
                line.next = head.offset + 1;
                line.floor = line.next;
                line.drain(out);
            } else if head.offset >= line.next {
                line.catch_up = line.catch_up.max(head.offset);
                self.fill_to(room, history, head.offset, out).await;
            }
        }
        self.waiting.insert(room.clone());
    }

    fn forget(&mut self, room: &Arc<str>) {
        self.rooms.remove(room);
        self.waiting.remove(room);
    }

    /// Handles what is due at `now`: lines whose gap waited long enough are filled,
    /// lines that waited for their start start with what they hold.
    async fn due(&mut self, now: Instant, out: &mut Out) {
        let waiting: Vec<Arc<str>> = self.waiting.iter().cloned().collect();
        for room in waiting {
            let Some(lines) = self.rooms.get_mut(&room) else {
                self.waiting.remove(&room);
                continue;
            };
            let mut due = Vec::new();
            for (key, line) in std::iter::once((None, &mut lines.own)).chain(
                lines
                    .conversations
                    .iter_mut()
                    .map(|(k, l)| (Some(k.clone()), l)),
            ) {
                match line.deadline() {
                    Some(at) if at <= now => {
                        if line.next == 0 {
                            // No start came: the line starts at what it holds.
                            line.next = *line.held.keys().next().expect("waiting holds");
                            line.floor = line.next;
                            line.drain(out);
                        } else {
                            due.push(key);
                        }
                    }
                    _ => {}
                }
            }
            for key in due {
                self.fill(&room, key.as_ref(), out).await;
            }
            let still = self.rooms.get(&room).is_some_and(|l| {
                l.own.waiting.is_some() || l.conversations.values().any(|c| c.waiting.is_some())
            });
            if !still {
                self.waiting.remove(&room);
            }
        }
        if now >= self.swept + LINE_IDLE {
            self.swept = now;
            let idle = |l: &Line| l.waiting.is_none() && now - l.touched >= LINE_IDLE;
            for lines in self.rooms.values_mut() {
                lines.conversations.retain(|_, l| !idle(l));
            }
            // A room this node no longer has anyone in (what came after its
            // unsubscription, say) is forgotten once idle; one with members keeps its
            // line, however quiet.
            let index = &self.index;
            self.rooms.retain(|room, l| {
                !(idle(&l.own) && l.conversations.is_empty() && index.member_count(room) == 0)
            });
        }
    }

    /// Reads the gap before a line's first held message from the store, delivers it,
    /// then what was held.
    async fn fill(&mut self, room: &Arc<str>, history: Option<&Arc<str>>, out: &mut Out) {
        let upto = {
            let lines = self.room(room);
            let line = match history.filter(|h| *h != room) {
                None => &lines.own,
                Some(h) => match lines.conversations.get(h) {
                    Some(l) => l,
                    None => return,
                },
            };
            let before_held = line.held.keys().next().map(|first| first - 1);
            match before_held.unwrap_or(0).max(line.catch_up) {
                0 => return,
                upto => upto,
            }
        };
        let history = history.filter(|h| *h != room).cloned();
        self.fill_to(room, history.as_ref(), upto, out).await;
    }

    /// Delivers a line's offsets from `next` to `upto` from the store, then what it
    /// holds after them.
    async fn fill_to(
        &mut self,
        room: &Arc<str>,
        history: Option<&Arc<str>>,
        upto: u64,
        out: &mut Out,
    ) {
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let lines = self.room(room);
        let line = match history {
            None => &mut lines.own,
            Some(h) => match lines.conversations.get_mut(h) {
                Some(l) => l,
                None => return,
            },
        };
        if upto >= line.next {
            let kind = if line.history.starts_with(DM_ROOM_PREFIX) {
                "private_message"
            } else {
                "new_message"
            };
            let epoch = match &line.epoch {
                Some(e) => e.clone(),
                None => match store.head(&line.history).await {
                    Ok(h) => h.epoch,
                    Err(_) => Arc::from(""),
                },
            };
            let mut missed = store.replay(&line.history, line.next - 1, upto);
            let mut filled = 0u64;
            let mut failed = false;
            while let Some(m) = missed.next().await {
                match m {
                    Ok(m) => {
                        let event = Event::raw(
                            kind,
                            Frame::from(m.data),
                            Some(Position::new(m.offset, epoch.clone())),
                        )
                        .in_history_of(line.history.clone());
                        out.push(Envelope::new(line.room.clone(), Arc::new(event)));
                        line.next = m.offset + 1;
                        filled += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, room = %line.history, "filling a gap from the store failed");
                        failed = true;
                        break;
                    }
                }
            }
            drop(missed);
            if line.next <= upto {
                let now = Instant::now();
                let since = *line.failing.get_or_insert(now);
                if failed && now - since < FILL_GIVE_UP && line.held.len() < MAX_HELD {
                    // The store is out of reach for now (the missing offsets are in it):
                    // hold on and ask again after the gap wait.
                    line.waiting = Some(now);
                    metrics.gap_filled.increment(filled);
                    return;
                }
                // The store does not have them, or never answered: go on without
                // rather than stall the room.
                tracing::error!(room = %line.history, from = line.next, to = upto, "offsets skipped");
                line.next = upto + 1;
            }
            line.failing = None;
            metrics.gap_filled.increment(filled);
            tracing::debug!(room = %line.history, filled, "gap filled from the store");
        }
        if line.catch_up < line.next {
            line.catch_up = 0;
        }
        line.waiting = None;
        line.drain(out);
    }
}

/// Publishes each committed message, in commit order, then tells its sender (the
/// `ack`). A duplicate was published the first time and is only answered. A batch's
/// messages go to the broker together (one round trip to Redis).
///
/// If the broker fails, the message is durable but its sender hears the error (no
/// ack): a retry with the same `clientMessageId` answers the original. Members get it
/// when their node catches up from the store (the room's next message, or the broker's
/// connection coming back).
pub(super) async fn publish_commits(mut commits: mpsc::Receiver<Vec<Commit>>, hub: Weak<Inner>) {
    while let Some(batch) = commits.recv().await {
        let Some(inner) = hub.upgrade() else {
            return;
        };
        let hub = Hub { inner };
        let mut envs = Vec::new();
        let mut owners = Vec::new();
        for (i, Commit { result, .. }) in batch.iter().enumerate() {
            if let Ok(c) = result
                && !c.duplicate
            {
                for env in envelopes(c) {
                    envs.push(env);
                    owners.push(i);
                }
            }
        }
        let published = hub.broker().publish_all(envs).await;
        let mut failed = vec![None; batch.len()];
        for (i, r) in owners.into_iter().zip(published) {
            if let Err(e) = r {
                failed[i] = Some(e);
            }
        }
        for (Commit { result, done }, failed) in batch.into_iter().zip(failed) {
            let result = match (result, failed) {
                (Ok(c), Some(e)) => {
                    tracing::error!(error = %e, room = %c.room, offset = c.position.offset, "publishing a stored message failed");
                    Err(crate::store::StoreError::Unavailable(format!(
                        "stored, but not delivered: {e}"
                    )))
                }
                (Ok(c), None) => {
                    if !c.duplicate {
                        hub.notify_offline(&c).await;
                    }
                    Ok(c)
                }
                (Err(e), _) => Err(e),
            };
            done.complete(result);
        }
    }
}

/// Where a stored message goes: a room message to its room; a private message, as
/// `private_message` with the position of its `dm:` room, to the recipient's devices
/// and the sender's other devices (their personal rooms).
fn envelopes(c: &Committed) -> Vec<Envelope> {
    let Some(route) = &c.private else {
        let event = Event::raw("new_message", c.payload.clone(), Some(c.position.clone()))
            .in_history_of(c.room.clone());
        return vec![Envelope::new(c.room.clone(), Arc::new(event))];
    };
    let event = Arc::new(
        Event::raw(
            "private_message",
            c.payload.clone(),
            Some(c.position.clone()),
        )
        .in_history_of(c.room.clone()),
    );
    let mut out = vec![Envelope {
        exclude: route.origin.clone(),
        ..Envelope::new(personal_room(&route.sender).into(), event.clone())
    }];
    if route.recipient != route.sender {
        out.push(Envelope::new(personal_room(&route.recipient).into(), event));
    }
    out
}
