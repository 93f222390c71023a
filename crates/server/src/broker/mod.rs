//! Cross-node delivery of room events.
//!
//! Everything a room receives goes through a broker, even on one node, so the path is
//! the same alone and in a cluster. A broker hands every envelope published to a room
//! the node subscribes to, on any node, to the node's [`Sink`], in one order per room.
//!
//! Positions and order: a durable message comes with the position the store gave it,
//! and the store is the one sequencer of a room, on one node or many. The memory
//! broker hands messages over in commit order, so they arrive in offset order. Across
//! nodes (the Redis broker) two nodes' publishes of one room can cross on the way: the
//! receiving node puts them back in offset order, and fills from the store an offset
//! that does not come. That is sound because of what the store promises: once a
//! message of offset m is committed, every smaller offset of its room is committed too
//! (the room's head row stays locked until commit), so a gap before a message that
//! arrived can always be read.

mod memory;
mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisBrokerOptions};

use crate::encode::Event;
use crate::position::Position;

/// An event for the members of one room.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub room: Arc<str>,
    pub event: Arc<Event>,
    /// The client id of a connection that must not receive it (the sender of a typing
    /// event, say).
    pub exclude: Option<Arc<str>>,
    /// The client id of the only connection that receives it (a WebRTC signal to a
    /// peer of the room).
    pub only: Option<Arc<str>>,
}

impl Envelope {
    pub fn new(room: Arc<str>, event: Arc<Event>) -> Envelope {
        Envelope {
            room,
            event,
            exclude: None,
            only: None,
        }
    }
}

/// Something every other node of the cluster does (the node that sends it has done it
/// already).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The node that sent it.
    pub from: String,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    /// `{type: kind, data}` to every connection.
    Broadcast { kind: String, data: String },
    /// Closes every connection of `user` (an operator's disconnect).
    DisconnectUser { user: String },
    /// These rooms may owe offline members notification entries again.
    Unsettle { rooms: Vec<String> },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker is closed")]
    Closed,
}

/// Where a broker hands what reaches this node. The future resolves once the
/// envelope is queued for fan-out (it waits while the node's fan-out is behind).
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, env: Envelope) -> BoxFuture<'_, ()>;

    /// The node now receives `room` (a first subscription, or a new one after the
    /// broker's connection came back): resolves once the room's durable messages up to
    /// the store's head are accounted for, those this node missed delivered. Called
    /// before [`Broker::subscribe`] resolves.
    fn subscribed<'a>(&'a self, _room: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// The node no longer receives `room`.
    fn unsubscribed(&self, _room: &str) {}

    /// A cluster-wide command reached this node.
    fn command(&self, _cmd: Command) {}
}

pub trait Broker: Send + Sync + 'static {
    /// Whether durable messages reach every node in offset order per room (the memory
    /// broker: the store's one writer publishes in commit order). Otherwise the node
    /// puts them in order itself, filling gaps from the store.
    fn ordered(&self) -> bool {
        true
    }

    /// Whether the broker can publish and subscribe now (for `/ready`).
    fn is_healthy(&self) -> bool {
        true
    }

    /// Sends `env` to the room's subscribers on every node. Resolves with the event's
    /// position (None for an ephemeral event) once the broker has it.
    fn publish(&self, env: Envelope) -> BoxFuture<'_, Result<Option<Position>, BrokerError>>;

    /// Publishes `envs` in order (one round trip where the broker allows), answering
    /// each.
    fn publish_all(
        &self,
        envs: Vec<Envelope>,
    ) -> BoxFuture<'_, Vec<Result<Option<Position>, BrokerError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(envs.len());
            for env in envs {
                out.push(self.publish(env).await);
            }
            out
        })
    }

    /// Sends `cmd` to every node of the cluster; a node ignores its own.
    fn command(&self, cmd: Command) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Keeps this node's `report` (JSON) where the other nodes read it, until
    /// `expires_at` (Unix ms); nothing alone.
    fn report<'a>(
        &'a self,
        _node: &'a str,
        _report: String,
        _expires_at: u64,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The reports of every node that has one that has not expired (none alone).
    fn reports(&self) -> BoxFuture<'_, Result<Vec<String>, BrokerError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Starts receiving `room` on this node; resolves once its traffic arrives here, so
    /// that a join confirmed afterwards misses nothing. Counted: every `subscribe` is
    /// matched by one `unsubscribe`.
    fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Ends one `subscribe` of `room`; the node stops receiving it after the last.
    fn unsubscribe(&self, room: &str);

    /// Sets the node's receiver; called once at startup.
    fn start(&self, sink: Arc<dyn Sink>);
}
