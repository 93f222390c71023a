//! A minimal WebSocket broadcaster: the yardstick Switchboard's fan-out and connect
//! rates are compared with (docs/benchmarks.md), under the same load generator.
//!
//! It speaks just enough of the native protocol for `switchboard-bench` (`connected`,
//! `join_room`, `send_message` answered by `new_message` to the room, `ping`), with no
//! authentication, no store, no limits and no metrics, and it is tuned the way a
//! careful minimal server would be: each message is encoded once, WebSocket framing
//! included; fan-out copies the encoded frame into each member's byte buffer (no
//! per-recipient reference counts, no per-frame library work); each connection's one
//! task writes its whole buffer with one system call and reads with a 1 KiB buffer;
//! TCP_NODELAY.
//!
//! ```sh
//! cargo run --release -p switchboard-bench --example broadcaster -- 127.0.0.1:8090
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A connection's pending output: encoded WebSocket frames, back to back.
#[derive(Default)]
struct Outbox {
    bytes: Mutex<Vec<u8>>,
    ready: Notify,
}

impl Outbox {
    fn push(&self, frame: &[u8]) {
        let mut bytes = self.bytes.lock();
        let first = bytes.is_empty();
        bytes.extend_from_slice(frame);
        drop(bytes);
        if first {
            self.ready.notify_one();
        }
    }
}

/// Room -> (connection id, its outbox).
type Members = HashMap<String, Vec<(u64, Arc<Outbox>)>>;

#[derive(Default)]
struct Rooms {
    members: Mutex<Members>,
    next_id: AtomicU64,
    next_offset: AtomicU64,
}

/// A server-to-client text frame: FIN, opcode 1, unmasked length, payload.
fn ws_text(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("broadcaster listening on {addr}");
    let rooms = Arc::new(Rooms::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, rooms.clone()));
    }
}

async fn serve(stream: TcpStream, rooms: Arc<Rooms>) {
    let config = WebSocketConfig::default().read_buffer_size(1024);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let id = rooms.next_id.fetch_add(1, Ordering::Relaxed);
    let outbox = Arc::new(Outbox::default());
    let hello = json!({"type": "connected", "data": {"clientId": id.to_string(), "user": {"id": id.to_string(), "username": "u"}, "timestamp": 0}});
    outbox.push(&ws_text(hello.to_string().as_bytes()));
    let mut joined: Vec<String> = Vec::new();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = outbox.ready.notified() => {
                std::mem::swap(&mut *outbox.bytes.lock(), &mut batch);
                if write_raw(&mut ws, &batch).await.is_err() {
                    break;
                }
                batch.clear();
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => handle(&rooms, id, &outbox, &mut joined, &text),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    }
    let mut members = rooms.members.lock();
    for room in joined {
        if let Some(list) = members.get_mut(&room) {
            list.retain(|(m, _)| *m != id);
        }
    }
}

/// Writes encoded frames straight to the socket, after whatever the WebSocket library
/// still holds (a pong it queued while reading).
async fn write_raw(ws: &mut WebSocketStream<TcpStream>, bytes: &[u8]) -> std::io::Result<()> {
    ws.flush().await.map_err(std::io::Error::other)?;
    ws.get_mut().write_all(bytes).await
}

fn handle(rooms: &Rooms, id: u64, outbox: &Arc<Outbox>, joined: &mut Vec<String>, text: &str) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let room = frame["data"]["roomId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let reply = |v: Value| outbox.push(&ws_text(v.to_string().as_bytes()));
    match frame["type"].as_str() {
        Some("ping") => {
            reply(json!({"type": "pong", "data": {"timestamp": 0}, "ref": frame["ref"]}))
        }
        Some("join_room") => {
            rooms
                .members
                .lock()
                .entry(room.clone())
                .or_default()
                .push((id, outbox.clone()));
            joined.push(room.clone());
            reply(json!({"type": "room_joined", "data": {"roomId": room}, "ref": frame["ref"]}));
        }
        Some("send_message") => {
            let offset = rooms.next_offset.fetch_add(1, Ordering::Relaxed) + 1;
            let event = json!({"type": "new_message", "data": {"id": offset.to_string(), "roomId": room,
                "sender": {"id": id.to_string(), "username": "u"}, "content": frame["data"]["content"],
                "type": "text", "metadata": {}, "timestamp": 0, "offset": offset}});
            // Encoded once, framing included; each member gets a copy of the bytes.
            let bytes = ws_text(event.to_string().as_bytes());
            if let Some(list) = rooms.members.lock().get(&room) {
                for (_, member) in list {
                    member.push(&bytes);
                }
            }
            if !frame["ref"].is_null() {
                reply(
                    json!({"type": "ack", "data": {"id": offset.to_string(), "offset": offset}, "ref": frame["ref"]}),
                );
            }
        }
        _ => {}
    }
}
