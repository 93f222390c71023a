//! Shared test helpers: a real server on a real port, and a real WebSocket client.
#![allow(dead_code)]

pub mod cluster;
pub mod sio;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::auth::{TokenRequest, mint};
use switchboard::{Config, Hub, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const WAIT: Duration = Duration::from_secs(10);

/// A config for tests: loopback, a fresh data dir, the test secret.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        drain_timeout_secs: 5,
        ..Config::default()
    };
    cfg.auth.jwt_secret = Some(SECRET.into());
    cfg.api_key = Some(API_KEY.into());
    cfg
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::build(|b| b, tweak).await
    }

    /// Starts a server from a builder (for custom handlers) and a config tweak.
    pub async fn build(
        builder: impl FnOnce(switchboard::ServerBuilder) -> switchboard::ServerBuilder,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let server = builder(Server::builder().config(cfg.clone()))
            .bind()
            .await
            .expect("server starts");
        TestServer::run(server, cfg, dir)
    }

    /// Runs a bound server until [`TestServer::stop`].
    fn run(server: Server, config: Config, dir: tempfile::TempDir) -> TestServer {
        let addr = server.local_addr();
        let hub = server.hub().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run_until(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            hub,
            config,
            stop: Some(tx),
            handle: Some(handle),
            dir,
        }
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connects as `sub` and reads the `connected` event.
    pub async fn client(&self, sub: &str) -> Client {
        let mut c = Client::connect(&self.url(&token(sub))).await;
        let hello = c.next_of("connected").await;
        c.client_id = hello["data"]["clientId"].as_str().unwrap().to_string();
        c
    }

    /// Connects as `sub` and joins `room` (not exclusively), reading the reply.
    pub async fn member(&self, sub: &str, room: &str) -> Client {
        let mut c = self.client(sub).await;
        c.join(room).await;
        c
    }

    /// Stops the server and starts another on the same data dir and config (a new
    /// port).
    pub async fn restart(mut self) -> TestServer {
        self.halt().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let server = Server::builder()
            .config(self.config.clone())
            .bind()
            .await
            .expect("server restarts");
        TestServer::run(server, self.config.clone(), dir)
    }

    /// GET `path` as user `sub` (its JWT); the status and the JSON body (Null if none).
    pub async fn get_as(&self, sub: &str, path: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .get(self.http(path))
            .bearer_auth(token(sub))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// POST JSON to `path` as user `sub`; the status and the JSON body.
    pub async fn post_as(&self, sub: &str, path: &str, body: Value) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(self.http(path))
            .bearer_auth(token(sub))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Replaces `user`'s contact list through the server API; the status.
    pub async fn set_contacts(&self, user: &str, contacts: &[&str]) -> u16 {
        admin()
            .put(self.http(&format!("/api/users/{user}/contacts")))
            .json(&json!({ "contacts": contacts }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("server stops")
                .unwrap();
        }
    }

    /// Triggers a drain and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("server stops")
                .unwrap();
        }
    }
}

pub fn token(sub: &str) -> String {
    token_with(sub, None)
}

pub fn token_with(sub: &str, rooms: Option<Vec<String>>) -> String {
    let cfg = switchboard::config::AuthConfig {
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    };
    let name = format!("{}{}", sub[..1].to_uppercase(), &sub[1..]);
    mint(
        &cfg,
        TokenRequest {
            sub,
            username: Some(&name),
            avatar: None,
            rooms,
            ttl: Duration::from_secs(3600),
        },
    )
    .unwrap()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub client_id: String,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Client {
            ws,
            client_id: String::new(),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.unwrap();
    }

    /// Sends `{type, data}`.
    pub async fn request(&mut self, kind: &str, data: Value) {
        self.send(json!({"type": kind, "data": data})).await;
    }

    /// The next text frame as JSON; panics on a close or after the wait.
    pub async fn next(&mut self) -> Value {
        // One deadline for the frame, however many pings come first.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("the connection is open")
                .expect("the frame is valid");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("frames are JSON"),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Skips frames until one of type `kind`.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The next frame, which must be of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        v
    }

    /// The next frame must be an error with this message.
    pub async fn expect_error(&mut self, message: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["data"]["message"], message, "{v}");
        v
    }

    /// Asserts nothing but pings arrives for `ms`.
    pub async fn expect_silence(&mut self, ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => panic!("unexpected frame: {t}"),
                Ok(Some(Ok(Message::Close(c)))) => panic!("unexpected close: {c:?}"),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("the close arrives in time");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                other => panic!("connection ended without a close frame: {other:?}"),
            }
        }
    }

    /// `join_room` without leaving other rooms; returns `room_joined`.
    pub async fn join(&mut self, room: &str) -> Value {
        self.request("join_room", json!({"roomId": room, "exclusive": false}))
            .await;
        self.next_of("room_joined").await
    }
}

/// Waits until `check` holds, looking again every 20 ms; panics with `what` after
/// the wait.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `/health` answers at `addr`.
pub async fn wait_healthy(addr: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest::get(format!("http://{addr}/health")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `path` with the API key and returns the JSON body.
pub async fn admin_get(srv: &TestServer, path: &str) -> Value {
    admin()
        .get(srv.http(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The real `switchboard` binary, serving on a free loopback port.
pub struct BinServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl BinServer {
    /// Starts `switchboard serve` on `data_dir` with the test secret and waits until
    /// `/health` answers.
    pub async fn start(data_dir: &std::path::Path, env: &[(&str, &str)]) -> BinServer {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .env("SWITCHBOARD_LISTEN", addr.to_string())
            .env("SWITCHBOARD_DATA_DIR", data_dir)
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the binary starts");
        let server = BinServer { child, addr };
        wait_healthy(&addr.to_string()).await;
        server
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "-KILL", "-TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} failed");
    }

    /// Waits for the process to exit; returns its exit status.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BinServer {
    // A test that fails midway must not leave a server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// A real HTTP client reading an SSE stream.
pub struct SseClient {
    pub response_headers: reqwest::header::HeaderMap,
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseClient {
    /// Opens `/events?channels=...` with a token; panics unless the answer is 200.
    pub async fn open(
        srv: &TestServer,
        sub: &str,
        channels: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let url = srv.http(&format!("/events?channels={channels}&token={}", token(sub)));
        SseClient::open_url(&url, last_event_id).await
    }

    pub async fn open_url(url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
        SseClient {
            response_headers: resp.headers().clone(),
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event; panics after the wait or at the end of the stream.
    pub async fn next(&mut self) -> SseEvent {
        self.try_next().await.expect("the stream goes on")
    }

    /// The next event, or None when the stream ends.
    pub async fn try_next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(v).expect("data is JSON");
                    }
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("an event arrives in time");
            match chunk {
                Some(Ok(bytes)) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                _ => return None,
            }
        }
    }

    /// Skips events until one named `name`.
    pub async fn next_of(&mut self, name: &str) -> SseEvent {
        loop {
            let e = self.next().await;
            if e.event == name {
                return e;
            }
        }
    }
}

/// An HTTP client with the server API key.
pub const API_KEY: &str = "test-api-key";

pub fn admin() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", API_KEY.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}
