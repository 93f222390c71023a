//! The single-node broker: publishing is a direct call into the local fan-out.

use std::sync::OnceLock;

use super::{Broker, Envelope, Sink};

#[derive(Default)]
pub struct MemoryBroker {
    sink: OnceLock<Sink>,
}

impl Broker for MemoryBroker {
    fn publish(&self, env: Envelope) {
        if let Some(sink) = self.sink.get() {
            sink(&env);
        }
    }

    fn subscribe(&self, sink: Sink) {
        // A second subscriber is a programming error; the first one stays.
        let _ = self.sink.set(sink);
    }
}
