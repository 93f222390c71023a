//! Socket.IO with the official client (socket.io-client from npm, driven by
//! tests/node/driver.mjs): every transport, acks, errors, and delivery across
//! transports with native WebSocket and SSE clients.

mod common;

use common::sio::Sio;
use common::{TestServer, token};
use serde_json::json;

/// The client's three transport choices: the default (polling, then the upgrade),
/// WebSocket only, polling only.
fn transports() -> [(&'static str, serde_json::Value); 3] {
    [
        ("default", json!({})),
        ("websocket", json!({"transports": ["websocket"]})),
        ("polling", json!({"transports": ["polling"]})),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_every_transport() {
    let server = TestServer::start().await;
    let mut sio = Sio::start().await;
    for (name, opts) in transports() {
        let id = format!("alice-{name}");
        let hello = sio.open(&id, server.addr, &token("alice"), opts).await;
        assert_eq!(hello["event"], "connect", "{name}: {hello}");
        let connected = sio.event(&id, "connected").await;
        assert_eq!(connected[0]["user"]["id"], "alice");
        assert_eq!(connected[0]["socketId"], hello["sid"], "{name}");
        if name == "default" {
            let up = sio.record(&id, "upgrade").await;
            assert_eq!(up["transport"], "websocket");
        }
        let room = format!("room-{name}");
        let joined = sio.call(&id, "join_room", json!({"roomId": room})).await;
        assert_eq!(joined["ok"], true, "{name}: {joined}");
        let ev = sio.event(&id, "room_joined").await;
        assert_eq!(ev[0]["roomId"], room.as_str());
        let members = sio.event(&id, "room_members").await;
        assert_eq!(
            members[0]["members"][0]["id"], "alice",
            "{name}: {members:?}"
        );
        let ack = sio
            .call(
                &id,
                "send_message",
                json!({"roomId": room, "content": "hi"}),
            )
            .await;
        assert_eq!(ack["ok"], true, "{name}: {ack}");
        assert_eq!(ack["offset"], 1);
        let msg = sio.event(&id, "new_message").await;
        assert_eq!(msg[0]["content"], "hi");
        assert_eq!(msg[0]["offset"], 1);
        assert_eq!(msg[0]["id"], ack["id"]);
        // The position rides as the last argument (connection state recovery).
        assert!(msg[1].as_str().unwrap().starts_with("1-"), "{msg:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_shared_with_native_websocket_and_sse() {
    let server = TestServer::start().await;
    let mut sio = Sio::start().await;
    sio.open("a", server.addr, &token("alice"), json!({})).await;
    sio.call("a", "join_room", json!({"roomId": "general"}))
        .await;
    let mut native = server.member("bob", "general").await;
    let sse_url = server.http(&format!(
        "/events?channels=general&token={}",
        token("carol")
    ));
    let mut sse = reqwest::get(&sse_url).await.unwrap();
    assert_eq!(sse.status(), 200);

    // Socket.IO to the others.
    sio.call(
        "a",
        "send_message",
        json!({"roomId": "general", "content": "from sio"}),
    )
    .await;
    let got = native.next_of("new_message").await;
    assert_eq!(got["data"]["content"], "from sio");
    let mut text = String::new();
    while !text.contains("from sio") {
        let chunk = tokio::time::timeout(common::WAIT, sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }

    // Native to Socket.IO, and typing both ways.
    native
        .request(
            "send_message",
            json!({"roomId": "general", "content": "from ws"}),
        )
        .await;
    loop {
        let m = sio.event("a", "new_message").await;
        if m[0]["content"] == "from ws" {
            break;
        }
    }
    sio.emit("a", "typing_start", json!({"roomId": "general"}))
        .await;
    let typing = native.next_of("typing_status").await;
    assert_eq!(typing["data"]["isTyping"], true);
    assert_eq!(typing["data"]["user"]["id"], "alice");
    native
        .request("typing", json!({"roomId": "general", "isTyping": true}))
        .await;
    let t = sio.event("a", "user_typing").await;
    assert_eq!(t[0]["user"]["id"], "bob");

    // The server API reaches Socket.IO sockets too.
    let resp = reqwest::Client::new()
        .post(server.http("/api/rooms/general/publish"))
        .header("X-API-Key", common::API_KEY)
        .json(&json!({"content": "from api"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    loop {
        let m = sio.event("a", "new_message").await;
        if m[0]["content"] == "from api" {
            break;
        }
    }

    // The server API's broadcast and notifications too.
    let api = |path: &str, body: serde_json::Value| {
        reqwest::Client::new()
            .post(server.http(path))
            .header("X-API-Key", common::API_KEY)
            .json(&body)
            .send()
    };
    let resp = api(
        "/admin/broadcast",
        json!({"message": "maintenance", "type": "maintenance"}),
    )
    .await
    .unwrap();
    assert!(resp.status().is_success());
    let m = sio.event("a", "system_message").await;
    assert_eq!(m[0]["content"], "maintenance");
    let resp = api(
        "/notifications",
        json!({"userId": "alice", "message": "ping"}),
    )
    .await
    .unwrap();
    assert!(resp.status().is_success());
    let n = sio.event("a", "notification").await;
    assert_eq!(n[0]["message"], "ping");

    // A socket that goes away leaves its rooms, as the original design tells them.
    sio.send(json!({"op": "disconnect", "id": "a"})).await;
    let left = native.next_of("user_left_room").await;
    assert_eq!(left["data"]["user"]["id"], "alice");
    assert_eq!(left["data"]["roomId"], "general");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_a_connect_error() {
    let server = TestServer::start().await;
    let mut sio = Sio::start().await;
    let rec = sio
        .open(
            "x",
            server.addr,
            "not-a-token",
            json!({"reconnection": false}),
        )
        .await;
    assert_eq!(rec["event"], "connect_error");
    assert_eq!(rec["message"], "Authentication failed");
    let rec = sio
        .open(
            "y",
            server.addr,
            &token("y"),
            json!({"reconnection": false, "transports": ["websocket"]}),
        )
        .await;
    assert_eq!(rec["event"], "connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_get_errors_and_disturb_nobody() {
    let server = TestServer::start().await;
    let mut sio = Sio::start().await;
    sio.open(
        "a",
        server.addr,
        &token("alice"),
        json!({"transports": ["websocket"]}),
    )
    .await;
    sio.open("b", server.addr, &token("bob"), json!({})).await;
    sio.call("b", "join_room", json!({"roomId": "general"}))
        .await;

    // No payload, a payload of the wrong type, a bad room, an unknown file.
    let res = sio.call_with("a", "send_message", json!([])).await;
    assert_eq!(res["ok"], false, "{res}");
    assert!(
        res["error"].as_str().unwrap().contains("no payload"),
        "{res}"
    );
    let res = sio.call("a", "join_room", json!("general")).await;
    assert_eq!(res["ok"], false, "{res}");
    let res = sio
        .call("a", "join_room", json!({"roomId": "bad room!"}))
        .await;
    assert_eq!(res["error"], "Invalid room ID");
    let res = sio
        .call("a", "update_status", json!({"status": "sleepy"}))
        .await;
    assert_eq!(res["error"], "Invalid status");
    let res = sio
        .call(
            "a",
            "send_message",
            json!({"roomId": "nowhere", "content": "x"}),
        )
        .await;
    assert_eq!(res["ok"], false);
    // Without an ack the answer is an `error` event.
    sio.emit("a", "join_room", json!(42)).await;
    let err = sio.event("a", "error").await;
    assert!(
        err[0]["message"].as_str().unwrap().contains("object"),
        "{err:?}"
    );
    // Binary where JSON is expected.
    sio.send(json!({"op": "emit", "id": "a", "event": "send_message",
        "args": [{"roomId": "general", "content": "x"}], "binary": true}))
        .await;
    let err = sio.event("a", "error").await;
    assert!(
        err[0]["message"].as_str().unwrap().contains("binary"),
        "{err:?}"
    );

    // An unknown namespace is refused by the protocol's own answer.
    sio.send(
        json!({"op": "connect", "id": "c", "url": format!("http://{}/nope", server.addr),
        "opts": {"auth": {"token": token("carol")}, "reconnection": false}}),
    )
    .await;
    let rec = sio.record("c", "connect_error").await;
    assert_eq!(rec["message"], "Invalid namespace");

    // Bob was not disturbed.
    let ack = sio
        .call(
            "b",
            "send_message",
            json!({"roomId": "general", "content": "still here"}),
        )
        .await;
    assert_eq!(ack["ok"], true);
    let m = sio.event("b", "new_message").await;
    assert_eq!(m[0]["content"], "still here");
}

/// A socket that drops comes back with its id, its rooms, and every durable event it
/// missed (room messages of two rooms, a private message), once and in order; then
/// live delivery goes on.
async fn recovery_after(server_side: bool) {
    let server = TestServer::start().await;
    let mut sio = Sio::start().await;
    let slow = json!({"reconnectionDelay": 1500, "reconnectionDelayMax": 1500,
        "randomizationFactor": 0});
    let hello = sio.open("a", server.addr, &token("alice"), slow).await;
    let sid = hello["sid"].clone();
    for room in ["general", "news"] {
        sio.call("a", "join_room", json!({"roomId": room})).await;
    }
    let mut bob = server.member("bob", "general").await;
    bob.join("news").await;
    bob.request(
        "send_message",
        json!({"roomId": "general", "content": "m1"}),
    )
    .await;
    let m = sio.event("a", "new_message").await;
    assert_eq!(m[0]["content"], "m1");

    if server_side {
        // The server closes the transport (as for a slow consumer).
        server
            .hub
            .disconnect_user("alice", switchboard_protocol::CloseCode::SlowConsumer)
            .await;
    } else {
        sio.send(json!({"op": "drop", "id": "a"})).await;
    }
    sio.record("a", "disconnect").await;
    for (room, content) in [("general", "m2"), ("news", "n1"), ("general", "m3")] {
        bob.request(
            "send_message",
            json!({"roomId": room, "content": content, "ref": content}),
        )
        .await;
    }
    bob.request(
        "send_private_message",
        json!({"recipientId": "alice", "content": "psst"}),
    )
    .await;
    let again = sio.record("a", "connect").await;
    assert_eq!(again["recovered"], true, "{again}");
    assert_eq!(again["sid"], sid, "a recovered socket keeps its id");

    let mut got = Vec::new();
    while got.len() < 4 {
        let rec = sio
            .first(|r| {
                r["id"] == "a" && (r["event"] == "new_message" || r["event"] == "private_message")
            })
            .await;
        got.push(rec["args"][0]["content"].as_str().unwrap().to_string());
    }
    let room_order: Vec<_> = got.iter().filter(|c| c.starts_with('m')).collect();
    assert_eq!(room_order, ["m2", "m3"], "{got:?}");
    assert!(
        got.contains(&"n1".to_string()) && got.contains(&"psst".to_string()),
        "{got:?}"
    );

    // Its rooms are back: live delivery, and nothing twice.
    bob.request("send_message", json!({"roomId": "news", "content": "n2"}))
        .await;
    let m = sio.event("a", "new_message").await;
    assert_eq!(m[0]["content"], "n2");
    sio.silent("a", "new_message", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_network_drop() {
    recovery_after(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_the_server_closed_the_transport() {
    recovery_after(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_recovery_past_the_window() {
    let server = TestServer::with(|c| c.socketio.recovery_window_secs = 1).await;
    let mut sio = Sio::start().await;
    let slow = json!({"reconnectionDelay": 2000, "reconnectionDelayMax": 2000,
        "randomizationFactor": 0});
    let hello = sio.open("a", server.addr, &token("alice"), slow).await;
    sio.call("a", "join_room", json!({"roomId": "general"}))
        .await;
    sio.send(json!({"op": "drop", "id": "a"})).await;
    let again = sio.record("a", "connect").await;
    assert_eq!(again["recovered"], false, "{again}");
    assert_ne!(again["sid"], hello["sid"]);
}

/// Opens socket `id` on the `/webrtc` namespace; returns its sid.
async fn rtc_peer(
    sio: &mut Sio,
    server: &TestServer,
    id: &str,
    user: &str,
    opts: serde_json::Value,
) -> String {
    let mut o = json!({"auth": {"token": token(user)}});
    if let (Some(o), serde_json::Value::Object(extra)) = (o.as_object_mut(), opts) {
        o.extend(extra);
    }
    sio.send(json!({"op": "connect", "id": id, "url": format!("http://{}/webrtc", server.addr), "opts": o}))
        .await;
    let rec = sio.record(id, "connect").await;
    rec["sid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_signaling_namespace() {
    let server = TestServer::start().await;
    let mut sio = Sio::start().await;
    let alice = rtc_peer(&mut sio, &server, "alice", "alice", json!({})).await;
    let bob = rtc_peer(
        &mut sio,
        &server,
        "bob",
        "bob",
        json!({"transports": ["websocket"]}),
    )
    .await;
    rtc_peer(&mut sio, &server, "carol", "carol", json!({})).await;

    let res = sio
        .call("alice", "join_room", json!({"roomId": "call"}))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["peers"], json!([]));
    let peers = sio.event("alice", "room_peers").await;
    assert_eq!(peers[0]["roomId"], "call");
    sio.call("bob", "join_room", json!({"roomId": "call"}))
        .await;
    let peers = sio.event("bob", "room_peers").await;
    assert_eq!(peers[0]["peers"][0]["id"], alice.as_str(), "{peers:?}");
    assert_eq!(peers[0]["peers"][0]["userInfo"]["id"], "alice");
    assert!(peers[0]["peers"][0]["joinedAt"].as_u64().is_some());
    let joined = sio.event("alice", "peer_joined").await;
    assert_eq!(joined[0]["peerId"], bob.as_str());
    assert_eq!(joined[0]["userInfo"]["id"], "bob");

    // Relayed within a shared room, with the sender's peer id.
    let payload = json!({"type": "offer", "sdp": "v=0"});
    sio.emit(
        "bob",
        "rtc_offer",
        json!({"targetPeerId": alice, "payload": payload}),
    )
    .await;
    let offer = sio.event("alice", "rtc_offer").await;
    assert_eq!(offer[0]["senderPeerId"], bob.as_str());
    assert_eq!(offer[0]["payload"], payload);
    sio.emit(
        "alice",
        "rtc_ice_candidate",
        json!({"targetPeerId": bob, "payload": {"candidate": "c"}}),
    )
    .await;
    let ice = sio.event("bob", "rtc_ice_candidate").await;
    assert_eq!(ice[0]["senderPeerId"], alice.as_str());

    // Not in a shared room, or no such peer: refused.
    let res = sio
        .call(
            "carol",
            "rtc_offer",
            json!({"targetPeerId": alice, "payload": {}}),
        )
        .await;
    assert_eq!(res["error"], "Target peer not found", "{res}");
    sio.emit(
        "carol",
        "rtc_answer",
        json!({"targetPeerId": "nobody", "payload": {}}),
    )
    .await;
    let err = sio.event("carol", "error").await;
    assert_eq!(err[0]["message"], "Target peer not found");
    let res = sio
        .call(
            "carol",
            "send_message",
            json!({"roomId": "call", "content": "x"}),
        )
        .await;
    assert_eq!(
        res["ok"], false,
        "chat is not for the signaling namespace: {res}"
    );

    // A wanted peer id is taken if unused.
    let dave = rtc_peer(
        &mut sio,
        &server,
        "dave",
        "dave",
        json!({"query": {"peerId": "dave-phone"}}),
    )
    .await;
    assert_eq!(dave, "dave-phone");
    let dave2 = rtc_peer(
        &mut sio,
        &server,
        "dave2",
        "dave",
        json!({"query": {"peerId": "dave-phone"}}),
    )
    .await;
    assert_ne!(dave2, "dave-phone");

    // Leaving and going away are told to the room.
    sio.call("bob", "leave_room", json!({"roomId": "call"}))
        .await;
    let left = sio.event("alice", "peer_left").await;
    assert_eq!(left[0]["peerId"], bob.as_str());
    sio.call("bob", "join_room", json!({"roomId": "call"}))
        .await;
    sio.event("alice", "peer_joined").await;
    sio.send(json!({"op": "disconnect", "id": "bob"})).await;
    let left = sio.event("alice", "peer_left").await;
    assert_eq!(left[0]["peerId"], bob.as_str());
    // Signaling sockets are not devices of their users.
    assert_eq!(server.hub.presence().devices("alice").await.unwrap(), 0);
}

/// The user layer over Socket.IO, with the names and shapes of the native protocol:
/// devices, statuses to contacts, private messages, read markers, offline
/// notifications, shared files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_layer_over_socketio() {
    let server = TestServer::with(|c| c.presence.offline_grace_secs = 0).await;
    assert_eq!(server.set_contacts("alice", &["bob"]).await, 200);
    let mut sio = Sio::start().await;
    sio.open("bob", server.addr, &token("bob"), json!({})).await;
    sio.open("phone", server.addr, &token("alice"), json!({}))
        .await;
    let online = sio.event("bob", "friend_status_update").await;
    assert_eq!(online[0]["userId"], "alice");
    assert_eq!(online[0]["status"], "online");
    let laptop = sio
        .open(
            "laptop",
            server.addr,
            &token("alice"),
            json!({"transports": ["websocket"]}),
        )
        .await;
    let dev = sio.event("phone", "device_connected").await;
    assert_eq!(dev[0]["socketId"], laptop["sid"]);
    assert_eq!(dev[0]["transport"], "socketio");

    // Status: every own device, and the contacts.
    let res = sio
        .call("laptop", "update_status", json!({"status": "away"}))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(
        sio.event("phone", "status_updated").await[0]["status"],
        "away"
    );
    let st = sio.event("bob", "friend_status_update").await;
    assert_eq!(
        (st[0]["userId"].as_str(), st[0]["status"].as_str()),
        (Some("alice"), Some("away"))
    );

    // A private message: the recipient and the sender's other devices; the ack.
    let ack = sio
        .call(
            "phone",
            "send_private_message",
            json!({"recipientId": "bob", "content": "hi bob"}),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["offset"], 1);
    let pm = sio.event("bob", "private_message").await;
    assert_eq!(pm[0]["content"], "hi bob");
    assert_eq!(pm[0]["roomId"], "dm:alice:bob");
    assert_eq!(
        sio.event("laptop", "private_message").await[0]["content"],
        "hi bob"
    );

    // Read markers reach every device of the reader.
    sio.call(
        "bob",
        "mark_read",
        json!({"roomId": "dm:alice:bob", "offset": 1}),
    )
    .await;
    let marker = sio.event("bob", "read_marker").await;
    assert_eq!(marker[0]["offset"], 1);

    // A file shared in a room.
    sio.call("phone", "join_room", json!({"roomId": "team"}))
        .await;
    let up = reqwest::Client::new()
        .post(server.http("/api/files"))
        .bearer_auth(token("alice"))
        .header("content-type", "text/plain")
        .header("x-file-name", "notes.txt")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 201);
    let file: serde_json::Value = up.json().await.unwrap();
    let ack = sio
        .call(
            "phone",
            "share_file",
            json!({"roomId": "team", "fileId": file["id"]}),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let shared = sio.event("phone", "new_message").await;
    assert_eq!(shared[0]["type"], "file");
    assert_eq!(shared[0]["content"]["name"], "notes.txt");
    let res = sio
        .call(
            "phone",
            "share_file",
            json!({"roomId": "team", "fileId": "nope"}),
        )
        .await;
    assert_eq!(res["error"], "File not found");

    // Offline: bob's contacts hear it; a message for him waits as a notification.
    sio.send(json!({"op": "disconnect", "id": "bob"})).await;
    sio.send(json!({"op": "exit"})).await;
    drop(sio);
    let mut sio = Sio::start().await;
    sio.open("phone", server.addr, &token("alice"), json!({}))
        .await;
    sio.call(
        "phone",
        "send_private_message",
        json!({"recipientId": "bob", "content": "later"}),
    )
    .await;
    common::eventually("bob's notification is stored", || async {
        let (_, body) = server.get_as("bob", "/api/notifications?unread=true").await;
        body["notifications"]
            .as_array()
            .is_some_and(|n| !n.is_empty())
    })
    .await;
    sio.open("bob", server.addr, &token("bob"), json!({})).await;
    let note = sio.event("bob", "notification").await;
    assert_eq!(note[0]["type"], "private_message");
    assert_eq!(note[0]["message"], "later");
}

/// A room of 1,000 Socket.IO sockets (one engine each, over WebSocket) gets one
/// message each, once; the room fills without announcing every arrival to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_a_thousand_sockets() {
    const N: usize = 1000;
    let server = TestServer::with(|c| {
        c.rate_limit.per_sec = 0;
        c.rooms.announce_max_members = 100;
    })
    .await;
    let mut sio = Sio::start().await;
    for i in 0..N {
        sio.send(
            json!({"op": "connect", "id": format!("s{i}"), "url": format!("http://{}", server.addr),
            "opts": {"auth": {"token": token(&format!("u{i}"))}, "transports": ["websocket"]}}),
        )
        .await;
    }
    for i in 0..N {
        sio.record(&format!("s{i}"), "connect").await;
        sio.send(
            json!({"op": "emit", "id": format!("s{i}"), "event": "join_room",
            "args": [{"roomId": "big"}], "ack": format!("j{i}")}),
        )
        .await;
    }
    for i in 0..N {
        let ack = sio.first(|r| r["ack"] == format!("j{i}").as_str()).await;
        assert_eq!(ack["args"][0]["ok"], true);
    }
    let ack = sio
        .call(
            "s0",
            "send_message",
            json!({"roomId": "big", "content": "to all"}),
        )
        .await;
    assert_eq!(ack["ok"], true);
    let mut got = std::collections::HashSet::new();
    while got.len() < N {
        let rec = sio
            .first(|r| r["event"] == "new_message" && r["args"][0]["content"] == "to all")
            .await;
        assert!(
            got.insert(rec["id"].as_str().unwrap().to_string()),
            "twice: {rec}"
        );
    }
    assert_eq!(server.hub.connections(), N as u64);
}

/// Raw Engine.IO over long-polling: a handshake, then the session id.
async fn handshake(http: &reqwest::Client, base: &str) -> String {
    let body = http.get(base).send().await.unwrap().text().await.unwrap();
    let open: serde_json::Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    open["sid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_sessions_are_bounded_and_cleaned_up() {
    let server = TestServer::with(|c| {
        c.socketio.ping_interval_ms = 200;
        c.socketio.ping_timeout_ms = 100;
        c.socketio.max_payload = 10_000;
    })
    .await;
    let http = reqwest::Client::new();
    let base = server.http("/socket.io/?EIO=4&transport=polling");

    // A client that makes the server answer without ever reading is cut off.
    let sid = handshake(&http, &base).await;
    let url = format!("{base}&sid={sid}");
    for _ in 0..3 {
        let pings = vec!["2"; 999].join("\u{1e}");
        http.post(&url).body(pings).send().await.unwrap();
    }
    let res = http.get(&url).send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert!(status == 400 || text.ends_with('1'), "{status} {text}");
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        400,
        "the session is gone"
    );

    // More than maxPayload at once: 413, and the session is closed.
    let sid = handshake(&http, &base).await;
    let url = format!("{base}&sid={sid}");
    let res = http
        .post(&url)
        .body("4".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 400);

    // A malformed packet closes that session only.
    let bad = handshake(&http, &base).await;
    let good = handshake(&http, &base).await;
    let res = http
        .post(format!("{base}&sid={bad}"))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        http.get(format!("{base}&sid={bad}"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    // The other answers its ping and lives on.
    let ping = http
        .get(format!("{base}&sid={good}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ping, "2");
    http.post(format!("{base}&sid={good}"))
        .body("3")
        .send()
        .await
        .unwrap();

    // A session that stops answering pings is dead once its pong is late, for every
    // request, whatever the sweep did: interval (200 ms) + timeout (100 ms).
    let quiet = handshake(&http, &base).await;
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    assert_eq!(
        http.get(format!("{base}&sid={quiet}"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    // `good` stopped answering too: a ping or two more, then it is gone.
    let mut polls = 0;
    while http
        .get(format!("{base}&sid={good}"))
        .send()
        .await
        .unwrap()
        .status()
        == 200
    {
        polls += 1;
        assert!(polls < 5, "a session that does not answer must end");
    }
}

/// The example of docs/socketio.md runs as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_runs() {
    let server = TestServer::start().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let out = tokio::time::timeout(
        common::WAIT,
        tokio::process::Command::new("node")
            .arg(dir.join("example.mjs"))
            .arg(format!("http://{}", server.addr))
            .arg(token("alice"))
            .output(),
    )
    .await
    .expect("the example ends by itself")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hello Alice"), "{text}");
    assert!(text.contains(r#"joined {"ok":true}"#), "{text}");
    assert!(text.contains("Alice: hi (offset 1)"), "{text}");
    assert!(text.contains(r#"ack {"ok":true,"id":"#), "{text}");
}

/// An upgrade that never completes is dropped after the upgrade timeout; the session
/// goes on polling and may probe again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_never_completes_is_dropped() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut settings = switchboard::transport::socketio::Settings::conformance();
    settings.ping_interval = std::time::Duration::from_secs(5);
    settings.ping_timeout = std::time::Duration::from_secs(5);
    settings.upgrade_timeout = std::time::Duration::from_millis(300);
    let (router, _sweeps) = switchboard::transport::socketio::conformance_router_with(settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/engine.io/?EIO=4&transport=polling");
    let sid = handshake(&http, &base).await;
    let probe = |sid: String| async move {
        let url = format!("ws://{addr}/engine.io/?EIO=4&transport=websocket&sid={sid}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(Message::text("2probe")).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        assert_eq!(answer.to_text().unwrap(), "3probe");
        ws
    };
    let mut ws = probe(sid.clone()).await;
    // No upgrade packet: the server drops the probe.
    let end = tokio::time::timeout(common::WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the unfinished upgrade is closed");
    // Still a polling session: it echoes, and it can probe again.
    let url = format!("{base}&sid={sid}");
    http.post(&url).body("4after").send().await.unwrap();
    assert_eq!(
        http.get(&url).send().await.unwrap().text().await.unwrap(),
        "4after"
    );
    let mut ws = probe(sid).await;
    ws.send(Message::text("5")).await.unwrap();
    ws.send(Message::text("4upgraded")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.to_text().unwrap(), "4upgraded");
}

/// Many sockets asking for the same peer id at once: one gets it, the others a
/// generated one, and every one of them is registered and cleaned up on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wanted_peer_id_goes_to_one_socket_only() {
    const N: usize = 20;
    let server = TestServer::start().await;
    let mut sio = Sio::start().await;
    for i in 0..N {
        sio.send(json!({"op": "connect", "id": format!("p{i}"),
            "url": format!("http://{}/webrtc", server.addr),
            "opts": {"auth": {"token": token("dave"), "peerId": "dave-phone"},
                     "transports": ["websocket"]}}))
            .await;
    }
    let mut sids = std::collections::HashSet::new();
    for i in 0..N {
        let rec = sio.record(&format!("p{i}"), "connect").await;
        assert!(
            sids.insert(rec["sid"].as_str().unwrap().to_string()),
            "{rec}"
        );
    }
    assert!(sids.contains("dave-phone"));
    assert_eq!(server.hub.connections(), N as u64);
    for i in 0..N {
        sio.send(json!({"op": "disconnect", "id": format!("p{i}")}))
            .await;
    }
    common::eventually("every socket is gone", || async {
        server.hub.connections() == 0
    })
    .await;
}
