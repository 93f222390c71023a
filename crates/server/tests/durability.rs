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

#[tokio::test]
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

#[tokio::test]
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
