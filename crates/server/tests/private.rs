//! Private conversations through a real server: durable `dm:` rooms, delivery to every
//! device of both users but the sending one, recovery by offset after a reconnect,
//! history, and nobody else reading them.

mod common;

use common::*;
use serde_json::{Value, json};

async fn send_private(c: &mut Client, to: &str, content: &str, r: u64) -> Value {
    c.send(json!({"type": "send_private_message",
        "data": {"recipientId": to, "content": content}, "ref": r}))
        .await;
    c.next_of("ack").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_reach_both_users_devices_but_the_sending_one() {
    let srv = TestServer::start().await;
    let mut phone = srv.client("alice").await;
    let mut laptop = srv.client("alice").await;
    phone.expect("device_connected").await;
    let mut bob = srv.client("bob").await;
    let mut bob2 = srv.client("bob").await;
    bob.expect("device_connected").await;
    let mut carol = srv.client("carol").await;

    let ack = send_private(&mut phone, "bob", "hi bob", 1).await;
    assert_eq!(ack["data"]["offset"], 1);
    for c in [&mut bob, &mut bob2, &mut laptop] {
        let m = c.expect("private_message").await;
        assert_eq!(m["data"]["id"], ack["data"]["id"]);
        assert_eq!(m["data"]["sender"]["id"], "alice");
        assert_eq!(m["data"]["sender"]["username"], "Alice");
        assert_eq!(m["data"]["recipient"], "bob");
        assert_eq!(m["data"]["content"], "hi bob");
        assert_eq!(m["data"]["type"], "text");
        assert_eq!(m["data"]["roomId"], "dm:alice:bob");
        assert_eq!(m["data"]["offset"], 1);
        assert!(m["data"]["timestamp"].as_u64().unwrap() > 0);
    }
    // The answer goes to the same room, the next offset.
    let back = send_private(&mut bob, "alice", "hi alice", 2).await;
    assert_eq!(back["data"]["offset"], 2);
    let m = phone.expect("private_message").await;
    assert_eq!(m["data"]["roomId"], "dm:alice:bob");
    assert_eq!(m["data"]["recipient"], "alice");
    phone.expect_silence(150).await;
    carol.expect_silence(50).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_recovers_by_offset_and_history() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let mut ids = Vec::new();
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        let ack = send_private(&mut alice, "bob", text, i as u64).await;
        assert_eq!(ack["data"]["offset"], i as u64 + 1);
        ids.push(ack["data"]["id"].clone());
    }
    // Bob was never online: the conversation is among his rooms, all unread.
    let (_, rooms) = srv.get_as("bob", "/api/users/me/rooms").await;
    assert_eq!(
        rooms["rooms"],
        json!([{"roomId": "dm:alice:bob", "lastOffset": 3, "lastReadOffset": 0, "unread": 3}])
    );
    let mut bob = srv.client("bob").await;
    bob.request(
        "join_room",
        json!({"roomId": "dm:alice:bob", "since": 0, "exclusive": false}),
    )
    .await;
    let mut got = Vec::new();
    let mut joined = false;
    while !joined || got.len() < 3 {
        let v = bob.next().await;
        match v["type"].as_str().unwrap() {
            "private_message" => got.push(v),
            "room_joined" => joined = true,
            _ => {}
        }
    }
    let texts: Vec<&str> = got
        .iter()
        .map(|m| m["data"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    for (m, id) in got.iter().zip(&ids) {
        assert_eq!(&m["data"]["id"], id);
        assert_eq!(m["data"]["recipient"], "bob");
    }
    // A later message arrives once, live.
    send_private(&mut alice, "bob", "four", 9).await;
    let live = bob.expect("private_message").await;
    assert_eq!(live["data"]["offset"], 4);
    bob.expect_silence(150).await;

    bob.request(
        "history",
        json!({"roomId": "dm:alice:bob", "before": 4, "limit": 2}),
    )
    .await;
    let page = bob.expect("history").await;
    let offsets: Vec<u64> = page["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3]);
    let (status, body) = srv
        .get_as("alice", "/api/rooms/dm:alice:bob/messages?since=3")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["content"], "four");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_else_reads_a_private_conversation() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    send_private(&mut alice, "bob", "secret", 1).await;
    let mut carol = srv.client("carol").await;
    carol
        .send(
            json!({"type": "join_room", "data": {"roomId": "dm:alice:bob", "since": 0}, "ref": 1}),
        )
        .await;
    carol.expect_error("Forbidden").await;
    carol
        .request("history", json!({"roomId": "dm:alice:bob"}))
        .await;
    carol.expect_error("Forbidden").await;
    carol
        .request(
            "send_message",
            json!({"roomId": "dm:alice:bob", "content": "let me in"}),
        )
        .await;
    carol.expect_error("Forbidden").await;
    let (status, _) = srv
        .get_as("carol", "/api/rooms/dm:alice:bob/messages")
        .await;
    assert_eq!(status, 403);
    // Nor over SSE.
    let resp = reqwest::get(srv.http(&format!(
        "/events?channels=dm:alice:bob&token={}",
        token("carol")
    )))
    .await
    .unwrap();
    assert_eq!(resp.status(), 403);
    // A malformed conversation id is nobody's.
    alice
        .request("join_room", json!({"roomId": "dm:alice"}))
        .await;
    alice.expect_error("Forbidden").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_private_messages_are_refused_and_repeats_stored_once() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    for data in [
        json!({"content": "x"}),
        json!({"recipientId": "bob"}),
        json!({"recipientId": "", "content": "x"}),
        json!({"recipientId": "bob", "content": ""}),
    ] {
        alice.request("send_private_message", data).await;
        alice
            .expect_error("Recipient ID and content are required")
            .await;
    }
    alice
        .request(
            "send_private_message",
            json!({"recipientId": "a:b", "content": "x"}),
        )
        .await;
    let e = alice.expect("error").await;
    assert!(
        e["data"]["message"]
            .as_str()
            .unwrap()
            .contains("recipientId"),
        "{e}"
    );

    // Conversations too long to be a room id are refused before anything is stored.
    let long = "b".repeat(123);
    alice
        .request(
            "send_private_message",
            json!({"recipientId": long, "content": "x"}),
        )
        .await;
    let e = alice.expect("error").await;
    assert!(
        e["data"]["message"].as_str().unwrap().contains("too long"),
        "{e}"
    );
    // A conversation takes private messages only: send_message would reach no one.
    alice
        .send(json!({"type": "join_room", "data": {"roomId": "dm:alice:bob"}, "ref": 9}))
        .await;
    alice.next_of("room_joined").await;
    alice
        .request(
            "send_message",
            json!({"roomId": "dm:alice:bob", "content": "x"}),
        )
        .await;
    alice.expect_error("Forbidden").await;
    // A room message's clientMessageId does not swallow a private one's.
    alice.join("general").await;
    alice
        .send(json!({"type": "send_message",
            "data": {"roomId": "general", "content": "room", "clientMessageId": "m-1"},
            "ref": 10}))
        .await;
    alice.next_of("ack").await;

    // The same clientMessageId twice: one message, the same answer twice.
    let mut acks = Vec::new();
    for r in 1..=2 {
        alice
            .send(json!({"type": "send_private_message",
                "data": {"recipientId": "bob", "content": "once", "clientMessageId": "m-1"},
                "ref": r}))
            .await;
        acks.push(alice.next_of("ack").await);
    }
    assert_eq!(acks[0]["data"]["id"], acks[1]["data"]["id"]);
    assert_eq!(acks[0]["data"]["offset"], acks[1]["data"]["offset"]);
    assert_eq!(acks[1]["data"]["duplicate"], true);
    assert_ne!(acks[0]["data"]["duplicate"], true);
    bob.expect("private_message").await;
    bob.expect_silence(200).await;
    srv.stop().await;
}
