//! Cross-node delivery of room events.
//!
//! Everything a room receives goes through a broker, even on one node, so the path is
//! the same alone and in a cluster. A broker hands every envelope published to a room
//! the node subscribes to, on any node, to the node's [`Sink`], in one order per room.
//!
//! Positions: a durable message either comes with the position the store gave it
//! (the memory broker's case: the store sequences, the broker forwards), or gets one
//! from a broker that [`sequences`](Broker::sequences) rooms itself, assigned by the
//! same atomic step that publishes (the Redis broker's case). Either way `publish`
//! answers the message's position.

mod memory;

use std::sync::Arc;

use futures_util::future::BoxFuture;

pub use memory::MemoryBroker;

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
}

pub trait Broker: Send + Sync + 'static {
    /// Whether the broker gives durable messages their offsets (atomically with
    /// publishing) rather than forwarding the store's.
    fn sequences(&self) -> bool {
        false
    }

    /// Sends `env` to the room's subscribers on every node. Resolves with the event's
    /// position (None for an ephemeral event) once the broker has it.
    fn publish(&self, env: Envelope) -> BoxFuture<'_, Result<Option<Position>, BrokerError>>;

    /// Starts receiving `room` on this node; resolves once its traffic arrives here, so
    /// that a join confirmed afterwards misses nothing. Counted: every `subscribe` is
    /// matched by one `unsubscribe`.
    fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Ends one `subscribe` of `room`; the node stops receiving it after the last.
    fn unsubscribe(&self, room: &str);

    /// Sets the node's receiver; called once at startup.
    fn start(&self, sink: Arc<dyn Sink>);
}
