//! Engine.IO over a WebSocket: opened directly, or as the upgrade of a long-polling
//! connection (the `2probe`/`3probe` exchange, then the upgrade packet `5`).
//!
//! One task per connection, as the native transport: it writes what the connection
//! queues and reads the client's packets, a request in progress never holding back
//! delivery. A guard closes the connection however the task ends.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use switchboard_protocol::socketio::engine;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::conn::{CloseReason, Out, Transport};
use super::{Conn, Engine, unknown_sid};
use crate::error::ApiError;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes the connection when the task that carries it ends, however it ends.
struct Carrier {
    engine: Engine,
    conn: Arc<Conn>,
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.engine.close(&self.conn, CloseReason::Client);
    }
}

/// Ends a probe that did not become an upgrade: the connection stays on polling.
struct Probe<'a>(&'a Conn);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.upgrading = false;
        st.probed = false;
    }
}

pub(super) fn upgrade(
    engine: Engine,
    sid: Option<String>,
    peer_id: Option<String>,
    headers: &HeaderMap,
    mut req: Request<Body>,
) -> Response {
    let Some(key) = crate::transport::ws::handshake_key(headers) else {
        return ApiError::bad_request("expected a WebSocket upgrade").into_response();
    };
    // `Err`: a connection that can not be upgraded (already on WebSocket, or another
    // probe is on): the socket is accepted and closed, as the reference server does.
    let upgrading = match sid {
        Some(sid) => {
            let Some(conn) = engine.find(&sid) else {
                return unknown_sid();
            };
            if engine.expired(&conn) {
                return unknown_sid();
            }
            let mut st = conn.state();
            if st.transport != Transport::Polling || st.upgrading {
                Err(())
            } else {
                st.upgrading = true;
                drop(st);
                Ok(Some(conn))
            }
        }
        None => {
            if engine.app().is_draining() {
                return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
            }
            Ok(None)
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let s = engine.settings();
    let config = WebSocketConfig::default()
        .read_buffer_size(s.read_buffer_bytes)
        .write_buffer_size(s.write_buffer_bytes)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(s.max_payload))
        .max_frame_size(Some(s.max_payload));
    let tracker = engine.inner.tracker.clone();
    let opening = Box::pin(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                if let Ok(Some(conn)) = &upgrading {
                    conn.state().upgrading = false;
                }
                tracing::debug!(error = %e, "socket.io upgrade failed");
                return None;
            }
        };
        let mut socket = Box::new(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await,
        );
        let conn = match upgrading {
            Ok(Some(conn)) => {
                if !probe(&engine, &conn, &mut socket).await {
                    return None;
                }
                conn
            }
            Ok(None) => engine.open(Transport::WebSocket, peer_id),
            Err(()) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::close(&mut *socket)).await;
                return None;
            }
        };
        Some((socket, Carrier { engine, conn }))
    });
    let task = async move {
        if let Some((socket, carrier)) = opening.await {
            serve(carrier, socket).await;
        }
    };
    tracker.spawn(task);
    crate::transport::ws::switching_protocols(key)
}

/// The upgrade of a polling connection: `2probe` answered `3probe`, the pending poll
/// released with a noop, then the client's `5`. True once the WebSocket carries it.
async fn probe(engine: &Engine, conn: &Arc<Conn>, socket: &mut Socket) -> bool {
    let _probe = Probe(conn);
    let exchange = async {
        match socket.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "2probe" => {}
            _ => return false,
        }
        if socket.send(Message::text("3probe")).await.is_err() {
            return false;
        }
        // The client pauses polling: a poll in progress must end for it to go on.
        conn.state().probed = true;
        conn.wake();
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "5" => return true,
                Some(Ok(Message::Text(t))) if t.as_str() == "6" => continue,
                _ => return false,
            }
        }
    };
    let upgraded = matches!(
        tokio::time::timeout(engine.settings().upgrade_timeout, exchange).await,
        Ok(true)
    );
    if !upgraded || engine.expired(conn) || conn.is_closed() {
        // Polls waiting on the outcome go on (the guard clears the probe).
        drop(_probe);
        conn.wake();
        return false;
    }
    conn.state().transport = Transport::WebSocket;
    // A poll that is still waiting ends now.
    conn.wake();
    true
}

async fn serve(carrier: Carrier, mut socket: Box<Socket>) {
    let reason = drive(&carrier.engine, &carrier.conn, &mut socket).await;
    carrier.engine.close(&carrier.conn, reason);
    if reason != CloseReason::Client {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if SinkExt::close(&mut *socket).await.is_ok() {
                while let Some(Ok(_)) = socket.next().await {}
            }
        })
        .await;
    }
    drop(carrier);
}

/// Runs the connection until it ends; returns why.
async fn drive(engine: &Engine, conn: &Arc<Conn>, socket: &mut Socket) -> CloseReason {
    let mut batch: Vec<Out> = Vec::new();
    let mut pending: Option<BoxFuture<'static, ()>> = None;
    loop {
        let closing = conn.take(&mut batch);
        if !batch.is_empty() {
            let n = batch.len();
            for out in batch.drain(..) {
                let msg = match out {
                    // SAFETY: a Frame is always valid UTF-8 (see `encode::Frame`).
                    Out::Text(f) => {
                        Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(f.into_bytes()) })
                    }
                    Out::Binary(b) => Message::Binary(b),
                };
                if socket.feed(msg).await.is_err() {
                    return CloseReason::Client;
                }
            }
            if socket.flush().await.is_err() {
                return CloseReason::Client;
            }
            // A quiet connection keeps no buffer; a busy one a modest one.
            if n <= 8 || batch.capacity() > 256 {
                batch = Vec::new();
            }
        }
        if let Some(reason) = closing {
            return reason;
        }
        tokio::select! {
            _ = conn.changed() => {}
            _ = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                pending = None;
                engine.idle(conn);
            }
            incoming = socket.next(), if pending.is_none() => {
                let item = match incoming {
                    Some(Ok(Message::Text(t))) => match engine::Packet::decode(t.as_str()) {
                        Ok(p) => engine.app().packet(engine, conn, engine::Item::Text(p)),
                        Err(_) => Err(CloseReason::ProtocolError),
                    },
                    Some(Ok(Message::Binary(b))) => {
                        engine.app().packet(engine, conn, engine::Item::Binary(b.to_vec()))
                    }
                    Some(Ok(_)) => Ok(None),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "socket.io read failed");
                        Err(CloseReason::Client)
                    }
                    None => Err(CloseReason::Client),
                };
                match item {
                    Ok(Some(work)) => {
                        conn.set_busy();
                        pending = Some(work);
                    }
                    Ok(None) => {}
                    Err(reason) => return reason,
                }
            }
        }
        if engine.expired(conn) {
            return CloseReason::PingTimeout;
        }
    }
}
