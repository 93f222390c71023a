//! Limits that protect the room from one client: frame size, UTF-8, rate, slow
//! consumers, liveness.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let srv = TestServer::with(|c| c.ws.max_message_bytes = 4096).await;
    let mut alice = srv.member("alice", "general").await;
    let big = "x".repeat(5000);
    alice
        .request("send_message", json!({"roomId": "general", "content": big}))
        .await;
    let (code, reason) = alice.expect_close().await;
    assert_eq!((code, reason.as_str()), (1009, "Message too big"));
    // Just under the limit is fine.
    let mut bob = srv.member("bob", "general").await;
    bob.request(
        "send_message",
        json!({"roomId": "general", "content": "y".repeat(3900)}),
    )
    .await;
    bob.next_of("new_message").await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    alice.ws.send(Message::Frame(frame)).await.unwrap();
    let (code, _) = alice.expect_close().await;
    assert_eq!(code, 1007);
}

#[tokio::test]
async fn flooding_is_limited_without_hurting_the_room() {
    let srv = TestServer::with(|c| {
        c.rate_limit.per_sec = 10;
        c.rate_limit.burst = 10;
    })
    .await;
    let mut flooder = srv.member("mallory", "general").await;
    let mut alice = srv.member("alice", "general").await;
    let mut bob = srv.member("bob", "general").await;
    // Everything the flooder sends at once: 10 pass, then errors, then a 1008 close.
    for i in 0..100 {
        let _ = flooder
            .ws
            .send(Message::text(
                json!({"type": "typing", "data": {"roomId": "general", "isTyping": i % 2 == 0}})
                    .to_string(),
            ))
            .await;
    }
    let mut limited = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, flooder.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["data"]["message"], "rate limit exceeded");
                    limited += 1;
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    };
    assert!(
        limited >= 10,
        "excess messages were answered with errors ({limited})"
    );
    assert_eq!(close, (1008, "Rate limit exceeded".to_string()));
    // The others were not limited: alice talks, bob hears.
    for i in 0..5 {
        alice
            .request(
                "send_message",
                json!({"roomId": "general", "content": format!("{i}")}),
            )
            .await;
    }
    for i in 0..5 {
        let m = bob.next_of("new_message").await;
        assert_eq!(m["data"]["content"], format!("{i}"));
    }
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_while_the_room_keeps_going() {
    let srv = TestServer::with(|c| {
        c.rate_limit.per_sec = 0;
        c.ws.outbox_max_frames = 1500;
        // The slow reader resumes only at the end; its blocked write must wait for it.
        c.ws.write_timeout_secs = 300;
    })
    .await;
    let mut publisher = srv.member("pub", "wide").await;
    let mut fast = srv.member("fast", "wide").await;
    let mut slow = srv.member("slow", "wide").await;
    publisher.next_of("user_joined_room").await;
    publisher.next_of("user_joined_room").await;
    fast.next_of("user_joined_room").await;
    // ~25 MB: far more than the outbox plus loopback socket buffers hold for a reader
    // that stops reading.
    const N: usize = 6000;
    const STEP: usize = 100;
    let content = "z".repeat(4 * 1024);
    let fast_reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            let v = fast.next().await;
            if v["type"] == "new_message" {
                assert_eq!(v["data"]["offset"], got + 1, "in order, none missing");
                got += 1;
            }
        }
        got
    });
    for start in (0..N).step_by(STEP) {
        for i in start..start + STEP {
            publisher
                .request(
                    "send_message",
                    json!({"roomId": "wide", "content": content, "metadata": {"i": i}}),
                )
                .await;
        }
        // Read our own copies as we go, so the publisher is not a slow consumer.
        let mut got = 0;
        while got < STEP {
            if publisher.next().await["type"] == "new_message" {
                got += 1;
            }
        }
    }
    let fast_got = tokio::time::timeout(Duration::from_secs(60), fast_reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fast_got, N, "the fast member got everything");
    // Now the slow one reads: a part of the stream, then 1013.
    let mut slow_got = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, slow.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.contains("new_message") => slow_got += 1,
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("ended without a close: {other:?}"),
        }
    };
    assert_eq!(close, (1013, "Slow consumer".to_string()));
    assert!(
        slow_got < N,
        "the slow consumer was cut off ({slow_got} of {N})"
    );
}

#[tokio::test]
async fn silent_connections_are_terminated() {
    let srv = TestServer::with(|c| {
        c.ws.ping_interval_secs = 1;
        c.ws.ping_timeout_secs = 2;
    })
    .await;
    let mut silent = srv.client("silent").await;
    let mut lively = srv.client("lively").await;
    // The lively client keeps reading, so its library answers the server's pings.
    let lively_task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(4500);
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, lively.ws.next()).await {
            let msg = msg.expect("lively stays open");
            assert!(!matches!(msg, Message::Close(_)), "lively was closed");
        }
        lively
    });
    // The silent one reads nothing for a while, so it answers no ping.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let (code, reason) = silent.expect_close().await;
    assert_eq!((code, reason.as_str()), (1001, "Ping timeout"));
    let mut lively = lively_task.await.unwrap();
    lively.send(json!({"type": "ping"})).await;
    lively.next_of("pong").await;
}

#[tokio::test]
async fn connections_per_user_are_limited() {
    let srv = TestServer::with(|c| c.ws.max_connections_per_user = 2).await;
    let _a = srv.client("alice").await;
    let b = srv.client("alice").await;
    let mut third = Client::connect(&srv.url(&token("alice"))).await;
    assert_eq!(
        third.expect_close().await,
        (1008, "Too many connections".to_string())
    );
    // Others are not affected, and a slot frees when a connection closes.
    srv.client("bob").await;
    drop(b);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut again = Client::connect(&srv.url(&token("alice"))).await;
        let first = tokio::time::timeout(WAIT, again.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if first.is_text() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_does_not_hold_back_delivery() {
    // A request that waits (here a custom handler, as a slow history or a recovery
    // on a busy store would) while more than an outbox's worth of events reaches the
    // connection: the writer keeps draining, the client is neither cut off nor late.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let srv = TestServer::build(
        move |b| {
            b.on_message("slow", move |ctx, _| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    ctx.reply("slow_done", &json!({}));
                    Ok(())
                }
            })
        },
        |c| {
            c.rate_limit.per_sec = 0;
            c.ws.ping_interval_secs = 1;
            c.ws.ping_timeout_secs = 2;
        },
    )
    .await;
    const N: usize = 5000;
    assert!(N > srv.config.ws.outbox_max_frames);
    let mut asker = srv.member("asker", "wide").await;
    let mut neighbour = srv.member("neighbour", "wide").await;
    asker.send(json!({"type": "slow", "ref": "s"})).await;
    let mut publisher = srv.member("pub", "wide").await;
    for start in (0..N).step_by(500) {
        for i in start..start + 500 {
            publisher
                .request("send_message", json!({"roomId": "wide", "content": i}))
                .await;
        }
        let mut got = 0;
        while got < 500 {
            if publisher.next().await["type"] == "new_message" {
                got += 1;
            }
        }
    }
    async fn receive_all(c: &mut Client) {
        let mut got = 0;
        while got < N {
            let v = c.next().await;
            assert_ne!(v["type"], "slow_done", "delivery waited for the request");
            if v["type"] == "new_message" {
                got += 1;
            }
        }
    }
    receive_all(&mut neighbour).await;
    // The asker has everything while its request is still in progress.
    receive_all(&mut asker).await;
    // A request slower than the liveness timeout is the server's delay, not a sign
    // that the client is gone.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    release.notify_one();
    assert_eq!(asker.next_of("slow_done").await["ref"], "s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_still_proves_it_is_alive() {
    // Under a stream that never lets the outbox run empty, the server must still read
    // the client's pongs. (The outbox is made large enough that the backlog, not a
    // 1013, is what the stream builds up.)
    let srv = TestServer::with(|c| {
        c.rate_limit.per_sec = 0;
        c.ws.ping_interval_secs = 1;
        c.ws.ping_timeout_secs = 2;
        c.ws.outbox_max_frames = 10_000_000;
        c.ws.outbox_max_bytes = 1 << 30;
    })
    .await;
    let mut reader = srv.member("reader", "stream").await;
    let publisher = srv.member("pub", "stream").await;
    let (mut tx, mut rx) = publisher.ws.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let flood = tokio::spawn(async move {
        let frame = json!({"type": "typing", "data": {"roomId": "stream", "isTyping": true}});
        loop {
            if tx.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut events = 0u64;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(WAIT, reader.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(c))) => panic!("closed after {events} events: {c:?}"),
            Some(Ok(_)) => events += 1,
            other => panic!("ended: {other:?}"),
        }
        // A reader a little slower than the stream: the backlog never empties.
        if events.is_multiple_of(1000) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    flood.abort();
    drain.abort();
    assert!(events > 10_000, "the stream was steady ({events} events)");
}

#[tokio::test]
async fn a_panicking_handler_is_answered_and_leaks_nothing() {
    let srv = TestServer::build(
        |b| {
            b.on_message(
                "boom",
                |_ctx, _| async move { panic!("a bug in the embedder") },
            )
        },
        |c| c.ws.max_connections_per_user = 1,
    )
    .await;
    let mut alice = srv.member("alice", "general").await;
    alice.send(json!({"type": "boom", "ref": 7})).await;
    assert_eq!(alice.expect_error("Internal server error").await["ref"], 7);
    // The connection carries on.
    alice.send(json!({"type": "ping", "ref": 8})).await;
    assert_eq!(alice.next_of("pong").await["ref"], 8);
    drop(alice);
    // Its place is freed: the user may connect again (the limit is one).
    eventually("the connection is released", || async {
        srv.hub.connections() == 0
    })
    .await;
    srv.client("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_task_panics_is_removed() {
    let srv = TestServer::with(|c| c.ws.max_connections_per_user = 1).await;
    let hub = srv.hub.clone();
    let identity = hub.authenticate(Some(&token("alice"))).unwrap();
    // A transport's task that panics while it holds a registered session.
    let task = tokio::spawn(async move {
        let registration = hub
            .connect(identity, switchboard::hub::Wire::WebSocket, |_| {})
            .await
            .unwrap();
        let _held = registration;
        panic!("a bug in a transport");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(srv.hub.connections(), 0);
    // Presence forgot the device too: the user is not over its limit of one.
    srv.client("alice").await;
}
