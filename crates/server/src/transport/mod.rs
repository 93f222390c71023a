//! Wire formats to the hub and back. Each transport turns its framing into hub calls
//! and drains session outboxes onto its sockets.

pub mod socketio;
pub mod sse;
pub mod ws;
