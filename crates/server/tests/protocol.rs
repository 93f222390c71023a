//! Every row of the native protocol table, through a real server and real clients.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn connect_says_who_you_are() {
    let srv = TestServer::start().await;
    let mut alice = Client::connect(&srv.url(&token("alice"))).await;
    let hello = alice.expect("connected").await;
    assert_eq!(
        hello["data"]["user"],
        json!({"id": "alice", "username": "Alice"})
    );
    assert!(hello["data"]["clientId"].as_str().unwrap().len() > 8);
    assert!(hello["data"]["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
}

#[tokio::test]
async fn ping_pong_carries_ref() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    alice.send(json!({"type": "ping", "ref": "p1"})).await;
    let pong = alice.expect("pong").await;
    assert_eq!(pong["ref"], "p1");
    assert!(pong["data"]["timestamp"].is_u64());
    alice.send(json!({"type": "ping", "ref": 42})).await;
    assert_eq!(alice.expect("pong").await["ref"], 42);
    alice.send(json!({"type": "ping"})).await;
    assert!(alice.expect("pong").await.get("ref").is_none());
}

#[tokio::test]
async fn join_reports_members_and_peers_and_tells_the_room() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    let mut bob = srv.client("bob").await;
    bob.send(json!({"type": "join_room", "data": {"roomId": "general"}, "ref": 1}))
        .await;
    let joined = bob.expect("room_joined").await;
    assert_eq!(joined["ref"], 1);
    assert_eq!(joined["data"]["roomId"], "general");
    let members = joined["data"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["id"], "bob");
    assert_eq!(
        joined["data"]["peers"],
        json!([{"peerId": alice.client_id, "user": {"id": "alice", "username": "Alice"}}])
    );
    let seen = alice.expect("user_joined_room").await;
    assert_eq!(seen["data"]["user"]["id"], "bob");
    assert_eq!(seen["data"]["roomId"], "general");
    assert_eq!(seen["data"]["peerId"], bob.client_id.as_str());
    bob.expect_silence(200).await;
}

#[tokio::test]
async fn connect_with_room_joins_it() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "lobby").await;
    let mut bob = Client::connect(&format!("{}&room=lobby", srv.url(&token("bob")))).await;
    bob.expect("connected").await;
    let joined = bob.expect("room_joined").await;
    assert_eq!(joined["data"]["roomId"], "lobby");
    let seen = alice.expect("user_joined").await;
    assert_eq!(seen["data"]["user"]["id"], "bob");
    // Bad room in the query: an error, the connection stays.
    let mut carol = Client::connect(&format!("{}&room=bad%20room", srv.url(&token("carol")))).await;
    carol.expect("connected").await;
    carol.expect_error("Invalid room ID").await;
    carol.send(json!({"type": "ping"})).await;
    carol.expect("pong").await;
}

#[tokio::test]
async fn exclusive_join_leaves_other_rooms() {
    let srv = TestServer::start().await;
    let mut watcher = srv.member("watcher", "a").await;
    let mut alice = srv.member("alice", "a").await;
    watcher.expect("user_joined_room").await;
    // exclusive defaults to true: joining b leaves a.
    alice.request("join_room", json!({"roomId": "b"})).await;
    alice.expect("room_joined").await;
    let left = watcher.expect("user_left_room").await;
    assert_eq!(left["data"]["roomId"], "a");
    assert_eq!(left["data"]["user"]["id"], "alice");
    alice
        .request("send_message", json!({"roomId": "a", "content": "x"}))
        .await;
    alice.expect_error("Not in room").await;
    // exclusive: false keeps b.
    alice
        .request("join_room", json!({"roomId": "c", "exclusive": false}))
        .await;
    alice.expect("room_joined").await;
    alice
        .request(
            "send_message",
            json!({"roomId": "b", "content": "still here"}),
        )
        .await;
    assert_eq!(alice.expect("new_message").await["data"]["roomId"], "b");
}

#[tokio::test]
async fn leave_room() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    let mut bob = srv.member("bob", "general").await;
    alice.expect("user_joined_room").await;
    bob.send(json!({"type": "leave_room", "data": {"roomId": "general"}, "ref": "l"}))
        .await;
    let left = bob.expect("room_left").await;
    assert_eq!(left["ref"], "l");
    assert_eq!(left["data"]["roomId"], "general");
    let seen = alice.expect("user_left_room").await;
    assert_eq!(seen["data"]["user"]["id"], "bob");
    assert_eq!(seen["data"]["peerId"], bob.client_id.as_str());
    bob.request("leave_room", json!({"roomId": "general"}))
        .await;
    bob.expect_error("Not in room").await;
    bob.request("leave_room", json!({})).await;
    bob.expect_error("Room ID is required").await;
}

#[tokio::test]
async fn send_message_reaches_everyone_and_acks_when_durable() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    let mut bob = srv.member("bob", "general").await;
    alice.expect("user_joined_room").await;
    alice
        .send(json!({"type": "send_message", "ref": "m1", "data": {
            "roomId": "general", "content": "hello", "metadata": {"k": "v"}}}))
        .await;
    let mut got_ack = None;
    let mut got_msg = None;
    for _ in 0..2 {
        let v = alice.next().await;
        match v["type"].as_str().unwrap() {
            "ack" => got_ack = Some(v),
            "new_message" => got_msg = Some(v),
            other => panic!("unexpected {other}"),
        }
    }
    let (ack, mine) = (got_ack.unwrap(), got_msg.unwrap());
    assert_eq!(ack["ref"], "m1");
    assert!(
        mine.get("ref").is_none(),
        "the broadcast is shared, so it has no ref"
    );
    let theirs = bob.expect("new_message").await;
    assert_eq!(mine, theirs);
    let m = &theirs["data"];
    assert_eq!(m["roomId"], "general");
    assert_eq!(m["content"], "hello");
    assert_eq!(m["type"], "text");
    assert_eq!(m["metadata"], json!({"k": "v"}));
    assert_eq!(m["sender"], json!({"id": "alice", "username": "Alice"}));
    assert_eq!(m["offset"], 1);
    assert_eq!(ack["data"]["id"], m["id"]);
    assert_eq!(ack["data"]["offset"], 1);
    // Offsets increase without gaps, whoever sends.
    bob.request(
        "send_message",
        json!({"roomId": "general", "content": "hi", "type": "emote"}),
    )
    .await;
    let m2 = alice.expect("new_message").await;
    assert_eq!(m2["data"]["offset"], 2);
    assert_eq!(m2["data"]["type"], "emote");
}

#[tokio::test]
async fn send_message_validation() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    alice
        .send(json!({"type": "send_message", "data": {"roomId": "general"}, "ref": 9}))
        .await;
    assert_eq!(
        alice.expect_error("Room ID and content are required").await["ref"],
        9
    );
    alice.request("send_message", json!({"content": "x"})).await;
    alice.expect_error("Room ID and content are required").await;
    alice
        .request("send_message", json!({"roomId": "general", "content": ""}))
        .await;
    alice.expect_error("Room ID and content are required").await;
    alice
        .request(
            "send_message",
            json!({"roomId": "elsewhere", "content": "x"}),
        )
        .await;
    alice.expect_error("Not in room").await;
    alice
        .request(
            "send_message",
            json!({"roomId": "general", "content": "x", "metadata": 5}),
        )
        .await;
    let e = alice.expect("error").await;
    assert_eq!(e["data"]["code"], "bad_request");
}

#[tokio::test]
async fn typing_reaches_the_others_only() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    let mut bob = srv.member("bob", "general").await;
    alice.expect("user_joined_room").await;
    bob.request("typing", json!({"roomId": "general", "isTyping": true}))
        .await;
    let t = alice.expect("typing_status").await;
    assert_eq!(t["data"]["user"]["id"], "bob");
    assert_eq!(t["data"]["roomId"], "general");
    assert_eq!(t["data"]["isTyping"], true);
    bob.expect_silence(200).await;
    bob.request("typing", json!({"roomId": "other", "isTyping": true}))
        .await;
    bob.expect_error("Not in room").await;
}

#[tokio::test]
async fn private_messages_reach_all_devices() {
    let srv = TestServer::start().await;
    let mut alice_phone = srv.client("alice").await;
    let mut alice_laptop = srv.client("alice").await;
    let mut bob_a = srv.client("bob").await;
    let mut bob_b = srv.client("bob").await;
    let mut carol = srv.client("carol").await;
    alice_phone
        .send(json!({"type": "send_private_message", "ref": 3,
            "data": {"recipientId": "bob", "content": "psst"}}))
        .await;
    let ack = alice_phone.next_of("ack").await;
    assert_eq!(ack["ref"], 3);
    assert_eq!(ack["data"]["offset"], 1, "a private message is durable");
    for c in [&mut bob_a, &mut bob_b, &mut alice_laptop] {
        let pm = c.next_of("private_message").await;
        assert_eq!(pm["data"]["sender"]["id"], "alice");
        assert_eq!(pm["data"]["recipient"], "bob");
        assert_eq!(pm["data"]["content"], "psst");
        assert_eq!(pm["data"]["type"], "text");
        assert_eq!(pm["data"]["roomId"], "dm:alice:bob");
        assert_eq!(pm["data"]["offset"], 1);
        assert_eq!(pm["data"]["id"], ack["data"]["id"]);
    }
    alice_phone.expect_silence(150).await;
    carol.expect_silence(150).await;
    alice_phone
        .request("send_private_message", json!({"recipientId": "bob"}))
        .await;
    alice_phone
        .expect_error("Recipient ID and content are required")
        .await;
    alice_phone
        .request("send_private_message", json!({"content": "x"}))
        .await;
    alice_phone
        .expect_error("Recipient ID and content are required")
        .await;
}

#[tokio::test]
async fn history_pages_in_ascending_order() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    for i in 1..=10 {
        alice
            .send(json!({"type": "send_message", "ref": i, "data": {"roomId": "general", "content": format!("m{i}")}}))
            .await;
        alice.next_of("ack").await;
    }
    let offsets = |v: &serde_json::Value| -> Vec<u64> {
        v["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect()
    };
    alice.send(json!({"type": "history", "ref": "h", "data": {"roomId": "general", "before": 8, "limit": 3}})).await;
    let h = alice.next_of("history").await;
    assert_eq!(h["ref"], "h");
    assert_eq!(h["data"]["roomId"], "general");
    assert_eq!(offsets(&h), [5, 6, 7]);
    assert_eq!(h["data"]["messages"][0]["content"], "m5");
    alice
        .request(
            "history",
            json!({"roomId": "general", "since": 8, "limit": 5}),
        )
        .await;
    assert_eq!(offsets(&alice.next_of("history").await), [9, 10]);
    alice
        .request("history", json!({"roomId": "general", "limit": 2}))
        .await;
    assert_eq!(offsets(&alice.next_of("history").await), [9, 10]);
    alice
        .request(
            "history",
            json!({"roomId": "general", "since": 0, "limit": 1000}),
        )
        .await;
    assert_eq!(offsets(&alice.next_of("history").await).len(), 10);
    alice.request("history", json!({"roomId": "secret"})).await;
    alice.expect_error("Not in room").await;
    alice
        .request(
            "history",
            json!({"roomId": "general", "since": 2, "before": 6, "limit": 2}),
        )
        .await;
    assert_eq!(offsets(&alice.next_of("history").await), [3, 4]);
}

#[tokio::test]
async fn rtc_signals_relay_only_within_a_shared_room() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "call").await;
    let mut bob = srv.member("bob", "call").await;
    let mut eve = srv.member("eve", "elsewhere").await;
    alice.expect("user_joined_room").await;
    for kind in ["rtc_offer", "rtc_answer", "rtc_ice_candidate"] {
        alice
            .request(
                kind,
                json!({"targetPeerId": bob.client_id, "payload": {"sdp": kind}}),
            )
            .await;
        let got = bob.expect(kind).await;
        assert_eq!(got["data"]["senderPeerId"], alice.client_id.as_str());
        assert_eq!(got["data"]["payload"], json!({"sdp": kind}));
    }
    eve.request(
        "rtc_offer",
        json!({"targetPeerId": bob.client_id, "payload": {}}),
    )
    .await;
    eve.expect_error("Target peer not found").await;
    eve.request(
        "rtc_offer",
        json!({"targetPeerId": "nobody", "payload": {}}),
    )
    .await;
    eve.expect_error("Target peer not found").await;
    bob.expect_silence(150).await;
}

#[tokio::test]
async fn custom_handlers_reply_and_publish() {
    let srv = TestServer::build(
        |b| {
            b.on_message("custom_action", |ctx, data| async move {
                if data["fail"] == true {
                    return Err("custom failure".to_string());
                }
                ctx.reply(
                    "custom_result",
                    &json!({"echo": data, "user": ctx.user().id}),
                );
                if let Some(room) = data["room"].as_str() {
                    ctx.publish(room, "custom_event", &json!({"from": ctx.client_id()}))
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        },
        |_| {},
    )
    .await;
    let mut alice = srv.member("alice", "general").await;
    let mut bob = srv.member("bob", "general").await;
    alice.expect("user_joined_room").await;
    alice
        .send(json!({"type": "custom_action", "ref": "c", "data": {"x": 1, "room": "general"}}))
        .await;
    let reply = alice.expect("custom_result").await;
    assert_eq!(reply["ref"], "c");
    assert_eq!(reply["data"]["echo"]["x"], 1);
    assert_eq!(reply["data"]["user"], "alice");
    assert_eq!(
        bob.expect("custom_event").await["data"]["from"],
        alice.client_id.as_str()
    );
    alice.expect("custom_event").await;
    alice
        .send(json!({"type": "custom_action", "ref": "d", "data": {"fail": true}}))
        .await;
    let e = alice.expect_error("custom failure").await;
    assert_eq!(e["ref"], "d");
    alice
        .send(json!({"type": "custom_action", "data": {"room": "nowhere"}}))
        .await;
    alice.expect("custom_result").await;
    alice.expect_error("Not in room").await;
    alice.send(json!({"type": "no_such_thing", "ref": 5})).await;
    let e = alice
        .expect_error("Unknown message type: no_such_thing")
        .await;
    assert_eq!(e["ref"], 5);
}

#[tokio::test]
async fn invalid_json_is_answered_and_the_connection_stays() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    for bad in [
        "not json",
        "{}",
        "[1,2]",
        r#"{"type": 5}"#,
        r#"{"data": {}}"#,
    ] {
        alice.send_raw(bad).await;
        let e = alice.expect_error("Invalid message format").await;
        assert_eq!(e["data"]["code"], "invalid_format");
    }
    alice.ws_send_binary().await;
    alice.expect_error("Invalid message format").await;
    alice.send(json!({"type": "ping"})).await;
    alice.expect("pong").await;
}

#[tokio::test]
async fn room_ids_are_validated() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    for bad in ["", "has space", "slash/", &"x".repeat(129), "émoji"] {
        alice.request("join_room", json!({"roomId": bad})).await;
        let want = if bad.is_empty() {
            "Room ID is required"
        } else {
            "Invalid room ID"
        };
        alice.expect_error(want).await;
    }
    alice.request("join_room", json!({})).await;
    alice.expect_error("Room ID is required").await;
    let ok = alice.join("team-1.a_b:c@d").await;
    assert_eq!(ok["data"]["roomId"], "team-1.a_b:c@d");
}

#[tokio::test]
async fn personal_rooms_are_private() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    alice
        .send(json!({"type": "join_room", "ref": 1, "data": {"roomId": "user:bob"}}))
        .await;
    assert_eq!(alice.expect_error("Forbidden").await["ref"], 1);
    // One's own personal room is always joined.
    alice
        .request("join_room", json!({"roomId": "user:alice"}))
        .await;
    alice.expect("room_joined").await;
}

#[tokio::test]
async fn nobody_publishes_to_system() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "system").await;
    alice
        .request("send_message", json!({"roomId": "system", "content": "hi"}))
        .await;
    alice.expect_error("Forbidden").await;
}

#[tokio::test]
async fn room_permissions_follow_the_rooms_claim() {
    let srv = TestServer::with(|c| c.auth.room_permissions = true).await;
    let url = srv.url(&token_with("alice", Some(vec!["team-*".into()])));
    let mut alice = Client::connect(&url).await;
    alice.expect("connected").await;
    alice
        .request("join_room", json!({"roomId": "team-red"}))
        .await;
    alice.expect("room_joined").await;
    alice
        .request("join_room", json!({"roomId": "general"}))
        .await;
    alice.expect_error("Forbidden").await;
    alice
        .request("join_room", json!({"roomId": "system"}))
        .await;
    alice.expect("room_joined").await;
    // No claim: no rooms but one's own.
    let mut bob = srv.client("bob").await;
    bob.request("join_room", json!({"roomId": "team-red"}))
        .await;
    bob.expect_error("Forbidden").await;
}

#[tokio::test]
async fn closing_tells_the_rooms() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    let bob = srv.member("bob", "general").await;
    alice.expect("user_joined_room").await;
    drop(bob);
    let gone = alice.expect("user_disconnected").await;
    assert_eq!(gone["data"]["user"]["id"], "bob");
}

#[tokio::test]
async fn rooms_per_connection_are_limited() {
    let srv = TestServer::with(|c| c.ws.max_rooms_per_connection = 2).await;
    let mut alice = srv.client("alice").await;
    alice.join("a").await;
    alice.join("b").await;
    alice
        .request("join_room", json!({"roomId": "c", "exclusive": false}))
        .await;
    alice.expect_error("Too many rooms").await;
}

#[tokio::test]
async fn health_and_ready() {
    let srv = TestServer::start().await;
    let _alice = srv.client("alice").await;
    let health: serde_json::Value = reqwest::get(srv.http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["connections"], 1);
    assert!(health["nodeId"].as_str().unwrap().starts_with("node-"));
    let ready = reqwest::get(srv.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let plain = reqwest::get(srv.http("/ws")).await.unwrap();
    assert_eq!(plain.status(), 400, "a plain GET on /ws is not an upgrade");
}

trait BinarySend {
    async fn ws_send_binary(&mut self);
}

impl BinarySend for Client {
    async fn ws_send_binary(&mut self) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::binary(vec![
                1u8, 2, 3,
            ]))
            .await
            .unwrap();
    }
}
