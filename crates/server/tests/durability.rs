//! Nothing acknowledged is lost, and a reconnecting client gets what it missed exactly
//! once, in order.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Sends `n` messages to `room` as fast as acks allow (up to `window` in flight) and
/// returns id by offset from the acks.
async fn publish(
    url: String,
    room: &str,
    n: u64,
    window: u64,
    pause: Duration,
) -> HashMap<u64, String> {
    let mut c = Client::connect(&url).await;
    c.next_of("connected").await;
    c.join(room).await;
    let (mut tx, mut rx) = c.ws.split();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, String)>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ack" {
                    let offset = v["data"]["offset"].as_u64().unwrap();
                    let id = v["data"]["id"].as_str().unwrap().to_string();
                    if acked_tx.send((offset, id)).is_err() {
                        return;
                    }
                } else if v["type"] == "error" {
                    panic!("publisher got {v}");
                }
            }
        }
    });
    let mut acks = HashMap::new();
    let mut sent = 0;
    while (acks.len() as u64) < n {
        let in_flight = sent - acks.len() as u64;
        if sent < n && in_flight < window {
            let frame = json!({"type": "send_message", "ref": sent,
                "data": {"roomId": room, "content": format!("m{sent}")}});
            tx.send(Message::text(frame.to_string())).await.unwrap();
            sent += 1;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            continue;
        }
        let (offset, id) = tokio::time::timeout(WAIT, acked_rx.recv())
            .await
            .unwrap()
            .unwrap();
        acks.insert(offset, id);
    }
    reader.abort();
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_since_gets_every_message_once_in_order() {
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    const N: u64 = 20000;
    let publisher = tokio::spawn(publish(
        srv.url(&token("pub")),
        "feed",
        N,
        32,
        Duration::ZERO,
    ));
    let mut seen: Vec<u64> = Vec::new();
    let mut last = 0;
    let mut reconnects = 0;
    while seen.last().copied() != Some(N) {
        let mut c = srv.client("reader").await;
        c.request("join_room", json!({"roomId": "feed", "since": last}))
            .await;
        let joined = c.next_of("room_joined").await;
        assert_eq!(joined["data"]["recovered"], true);
        reconnects += 1;
        // Read a varying share of the stream, then drop the connection mid-flow.
        let budget = 97 + (reconnects * 131) % 400;
        let mut read = 0;
        while read < budget && seen.last().copied() != Some(N) {
            let v = c.next().await;
            if v["type"] != "new_message" {
                continue;
            }
            let offset = v["data"]["offset"].as_u64().unwrap();
            seen.push(offset);
            last = offset;
            read += 1;
        }
        drop(c);
    }
    let acks = publisher.await.unwrap();
    assert!(
        reconnects >= 4,
        "the reader reconnected while publishing ({reconnects})"
    );
    let first_wrong = seen.iter().zip(1..=N).position(|(got, want)| *got != want);
    assert_eq!(
        first_wrong,
        None,
        "every offset once, in order: {:?}",
        first_wrong.map(|i| &seen[i.saturating_sub(3)..(i + 3).min(seen.len())])
    );
    assert_eq!(seen.len() as u64, N);
    assert_eq!(acks.len() as u64, N);
}

#[tokio::test]
async fn a_gap_too_large_to_replay_is_reported() {
    let srv = TestServer::with(|c| {
        c.rate_limit.per_sec = 0;
        c.store.recovery_max_messages = 5;
    })
    .await;
    publish(srv.url(&token("pub")), "feed", 10, 10, Duration::ZERO).await;
    let mut c = srv.client("reader").await;
    c.request("join_room", json!({"roomId": "feed", "since": 2}))
        .await;
    let joined = c.expect("room_joined").await;
    assert_eq!(joined["data"]["recovered"], false);
    c.expect_silence(200).await;
    // Within the limit it replays.
    c.request("join_room", json!({"roomId": "other"})).await;
    c.expect("room_joined").await;
    c.request("join_room", json!({"roomId": "feed", "since": 6}))
        .await;
    assert_eq!(c.expect("room_joined").await["data"]["recovered"], true);
    for want in 7..=10 {
        assert_eq!(c.expect("new_message").await["data"]["offset"], want);
    }
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("SWITCHBOARD_RATE_LIMIT_PER_SEC", "0")];
    let server = BinServer::start(dir.path(), &env).await;
    const N: u64 = 500;
    let acks = publish(server.url(&token("pub")), "ledger", N, 100, Duration::ZERO).await;
    // Killed the moment the last ack arrived: no drain, no flush.
    server.signal("-KILL");
    let status = server.wait().await;
    assert!(!status.success());

    let server = BinServer::start(dir.path(), &env).await;
    let mut c = Client::connect(&server.url(&token("auditor"))).await;
    c.next_of("connected").await;
    c.request("join_room", json!({"roomId": "ledger", "since": 0}))
        .await;
    assert_eq!(c.expect("room_joined").await["data"]["recovered"], true);
    for offset in 1..=N {
        let m = c.expect("new_message").await;
        assert_eq!(m["data"]["offset"], offset);
        assert_eq!(
            m["data"]["id"].as_str(),
            acks.get(&offset).map(String::as_str)
        );
    }
    // Offsets continue after the restart.
    c.request(
        "send_message",
        json!({"roomId": "ledger", "content": "after"}),
    )
    .await;
    assert_eq!(c.next_of("new_message").await["data"]["offset"], N + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_share_commits() {
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    const PUBLISHERS: u64 = 8;
    const EACH: u64 = 250;
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let url = srv.url(&token(&format!("p{i}")));
            tokio::spawn(async move {
                publish(url, &format!("room{i}"), EACH, 50, Duration::ZERO).await
            })
        })
        .collect();
    for t in tasks {
        let acks = t.await.unwrap();
        let mut offsets: Vec<u64> = acks.keys().copied().collect();
        offsets.sort();
        assert_eq!(
            offsets,
            (1..=EACH).collect::<Vec<_>>(),
            "each room has its own gapless offsets"
        );
    }
    let stats = srv.hub.store().stats();
    assert_eq!(stats.messages, PUBLISHERS * EACH);
    assert!(
        stats.commits * 4 < stats.messages,
        "group commit: {} messages in {} transactions",
        stats.messages,
        stats.commits
    );
}

#[tokio::test]
async fn a_position_beyond_the_room_is_not_trusted() {
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    publish(srv.url(&token("pub")), "feed", 2, 2, Duration::ZERO).await;
    let mut c = srv.client("reader").await;
    // A stale position from elsewhere: the room only reached 2.
    c.request("join_room", json!({"roomId": "feed", "since": 1000}))
        .await;
    assert_eq!(c.expect("room_joined").await["data"]["recovered"], false);
    // New messages still arrive; none is dropped as "already seen".
    publish(srv.url(&token("pub")), "feed", 1, 1, Duration::ZERO).await;
    assert_eq!(c.next_of("new_message").await["data"]["offset"], 3);
}

#[tokio::test]
async fn positions_that_do_not_fit_or_belong_elsewhere_are_not_trusted() {
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    publish(srv.url(&token("pub")), "feed", 3, 3, Duration::ZERO).await;
    let mut c = srv.client("reader").await;
    let joined = c.join("feed").await;
    let epoch = joined["data"]["epoch"].as_str().unwrap().to_string();
    assert_eq!(joined["data"]["offset"], 3, "the room's head");
    // Beyond i64 (it used to wrap and replay from 1), beyond u64, negative, another
    // epoch: none is a position of this room's history.
    for (since, their_epoch) in [
        (json!(9223372036854775817u64), None),
        (json!(1e30), None),
        (json!(-1), None),
        (json!(1), Some("another-history")),
    ] {
        let mut data = json!({"roomId": "feed", "since": since, "exclusive": true});
        if let Some(e) = their_epoch {
            data["epoch"] = json!(e);
        }
        c.request("leave_room", json!({"roomId": "feed"})).await;
        c.expect("room_left").await;
        c.request("join_room", data).await;
        let joined = c.expect("room_joined").await;
        assert_eq!(joined["data"]["recovered"], false, "since {since}");
        c.expect_silence(100).await;
    }
    // The right epoch replays.
    c.request("leave_room", json!({"roomId": "feed"})).await;
    c.expect("room_left").await;
    c.request(
        "join_room",
        json!({"roomId": "feed", "since": 1, "epoch": epoch}),
    )
    .await;
    assert_eq!(c.expect("room_joined").await["data"]["recovered"], true);
    assert_eq!(c.expect("new_message").await["data"]["offset"], 2);
    assert_eq!(c.expect("new_message").await["data"]["offset"], 3);
}

#[tokio::test]
async fn recovery_and_history_are_bounded_in_bytes() {
    let srv = TestServer::with(|c| {
        c.rate_limit.per_sec = 0;
        c.store.recovery_max_bytes = 64 * 1024;
        c.store.history_max_bytes = 25 * 1024;
    })
    .await;
    let mut alice = srv.member("alice", "files").await;
    let blob = "b".repeat(10 * 1024);
    for i in 0..10 {
        alice
            .send(json!({"type": "send_message", "ref": i, "data": {"roomId": "files", "content": blob}}))
            .await;
        alice.next_of("ack").await;
    }
    // Ten messages of 10 KiB from the start do not fit in 64 KiB: nothing is read.
    let mut bob = srv.client("bob").await;
    bob.request("join_room", json!({"roomId": "files", "since": 0}))
        .await;
    assert_eq!(bob.expect("room_joined").await["data"]["recovered"], false);
    bob.expect_silence(200).await;
    // Five do.
    bob.request("join_room", json!({"roomId": "other"})).await;
    bob.expect("room_joined").await;
    bob.request("join_room", json!({"roomId": "files", "since": 5}))
        .await;
    assert_eq!(bob.expect("room_joined").await["data"]["recovered"], true);
    for want in 6..=10 {
        assert_eq!(bob.expect("new_message").await["data"]["offset"], want);
    }

    // A history page stops at 25 KiB, keeping the end nearest its anchor.
    bob.request("history", json!({"roomId": "files", "limit": 100}))
        .await;
    let page = bob.expect("history").await;
    let offsets: Vec<u64> = page["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [9, 10], "the newest that fit");
    assert_eq!(page["data"]["truncated"], true);
    bob.request("history", json!({"roomId": "files", "since": 0}))
        .await;
    let page = bob.expect("history").await;
    assert_eq!(
        page["data"]["messages"][0]["offset"], 1,
        "the oldest that fit"
    );
    assert_eq!(page["data"]["messages"].as_array().unwrap().len(), 2);
    let http: serde_json::Value = reqwest::Client::new()
        .get(srv.http("/api/rooms/files/messages?limit=100"))
        .bearer_auth(token("bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["messages"].as_array().unwrap().len(), 2);
    assert_eq!(http["truncated"], true);
    assert_eq!(http["epoch"], page["data"]["epoch"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_message_is_stored_once() {
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    let mut watcher = srv.member("watcher", "chat").await;
    // Sent, and the connection dropped before the ack could arrive.
    let mut alice = srv.member("alice", "chat").await;
    alice
        .send(json!({"type": "send_message", "ref": 1, "data": {"roomId": "chat", "content": "once", "clientMessageId": "m-1"}}))
        .await;
    drop(alice);
    let first = watcher.next_of("new_message").await;
    // Reconnected, it retries with the same id: acknowledged as the original, and not
    // delivered again.
    let mut alice = srv.member("alice", "chat").await;
    alice
        .send(json!({"type": "send_message", "ref": 2, "data": {"roomId": "chat", "content": "once", "clientMessageId": "m-1"}}))
        .await;
    let ack = alice.next_of("ack").await;
    assert_eq!(ack["ref"], 2);
    assert_eq!(ack["data"]["duplicate"], true);
    assert_eq!(ack["data"]["id"], first["data"]["id"]);
    assert_eq!(ack["data"]["offset"], first["data"]["offset"]);
    // Another id is another message; the same id from another user is theirs.
    alice
        .send(json!({"type": "send_message", "ref": 3, "data": {"roomId": "chat", "content": "twice", "clientMessageId": "m-2"}}))
        .await;
    let ack = alice.next_of("ack").await;
    assert!(ack["data"].get("duplicate").is_none(), "{ack}");
    let mut bob = srv.member("bob", "chat").await;
    bob.send(json!({"type": "send_message", "ref": 4, "data": {"roomId": "chat", "content": "bob's", "clientMessageId": "m-1"}}))
        .await;
    assert!(bob.next_of("ack").await["data"].get("duplicate").is_none());
    bob.request("history", json!({"roomId": "chat"})).await;
    let contents: Vec<String> = bob.next_of("history").await["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(contents, ["once", "twice", "bob's"]);
    // A malformed id is refused.
    bob.send(json!({"type": "send_message", "ref": 5, "data": {"roomId": "chat", "content": "x", "clientMessageId": "no spaces"}}))
        .await;
    let e = bob.next_of("error").await;
    assert_eq!(e["ref"], 5);
    assert_eq!(e["data"]["code"], "bad_request");
}

#[tokio::test]
async fn the_publish_api_honours_idempotency_keys() {
    let srv = TestServer::start().await;
    let publish = |key: &'static str| {
        admin()
            .post(srv.http("/api/rooms/news/publish"))
            .header("Idempotency-Key", key)
            .json(&json!({"content": "headline"}))
            .send()
    };
    let first: serde_json::Value = publish("order-42").await.unwrap().json().await.unwrap();
    let again: serde_json::Value = publish("order-42").await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["offset"], first["offset"]);
    assert_eq!(again["duplicate"], true);
    assert!(first.get("duplicate").is_none());
    assert!(first["epoch"].is_string());
    let other: serde_json::Value = publish("order-43").await.unwrap().json().await.unwrap();
    assert_eq!(other["offset"], 2);
    let bad = publish("not a key").await.unwrap();
    assert_eq!(bad.status(), 400);
}

/// A connection of our own to the server's database, behind its back.
async fn sqlite(srv: &TestServer) -> sqlx::SqliteConnection {
    let db = srv.dir.path().join("switchboard.db");
    <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_message_does_not_fail_its_batch() {
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    // A constraint the database enforces on one room only, added behind the server's
    // back: its messages fail, however they are batched with others.
    let mut conn = sqlite(&srv).await;
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.room = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned room'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let mut good = srv.member("good", "general").await;
    let mut bad = srv.member("bad", "poison").await;
    const N: u64 = 200;
    for i in 0..N {
        good.send(
            json!({"type": "send_message", "ref": i, "data": {"roomId": "general", "content": i}}),
        )
        .await;
        bad.send(
            json!({"type": "send_message", "ref": i, "data": {"roomId": "poison", "content": i}}),
        )
        .await;
    }
    let mut acked = 0;
    while acked < N {
        let v = good.next().await;
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "ack" {
            acked += 1;
        }
    }
    let mut refused = 0;
    while refused < N {
        let v = bad.next().await;
        assert_ne!(v["type"], "ack", "{v}");
        if v["type"] == "error" {
            assert_eq!(v["data"]["message"], "Internal server error");
            refused += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_queued_behind_a_store_shutdown_are_answered() {
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    // Every stored row costs the database a millisecond or so: the writer is still
    // busy with the first messages when the store is told to close.
    let mut conn = sqlite(&srv).await;
    sqlx::query(
        "CREATE TRIGGER slow BEFORE INSERT ON messages BEGIN \
         SELECT count(*) FROM (WITH RECURSIVE c(x) AS \
         (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT x FROM c); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let mut alice = srv.member("alice", "general").await;
    const N: u64 = 3000;
    let send = |i: u64| json!({"type": "send_message", "ref": i, "data": {"roomId": "general", "content": "x"}});
    for i in 0..N / 2 {
        alice.send(send(i)).await;
    }
    // The close is queued while the writer still works on the first half; the second
    // half lands behind it.
    let store = srv.hub.store().clone();
    let closing = tokio::spawn(async move { store.close().await });
    for i in N / 2..N {
        alice.send(send(i)).await;
    }
    // Every send hears how it went: stored, or the store is unavailable. None is
    // left unanswered.
    let (mut acked, mut refused) = (0, 0);
    while acked + refused < N {
        let v = alice.next().await;
        match v["type"].as_str().unwrap() {
            "ack" => acked += 1,
            "error" => {
                assert_eq!(v["data"]["message"], "Service unavailable", "{v}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(
        refused > 0,
        "the close came before the last send was stored"
    );
    closing.await.unwrap();
}

#[tokio::test]
async fn a_database_of_the_first_release_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    // The first release's schema and rows, written as it wrote them.
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("switchboard.db").display()
    );
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, \
         ts INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for seq in 1..=3 {
        let data = json!({"id": format!("old-{seq}"), "roomId": "general",
            "sender": {"id": "alice", "username": "Alice"}, "content": format!("old {seq}"),
            "type": "text", "metadata": {}, "timestamp": 1764370000000u64, "offset": seq});
        sqlx::query("INSERT INTO messages (room, seq, id, ts, data) VALUES ('general', ?, ?, 1764370000000, ?)")
            .bind(seq)
            .bind(format!("old-{seq}"))
            .bind(data.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    drop(conn);

    let server = BinServer::start(dir.path(), &[]).await;
    let mut c = Client::connect(&server.url(&token("bob"))).await;
    c.next_of("connected").await;
    c.request("join_room", json!({"roomId": "general", "since": 0}))
        .await;
    let joined = c.expect("room_joined").await;
    assert_eq!(joined["data"]["recovered"], true);
    assert_eq!(joined["data"]["offset"], 3);
    let epoch = joined["data"]["epoch"].clone();
    for seq in 1..=3 {
        assert_eq!(
            c.expect("new_message").await["data"]["content"],
            format!("old {seq}")
        );
    }
    c.request(
        "send_message",
        json!({"roomId": "general", "content": "new"}),
    )
    .await;
    assert_eq!(c.next_of("new_message").await["data"]["offset"], 4);
    drop(c);

    // The epoch is the database's: a restart keeps it, a new database has another.
    server.signal("-TERM");
    assert!(server.wait().await.success());
    let server = BinServer::start(dir.path(), &[]).await;
    let mut c = Client::connect(&server.url(&token("bob"))).await;
    c.next_of("connected").await;
    assert_eq!(c.join("general").await["data"]["epoch"], epoch);
    let fresh = tempfile::tempdir().unwrap();
    let other = BinServer::start(fresh.path(), &[]).await;
    let mut c = Client::connect(&other.url(&token("bob"))).await;
    c.next_of("connected").await;
    assert_ne!(c.join("general").await["data"]["epoch"], epoch);
}
