//! Cross-node delivery of room events.
//!
//! Everything a room receives goes through a broker, even on one node, so the path is
//! the same alone and in a cluster. The broker calls its subscriber (the hub's fan-out)
//! with every envelope published to any room, on every node, in publish order per room.

mod memory;

use std::sync::Arc;

pub use memory::MemoryBroker;

/// JSON text shared between recipients without copying.
pub type Text = tokio_tungstenite::tungstenite::Utf8Bytes;

/// An event for the members of one room.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub room: Arc<str>,
    /// The encoded native frame, `{"type":..,"data":..}`.
    pub frame: Text,
    /// The room offset of a durable message.
    pub offset: Option<u64>,
    /// A session that must not receive it (the sender of a typing event, say).
    pub exclude: Option<u64>,
}

/// Where a broker hands what it receives.
pub type Sink = Arc<dyn Fn(&Envelope) + Send + Sync>;

pub trait Broker: Send + Sync + 'static {
    /// Sends `env` to the room's members on every node.
    fn publish(&self, env: Envelope);
    /// Sets the node's receiver; called once at startup.
    fn subscribe(&self, sink: Sink);
}
