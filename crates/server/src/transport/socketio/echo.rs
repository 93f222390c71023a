//! The reference server of the official socket.io-protocol test suite, on this
//! implementation (see `examples/socketio_conformance.rs`).

use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::socketio::{self, EventName, Kind};

use super::apps::{connect_error, connect_ok};
use super::conn::Socket;
use super::{Conn, random_id};

/// The reference server of the socket.io-protocol suite: `auth` on connect, `message`
/// echoed as `message-back`, `message-with-ack` acked with its arguments, binary
/// attachments included; namespaces `/` and `/custom`.
pub(super) fn echo(conn: &Arc<Conn>, packet: socketio::Packet<'_>, attachments: Vec<Bytes>) {
    let ns = packet.namespace;
    match packet.kind {
        Kind::Connect => {
            let ns: &'static str = match ns {
                "/" => "/",
                "/custom" => "/custom",
                _ => {
                    conn.push_text(connect_error(ns, "Invalid namespace"));
                    return;
                }
            };
            if conn.has_namespace(ns) {
                return;
            }
            let sid = random_id();
            let socket = Socket {
                namespace: ns,
                registration: None,
            };
            if conn.add_socket(socket).is_err() {
                return;
            }
            conn.push_text(connect_ok(ns, &sid));
            let auth = packet.data.unwrap_or("{}");
            conn.push_text(socketio::event_message(ns, "auth", auth, None).into());
        }
        Kind::Disconnect => {
            drop(conn.remove_socket(ns));
        }
        Kind::Event | Kind::BinaryEvent => {
            if !conn.has_namespace(ns) {
                return;
            }
            let Ok((EventName::Text(name), args)) = packet.event() else {
                return;
            };
            let args = args.iter().map(|a| a.get()).collect::<Vec<_>>().join(",");
            let binary = packet.kind == Kind::BinaryEvent;
            match (&*name, packet.id) {
                ("message", _) => {
                    let data = format!(
                        "[\"message-back\"{}{args}]",
                        if args.is_empty() { "" } else { "," }
                    );
                    let kind = if binary {
                        Kind::BinaryEvent
                    } else {
                        Kind::Event
                    };
                    let text = socketio::message(kind, attachments.len(), ns, None, Some(&data));
                    conn.push_text(text.into());
                }
                ("message-with-ack", Some(id)) => {
                    let data = format!("[{args}]");
                    let kind = if binary { Kind::BinaryAck } else { Kind::Ack };
                    let text =
                        socketio::message(kind, attachments.len(), ns, Some(id), Some(&data));
                    conn.push_text(text.into());
                }
                _ => return,
            }
            for a in attachments {
                conn.push_binary(a);
            }
        }
        _ => {}
    }
}
