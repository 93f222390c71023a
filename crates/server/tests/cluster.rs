//! The cluster: nodes of the real binary joined by a real Redis and PostgreSQL, with
//! HAProxy in front. One order per room on every node, recovery across nodes, and
//! faults (a node killed, drained, Redis or PostgreSQL restarted) with an audit that
//! every acknowledged message is there exactly once.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::cluster::{Cluster, Database, SHARED_REDIS};
use common::{Client, admin, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Settings every cluster test runs with: no rate limit (publishers send as fast as
/// they can), a short presence expiry.
const ENV: &[(&str, &str)] = &[
    ("SWITCHBOARD_RATE_LIMIT_PER_SEC", "0"),
    ("SWITCHBOARD_PING_INTERVAL_SECS", "1"),
    ("SWITCHBOARD_PING_TIMEOUT_SECS", "30"),
    ("SWITCHBOARD_PRESENCE_TTL_SECS", "3"),
    ("SWITCHBOARD_PRESENCE_OFFLINE_GRACE_SECS", "0"),
];

/// Connects `user` at `url` and joins `room`.
async fn member(url: &str, room: &str) -> Client {
    let mut c = Client::connect(url).await;
    c.next_of("connected").await;
    c.join(room).await;
    c
}

/// What a publisher was told: (id, offset) of each acknowledged message.
type Acked = Vec<(String, u64)>;

/// Sends `count` messages to `room` as fast as the connection takes them (each with a
/// `clientMessageId`), and collects the acks. Errors (refusals while something is
/// down) are counted, not acked. Stops at the first close.
async fn publish(url: String, user: String, room: String, count: usize) -> (Acked, usize) {
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let join = json!({"type": "join_room", "data": {"roomId": room, "exclusive": false}});
    tx.send(Message::text(join.to_string())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = rx.next().await else {
            panic!("{user}: closed before joining")
        };
        if serde_json::from_str::<Value>(&t).unwrap()["type"] == "room_joined" {
            break;
        }
    }
    let sender = tokio::spawn({
        let (room, user) = (room.clone(), user.clone());
        async move {
            for i in 0..count {
                let frame = json!({"type": "send_message", "ref": i,
                    "data": {"roomId": room, "content": format!("{user}-{i}"),
                             "clientMessageId": format!("{user}-{i}")}});
                if tx.send(Message::text(frame.to_string())).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut acked = Vec::new();
    let mut refused = 0;
    while acked.len() + refused < count {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("ack") => acked.push((
                        v["data"]["id"].as_str().unwrap().to_string(),
                        v["data"]["offset"].as_u64().unwrap(),
                    )),
                    Some("error") if v.get("ref").is_some() => refused += 1,
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    sender.abort();
    (acked, refused)
}

/// Reads `room`'s `new_message`s on `c` until it holds `upto`: (offset, id) in the
/// order they came.
async fn collect(c: &mut Client, upto: u64) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    while seen.last().map(|(o, _)| *o) != Some(upto) {
        let v = c.next_of("new_message").await;
        seen.push((
            v["data"]["offset"].as_u64().unwrap(),
            v["data"]["id"].as_str().unwrap().to_string(),
        ));
    }
    seen
}

/// Reads the room's whole history through the API: offset -> id.
async fn history(base: &str, room: &str, user: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut since = 0;
    loop {
        let url = format!("{base}/api/rooms/{room}/messages?since={since}&limit=100");
        let page: Value = reqwest::Client::new()
            .get(url)
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let msgs = page["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            return out;
        }
        for m in msgs {
            let offset = m["offset"].as_u64().unwrap();
            out.insert(offset, m["id"].as_str().unwrap().to_string());
            since = offset;
        }
    }
}

/// Every acknowledged message is in `history` exactly once, at its offset, and the
/// history's offsets are 1..=n without a gap.
fn audit(acked: &[(String, u64)], history: &BTreeMap<u64, String>) {
    let offsets: Vec<u64> = history.keys().copied().collect();
    let n = offsets.len() as u64;
    assert_eq!(offsets, (1..=n).collect::<Vec<_>>(), "offsets have a gap");
    let ids: HashSet<&String> = history.values().collect();
    assert_eq!(ids.len(), history.len(), "an id is stored twice");
    for (id, offset) in acked {
        assert_eq!(
            history.get(offset),
            Some(id),
            "acked message {id} at {offset} is not in the history"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_publishers_on_three_nodes_give_every_subscriber_one_gapless_order() {
    let db = Database::create();
    let cluster = Cluster::start(3, SHARED_REDIS, &db.url, ENV).await;
    let lb = cluster.balancer().await;
    // Two subscribers on each node, two more through the balancer.
    let mut subs = Vec::new();
    for i in 0..6 {
        let url = cluster.node(i % 3).ws(&token(&format!("sub{i}")));
        subs.push(member(&url, "race").await);
    }
    for i in 6..8 {
        subs.push(member(&lb.ws(&token(&format!("sub{i}"))), "race").await);
    }
    const EACH: usize = 150;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let url = cluster.node(p % 3).ws(&token(&format!("pub{p}")));
            tokio::spawn(publish(url, format!("pub{p}"), "race".into(), EACH))
        })
        .collect();
    let mut acked = Vec::new();
    for p in publishers {
        let (a, refused) = p.await.unwrap();
        assert_eq!(refused, 0);
        assert_eq!(a.len(), EACH);
        acked.extend(a);
    }
    let total = (4 * EACH) as u64;
    let ids: HashSet<&String> = acked.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), acked.len());
    for (i, s) in subs.iter_mut().enumerate() {
        let seen = collect(s, total).await;
        let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (1..=total).collect::<Vec<_>>(),
            "subscriber {i} saw another order"
        );
    }
    audit(&acked, &history(&cluster.node(1).http(""), "race", "sub0").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_on_different_nodes_reach_each_other() {
    let db = Database::create();
    let cluster = Cluster::start(2, SHARED_REDIS, &db.url, ENV).await;
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let mut alice = member(&n1.ws(&token("alice")), "lobby").await;
    let mut bob = member(&n2.ws(&token("bob")), "lobby").await;
    alice.next_of("user_joined_room").await;
    // Presence is the cluster's: each sees the other in the room.
    bob.request("room_members", json!({"roomId": "lobby"})).await;
    let members = bob.next_of("room_members").await;
    let ids: HashSet<&str> = members["data"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains("alice") && ids.contains("bob"), "{members}");
    // Typing and a room message cross.
    bob.request("typing", json!({"roomId": "lobby", "isTyping": true}))
        .await;
    assert_eq!(alice.next_of("typing_status").await["data"]["user"]["id"], "bob");
    alice
        .request("send_message", json!({"roomId": "lobby", "content": "hi bob"}))
        .await;
    assert_eq!(bob.next_of("new_message").await["data"]["content"], "hi bob");
    // A private message to a user on the other node.
    alice
        .send(json!({"type": "send_private_message", "ref": 1,
                     "data": {"recipientId": "bob", "content": "psst"}}))
        .await;
    assert_eq!(bob.next_of("private_message").await["data"]["content"], "psst");
    // The server API on node 2 broadcasts to everyone, node 1 included.
    let r = admin()
        .post(n2.http("/admin/broadcast"))
        .json(&json!({"message": "maintenance"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        alice.next_of("system_message").await["data"]["content"],
        "maintenance"
    );
    assert_eq!(bob.next_of("system_message").await["data"]["content"], "maintenance");
    // A user is disconnected wherever it is.
    let r = admin()
        .post(n2.http("/api/users/alice/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(alice.expect_close().await.0, 1000);
}
