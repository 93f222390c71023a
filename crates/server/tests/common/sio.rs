//! The official socket.io-client (npm), driven through tests/node/driver.mjs: the
//! test sends commands, and reads what the client's sockets receive.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::WAIT;

pub struct Sio {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Records read while waiting for another.
    seen: Vec<Value>,
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

impl Sio {
    pub async fn start() -> Sio {
        let dir = node_dir();
        assert!(
            dir.join("node_modules/socket.io-client").exists(),
            "socket.io-client is not installed: run `npm ci` in {} (scripts/test.sh does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("driver.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Sio {
            _child: child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Opens socket `id` to the server at `addr` with `token` and extra client options;
    /// returns the `connect` (or `connect_error`) record.
    pub async fn open(
        &mut self,
        id: &str,
        addr: std::net::SocketAddr,
        token: &str,
        opts: Value,
    ) -> Value {
        let mut o = json!({"auth": {"token": token}});
        if let (Some(o), Value::Object(extra)) = (o.as_object_mut(), opts) {
            o.extend(extra);
        }
        self.send(json!({"op": "connect", "id": id, "url": format!("http://{addr}"), "opts": o}))
            .await;
        self.first(|r| r["id"] == id && (r["event"] == "connect" || r["event"] == "connect_error"))
            .await
    }

    /// Emits `event` with `arg` without an ack.
    pub async fn emit(&mut self, id: &str, event: &str, arg: Value) {
        self.send(json!({"op": "emit", "id": id, "event": event, "args": [arg]}))
            .await;
    }

    /// Emits `event` with `args` and an ack callback; returns the ack's first argument.
    pub async fn call_with(&mut self, id: &str, event: &str, args: Value) -> Value {
        let tag = format!("{id}:{event}:{}", rand_tag());
        self.send(json!({"op": "emit", "id": id, "event": event, "args": args, "ack": tag}))
            .await;
        let rec = self
            .first(|r| r["id"] == id && r["ack"] == tag.as_str())
            .await;
        rec["args"][0].clone()
    }

    pub async fn call(&mut self, id: &str, event: &str, arg: Value) -> Value {
        self.call_with(id, event, json!([arg])).await
    }

    /// The next event `event` of socket `id`: its arguments.
    pub async fn event(&mut self, id: &str, event: &str) -> Vec<Value> {
        let rec = self
            .first(|r| r["id"] == id && r["event"] == event && r.get("args").is_some())
            .await;
        rec["args"].as_array().cloned().unwrap_or_default()
    }

    /// The next record of socket `id` about `event` (connect, disconnect, upgrade).
    pub async fn record(&mut self, id: &str, event: &str) -> Value {
        self.first(|r| r["id"] == id && r["event"] == event).await
    }

    /// No event `event` reaches socket `id` within `ms`.
    pub async fn silent(&mut self, id: &str, event: &str, ms: u64) {
        let hit = |r: &Value| r["id"] == id && r["event"] == event;
        assert!(
            !self.seen.iter().any(hit),
            "unexpected {event} for {id}: {:?}",
            self.seen
        );
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    let rec: Value = serde_json::from_str(&line).unwrap();
                    assert!(!hit(&rec), "unexpected {event} for {id}: {rec}");
                    self.seen.push(rec);
                }
                _ => return,
            }
        }
    }

    /// Removes and returns the first record (seen before or read now) matching `pred`.
    pub async fn first(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(_) => panic!("the socket.io driver ended; seen: {:?}", self.seen),
                Err(_) => panic!("timed out; seen: {:#?}", self.seen),
            };
            let rec: Value = serde_json::from_str(&line).unwrap();
            if pred(&rec) {
                return rec;
            }
            self.seen.push(rec);
        }
    }
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
