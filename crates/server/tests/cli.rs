//! The binary as an operator uses it: serve, token, check-config, config layering,
//! graceful drain.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::json;

fn switchboard(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn serve_refuses_to_start_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = switchboard(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("no JWT secret") && err.contains("--dev"),
        "{err}"
    );
}

#[test]
fn token_is_signed_with_the_configured_secret() {
    let out = switchboard(
        &[
            "token",
            "--sub",
            "alice",
            "--username",
            "Alice",
            "--ttl",
            "2h",
            "--rooms",
            "team-*,lobby",
        ],
        &[("JWT_SECRET", "s3cret")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
        &v,
    )
    .unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["username"], "Alice");
    assert_eq!(c["rooms"], json!(["team-*", "lobby"]));
    let ttl = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
    assert_eq!(ttl, 7200);
    // The flag beats the environment.
    let out = switchboard(
        &["token", "--sub", "a", "--jwt-secret", "flag"],
        &[("SWITCHBOARD_JWT_SECRET", "env")],
    );
    let token = text(&out.stdout).trim().to_string();
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"flag"),
            &v
        )
        .is_ok()
    );
    // No secret: a clear error.
    let out = switchboard(&["token", "--sub", "a"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no JWT secret configured"));
    let out = switchboard(
        &["token", "--sub", "a", "--ttl", "1w"],
        &[("JWT_SECRET", "s")],
    );
    assert!(!out.status.success());
}

#[test]
fn check_config_layers_file_env_and_flags_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\ndata_dir = \"/from/file\"\napi_key = \"file-key\"\n\
         [auth]\njwt_secret = \"file-secret\"\n[rate_limit]\nper_sec = 5\nburst = 7\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = switchboard(
        &["check-config", "--config", path, "--data-dir", "/from/flag"],
        &[
            ("SWITCHBOARD_LISTEN", "127.0.0.1:7001"),
            ("SWITCHBOARD_DATA_DIR", "/from/env"),
            ("SWITCHBOARD_RATE_LIMIT_BURST", "9"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: toml::Value = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(
        shown["listen"].as_str(),
        Some("127.0.0.1:7001"),
        "env beats file"
    );
    assert_eq!(
        shown["data_dir"].as_str(),
        Some("/from/flag"),
        "flag beats env"
    );
    assert_eq!(shown["rate_limit"]["per_sec"].as_integer(), Some(5));
    assert_eq!(shown["rate_limit"]["burst"].as_integer(), Some(9));
    assert_eq!(shown["api_key"].as_str(), Some("********"));
    assert_eq!(shown["auth"]["jwt_secret"].as_str(), Some("********"));
    assert!(!text(&out.stdout).contains("file-secret"));

    // Mistakes name themselves.
    std::fs::write(&file, "lisen = \"x\"\n").unwrap();
    let out = switchboard(&["check-config", "--config", path], &[("JWT_SECRET", "s")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("lisen"), "{}", text(&out.stderr));
    let out = switchboard(
        &["check-config"],
        &[
            ("JWT_SECRET", "s"),
            ("SWITCHBOARD_RATE_LIMIT_PER_SEC", "many"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("SWITCHBOARD_RATE_LIMIT_PER_SEC"));
    let out = switchboard(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no JWT secret"));
}

#[tokio::test]
async fn dev_mode_prints_a_working_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("JWT_SECRET")
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("then send"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let example = lines
        .iter()
        .find(|l| l.contains("wscat -c"))
        .expect("an example command");
    let url = example.split('"').nth(1).unwrap();
    let mut c = Client::connect(url).await;
    assert_eq!(c.expect("connected").await["data"]["user"]["id"], "alice");
    assert_eq!(c.expect("room_joined").await["data"]["roomId"], "general");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn sigterm_drains_with_1012_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), &[]).await;
    let mut alice = Client::connect(&server.url(&token("alice"))).await;
    alice.next_of("connected").await;
    alice.join("general").await;
    alice.send(json!({"type": "send_message", "ref": 1, "data": {"roomId": "general", "content": "before"}})).await;
    alice.next_of("ack").await;
    server.signal("-TERM");
    let (code, reason) = alice.expect_close().await;
    assert_eq!((code, reason.as_str()), (1012, "Service restart"));
    let status = server.wait().await;
    assert!(status.success(), "exit status {status:?}");
    // What was acknowledged is there after a restart.
    let server = BinServer::start(dir.path(), &[]).await;
    let mut bob = Client::connect(&server.url(&token("bob"))).await;
    bob.next_of("connected").await;
    bob.request("join_room", json!({"roomId": "general", "since": 0}))
        .await;
    bob.next_of("room_joined").await;
    assert_eq!(bob.expect("new_message").await["data"]["content"], "before");
}

#[tokio::test]
async fn a_closed_store_turns_ready_off() {
    let srv = TestServer::start().await;
    assert_eq!(
        reqwest::get(srv.http("/ready")).await.unwrap().status(),
        200
    );
    let mut alice = srv.member("alice", "general").await;
    srv.hub.store().close().await;
    let resp = reqwest::get(srv.http("/ready")).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
    // A message now fails clearly instead of vanishing, and so does reading history.
    alice.send(json!({"type": "send_message", "ref": 1, "data": {"roomId": "general", "content": "x"}})).await;
    let e = alice.expect_error("Service unavailable").await;
    assert_eq!(e["ref"], 1);
    assert_eq!(e["data"]["code"], "unavailable");
    alice
        .send(json!({"type": "history", "ref": 2, "data": {"roomId": "general"}}))
        .await;
    assert_eq!(alice.expect_error("Service unavailable").await["ref"], 2);
}

#[tokio::test]
async fn draining_turns_ready_off() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    srv.hub
        .drain(switchboard_protocol::CloseCode::ServiceRestart);
    assert_eq!(alice.expect_close().await.0, 1012);
    let ready = reqwest::get(srv.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["error"]["code"], "draining");
    assert_eq!(
        reqwest::get(srv.http("/health")).await.unwrap().status(),
        200
    );
    // New connections are turned away while draining.
    let mut late = Client::connect(&srv.url(&token("late"))).await;
    assert_eq!(late.expect_close().await.0, 1012);
}

#[tokio::test]
async fn json_logs_and_no_token_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env("SWITCHBOARD_LOG", "debug")
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("127.0.0.1:{port}");
    wait_healthy(&base).await;
    let bad = "eyJhbGciOiJIUzI1NiJ9.bm90LWEtcmVhbC10b2tlbg.LEAKCHECK123";
    let mut c = Client::connect(&format!("ws://{base}/ws?token={bad}")).await;
    assert_eq!(c.expect_close().await.0, 1008);
    let good = token("alice");
    let mut c = Client::connect(&format!("ws://{base}/ws?token={good}")).await;
    c.next_of("connected").await;
    drop(c);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    let logs = text(&out.stderr);
    assert!(logs.lines().count() >= 3, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(logs.contains("websocket authentication failed"), "{logs}");
    assert!(
        !logs.contains("LEAKCHECK123") && !logs.contains(&good),
        "a token reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_in_time_whatever_the_clients_do() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(
        dir.path(),
        &[
            ("SWITCHBOARD_DRAIN_TIMEOUT_SECS", "2"),
            ("SWITCHBOARD_API_KEY", API_KEY),
        ],
    )
    .await;
    // An SSE client that reads its response headers and then nothing more.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /events?channels=news&token={} HTTP/1.1\r\nHost: x\r\n\r\n",
        token("stalled")
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 512];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    // Enough for the channel to fill every buffer between the server and the client.
    let payload = "p".repeat(256 * 1024);
    for _ in 0..64 {
        let resp = admin()
            .post(format!("http://{}/events/broadcast", server.addr))
            .json(&json!({"event": "bulk", "data": payload, "channel": "news"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The connection's writes are blocked (and would be for the 30 s write timeout):
    // the drain still ends within its own bound.
    server.signal("-TERM");
    let status = server.wait().await;
    assert!(status.success(), "exit status {status:?}");
    drop(stalled);
}
