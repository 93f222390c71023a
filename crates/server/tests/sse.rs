//! Server-Sent Events through a real HTTP client: auth, cross-transport delivery,
//! resuming with Last-Event-ID, stats, and a stalled reader cut off.

mod common;

/// An event id without its epochs (`a=3@e,b=1@e` -> `a=3,b=1`), after checking that
/// every position has one.
fn offsets(id: &Option<String>) -> String {
    let id = id.as_deref().expect("an id");
    id.split(',')
        .map(|part| {
            let (position, epoch) = part.split_once('@').expect("positions carry their epoch");
            assert!(!epoch.is_empty(), "{id}");
            position.to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn refusals_are_json_with_the_right_status() {
    let srv = TestServer::with(|c| c.auth.room_permissions = true).await;
    let alice = token_with("alice", Some(vec!["team-*".into()]));
    let get = |q: String| {
        let url = srv.http(&format!("/events?{q}"));
        async move { reqwest::get(url).await.unwrap() }
    };
    let cases = [
        ("channels=general".to_string(), 401),
        ("channels=general&token=bad".to_string(), 401),
        (format!("token={alice}"), 400),
        (format!("channels=&token={alice}"), 400),
        (format!("channels=bad%20room&token={alice}"), 400),
        (format!("channels=team-a,user:bob&token={alice}"), 403),
        (format!("channels=general&token={alice}"), 403),
    ];
    for (q, status) in cases {
        let resp = get(q.clone()).await;
        assert_eq!(resp.status(), status, "{q}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{body}"
        );
    }
    // Header auth and an allowed channel.
    let resp = reqwest::Client::new()
        .get(srv.http("/events?channels=team-a,user:alice,system"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn first_event_and_headers() {
    let srv = TestServer::with(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let mut sse = SseClient::open(&srv, "alice", "general,news,general", None).await;
    let h = &sse.response_headers;
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    let hello = sse.next().await;
    assert_eq!(hello.event, "connected");
    // A listener comes and goes without the room being told.
    let mut watcher = srv.member("watcher", "general").await;
    let mut quiet = SseClient::open(&srv, "carol", "general", None).await;
    quiet.next_of("connected").await;
    drop(quiet);
    watcher.expect_silence(300).await;
    assert_eq!(hello.data["channels"], json!(["general", "news"]));
    assert!(hello.data["clientId"].is_string());
    assert!(hello.data["timestamp"].is_u64());
    assert_eq!(
        offsets(&hello.id),
        "general=0,news=0",
        "the starting position"
    );

    // CORS: the configured origin only, never `*`.
    let url = srv.http(&format!("/events?channels=general&token={}", token("bob")));
    let ok = reqwest::Client::new()
        .get(&url)
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = reqwest::Client::new()
        .get(&url)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn websocket_and_sse_share_rooms_both_ways() {
    let srv = TestServer::start().await;
    let mut sse = SseClient::open(&srv, "watcher", "general", None).await;
    sse.next_of("connected").await;
    let mut alice = srv.member("alice", "general").await;
    alice
        .request(
            "send_message",
            json!({"roomId": "general", "content": "from ws"}),
        )
        .await;
    let e = sse.next_of("new_message").await;
    assert_eq!(e.data["content"], "from ws");
    assert_eq!(e.data["offset"], 1);
    assert_eq!(offsets(&e.id), "general=1");
    alice
        .request("typing", json!({"roomId": "general", "isTyping": true}))
        .await;
    let t = sse.next_of("typing_status").await;
    assert_eq!(t.data["user"]["id"], "alice");
    assert_eq!(t.id, None, "ephemeral events carry no id");

    // What the HTTP API publishes reaches both.
    let resp = admin()
        .post(srv.http("/api/rooms/general/publish"))
        .json(&json!({"content": "from http", "metadata": {"src": "api"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["offset"], 2);
    let ws_msg = alice.next_of("new_message").await;
    assert_eq!(ws_msg["data"]["content"], "from ws");
    let ws_msg = alice.next_of("new_message").await;
    assert_eq!(ws_msg["data"]["content"], "from http");
    assert_eq!(ws_msg["data"]["sender"]["id"], "server");
    let e = sse.next_of("new_message").await;
    assert_eq!(e.data["id"], body["id"]);
    assert_eq!(offsets(&e.id), "general=2");

    admin()
        .post(srv.http("/events/broadcast"))
        .json(&json!({"event": "order.updated", "data": {"n": 1}, "channel": "general"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.next_of("order.updated").await.data, json!({"n": 1}));
    assert_eq!(
        alice.next_of("order.updated").await["data"],
        json!({"n": 1})
    );
}

#[tokio::test]
async fn last_event_id_resumes_every_channel_once_in_order() {
    let srv = TestServer::with(|c| c.rate_limit.per_sec = 0).await;
    let mut alice = srv.member("alice", "a").await;
    alice.join("b").await;
    let send = |room: &'static str, n: usize| json!({"type": "send_message", "data": {"roomId": room, "content": format!("{room}{n}")}});
    for n in 1..=3 {
        alice.send(send("a", n)).await;
        alice.send(send("b", n)).await;
    }
    for _ in 0..6 {
        alice.next_of("new_message").await;
    }
    let mut sse = SseClient::open(&srv, "reader", "a,b", None).await;
    let hello = sse.next_of("connected").await;
    assert_eq!(offsets(&hello.id), "a=3,b=3");
    alice.send(send("a", 4)).await;
    let e = sse.next_of("new_message").await;
    assert_eq!(offsets(&e.id), "a=4,b=3");
    let last_id = e.id.unwrap();
    drop(sse);

    // Missed while away: a5, a6, b4, b5.
    for (room, n) in [("a", 5), ("b", 4), ("a", 6), ("b", 5)] {
        alice.send(send(room, n)).await;
    }
    let mut back = SseClient::open(&srv, "reader", "a,b", Some(&last_id)).await;
    let hello = back.next_of("connected").await;
    assert_eq!(hello.data["recovered"], json!({"a": true, "b": true}));
    let mut got: Vec<(String, String)> = Vec::new();
    while got.len() < 4 {
        let e = back.next_of("new_message").await;
        let content = e.data["content"].as_str().unwrap().to_string();
        got.push((content, e.id.expect("replayed events carry ids")));
    }
    // Per channel in order; each id is the position after that event.
    let a: Vec<_> = got.iter().filter(|(c, _)| c.starts_with('a')).collect();
    let b: Vec<_> = got.iter().filter(|(c, _)| c.starts_with('b')).collect();
    assert_eq!(
        a.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["a5", "a6"]
    );
    assert_eq!(
        b.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["b4", "b5"]
    );
    assert!(a[1].1.starts_with("a=6@"), "{:?}", a[1]);
    assert!(
        offsets(&Some(b[1].1.clone())).ends_with(",b=5"),
        "{:?}",
        b[1]
    );
    // Then live, nothing twice.
    alice.send(send("a", 7)).await;
    let e = back.next_of("new_message").await;
    assert_eq!(e.data["content"], "a7");
    assert_eq!(offsets(&e.id), "a=7,b=5");
}

#[tokio::test]
async fn system_channel_gets_stats_and_pings() {
    let srv = TestServer::with(|c| {
        c.sse.stats_interval_secs = 1;
        c.sse.ping_secs = 1;
    })
    .await;
    let _alice = srv.member("alice", "secret-plans").await;
    let mut sse = SseClient::open(&srv, "ops", "system", None).await;
    let stats = sse.next_of("stats").await;
    assert!(stats.data["totalClients"].as_u64().unwrap() >= 2);
    assert!(stats.data["totalRooms"].as_u64().unwrap() >= 1);
    // Totals only: a subscriber of `system` learns no other user's rooms.
    assert!(
        stats.data.get("clientsByRoom").is_none(),
        "{:?}",
        stats.data
    );
    assert!(!stats.data.to_string().contains("secret-plans"));
    assert!(!stats.data.to_string().contains("user:"));
    let ping = sse.next_of("ping").await;
    assert!(ping.data["timestamp"].is_u64());
}

#[tokio::test]
async fn a_stalled_reader_is_cut_off_while_others_keep_receiving() {
    let srv = TestServer::with(|c| {
        c.rate_limit.per_sec = 0;
        c.ws.outbox_max_frames = 500;
        c.ws.write_timeout_secs = 2;
    })
    .await;
    let mut fast = SseClient::open(&srv, "fast", "wide", None).await;
    fast.next_of("connected").await;
    let mut stalled = SseClient::open(&srv, "stalled", "wide", None).await;
    stalled.next_of("connected").await;
    let mut publisher = srv.member("pub", "wide").await;
    const N: usize = 3000;
    let content = "s".repeat(4096);
    let reader = tokio::spawn(async move {
        for i in 1..=N {
            let e = fast.next_of("new_message").await;
            assert_eq!(e.data["offset"], i);
        }
    });
    for start in (0..N).step_by(100) {
        for _ in start..start + 100 {
            publisher
                .request(
                    "send_message",
                    json!({"roomId": "wide", "content": content}),
                )
                .await;
        }
        for _ in 0..100 {
            publisher.next_of("new_message").await;
        }
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    // The stalled stream was dropped: only the fast one and the publisher remain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while srv.hub.connections() > 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled reader is still connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got = 0;
    while let Some(e) = stalled.try_next().await {
        if e.event == "new_message" {
            got += 1;
        }
    }
    assert!(got < N, "the stalled reader was cut off ({got} of {N})");
}

#[tokio::test]
async fn a_drain_ends_sse_streams_and_the_server_stops() {
    let srv = TestServer::start().await;
    let mut sse = SseClient::open(&srv, "alice", "general", None).await;
    sse.next_of("connected").await;
    let hub = srv.hub.clone();
    // stop() waits for the server to finish; it can only if the stream ends.
    tokio::time::timeout(Duration::from_secs(15), srv.stop())
        .await
        .expect("the drain finishes");
    assert!(hub.is_draining());
    assert_eq!(
        sse.try_next().await.map(|e| e.event),
        None,
        "the stream ended"
    );
}

#[tokio::test]
async fn a_stale_last_event_id_restarts_from_the_head() {
    let srv = TestServer::start().await;
    let mut alice = srv.member("alice", "general").await;
    alice
        .request(
            "send_message",
            json!({"roomId": "general", "content": "one"}),
        )
        .await;
    alice.next_of("new_message").await;
    let mut sse = SseClient::open(&srv, "reader", "general", Some("general=500")).await;
    let hello = sse.next_of("connected").await;
    assert_eq!(hello.data["recovered"], json!({"general": false}));
    assert_eq!(offsets(&hello.id), "general=1");
    alice
        .request(
            "send_message",
            json!({"roomId": "general", "content": "two"}),
        )
        .await;
    let e = sse.next_of("new_message").await;
    assert_eq!(e.data["content"], "two");
    assert_eq!(offsets(&e.id), "general=2");
}

#[tokio::test]
async fn a_stream_of_your_own_channel_resumes_it() {
    let srv = TestServer::start().await;
    // Durable messages in alice's personal room, published by the server API.
    for n in 1..=2 {
        let resp = admin()
            .post(srv.http("/api/rooms/user:alice/publish"))
            .json(&json!({"content": format!("note {n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let mut first = SseClient::open(&srv, "alice", "user:alice", None).await;
    let hello = first.next_of("connected").await;
    assert_eq!(offsets(&hello.id), "user:alice=2");
    let epoch = hello
        .id
        .as_deref()
        .unwrap()
        .split('@')
        .nth(1)
        .unwrap()
        .to_string();
    drop(first);
    let mut back = SseClient::open(
        &srv,
        "alice",
        "user:alice",
        Some(&format!("user:alice=0@{epoch}")),
    )
    .await;
    let hello = back.next_of("connected").await;
    assert_eq!(hello.data["recovered"], json!({"user:alice": true}));
    assert_eq!(back.next_of("new_message").await.data["content"], "note 1");
    assert_eq!(back.next_of("new_message").await.data["content"], "note 2");
}

#[tokio::test]
async fn streams_count_against_the_user_and_name_few_channels() {
    let srv = TestServer::with(|c| {
        c.ws.max_connections_per_user = 2;
        c.sse.max_channels = 3;
    })
    .await;
    let url = |channels: &str| {
        srv.http(&format!(
            "/events?channels={channels}&token={}",
            token("alice")
        ))
    };
    let too_many = reqwest::get(url("a,b,c,d")).await.unwrap();
    assert_eq!(too_many.status(), 400);
    let body: serde_json::Value = too_many.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3")
    );

    let ws = srv.client("alice").await;
    let mut sse = SseClient::open(&srv, "alice", "a,b,c", None).await;
    sse.next_of("connected").await;
    // A WebSocket and a stream: the third connection of any transport is refused.
    let refused = reqwest::get(url("a")).await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    let mut third = Client::connect(&srv.url(&token("alice"))).await;
    assert_eq!(
        third.expect_close().await,
        (1008, "Too many connections".into())
    );
    // Closing one frees its place.
    drop(ws);
    eventually("the place is freed", || async {
        reqwest::get(url("a")).await.unwrap().status() == 200
    })
    .await;
}

#[tokio::test]
async fn a_stream_opened_during_a_drain_is_closed() {
    let srv = TestServer::start().await;
    srv.hub.drain(switchboard_protocol::CloseCode::GoingAway);
    // The listener still accepts (only the hub drains here): the stream registers,
    // sees the drain, and ends after its first event.
    let mut late = SseClient::open(&srv, "alice", "general", None).await;
    late.next_of("connected").await;
    assert!(late.try_next().await.is_none(), "the stream ends");
    eventually("the stream is released", || async {
        srv.hub.connections() == 0
    })
    .await;
}
