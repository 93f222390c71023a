//! Offline notifications through a real server: coalesced inbox entries for members
//! with no device online, their delivery on connect, marking them read, and the signed
//! webhook push with its durable retries (a real HTTP receiver on loopback).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Sha256;

/// Alice and Bob are members of `room`; Bob is then offline (no grace).
async fn alice_with_offline_bob(srv: &TestServer, room: &str) -> Client {
    let alice = srv.member("alice", room).await;
    let bob = srv.member("bob", room).await;
    drop(bob);
    eventually("bob is offline", || async {
        let (_, p) = srv.get_as("alice", "/api/users/bob").await;
        p["lastSeen"].is_u64() && !srv.hub.is_online("bob").await
    })
    .await;
    alice
}

async fn send(c: &mut Client, room: &str, content: Value, r: u64) {
    c.send(json!({"type": "send_message", "data": {"roomId": room, "content": content}, "ref": r}))
        .await;
    c.next_of("ack").await;
}

async fn inbox(srv: &TestServer, user: &str, unread: bool) -> Vec<Value> {
    let (status, body) = srv
        .get_as(user, &format!("/api/notifications?unread={unread}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["notifications"].as_array().unwrap().clone()
}

/// Waits until `user` has an unread entry whose count is `count`; returns it.
async fn entry_with_count(srv: &TestServer, user: &str, count: u64) -> Value {
    let mut found = Value::Null;
    let deadline = tokio::time::Instant::now() + WAIT;
    while found.is_null() {
        let entries = inbox(srv, user, true).await;
        assert!(entries.len() <= 1, "{entries:?}");
        if let Some(e) = entries.first()
            && e["count"] == count
        {
            found = e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no entry of {count}: {entries:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    found
}

fn grace0(c: &mut switchboard::Config) {
    c.presence.offline_grace_secs = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_gets_one_entry_per_room_however_many_messages() {
    let srv = TestServer::with(grace0).await;
    let mut alice = alice_with_offline_bob(&srv, "team").await;
    for i in 1..=10 {
        send(&mut alice, "team", json!(format!("message {i}")), i).await;
    }
    let e = entry_with_count(&srv, "bob", 10).await;
    assert_eq!(e["type"], "new_message");
    assert_eq!(e["roomId"], "team");
    assert_eq!(e["message"], "message 10");
    assert_eq!(e["sender"], json!({"id": "alice", "username": "Alice"}));
    assert_eq!(e["read"], false);
    assert!(e["timestamp"].as_u64().unwrap() > 0);
    // Alice was online: nothing for her.
    assert!(inbox(&srv, "alice", false).await.is_empty());

    // On connect, each device gets the unread entries.
    let mut bob = srv.client("bob").await;
    let n = bob.next_of("notification").await;
    assert_eq!(n["data"], e);

    // Read: the unread list empties; the whole list keeps it, read.
    let (status, body) = srv
        .post_as("bob", "/api/notifications/read", json!({"all": true}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["read"], 1);
    assert!(inbox(&srv, "bob", true).await.is_empty());
    let all = inbox(&srv, "bob", false).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["read"], true);
    // Online now: more messages open nothing.
    bob.join("team").await;
    send(&mut alice, "team", json!("hello again"), 11).await;
    bob.next_of("new_message").await;
    assert!(inbox(&srv, "bob", true).await.is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_stands_still_while_its_user_is_back_and_takes_the_next_absence_on() {
    let srv = TestServer::with(grace0).await;
    let mut alice = alice_with_offline_bob(&srv, "team").await;
    send(&mut alice, "team", json!("one"), 1).await;
    send(&mut alice, "team", json!("two"), 2).await;
    let first = entry_with_count(&srv, "bob", 2).await;

    // Back online, unread: what it sees live, its own words included, is no news.
    let mut bob = srv.member("bob", "team").await;
    send(&mut alice, "team", json!("live"), 3).await;
    send(&mut bob, "team", json!("mine"), 1).await;
    let entries = inbox(&srv, "bob", true).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["id"], first["id"]);
    assert_eq!(entries[0]["count"], 2);
    assert_eq!(entries[0]["message"], "two");
    assert_eq!(entries[0]["sender"]["id"], "alice");

    // Gone again: the same unread entry counts this absence on top.
    drop(bob);
    eventually("bob is offline", || async {
        !srv.hub.is_online("bob").await
    })
    .await;
    send(&mut alice, "team", json!("three"), 4).await;
    let again = entry_with_count(&srv, "bob", 3).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["message"], "three");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_one_entry_and_messages_after_it_open_a_new_one() {
    let srv = TestServer::with(grace0).await;
    let mut alice = alice_with_offline_bob(&srv, "a").await;
    alice.join("b").await;
    let bob = srv.member("bob", "b").await;
    drop(bob);
    eventually("bob is offline", || async {
        !srv.hub.is_online("bob").await
    })
    .await;
    send(&mut alice, "a", json!("to a"), 1).await;
    send(&mut alice, "b", json!("to b"), 2).await;
    eventually("two entries", || async {
        inbox(&srv, "bob", true).await.len() == 2
    })
    .await;
    let entries = inbox(&srv, "bob", true).await;
    let in_a = entries.iter().find(|e| e["roomId"] == "a").unwrap();
    let (status, body) = srv
        .post_as(
            "bob",
            "/api/notifications/read",
            json!({"ids": [in_a["id"], "no-such-entry"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["read"], 1);
    let left = inbox(&srv, "bob", true).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["roomId"], "b");
    // A message after the read opens a fresh entry, counting from there.
    send(&mut alice, "a", json!("to a again"), 3).await;
    eventually("a new entry in a", || async {
        inbox(&srv, "bob", true)
            .await
            .iter()
            .any(|e| e["roomId"] == "a" && e["count"] == 1 && e["message"] == "to a again")
    })
    .await;

    // Bad bodies.
    for bad in [
        json!({}),
        json!({"all": false}),
        json!({"ids": "x"}),
        json!({"ids": [], "all": true}),
    ] {
        let (status, body) = srv
            .post_as("bob", "/api/notifications/read", bad.clone())
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = srv.get_as("bob", "/api/notifications?limit=abc").await;
    assert_eq!(status, 400);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_notify_and_previews_are_a_hundred_characters() {
    let srv = TestServer::with(grace0).await;
    let bob = srv.client("bob").await;
    drop(bob);
    eventually("bob is offline", || async {
        !srv.hub.is_online("bob").await
    })
    .await;
    let mut alice = srv.client("alice").await;
    let long: String = "é".repeat(150);
    alice
        .send(json!({"type": "send_private_message", "data": {"recipientId": "bob", "content": long}, "ref": 1}))
        .await;
    alice.next_of("ack").await;
    let e = entry_with_count(&srv, "bob", 1).await;
    assert_eq!(e["type"], "private_message");
    assert_eq!(e["roomId"], "dm:alice:bob");
    assert_eq!(e["message"].as_str().unwrap().chars().count(), 100);
    assert!(e["message"].as_str().unwrap().chars().all(|c| c == 'é'));
    // Content that is not text is previewed as its JSON.
    alice
        .send(json!({"type": "send_private_message", "data": {"recipientId": "bob", "content": {"k": 1}}, "ref": 2}))
        .await;
    alice.next_of("ack").await;
    let e = entry_with_count(&srv, "bob", 2).await;
    assert_eq!(e["message"], r#"{"k":1}"#);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_gets_no_entry_large_rooms_the_invisible_and_users_within_the_grace() {
    // Above max_room_members: no entries. A conversation (two members) is within it.
    let srv = TestServer::with(|c| {
        c.presence.offline_grace_secs = 0;
        c.notifications.max_room_members = 2;
    })
    .await;
    let dave = srv.member("dave", "big").await;
    drop(dave);
    let mut alice = alice_with_offline_bob(&srv, "big").await;
    send(&mut alice, "big", json!("x"), 1).await;
    alice
        .send(json!({"type": "send_private_message", "data": {"recipientId": "bob", "content": "y"}, "ref": 2}))
        .await;
    alice.next_of("ack").await;
    let e = entry_with_count(&srv, "bob", 1).await;
    assert_eq!(e["roomId"], "dm:alice:bob");
    assert!(inbox(&srv, "dave", false).await.is_empty());
    srv.stop().await;

    // Invisible with a device connected: online for notifications.
    let srv = TestServer::with(|c| c.presence.offline_grace_secs = 3).await;
    let mut alice = srv.member("alice", "r").await;
    let mut bob = srv.member("bob", "r").await;
    bob.request("update_status", json!({"status": "offline"}))
        .await;
    bob.next_of("status_updated").await;
    let mut carol = srv.member("carol", "r").await;
    drop(carol);
    // Carol is within her grace: online still.
    send(&mut alice, "r", json!("z"), 1).await;
    bob.next_of("new_message").await;
    carol = srv.client("carol").await;
    carol.expect_silence(300).await;
    assert!(inbox(&srv, "bob", false).await.is_empty());
    assert!(inbox(&srv, "carol", false).await.is_empty());
    srv.stop().await;
}

/// A webhook receiver on loopback: answers `fail_first` requests with 500, then 200
/// (or 503 while `down`); records each body and signature.
#[derive(Default)]
struct Receiver {
    fail_first: usize,
    down: AtomicBool,
    attempts: AtomicUsize,
    delivered: Mutex<Vec<(String, String)>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = r.attempts.fetch_add(1, Ordering::SeqCst);
    if n < r.fail_first || r.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let signature = headers
        .get("x-switchboard-signature")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    r.delivered
        .lock()
        .push((String::from_utf8(body.to_vec()).unwrap(), signature));
    StatusCode::NO_CONTENT
}

async fn start_receiver(r: Arc<Receiver>) -> String {
    let app = axum::Router::new()
        .route("/push", axum::routing::post(receive))
        .with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/push")
}

/// Checks `t=<unix>,v1=<hex>` against the body as the docs tell a receiver to.
fn verify(secret: &str, signature: &str, body: &str) {
    let (t, v1) = signature
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .expect("t=...,v1=...");
    let now = switchboard_protocol::now_millis() / 1000;
    let t: u64 = t.parse().unwrap();
    assert!(t.abs_diff(now) < 60, "a fresh timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_signed_and_retried_until_delivered_once() {
    let receiver = Arc::new(Receiver {
        fail_first: 2,
        ..Default::default()
    });
    let url = start_receiver(receiver.clone()).await;
    let srv = TestServer::with(|c| {
        c.presence.offline_grace_secs = 0;
        c.notifications.webhook_url = Some(url);
        c.notifications.webhook_secret = Some("hook-secret".into());
    })
    .await;
    let mut alice = alice_with_offline_bob(&srv, "team").await;
    send(&mut alice, "team", json!("ping"), 1).await;
    eventually("the push is delivered", || async {
        !receiver.delivered.lock().is_empty()
    })
    .await;
    // Two failures (500), then the delivery: three attempts, one delivery.
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 3);
    let (body, signature) = receiver.delivered.lock()[0].clone();
    verify("hook-secret", &signature, &body);
    let push: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(push["userId"], "bob");
    let entry = &inbox(&srv, "bob", true).await[0];
    assert_eq!(push["notification"]["id"], entry["id"]);
    assert_eq!(push["notification"]["type"], "new_message");
    assert_eq!(push["notification"]["roomId"], "team");
    assert_eq!(push["notification"]["message"], "ping");
    // More messages into the same unread entry push nothing more.
    send(&mut alice, "team", json!("ping 2"), 2).await;
    entry_with_count(&srv, "bob", 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(receiver.delivered.lock().len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_push_survives_a_restart() {
    let receiver = Arc::new(Receiver::default());
    receiver.down.store(true, Ordering::SeqCst);
    let url = start_receiver(receiver.clone()).await;
    let srv = TestServer::with(|c| {
        c.presence.offline_grace_secs = 0;
        c.notifications.webhook_url = Some(url);
        c.notifications.webhook_secret = Some("s2".into());
    })
    .await;
    let mut alice = alice_with_offline_bob(&srv, "team").await;
    send(&mut alice, "team", json!("while down"), 1).await;
    eventually("a first attempt failed", || async {
        receiver.attempts.load(Ordering::SeqCst) >= 1
    })
    .await;
    drop(alice);
    let srv = srv.restart().await;
    receiver.down.store(false, Ordering::SeqCst);
    eventually("the push is delivered after the restart", || async {
        !receiver.delivered.lock().is_empty()
    })
    .await;
    let (body, signature) = receiver.delivered.lock()[0].clone();
    verify("s2", &signature, &body);
    assert!(body.contains("while down"), "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(receiver.delivered.lock().len(), 1);
    srv.stop().await;
}
