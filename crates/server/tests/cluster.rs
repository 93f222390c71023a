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
/// they can), a short presence expiry (a ping period of 1 s keeps entries alive).
const ENV: &[(&str, &str)] = &[
    ("SWITCHBOARD_RATE_LIMIT_PER_SEC", "0"),
    ("SWITCHBOARD_PING_INTERVAL_SECS", "1"),
    ("SWITCHBOARD_PING_TIMEOUT_SECS", "30"),
    ("SWITCHBOARD_PRESENCE_TTL_SECS", "5"),
    ("SWITCHBOARD_PRESENCE_OFFLINE_GRACE_SECS", "0"),
    ("SWITCHBOARD_STATS_INTERVAL_SECS", "1"),
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
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
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
        let page = get_as(url, user).await;
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

/// GETs `url` as `user` (a bearer token) and returns the JSON body.
async fn get_as(url: String, user: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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
    audit(
        &acked,
        &history(&cluster.node(1).http(""), "race", "sub0").await,
    );
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
    bob.request("room_members", json!({"roomId": "lobby"}))
        .await;
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
    assert_eq!(
        alice.next_of("typing_status").await["data"]["user"]["id"],
        "bob"
    );
    alice
        .request(
            "send_message",
            json!({"roomId": "lobby", "content": "hi bob"}),
        )
        .await;
    assert_eq!(
        bob.next_of("new_message").await["data"]["content"],
        "hi bob"
    );
    // A private message to a user on the other node.
    alice
        .send(json!({"type": "send_private_message", "ref": 1,
                     "data": {"recipientId": "bob", "content": "psst"}}))
        .await;
    assert_eq!(
        bob.next_of("private_message").await["data"]["content"],
        "psst"
    );
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
    assert_eq!(
        bob.next_of("system_message").await["data"]["content"],
        "maintenance"
    );
    // Stats per node and for the cluster, from either node.
    let stats_url = n1.http("/admin/stats");
    common::eventually("both nodes report their connection", || {
        let url = stats_url.clone();
        async move {
            let stats: Value = admin().get(url).send().await.unwrap().json().await.unwrap();
            stats["totalClients"] == 1
                && stats["cluster"]["totalClients"] == 2
                && stats["cluster"]["nodes"].as_array().map(Vec::len) == Some(2)
        }
    })
    .await;
    // A user is disconnected wherever it is.
    let r = admin()
        .post(n2.http("/api/users/alice/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(alice.expect_close().await.0, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_native_client_recovers_by_offset_on_another_node() {
    let db = Database::create();
    let cluster = Cluster::start(2, SHARED_REDIS, &db.url, ENV).await;
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let mut alice = Client::connect(&n1.ws(&token("alice"))).await;
    alice.next_of("connected").await;
    let joined = alice.join("recov").await;
    let epoch = joined["data"]["epoch"].as_str().unwrap().to_string();
    let mut bob = member(&n2.ws(&token("bob")), "recov").await;
    bob.request("send_message", json!({"roomId": "recov", "content": "m1"}))
        .await;
    let seen = alice.next_of("new_message").await["data"]["offset"]
        .as_u64()
        .unwrap();
    drop(alice);
    for i in 2..=6 {
        bob.request(
            "send_message",
            json!({"roomId": "recov", "content": format!("m{i}")}),
        )
        .await;
    }
    for _ in 2..=6 {
        bob.next_of("new_message").await;
    }
    // Back through the other node, from the offset it saw.
    let mut alice = Client::connect(&n2.ws(&token("alice"))).await;
    alice.next_of("connected").await;
    alice
        .request(
            "join_room",
            json!({"roomId": "recov", "since": seen, "epoch": epoch, "exclusive": false}),
        )
        .await;
    let joined = alice.next_of("room_joined").await;
    assert_eq!(joined["data"]["recovered"], true, "{joined}");
    let mut got = Vec::new();
    for _ in 2..=6 {
        got.push(alice.next_of("new_message").await["data"]["content"].clone());
    }
    assert_eq!(got, ["m2", "m3", "m4", "m5", "m6"]);
    alice.expect_silence(300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sse_stream_resumes_on_another_node_with_last_event_id() {
    let db = Database::create();
    let cluster = Cluster::start(2, SHARED_REDIS, &db.url, ENV).await;
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let url = |n: &common::cluster::Node| {
        n.http(&format!("/events?channels=feed&token={}", token("reader")))
    };
    let mut sse = common::SseClient::open_url(&url(n1), None).await;
    sse.next_of("connected").await;
    let mut bob = member(&n2.ws(&token("bob")), "feed").await;
    bob.request("send_message", json!({"roomId": "feed", "content": "e1"}))
        .await;
    let first = sse.next_of("new_message").await;
    let last_id = first.id.clone().expect("durable events have an id");
    drop(sse);
    for i in 2..=4 {
        bob.request(
            "send_message",
            json!({"roomId": "feed", "content": format!("e{i}")}),
        )
        .await;
        bob.next_of("new_message").await;
    }
    let mut sse = common::SseClient::open_url(&url(n2), Some(&last_id)).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = sse.next().await;
        if e.event == "new_message" {
            got.push(e.data["content"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, ["e2", "e3", "e4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socketio_client_recovers_its_state_on_another_node_after_a_drain() {
    let db = Database::create();
    let mut cluster = Cluster::start(2, SHARED_REDIS, &db.url, ENV).await;
    let lb = cluster.balancer().await;
    let mut sio = common::sio::Sio::start().await;
    // WebSocket only: no stickiness needed at the balancer.
    let opts = json!({"transports": ["websocket"], "reconnectionDelay": 300,
        "reconnectionDelayMax": 300, "randomizationFactor": 0});
    let hello = sio.open("a", lb.addr, &token("alice"), opts).await;
    let sid = hello["sid"].clone();
    sio.call("a", "join_room", json!({"roomId": "roll"})).await;
    // Which node holds it: the one whose /health counts a connection.
    let mut holder = None;
    for (i, n) in cluster.nodes.iter().enumerate() {
        let h: Value = reqwest::get(n.http("/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if h["connections"].as_u64() == Some(1) {
            holder = Some(i);
        }
    }
    let holder = holder.expect("one node holds the socket");
    let other = 1 - holder;
    let mut bob = member(&cluster.node(other).ws(&token("bob")), "roll").await;
    bob.request("send_message", json!({"roomId": "roll", "content": "r1"}))
        .await;
    assert_eq!(sio.event("a", "new_message").await[0]["content"], "r1");
    // A rolling restart of the node that holds it.
    cluster.nodes[holder].signal("-TERM");
    sio.record("a", "disconnect").await;
    for c in ["r2", "r3"] {
        bob.request("send_message", json!({"roomId": "roll", "content": c}))
            .await;
    }
    bob.request(
        "send_private_message",
        json!({"recipientId": "alice", "content": "psst"}),
    )
    .await;
    let again = sio.record("a", "connect").await;
    assert_eq!(again["recovered"], true, "{again}");
    assert_eq!(again["sid"], sid);
    let mut got = Vec::new();
    while got.len() < 3 {
        let rec = sio
            .first(|r| {
                r["id"] == "a" && (r["event"] == "new_message" || r["event"] == "private_message")
            })
            .await;
        got.push(rec["args"][0]["content"].as_str().unwrap().to_string());
    }
    assert_eq!(
        got.iter()
            .filter(|c| c.starts_with('r'))
            .collect::<Vec<_>>(),
        ["r2", "r3"]
    );
    assert!(got.contains(&"psst".to_string()), "{got:?}");
    assert!(cluster.nodes[holder].wait_exit().await.unwrap().success());
}

/// A publisher that keeps going through faults: each message is sent with its
/// `clientMessageId` until acknowledged (after an error it is sent again; after a
/// close the publisher reconnects through the balancer, rejoins and sends it again),
/// so that every message is acknowledged once and stored once.
async fn resilient_publisher(lb: String, user: String, room: String, count: usize) -> Acked {
    let mut acked = Vec::new();
    let mut conn: Option<Client> = None;
    let mut i = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while i < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} stuck at {i}"
        );
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                match try_member(&format!("{lb}{}", token(&user)), &room).await {
                    Some(c) => conn = Some(c),
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                continue;
            }
        };
        let frame = json!({"type": "send_message", "ref": i,
            "data": {"roomId": room, "content": format!("{user}-{i}"),
                     "clientMessageId": format!("{user}-{i}")}});
        if c.ws.send(Message::text(frame.to_string())).await.is_err() {
            conn = None;
            continue;
        }
        match answer(c, i).await {
            Some(Ok((id, offset))) => {
                acked.push((id, offset));
                i += 1;
            }
            // Refused (something is down): the same message again, a moment later.
            Some(Err(())) => tokio::time::sleep(Duration::from_millis(50)).await,
            None => conn = None,
        }
    }
    acked
}

/// Connects and joins, or None if the connection or the join fails.
async fn try_member(url: &str, room: &str) -> Option<Client> {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    let mut c = Client {
        ws,
        client_id: String::new(),
    };
    let join = json!({"type": "join_room", "data": {"roomId": room, "exclusive": false}});
    c.ws.send(Message::text(join.to_string())).await.ok()?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).ok()?;
            match v["type"].as_str() {
                Some("room_joined") => return Some(c),
                Some("error") => return None,
                _ => {}
            }
        }
    }
}

/// The ack (id, offset) or error answering `ref`, or None if the connection ended.
async fn answer(c: &mut Client, r: usize) -> Option<Result<(String, u64), ()>> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), c.ws.next())
            .await
            .ok()??
            .ok()?;
        let Message::Text(t) = msg else {
            if let Message::Close(_) = msg {
                return None;
            }
            continue;
        };
        let v: Value = serde_json::from_str(&t).ok()?;
        if v["ref"] != r {
            continue;
        }
        return Some(match v["type"].as_str() {
            Some("ack") => Ok((
                v["data"]["id"].as_str()?.to_string(),
                v["data"]["offset"].as_u64()?,
            )),
            _ => Err(()),
        });
    }
}

/// A subscriber that stays on one node: every offset of the room once, in order.
async fn watch(mut c: Client, mut upto: tokio::sync::watch::Receiver<u64>) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let target = *upto.borrow_and_update();
        if target > 0 && seen.last() == Some(&target) {
            return seen;
        }
        tokio::select! {
            _ = upto.changed() => {}
            v = c.next_of("new_message") => seen.push(v["data"]["offset"].as_u64().unwrap()),
        }
    }
}

/// What goes wrong in the middle of the load.
enum Fault {
    KillNode,
    DrainNode,
    RestartRedis,
    RestartPostgres,
}

/// Three nodes behind HAProxy, three publishers through it and a subscriber on node 1
/// (never the one hurt); the fault strikes once a third of the messages are acked.
/// Afterwards: every acked message is stored once at its offset, the offsets have no
/// gap, and the subscriber saw each offset once, in order.
async fn survive(fault: Fault) {
    let mut redis = common::cluster::PrivateRedis::start().await;
    let pg = match fault {
        Fault::RestartPostgres => Some(common::cluster::PrivatePostgres::start().await),
        _ => None,
    };
    let db = match &pg {
        Some(pg) => Database::create_on(&pg.server()),
        None => Database::create(),
    };
    let mut cluster = Cluster::start(3, &redis.url(), &db.url, ENV).await;
    let lb = cluster.balancer().await;
    let sub = member(&cluster.node(0).ws(&token("watcher")), "load").await;
    let (upto_tx, upto) = tokio::sync::watch::channel(0u64);
    let watcher = tokio::spawn(watch(sub, upto));
    const EACH: usize = 120;
    let base = format!("ws://{}/ws?token=", lb.addr);
    let publishers: Vec<_> = (0..3)
        .map(|p| {
            tokio::spawn(resilient_publisher(
                base.clone(),
                format!("pub{p}"),
                "load".into(),
                EACH,
            ))
        })
        .collect();
    // Strike once a third is stored.
    let count = || db.sql("SELECT COALESCE(MAX(head), 0) FROM rooms WHERE room = 'load'");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count().parse::<u64>().unwrap_or(0) < (EACH as u64) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress before the fault"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match fault {
        Fault::KillNode => cluster.nodes[2].signal("-KILL"),
        Fault::DrainNode => {
            cluster.nodes[2].signal("-TERM");
            let status = cluster.nodes[2].wait_exit().await.unwrap();
            assert!(status.success(), "a drain exits 0: {status:?}");
        }
        Fault::RestartRedis => {
            redis.down();
            cluster.node(0).wait_ready(503).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            redis.up().await;
            cluster.node(0).wait_ready(200).await;
        }
        Fault::RestartPostgres => {
            let pg = pg.as_ref().unwrap();
            pg.down();
            cluster.node(0).wait_ready(503).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            pg.up().await;
            cluster.node(0).wait_ready(200).await;
        }
    }
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    assert_eq!(acked.len(), 3 * EACH, "every message was acknowledged");
    let history = history(&cluster.node(0).http(""), "load", "watcher").await;
    audit(&acked, &history);
    // Retried sends were stored once: one message per clientMessageId.
    assert_eq!(
        history.len(),
        3 * EACH,
        "a retried message was stored twice"
    );
    let last = *history.keys().last().unwrap();
    upto_tx.send(last).unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("the subscriber catches up")
        .unwrap();
    assert_eq!(
        seen,
        (1..=last).collect::<Vec<_>>(),
        "the subscriber's order"
    );
    drop(lb);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_load_loses_no_acknowledged_message() {
    survive(Fault::KillNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_drained_under_load_loses_no_acknowledged_message() {
    survive(Fault::DrainNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_under_load_loses_no_acknowledged_message() {
    survive(Fault::RestartRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_loses_no_acknowledged_message() {
    survive(Fault::RestartPostgres).await;
}

/// PUTs `user`'s contact list through `base`.
async fn set_contacts(base: &str, user: &str, contacts: &[&str]) {
    let r = admin()
        .put(format!("{base}/api/users/{user}/contacts"))
        .json(&json!({ "contacts": contacts }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_on_two_nodes_stays_online_when_one_dies_and_goes_offline_when_both_are_gone() {
    let db = Database::create();
    let mut cluster = Cluster::start(3, SHARED_REDIS, &db.url, ENV).await;
    set_contacts(&cluster.node(0).http(""), "alice", &["bob"]).await;
    // Bob watches from node 1; Alice has a device on node 2 and one on node 3.
    let mut bob = Client::connect(&cluster.node(0).ws(&token("bob"))).await;
    bob.next_of("connected").await;
    let mut phone = Client::connect(&cluster.node(1).ws(&token("alice"))).await;
    phone.next_of("connected").await;
    let online = bob.next_of("friend_status_update").await;
    assert_eq!(online["data"]["status"], "online");
    let mut laptop = Client::connect(&cluster.node(2).ws(&token("alice"))).await;
    laptop.next_of("connected").await;
    phone.next_of("device_connected").await;
    // Node 3 dies: Alice is still online through her phone.
    cluster.nodes[2].signal("-KILL");
    cluster.nodes[2].wait_exit().await;
    drop(laptop);
    let status = |c: &Cluster| get_as(c.node(0).http("/api/users/alice"), "bob");
    // Past the presence expiry (5 s) and a reap or two, she is still online, and Bob
    // heard nothing.
    bob.expect_silence(7000).await;
    let seen = status(&cluster).await;
    assert_eq!(seen["status"], "online", "{seen}");
    // Node 2 dies too: within the expiry and a sweep, Bob hears she is offline.
    cluster.nodes[1].signal("-KILL");
    cluster.nodes[1].wait_exit().await;
    drop(phone);
    let offline =
        tokio::time::timeout(Duration::from_secs(20), bob.next_of("friend_status_update"))
            .await
            .expect("the offline news comes within the expiry");
    assert_eq!(offline["data"]["userId"], "alice");
    assert_eq!(offline["data"]["status"], "offline");
    let seen = status(&cluster).await;
    assert_eq!(seen["status"], "offline", "{seen}");
}

/// What a node that committed a message publishes for it (the broker's wire: a JSON
/// head line, then the payload).
async fn publish_raw(prefix: &str, room: &str, offset: u64, epoch: &str, data: &Value) {
    let client = redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let head = json!({"k": "new_message", "o": offset, "e": epoch, "h": room});
    let payload = format!("{head}\n{data}");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}r:{room}"))
        .arg(payload)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_lost_or_crossed_between_nodes_is_put_back_in_order_from_the_store() {
    let db = Database::create();
    let cluster = Cluster::start(2, SHARED_REDIS, &db.url, ENV).await;
    let mut subs = Vec::new();
    let mut epoch = String::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mut c = Client::connect(&n.ws(&token(&format!("sub{i}")))).await;
        c.next_of("connected").await;
        epoch = c.join("cross").await["data"]["epoch"]
            .as_str()
            .unwrap()
            .to_string();
        subs.push(c);
    }
    subs[0]
        .request("send_message", json!({"roomId": "cross", "content": "m1"}))
        .await;
    let mut template = Value::Null;
    for s in &mut subs {
        template = s.next_of("new_message").await["data"].clone();
    }
    // Another node committed offsets 2 and 3 (the store's rows and head move in one
    // transaction), then published only 3: as if it crashed before publishing 2, or
    // its publish of 2 were still on the way.
    let message = |offset: u64| {
        let mut m = template.clone();
        m["id"] = json!(format!("x{offset}"));
        m["offset"] = json!(offset);
        m["content"] = json!(format!("m{offset}"));
        m
    };
    let mut sql = String::from("BEGIN;");
    for offset in [2u64, 3] {
        let data = message(offset).to_string().replace('\'', "''");
        sql.push_str(&format!(
            "INSERT INTO messages (room, seq, size, id, ts, data) VALUES \
             ('cross', {offset}, {}, 'x{offset}', 0, '{data}');",
            data.len()
        ));
    }
    sql.push_str("UPDATE rooms SET head = 3 WHERE room = 'cross'; COMMIT;");
    db.sql(&sql);
    publish_raw(&cluster.prefix, "cross", 3, &epoch, &message(3)).await;
    for s in &mut subs {
        let got: Vec<Value> = vec![
            s.next_of("new_message").await["data"]["content"].clone(),
            s.next_of("new_message").await["data"]["content"].clone(),
        ];
        assert_eq!(got, ["m2", "m3"], "2 filled from the store, before 3");
    }
    // The late publish of 2 is not delivered twice; what follows is in order.
    publish_raw(&cluster.prefix, "cross", 2, &epoch, &message(2)).await;
    subs[1]
        .request("send_message", json!({"roomId": "cross", "content": "m4"}))
        .await;
    for s in &mut subs {
        let next = s.next_of("new_message").await;
        assert_eq!(next["data"]["content"], "m4", "{next}");
        assert_eq!(next["data"]["offset"], 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_uploaded_on_one_node_is_downloaded_from_another() {
    let db = Database::create();
    let cluster = Cluster::start(2, SHARED_REDIS, &db.url, ENV).await;
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    // Not an image: text, larger than a storage chunk (256 KiB), so it spans several.
    let bytes: Vec<u8> = (0..700_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let http = reqwest::Client::new();
    let file: Value = http
        .post(n1.http("/api/files"))
        .bearer_auth(token("alice"))
        .header("content-type", "text/plain")
        .header("x-file-name", "notes.txt")
        .body(bytes.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = file["id"].as_str().expect("uploaded").to_string();
    let mut alice = member(&n1.ws(&token("alice")), "share").await;
    let mut bob = member(&n2.ws(&token("bob")), "share").await;
    alice
        .send(json!({"type": "share_file", "data": {"roomId": "share", "fileId": id}, "ref": 1}))
        .await;
    alice.next_of("ack").await;
    let shared = bob.next_of("new_message").await;
    // Bob, a member on node 2, downloads it there: whole, and by a range.
    let got = http
        .get(n2.http(&format!("/api/files/{id}")))
        .bearer_auth(token("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let part = http
        .get(n2.http(&format!("/api/files/{id}")))
        .bearer_auth(token("bob"))
        .header("range", "bytes=262140-262150")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().await.unwrap().as_ref(),
        &bytes[262_140..=262_150]
    );
    // The signed link node 1 made works on node 2.
    let url = shared["data"]["content"]["url"].as_str().unwrap();
    let link = http.get(n2.http(url)).send().await.unwrap();
    assert_eq!(link.status(), 200);
    assert_eq!(link.bytes().await.unwrap().len(), bytes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rtc_signals_and_offline_notifications_cross_nodes() {
    let db = Database::create();
    let cluster = Cluster::start(2, SHARED_REDIS, &db.url, ENV).await;
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let mut alice = Client::connect(&n1.ws(&token("alice"))).await;
    let hello = alice.next_of("connected").await;
    alice.client_id = hello["data"]["clientId"].as_str().unwrap().to_string();
    alice.join("call").await;
    let mut bob = Client::connect(&n2.ws(&token("bob"))).await;
    let hello = bob.next_of("connected").await;
    bob.client_id = hello["data"]["clientId"].as_str().unwrap().to_string();
    bob.join("call").await;
    // A signal to a peer on the other node, through the room they share.
    alice
        .request(
            "rtc_offer",
            json!({"targetPeerId": bob.client_id, "payload": {"sdp": "v=0"}}),
        )
        .await;
    let offer = bob.next_of("rtc_offer").await;
    assert_eq!(offer["data"]["senderPeerId"], alice.client_id.as_str());
    assert_eq!(offer["data"]["payload"]["sdp"], "v=0");
    // Nobody else gets it, and a peer in no shared room is not found.
    let mut carol = member(&n2.ws(&token("carol")), "elsewhere").await;
    carol
        .request(
            "rtc_offer",
            json!({"targetPeerId": alice.client_id, "payload": {}}),
        )
        .await;
    carol.expect_error("Target peer not found").await;
    // Bob leaves (a member still); what Alice says meanwhile waits in his inbox, and
    // reaches him when he comes back on the other node.
    drop(bob);
    common::eventually("bob is offline", || async {
        get_as(n1.http("/api/users/bob"), "alice").await["status"] == "offline"
    })
    .await;
    alice
        .send(json!({"type": "send_message", "ref": 1,
                     "data": {"roomId": "call", "content": "call me"}}))
        .await;
    alice.next_of("ack").await;
    // The entry is opened beside the publish: wait until it is there (the HTTP inbox
    // is no device), then Bob comes back.
    common::eventually("bob's entry is opened", || async {
        let inbox = get_as(n2.http("/api/notifications"), "bob").await;
        inbox["notifications"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let mut bob = Client::connect(&n1.ws(&token("bob"))).await;
    let n = bob.next_of("notification").await;
    assert_eq!(n["data"]["roomId"], "call");
    assert_eq!(n["data"]["message"], "call me");
}
