//! The cluster broker: Redis pub/sub with one channel per room.
//!
//! A node subscribes to a room's channel while it has someone in the room (counted
//! subscriptions), so it receives nothing of rooms it has no members in, and a publish
//! is one `PUBLISH` whatever the number of nodes. Commands go over one multiplexed
//! connection (concurrent publishes are pipelined on it); subscriptions over one
//! pub/sub connection owned by a task, which batches subscribe and unsubscribe
//! requests and, when the connection comes back after Redis restarted, subscribes to
//! every room again and has the sink catch each up from the store.
//!
//! A subscription resolves only once Redis confirmed it and the sink accounted for the
//! room's head, so a join confirmed afterwards misses nothing. While Redis is down,
//! publishing and subscribing fail within `timeout` (no ack, no hang) and the broker
//! reports itself unhealthy.
//!
//! What crosses Redis: a one-line JSON head (type, position, history room, exclusion)
//! then the event's `data` JSON, which is passed through untouched.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{Broker, BrokerError, Command, Envelope, Sink};
use crate::encode::{Event, Frame};
use crate::position::Position;

/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 512;
/// The longest wait between two attempts to reconnect the subscriber.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RedisBrokerOptions {
    /// Prefix of every channel (`<prefix>r:<room>`, `<prefix>cmd`).
    pub prefix: String,
    /// How long a publish or a subscription may take before it fails.
    pub timeout: Duration,
}

pub struct RedisBroker {
    client: ::redis::Client,
    conn: ConnectionManager,
    opts: RedisBrokerOptions,
    sink: OnceLock<Arc<dyn Sink>>,
    subs: Arc<Subscriptions>,
    /// Subscription changes for the subscriber task; unbounded because `unsubscribe`
    /// runs where nothing can wait (a `Drop`), and bounded in practice by the rooms
    /// joined and left.
    changes: mpsc::UnboundedSender<Arc<str>>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<Arc<str>>>>,
    healthy: Arc<AtomicBool>,
    /// Messages published since start.
    pub published: AtomicU64,
}

/// The rooms this node wants, each with how many subscriptions hold it and whether
/// its channel is live on the current connection.
#[derive(Default)]
struct Subscriptions {
    rooms: Mutex<HashMap<Arc<str>, Wanted>>,
}

struct Wanted {
    count: usize,
    live: watch::Sender<bool>,
}

impl Subscriptions {
    /// Marks every live room as not live (the connection is gone).
    fn all_down(&self) {
        for w in self.rooms.lock().values() {
            w.live.send_replace(false);
        }
    }

    fn set_live(&self, room: &str) {
        if let Some(w) = self.rooms.lock().get(room) {
            w.live.send_replace(true);
        }
    }

    fn wanted(&self, room: &str) -> bool {
        self.rooms.lock().contains_key(room)
    }
}

/// The head line of a message on a channel.
#[derive(Serialize, Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    k: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<u64>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    e: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    h: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    x: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    t: Option<Cow<'a, str>>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// An envelope as it crosses Redis: the head, a newline, the data.
fn encode(env: &Envelope) -> Vec<u8> {
    let ev = &env.event;
    let head = Head {
        k: Cow::Borrowed(ev.kind()),
        o: ev.offset(),
        e: ev.position().map(|p| Cow::Borrowed(&*p.epoch)),
        h: ev.history_room().map(|h| Cow::Borrowed(&**h)),
        x: env.exclude.as_deref().map(Cow::Borrowed),
        t: env.only.as_deref().map(Cow::Borrowed),
    };
    let mut out = serde_json::to_vec(&head).expect("a head serializes");
    out.push(b'\n');
    out.extend_from_slice(ev.data().as_str().as_bytes());
    out
}

/// The envelope a channel message carries, or None if it is not one of ours.
fn decode(room: Arc<str>, payload: &[u8]) -> Option<Envelope> {
    let split = payload.iter().position(|b| *b == b'\n')?;
    let head: Head = serde_json::from_slice(&payload[..split]).ok()?;
    let data = String::from_utf8(payload[split + 1..].to_vec()).ok()?;
    let position = match (head.o, head.e) {
        (Some(offset), Some(epoch)) => Some(Position::new(offset, Arc::from(&*epoch))),
        _ => None,
    };
    let mut event = Event::raw(head.k.into_owned(), Frame::from(data), position);
    if let Some(h) = head.h {
        event = event.in_history_of(Arc::from(&*h));
    }
    Some(Envelope {
        room,
        event: Arc::new(event),
        exclude: head.x.map(|x| Arc::from(&*x)),
        only: head.t.map(|t| Arc::from(&*t)),
    })
}

impl RedisBroker {
    /// Connects the command connection (failing if Redis cannot be reached now);
    /// the subscriber starts with [`Broker::start`].
    pub async fn connect(url: &str, opts: RedisBrokerOptions) -> Result<RedisBroker, BrokerError> {
        let client = ::redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.timeout))
            .set_response_timeout(Some(opts.timeout))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF);
        let conn = tokio::time::timeout(
            opts.timeout,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| BrokerError::Unavailable(format!("no answer from {url}")))?
        .map_err(unavailable)?;
        let (changes, pending) = mpsc::unbounded_channel();
        Ok(RedisBroker {
            client,
            conn,
            opts,
            sink: OnceLock::new(),
            subs: Arc::default(),
            changes,
            pending: Mutex::new(Some(pending)),
            healthy: Arc::new(AtomicBool::new(false)),
            published: AtomicU64::new(0),
        })
    }

    /// The node's command connection, for presence and the Socket.IO stashes.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn channel(&self, room: &str) -> String {
        format!("{}r:{room}", self.opts.prefix)
    }

    fn command_channel(&self) -> String {
        format!("{}cmd", self.opts.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.opts.prefix)
    }

    /// Runs one command within the timeout.
    async fn run<T: ::redis::FromRedisValue>(&self, cmd: ::redis::Cmd) -> Result<T, BrokerError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.opts.timeout, cmd.query_async::<T>(&mut conn))
            .await
            .map_err(|_| BrokerError::Unavailable("Redis did not answer in time".into()))?
            .map_err(unavailable)
    }

    /// Ends one hold of `room`; the last one asks the subscriber to let it go.
    fn release(&self, room: &str) {
        let mut rooms = self.subs.rooms.lock();
        let Some(w) = rooms.get_mut(room) else {
            return;
        };
        w.count -= 1;
        if w.count == 0 {
            let (room, _) = rooms.remove_entry(room).expect("present");
            drop(rooms);
            let _ = self.changes.send(room);
        }
    }
}

impl Broker for RedisBroker {
    fn ordered(&self) -> bool {
        false
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn publish(&self, env: Envelope) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        async move {
            let mut out = self.publish_all(vec![env]).await;
            out.pop().unwrap_or(Err(BrokerError::Closed))
        }
        .boxed()
    }

    fn publish_all(
        &self,
        envs: Vec<Envelope>,
    ) -> BoxFuture<'_, Vec<Result<Option<Position>, BrokerError>>> {
        async move {
            if envs.is_empty() {
                return Vec::new();
            }
            let mut pipe = ::redis::pipe();
            for env in &envs {
                pipe.cmd("PUBLISH")
                    .arg(self.channel(&env.room))
                    .arg(encode(env))
                    .ignore();
            }
            let mut conn = self.conn.clone();
            let sent = tokio::time::timeout(self.opts.timeout, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| BrokerError::Unavailable("Redis did not answer in time".into()))
                .and_then(|r| r.map_err(unavailable));
            match sent {
                Ok(()) => {
                    self.published
                        .fetch_add(envs.len() as u64, Ordering::Relaxed);
                    envs.iter()
                        .map(|e| Ok(e.event.position().cloned()))
                        .collect()
                }
                Err(e) => envs.iter().map(|_| Err(e.clone())).collect(),
            }
        }
        .boxed()
    }

    fn command(&self, cmd: Command) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            let payload = serde_json::to_vec(&cmd).map_err(unavailable)?;
            let mut publish = ::redis::cmd("PUBLISH");
            publish.arg(self.command_channel()).arg(payload);
            self.run::<i64>(publish).await.map(drop)
        }
        .boxed()
    }

    fn report<'a>(
        &'a self,
        node: &'a str,
        report: String,
        expires_at: u64,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let entry = serde_json::json!({ "expiresAt": expires_at, "report": report });
            let mut cmd = ::redis::cmd("HSET");
            cmd.arg(self.nodes_key()).arg(node).arg(entry.to_string());
            self.run::<i64>(cmd).await.map(drop)
        }
        .boxed()
    }

    fn reports(&self) -> BoxFuture<'_, Result<Vec<String>, BrokerError>> {
        async move {
            let mut cmd = ::redis::cmd("HGETALL");
            cmd.arg(self.nodes_key());
            let all: HashMap<String, String> = self.run(cmd).await?;
            let now = switchboard_protocol::now_millis();
            let mut out = Vec::new();
            let mut dead = Vec::new();
            for (node, entry) in all {
                let v: serde_json::Value = serde_json::from_str(&entry).unwrap_or_default();
                match (v["expiresAt"].as_u64(), v["report"].as_str()) {
                    (Some(at), Some(report)) if at > now => out.push(report.to_string()),
                    _ => dead.push(node),
                }
            }
            if !dead.is_empty() {
                // A node gone for good: its entry goes too.
                let mut cmd = ::redis::cmd("HDEL");
                cmd.arg(self.nodes_key()).arg(dead);
                let _ = self.run::<i64>(cmd).await;
            }
            Ok(out)
        }
        .boxed()
    }

    fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let mut live = {
                let mut rooms = self.subs.rooms.lock();
                let w = rooms.entry(Arc::from(room)).or_insert_with(|| Wanted {
                    count: 0,
                    live: watch::Sender::new(false),
                });
                w.count += 1;
                if w.count == 1 {
                    let _ = self.changes.send(Arc::from(room));
                }
                w.live.subscribe()
            };
            // Whatever ends this wait early (a timeout, the caller dropping it) gives the
            // hold back.
            struct Hold<'b>(&'b RedisBroker, &'b str, bool);
            impl Drop for Hold<'_> {
                fn drop(&mut self) {
                    if !self.2 {
                        self.0.release(self.1);
                    }
                }
            }
            let mut hold = Hold(self, room, false);
            match tokio::time::timeout(self.opts.timeout, live.wait_for(|up| *up)).await {
                Ok(Ok(_)) => {
                    hold.2 = true;
                    Ok(())
                }
                _ => Err(BrokerError::Unavailable(format!(
                    "cannot subscribe to room {room}: Redis unreachable"
                ))),
            }
        }
        .boxed()
    }

    fn unsubscribe(&self, room: &str) {
        self.release(room);
    }

    fn start(&self, sink: Arc<dyn Sink>) {
        if self.sink.set(sink.clone()).is_err() {
            return;
        }
        let Some(changes) = self.pending.lock().take() else {
            return;
        };
        let task = Subscriber {
            client: self.client.clone(),
            prefix: self.opts.prefix.clone(),
            timeout: self.opts.timeout,
            subs: self.subs.clone(),
            sink,
            healthy: self.healthy.clone(),
        };
        tokio::spawn(task.run(changes));
    }
}

/// Owns the pub/sub connection: applies subscription changes, hands what arrives to
/// the sink, reconnects.
struct Subscriber {
    client: ::redis::Client,
    prefix: String,
    timeout: Duration,
    subs: Arc<Subscriptions>,
    sink: Arc<dyn Sink>,
    healthy: Arc<AtomicBool>,
}

impl Subscriber {
    async fn run(self, mut changes: mpsc::UnboundedReceiver<Arc<str>>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.session(&mut changes).await {
                // The broker is gone.
                Ok(()) => return,
                Err(e) => {
                    if self.healthy.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "Redis subscriber lost; reconnecting");
                    }
                    self.subs.all_down();
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // What changed meanwhile is in the wanted set already.
            while changes.try_recv().is_ok() {}
        }
    }

    /// One connection's life: Ok when the broker is dropped, Err when the connection
    /// fails.
    async fn session(
        &self,
        changes: &mut mpsc::UnboundedReceiver<Arc<str>>,
    ) -> Result<(), BrokerError> {
        let pubsub = tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError::Unavailable("no answer".into()))?
            .map_err(unavailable)?;
        let (mut sender, mut stream) = pubsub.split();
        let command_channel = format!("{}cmd", self.prefix);
        let room_prefix = format!("{}r:", self.prefix);
        sender
            .subscribe(&command_channel)
            .await
            .map_err(unavailable)?;
        let mut active: HashSet<Arc<str>> = HashSet::new();
        // Everything wanted now, again (after a restart of Redis, say).
        let wanted: Vec<Arc<str>> = self.subs.rooms.lock().keys().cloned().collect();
        while changes.try_recv().is_ok() {}
        self.apply(&mut sender, &mut active, wanted).await?;
        self.healthy.store(true, Ordering::Relaxed);
        tracing::info!(rooms = active.len(), "Redis subscriber connected");
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = changes.recv_many(&mut batch, CHANNELS_PER_COMMAND) => {
                    if n == 0 {
                        return Ok(());
                    }
                    let rooms = std::mem::take(&mut batch);
                    self.apply(&mut sender, &mut active, rooms).await?;
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Err(BrokerError::Unavailable("connection closed".into()));
                    };
                    let channel = msg.get_channel_name();
                    if channel == command_channel {
                        match serde_json::from_slice::<Command>(msg.get_payload_bytes()) {
                            Ok(cmd) => self.sink.command(cmd),
                            Err(e) => tracing::warn!(error = %e, "unreadable cluster command"),
                        }
                        continue;
                    }
                    let Some(room) = channel.strip_prefix(&room_prefix) else {
                        continue;
                    };
                    match decode(Arc::from(room), msg.get_payload_bytes()) {
                        Some(env) => self.sink.deliver(env).await,
                        None => tracing::warn!(room, "unreadable message on a room channel"),
                    }
                }
            }
        }
    }

    /// Brings the connection's subscriptions in line with what is wanted, for `rooms`
    /// (each either newly wanted or no longer). A newly live room is caught up by the
    /// sink before its waiters hear it is live; that runs beside the loop, so that
    /// messages keep flowing meanwhile.
    async fn apply(
        &self,
        sender: &mut ::redis::aio::PubSubSink,
        active: &mut HashSet<Arc<str>>,
        rooms: Vec<Arc<str>>,
    ) -> Result<(), BrokerError> {
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for room in rooms {
            let wanted = self.subs.wanted(&room);
            if wanted && !active.contains(&room) {
                add.push(room);
            } else if !wanted && active.contains(&room) {
                remove.push(room);
            } else if wanted {
                // Wanted again while still active: live already.
                self.subs.set_live(&room);
            }
        }
        for chunk in remove.chunks(CHANNELS_PER_COMMAND) {
            let channels: Vec<String> = chunk
                .iter()
                .map(|r| format!("{}r:{r}", self.prefix))
                .collect();
            sender.unsubscribe(&channels).await.map_err(unavailable)?;
            for room in chunk {
                active.remove(room);
                self.sink.unsubscribed(room);
            }
        }
        for chunk in add.chunks(CHANNELS_PER_COMMAND) {
            let channels: Vec<String> = chunk
                .iter()
                .map(|r| format!("{}r:{r}", self.prefix))
                .collect();
            sender.subscribe(&channels).await.map_err(unavailable)?;
            active.extend(chunk.iter().cloned());
            let sink = self.sink.clone();
            let subs = self.subs.clone();
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for room in chunk {
                    sink.subscribed(&room).await;
                    subs.set_live(&room);
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_crosses_unchanged() {
        let event = Event::raw(
            "new_message",
            Frame::from(r#"{"a":"b\nc"}"#.to_string()),
            Some(Position::new(7, "ep".into())),
        )
        .in_history_of("dm:a:b".into());
        let env = Envelope {
            room: "user:a".into(),
            event: Arc::new(event),
            exclude: Some("c1".into()),
            only: None,
        };
        let back = decode("user:a".into(), &encode(&env)).unwrap();
        assert_eq!(back.event.kind(), "new_message");
        assert_eq!(back.event.data().as_str(), r#"{"a":"b\nc"}"#);
        assert_eq!(back.event.position(), Some(&Position::new(7, "ep".into())));
        assert_eq!(back.event.history_room().map(|h| &**h), Some("dm:a:b"));
        assert_eq!(back.exclude.as_deref(), Some("c1"));
        assert!(back.only.is_none());
        assert!(decode("r".into(), b"no head").is_none());
    }
}
