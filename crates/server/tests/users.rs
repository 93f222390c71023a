//! The user layer through a real server: devices, presence across them with the offline
//! grace, statuses (invisible included), contacts, profiles and who may see them,
//! durable memberships and read markers.

mod common;

use common::*;
use serde_json::{Value, json};

/// A server whose users go offline `grace` seconds after their last device.
async fn server(grace: u64) -> TestServer {
    TestServer::with(|c| c.presence.offline_grace_secs = grace).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_other_devices_hear_it_connect_and_disconnect() {
    let srv = server(5).await;
    let mut phone = srv.client("alice").await;
    let mut laptop = srv.client("alice").await;
    let hello = phone.expect("device_connected").await;
    assert_eq!(hello["data"]["clientId"], laptop.client_id.as_str());
    assert_eq!(hello["data"]["socketId"], laptop.client_id.as_str());
    assert_eq!(hello["data"]["transport"], "websocket");
    assert!(hello["data"]["timestamp"].as_u64().unwrap() > 0);
    // Another user's devices hear nothing; a device does not hear itself.
    let mut bob = srv.client("bob").await;
    laptop.expect_silence(150).await;
    bob.ws.close(None).await.unwrap();
    laptop.ws.close(None).await.unwrap();
    let bye = phone.expect("device_disconnected").await;
    assert_eq!(bye["data"]["clientId"], laptop.client_id.as_str());
    assert_eq!(bye["data"]["transport"], "websocket");
    phone.expect_silence(150).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_hear_a_user_come_online_and_go_offline_after_the_grace() {
    let srv = server(1).await;
    assert_eq!(srv.set_contacts("alice", &["bob"]).await, 200);
    let mut bob = srv.client("bob").await;
    let mut phone = srv.client("alice").await;
    let online = bob.expect("friend_status_update").await;
    assert_eq!(online["data"]["userId"], "alice");
    assert_eq!(online["data"]["status"], "online");
    // A second device is no news to the contacts.
    let mut laptop = srv.client("alice").await;
    phone.expect("device_connected").await;
    bob.expect_silence(200).await;
    let before = switchboard_protocol::now_millis();
    phone.ws.close(None).await.unwrap();
    laptop.ws.close(None).await.unwrap();
    // Offline only once the grace is over, with the time the last device left.
    bob.expect_silence(700).await;
    let offline = bob.expect("friend_status_update").await;
    assert_eq!(offline["data"]["userId"], "alice");
    assert_eq!(offline["data"]["status"], "offline");
    let last_seen = offline["data"]["lastSeen"].as_u64().unwrap();
    assert!(last_seen >= before, "{offline}");
    // Bob lists nobody: Alice hears nothing of him. The profile keeps the time.
    let (status, profile) = srv.get_as("alice", "/api/users/alice").await;
    assert_eq!(status, 200);
    assert_eq!(profile["status"], "offline");
    assert_eq!(profile["lastSeen"], last_seen);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_back_within_the_grace_causes_no_flap() {
    let srv = server(2).await;
    assert_eq!(srv.set_contacts("alice", &["bob"]).await, 200);
    let mut bob = srv.client("bob").await;
    let mut alice = srv.client("alice").await;
    bob.expect("friend_status_update").await;
    alice.ws.close(None).await.unwrap();
    let alice = srv.client("alice").await;
    // Past the first grace: neither offline nor online again.
    bob.expect_silence(2500).await;
    drop(alice);
    let offline = bob.expect("friend_status_update").await;
    assert_eq!(offline["data"]["status"], "offline");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_reach_contacts_and_every_device_and_invisible_looks_offline() {
    let srv = server(0).await;
    assert_eq!(srv.set_contacts("alice", &["bob"]).await, 200);
    let mut bob = srv.client("bob").await;
    let mut phone = srv.client("alice").await;
    bob.expect("friend_status_update").await;
    let mut laptop = srv.client("alice").await;
    phone.expect("device_connected").await;

    phone
        .send(json!({"type": "update_status", "data": {"status": "busy"}, "ref": 4}))
        .await;
    let mine = phone.expect("status_updated").await;
    assert_eq!(mine["data"]["status"], "busy");
    assert_eq!(mine["ref"], 4);
    assert_eq!(
        laptop.expect("status_updated").await["data"]["status"],
        "busy"
    );
    let seen = bob.expect("friend_status_update").await;
    assert_eq!(seen["data"]["userId"], "alice");
    assert_eq!(seen["data"]["status"], "busy");

    // Invisible: offline to the others while connected, and its comings and goings
    // are not news.
    phone
        .request("update_status", json!({"status": "offline"}))
        .await;
    phone.expect("status_updated").await;
    laptop.expect("status_updated").await;
    assert_eq!(
        bob.expect("friend_status_update").await["data"]["status"],
        "offline"
    );
    let (_, profile) = srv.get_as("bob", "/api/users/alice").await;
    assert_eq!(profile["status"], "offline");
    // Nor does a lastSeen that keeps moving give it away.
    assert!(profile["lastSeen"].is_null(), "{profile}");
    let (_, contacts) = srv.get_as("alice", "/api/users/me/contacts").await;
    assert_eq!(contacts["contacts"][0]["id"], "bob");
    assert_eq!(contacts["contacts"][0]["status"], "online");
    drop(laptop);
    phone.expect("device_disconnected").await;
    drop(phone);
    let _back = srv.client("alice").await;
    bob.expect_silence(300).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_status_is_refused() {
    let srv = server(5).await;
    let mut alice = srv.client("alice").await;
    for bad in [json!("sleeping"), json!(""), json!(3), json!(null)] {
        alice
            .send(json!({"type": "update_status", "data": {"status": bad}, "ref": "s"}))
            .await;
        let e = alice.expect_error("Invalid status").await;
        assert_eq!(e["ref"], "s");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_lists_are_replaced_checked_and_listed() {
    let srv = TestServer::with(|c| c.presence.max_contacts = 3).await;
    assert_eq!(
        srv.set_contacts("alice", &["bob", "carol", "bob"]).await,
        200
    );
    let _bob = srv.client("bob").await;
    // The profile is stored a moment after the connect.
    eventually("bob's profile is stored", || async {
        let (_, body) = srv.get_as("alice", "/api/users/me/contacts").await;
        body["contacts"][0]["username"] == "Bob"
    })
    .await;
    let (status, body) = srv.get_as("alice", "/api/users/me/contacts").await;
    assert_eq!(status, 200);
    let contacts = body["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 2, "{body}");
    assert_eq!(contacts[0]["id"], "bob");
    assert_eq!(contacts[0]["username"], "Bob");
    assert_eq!(contacts[0]["status"], "online");
    assert_eq!(contacts[1]["id"], "carol");
    assert_eq!(contacts[1]["status"], "offline");

    // Too many, a bad id, no key: refused, the list unchanged.
    assert_eq!(srv.set_contacts("alice", &["a", "b", "c", "d"]).await, 400);
    assert_eq!(srv.set_contacts("alice", &["not an id"]).await, 400);
    let unauthorized = reqwest::Client::new()
        .put(srv.http("/api/users/alice/contacts"))
        .json(&json!({"contacts": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let (_, body) = srv.get_as("alice", "/api/users/me/contacts").await;
    assert_eq!(body["contacts"].as_array().unwrap().len(), 2);

    // The user itself is no contact of its own: dropped from the list.
    assert_eq!(srv.set_contacts("alice", &["alice", "bob"]).await, 200);
    let (_, body) = srv.get_as("alice", "/api/users/me/contacts").await;
    let ids: Vec<&Value> = body["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, [&json!("bob")], "{body}");

    // Emptied.
    assert_eq!(srv.set_contacts("alice", &[]).await, 200);
    let (_, body) = srv.get_as("alice", "/api/users/me/contacts").await;
    assert_eq!(body["contacts"], json!([]));
    let (status, _) = srv.get_as("nobody", "/api/users/me/contacts").await;
    assert_eq!(status, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_is_seen_by_itself_its_contacts_and_room_mates_only() {
    let srv = server(5).await;
    let mut alice = srv.member("alice", "lobby").await;
    let _bob = srv.member("bob", "lobby").await;
    let _carol = srv.client("carol").await;
    let _dave = srv.client("dave").await;
    assert_eq!(srv.set_contacts("alice", &["dave"]).await, 200);
    alice
        .request("update_status", json!({"status": "away"}))
        .await;
    alice.next_of("status_updated").await;

    for (who, seen) in [
        ("alice", true),
        ("bob", true),
        ("dave", true),
        ("carol", false),
    ] {
        let (status, profile) = srv.get_as(who, "/api/users/alice").await;
        if seen {
            assert_eq!(status, 200, "{who}");
            assert_eq!(profile["id"], "alice");
            assert_eq!(profile["username"], "Alice");
            assert_eq!(profile["status"], "away");
        } else {
            // Exactly as for an unknown user.
            assert_eq!(status, 404, "{who}");
            assert_eq!(profile["error"]["code"], "not_found");
        }
    }
    let (status, unknown) = srv.get_as("carol", "/api/users/zed").await;
    assert_eq!(status, 404);
    let (_, hidden) = srv.get_as("carol", "/api/users/alice").await;
    assert_eq!(unknown, hidden);
    // Without a token: 401.
    let anonymous = reqwest::get(srv.http("/api/users/alice")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_token_updates_the_profile() {
    let srv = server(5).await;
    let _first = srv.client("alice").await;
    let cfg = switchboard::config::AuthConfig {
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    };
    let renamed = switchboard::auth::mint(
        &cfg,
        switchboard::auth::TokenRequest {
            sub: "alice",
            username: Some("Alice Liddell"),
            avatar: Some("https://example.com/a.png"),
            rooms: None,
            ttl: std::time::Duration::from_secs(60),
        },
    )
    .unwrap();
    drop(_first);
    eventually("alice is gone", || async {
        srv.hub.presence().devices("alice").await.unwrap() == 0
    })
    .await;
    let mut again = Client::connect(&srv.url(&renamed)).await;
    again.expect("connected").await;
    eventually("the profile is updated", || async {
        let (_, p) = srv.get_as("alice", "/api/users/alice").await;
        p["username"] == "Alice Liddell" && p["avatar"] == "https://example.com/a.png"
    })
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_outlives_connections_until_leave_room() {
    let srv = server(0).await;
    let mut alice = srv.member("alice", "design").await;
    let mut bob = srv.member("bob", "design").await;
    alice.next_of("user_joined_room").await;
    // An exclusive join elsewhere and a closed connection keep the membership.
    bob.request("join_room", json!({"roomId": "other"})).await;
    bob.next_of("room_joined").await;
    alice.next_of("user_left_room").await;
    drop(bob);
    let (_, rooms) = srv.get_as("bob", "/api/users/me/rooms").await;
    let ids: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["roomId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["design", "other"], "{rooms}");

    // Bob is listed as an offline member, with when he was last seen.
    let deadline = tokio::time::Instant::now() + WAIT;
    let offline = loop {
        alice
            .request("room_members", json!({"roomId": "design"}))
            .await;
        let page = alice.next_of("room_members").await;
        let bob = page["data"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "bob")
            .cloned()
            .unwrap_or_default();
        if bob["status"] == "offline" {
            break bob;
        }
        assert!(tokio::time::Instant::now() < deadline, "bob stays online");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(offline["username"], "Bob");
    assert!(offline["lastSeen"].as_u64().is_some(), "{offline}");

    // leave_room ends it, even from a connection not subscribed to the room.
    let mut bob = srv.client("bob").await;
    bob.request("leave_room", json!({"roomId": "design"})).await;
    bob.expect("room_left").await;
    let (_, rooms) = srv.get_as("bob", "/api/users/me/rooms").await;
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1, "{rooms}");
    alice
        .request("room_members", json!({"roomId": "design"}))
        .await;
    let page = alice.next_of("room_members").await;
    let members = page["data"]["members"].as_array().unwrap();
    assert!(members.iter().all(|m| m["id"] != "bob"), "{page}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_markers_are_clamped_never_go_back_and_reach_every_device() {
    let srv = server(5).await;
    let mut phone = srv.member("alice", "news").await;
    let mut laptop = srv.client("alice").await;
    phone.expect("device_connected").await;
    for i in 1..=3 {
        phone
            .send(json!({"type": "send_message", "data": {"roomId": "news", "content": format!("m{i}")}, "ref": i}))
            .await;
        phone.next_of("ack").await;
    }
    let (_, rooms) = srv.get_as("alice", "/api/users/me/rooms").await;
    assert_eq!(
        rooms["rooms"][0],
        json!({"roomId": "news", "lastOffset": 3, "lastReadOffset": 0, "unread": 3})
    );

    // The laptop is not subscribed to the room: membership is enough.
    laptop
        .send(json!({"type": "mark_read", "data": {"roomId": "news", "offset": 2}, "ref": "r"}))
        .await;
    let mine = laptop.expect("read_marker").await;
    assert_eq!(mine["data"], json!({"roomId": "news", "offset": 2}));
    assert_eq!(mine["ref"], "r");
    let other = phone.next_of("read_marker").await;
    assert_eq!(other["data"], json!({"roomId": "news", "offset": 2}));
    assert!(other.get("ref").is_none());

    // Backwards: stays. Beyond the end: clamped.
    laptop
        .request("mark_read", json!({"roomId": "news", "offset": 1}))
        .await;
    assert_eq!(laptop.expect("read_marker").await["data"]["offset"], 2);
    laptop
        .request("mark_read", json!({"roomId": "news", "offset": 99}))
        .await;
    assert_eq!(laptop.expect("read_marker").await["data"]["offset"], 3);
    let (_, rooms) = srv.get_as("alice", "/api/users/me/rooms").await;
    assert_eq!(rooms["rooms"][0]["unread"], 0);
    assert_eq!(rooms["rooms"][0]["lastReadOffset"], 3);

    // Not a member, or no room id: refused.
    laptop
        .request("mark_read", json!({"roomId": "elsewhere", "offset": 1}))
        .await;
    laptop.expect_error("Not in room").await;
    laptop.request("mark_read", json!({"offset": 1})).await;
    laptop.expect_error("Room ID is required").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rooms_come_in_pages() {
    let srv = server(5).await;
    let mut bob = srv.client("bob").await;
    for room in ["c", "a", "b"] {
        bob.join(room).await;
    }
    let (status, page) = srv.get_as("bob", "/api/users/me/rooms?limit=2").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["roomId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(page["nextCursor"], "b");
    let (_, page) = srv
        .get_as("bob", "/api/users/me/rooms?after=b&limit=2")
        .await;
    assert_eq!(page["rooms"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["rooms"][0]["roomId"], "c");
    assert!(page.get("nextCursor").is_none(), "{page}");
    for bad in ["limit=0", "limit=1001", "limit=x"] {
        let (status, _) = srv
            .get_as("bob", &format!("/api/users/me/rooms?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}");
    }
    srv.stop().await;
}
