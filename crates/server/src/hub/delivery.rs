//! The hub's delivery stage: the store's commits are published in commit order, and
//! what the broker hands this node is fanned out by a few workers in parallel.
//!
//! A room always goes to the same worker, whose queue is FIFO: each room keeps one
//! order of events on this node, while different rooms fan out on different cores.
//! Queues are bounded; a full one makes the publisher wait (backpressure reaches the
//! store's writer and the connections that publish), it never grows.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use std::sync::Weak;

use switchboard_protocol::personal_room;

use super::rooms::RoomIndex;
use super::{Hub, Inner};
use crate::broker::{Envelope, Sink};
use crate::encode::Event;
use crate::metrics::Metrics;
use crate::store::{Commit, Committed};

/// Envelopes waiting for one worker.
const QUEUE: usize = 4096;
/// Envelopes a worker takes from its queue at once.
const BATCH: usize = 64;

/// The node's fan-out workers, as the broker's sink.
pub(super) struct Fanout {
    queues: Box<[mpsc::Sender<Envelope>]>,
    hasher: RandomState,
}

impl Fanout {
    /// One worker per core (at least two, so one long fan-out does not hold every room).
    pub(super) fn start(rooms: Arc<RoomIndex>, metrics: Arc<Metrics>) -> Fanout {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 16);
        let queues = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(work(rx, rooms.clone(), metrics.clone()));
                tx
            })
            .collect();
        Fanout {
            queues,
            hasher: RandomState::new(),
        }
    }
}

impl Sink for Fanout {
    fn deliver(&self, env: Envelope) -> BoxFuture<'_, ()> {
        let queue = &self.queues[self.hasher.hash_one(&*env.room) as usize % self.queues.len()];
        async move {
            // Closed only when the hub is gone.
            let _ = queue.send(env).await;
        }
        .boxed()
    }
}

async fn work(mut queue: mpsc::Receiver<Envelope>, rooms: Arc<RoomIndex>, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut delivered = 0;
        for env in batch.drain(..) {
            delivered += rooms.deliver(&env);
        }
        metrics.deliveries.increment(delivered as u64);
    }
}

/// Publishes each committed message, in commit order, then tells its sender (the
/// `ack`). A duplicate was published the first time and is only answered.
pub(super) async fn publish_commits(mut commits: mpsc::Receiver<Vec<Commit>>, hub: Weak<Inner>) {
    while let Some(batch) = commits.recv().await {
        let Some(inner) = hub.upgrade() else {
            return;
        };
        let hub = Hub { inner };
        for Commit { result, done } in batch {
            if let Ok(c) = &result
                && !c.duplicate
            {
                for env in envelopes(c) {
                    // Durable already: a broker failure loses live delivery, not the
                    // message (members recover it by offset), so the sender still hears
                    // it is stored.
                    if let Err(e) = hub.broker().publish(env).await {
                        tracing::error!(error = %e, room = %c.room, "publishing a stored message failed");
                    }
                }
                hub.notify_offline(c).await;
            }
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
        return vec![Envelope {
            room: c.room.clone(),
            event: Arc::new(event),
            exclude: None,
        }];
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
        room: personal_room(&route.sender).into(),
        event: event.clone(),
        exclude: route.origin.clone(),
    }];
    if route.recipient != route.sender {
        out.push(Envelope {
            room: personal_room(&route.recipient).into(),
            event,
            exclude: None,
        });
    }
    out
}
