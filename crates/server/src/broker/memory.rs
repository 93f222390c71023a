//! The single-node broker: publishing is a direct hand-off to the local fan-out, and
//! positions are the store's.

use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Broker, BrokerError, Command, Envelope, Sink};
use crate::position::Position;

#[derive(Default)]
pub struct MemoryBroker {
    sink: OnceLock<Arc<dyn Sink>>,
}

impl Broker for MemoryBroker {
    fn publish(&self, env: Envelope) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        async move {
            let position = env.event.position().cloned();
            let sink = self.sink.get().ok_or(BrokerError::Closed)?;
            sink.deliver(env).await;
            Ok(position)
        }
        .boxed()
    }

    // Alone: no other node to tell.
    fn command(&self, _cmd: Command) -> BoxFuture<'_, Result<(), BrokerError>> {
        std::future::ready(Ok(())).boxed()
    }

    // Every room of this node is here already.
    fn subscribe<'a>(&'a self, _room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        std::future::ready(Ok(())).boxed()
    }

    fn unsubscribe(&self, _room: &str) {}

    fn start(&self, sink: Arc<dyn Sink>) {
        // A second receiver is a programming error; the first one stays.
        let _ = self.sink.set(sink);
    }
}
