//! The reference server of the official Engine.IO and Socket.IO protocol test suites
//! (socketio/engine.io-protocol and socketio/socket.io-protocol), on Switchboard's
//! own Engine.IO/Socket.IO implementation: ping interval 300 ms, ping timeout 200 ms,
//! maxPayload 1,000,000, connect timeout 1,000 ms, CORS for any origin, no auth.
//!
//! - `/socket.io/`: on `/` and `/custom` it emits `auth` with the handshake's auth; it
//!   answers `message` with `message-back` carrying the same arguments (binary
//!   included) and acks `message-with-ack` with the same arguments.
//! - `/engine.io/`: every message is sent back.
//!
//! Run: `cargo run --release --example socketio_conformance` (port from `PORT` or
//! `SWITCHBOARD_LISTEN`, default 3000), then `scripts/socketio-suites.sh`.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = match (std::env::var("SWITCHBOARD_LISTEN"), std::env::var("PORT")) {
        (Ok(listen), _) => listen.parse()?,
        (_, Ok(port)) => SocketAddr::from(([0, 0, 0, 0], port.parse()?)),
        _ => SocketAddr::from(([0, 0, 0, 0], 3000)),
    };
    let (router, _sweeps) = switchboard::transport::socketio::conformance_router();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("socket.io conformance server on {}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
