//! What a connection's packets mean: Engine.IO's own packets are handled here for
//! every application; Socket.IO packets go to the application of the engine: the hub,
//! or the echo servers the official protocol test suites expect.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use smallvec::SmallVec;
use switchboard_protocol::socketio::{self, Kind, engine};

use super::conn::{CloseReason, Partial, Socket};
use super::echo::echo;
use super::hub_app::HubApp;
use super::recovery::Stashes;
use super::{Conn, Engine, Settings};
use crate::encode::Frame;
use crate::encode::socketio::ROOT;
use crate::hub::Hub;

/// Async work a packet started: awaited before the connection's next packet.
pub type Work = BoxFuture<'static, ()>;

/// The application behind an engine.
pub enum Application {
    /// Switchboard: the main namespace is a hub session.
    Hub(HubApp),
    /// The official socket.io-protocol suite's reference server.
    SocketIoEcho,
    /// The official engine.io-protocol suite's reference server: every message back.
    EngineEcho,
}

impl Application {
    pub fn hub(hub: Hub, settings: &Settings, stashes: Stashes) -> Application {
        Application::Hub(HubApp {
            hub,
            max_event_bytes: settings.max_event_bytes,
            window: settings.recovery_window,
            stashes: Arc::new(stashes),
        })
    }

    pub fn is_draining(&self) -> bool {
        match self {
            Application::Hub(app) => app.hub.is_draining(),
            _ => false,
        }
    }

    /// One Engine.IO packet from the client. `Err` ends the connection.
    pub fn packet(
        &self,
        engine: &Engine,
        conn: &Arc<Conn>,
        item: engine::Item<'_>,
    ) -> Result<Option<Work>, CloseReason> {
        let text = match item {
            engine::Item::Binary(data) => return self.binary(engine, conn, Bytes::from(data)),
            engine::Item::Text(engine::Packet::Message(text)) => text,
            engine::Item::Text(engine::Packet::Pong(_)) => {
                conn.pong(
                    engine.now_ms(),
                    engine.settings().ping_interval.as_millis() as u64,
                );
                return Ok(None);
            }
            engine::Item::Text(engine::Packet::Ping(data)) => {
                conn.push_text(format!("3{data}").into());
                return Ok(None);
            }
            engine::Item::Text(engine::Packet::Close) => return Err(CloseReason::Client),
            engine::Item::Text(engine::Packet::Noop | engine::Packet::Upgrade) => {
                return Ok(None);
            }
            engine::Item::Text(engine::Packet::Open(_)) => {
                return Err(CloseReason::ProtocolError);
            }
        };
        match self {
            Application::EngineEcho => {
                conn.push_text(format!("4{text}").into());
                Ok(None)
            }
            _ => {
                if conn.state().partial.is_some() {
                    // A text packet while attachments are awaited.
                    return Err(CloseReason::ProtocolError);
                }
                let max = engine.settings().max_attachments;
                let packet =
                    socketio::Packet::decode(text, max).map_err(|_| CloseReason::ProtocolError)?;
                if packet.kind.is_binary() && packet.attachments > 0 {
                    conn.state().partial = Some(Box::new(Partial {
                        text: text.to_string(),
                        needed: packet.attachments,
                        parts: Vec::new(),
                    }));
                    return Ok(None);
                }
                self.socketio(engine, conn, packet, Vec::new())
            }
        }
    }

    fn binary(
        &self,
        engine: &Engine,
        conn: &Arc<Conn>,
        data: Bytes,
    ) -> Result<Option<Work>, CloseReason> {
        if let Application::EngineEcho = self {
            conn.push_binary(data);
            return Ok(None);
        }
        let complete = {
            let mut st = conn.state();
            let Some(partial) = st.partial.as_mut() else {
                return Err(CloseReason::ProtocolError);
            };
            partial.parts.push(data);
            if partial.parts.len() < partial.needed {
                return Ok(None);
            }
            *st.partial.take().expect("present")
        };
        let max = engine.settings().max_attachments;
        let packet = socketio::Packet::decode(&complete.text, max)
            .map_err(|_| CloseReason::ProtocolError)?;
        self.socketio(engine, conn, packet, complete.parts)
    }

    fn socketio(
        &self,
        engine: &Engine,
        conn: &Arc<Conn>,
        packet: socketio::Packet<'_>,
        attachments: Vec<Bytes>,
    ) -> Result<Option<Work>, CloseReason> {
        match self {
            Application::Hub(app) => app.packet(engine, conn, packet, attachments),
            _ => {
                echo(conn, packet, attachments);
                Ok(None)
            }
        }
    }

    /// A connection ended: its sockets are dropped here (each registration undoes
    /// itself), their state stashed first for a recovery unless the end was final.
    pub fn closed(&self, _conn: &Arc<Conn>, sockets: SmallVec<[Socket; 1]>, reason: CloseReason) {
        let Application::Hub(app) = self else {
            return;
        };
        if app.window.is_zero() || reason.is_final() {
            return;
        }
        for socket in sockets {
            if let (ROOT, Some(registration)) = (socket.namespace, socket.registration) {
                let pid = app.stashes.pid(&registration.session().client_id).into();
                app.stashes
                    .keep(app.hub.clone(), pid, registration, app.window);
            }
        }
    }

    /// Periodic upkeep: expired recovery stashes go.
    pub fn upkeep(&self) {
        if let Application::Hub(app) = self {
            app.stashes.purge();
        }
    }

    /// Recovery stashes held.
    pub fn stashes(&self) -> usize {
        match self {
            Application::Hub(app) => app.stashes.len(),
            _ => 0,
        }
    }
}

/// `44[/nsp,]{"message": ...}`.
pub(super) fn connect_error(namespace: &str, message: &str) -> Frame {
    let data = serde_json::json!({ "message": message }).to_string();
    socketio::message(Kind::ConnectError, 0, namespace, None, Some(&data)).into()
}

/// `40[/nsp,]{"sid": ...}`.
pub(super) fn connect_ok(namespace: &str, sid: &str) -> Frame {
    let data = serde_json::json!({ "sid": sid }).to_string();
    socketio::message(Kind::Connect, 0, namespace, None, Some(&data)).into()
}
