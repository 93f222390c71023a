//! A bounded soak through the real binary: what used to grow without end now returns
//! to its baseline. Streams dropped in the middle of their recovery leave no pending
//! join behind, and durable traffic without a single `/metrics` scrape does not grow
//! the process (the metrics' histograms are folded in the background).

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A metric's value from `/metrics` (first series of that name).
async fn metric(server: &BinServer, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn health(server: &BinServer) -> Value {
    reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Sends `n` durable messages to `room` as one pipelined stream and waits until the
/// last is acknowledged (acks come in commit order). A reader drains the copies.
async fn flood(url: &str, room: &str, n: usize, content: &str) {
    let mut c = Client::connect(url).await;
    c.next_of("connected").await;
    c.join(room).await;
    let (mut tx, mut rx) = c.ws.split();
    let last = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            // The sender's own copies stream back: keep up with them cheaply.
            if let Message::Text(t) = msg {
                assert!(!t.starts_with("{\"type\":\"error\""), "{t}");
                if t.starts_with("{\"type\":\"ack\"") {
                    return;
                }
            }
        }
        panic!("connection ended before the last ack");
    });
    for i in 0..n {
        let mut frame =
            json!({"type": "send_message", "data": {"roomId": room, "content": content}});
        if i + 1 == n {
            frame["ref"] = json!("last");
        }
        tx.feed(Message::text(frame.to_string())).await.unwrap();
    }
    tx.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), last)
        .await
        .expect("the flood is stored in time")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_recoveries_and_unscraped_metrics_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(
        dir.path(),
        &[
            ("SWITCHBOARD_RATE_LIMIT_PER_SEC", "0"),
            ("SWITCHBOARD_STORE_SYNC", "normal"),
            ("SWITCHBOARD_API_KEY", API_KEY),
            // The flooding client reads its own copies while it writes; give it room.
            ("SWITCHBOARD_OUTBOX_MAX_FRAMES", "100000"),
            ("SWITCHBOARD_OUTBOX_MAX_BYTES", "67108864"),
        ],
    )
    .await;
    let url = server.url(&token("writer"));

    // A room with 3 MiB of history: a full recovery of it is allowed (4 MiB) and takes
    // long enough to be interrupted.
    flood(&url, "big", 48, &"x".repeat(64 * 1024)).await;
    let epoch = {
        let mut c = Client::connect(&url).await;
        c.next_of("connected").await;
        c.join("big").await["data"]["epoch"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Durable traffic, never scraped. Two rounds warm the store's caches and the
    // allocator up (RSS settles near +3 MiB); the three rounds after them must not grow
    // the process. Without the background upkeep each round of 200,000 messages adds
    // about 3.6 MiB of histogram samples.
    for _ in 0..2 {
        flood(&url, "busy", 200_000, "m").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = rss_bytes(server.pid());
    for _ in 0..3 {
        flood(&url, "busy", 200_000, "m").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_traffic = rss_bytes(server.pid());
    let growth = after_traffic.saturating_sub(settled);
    eprintln!(
        "RSS {} KiB after 400,000 messages, {} KiB after 600,000 more",
        settled / 1024,
        after_traffic / 1024
    );
    assert!(
        growth < 5 << 20,
        "600,000 unscraped messages grew RSS by {} KiB",
        growth / 1024
    );

    // SSE streams that resume the big room and go away before their replay is done,
    // while the room keeps getting live events that a leftover join would buffer.
    let noise = {
        let addr = server.addr;
        tokio::spawn(async move {
            loop {
                let _ = admin()
                    .post(format!("http://{addr}/events/broadcast"))
                    .json(&json!({"event": "noise", "data": "x".repeat(1000), "channel": "big"}))
                    .send()
                    .await;
            }
        })
    };
    let stream_url = format!(
        "http://{}/events?channels=big&token={}",
        server.addr,
        token("reader")
    );
    let last_event_id = format!("big=0@{epoch}");
    let mut interrupted = 0;
    for attempt in 0..200u64 {
        let request = reqwest::Client::new()
            .get(&stream_url)
            .header("Last-Event-ID", &last_event_id)
            .send();
        // Give up on the stream after 0-9 ms: often while the server is still replaying.
        let patience = Duration::from_micros(attempt * 7919 % 9000);
        match tokio::time::timeout(patience, request).await {
            Err(_) => interrupted += 1,
            Ok(response) => drop(response),
        }
    }
    noise.abort();
    eprintln!("{interrupted} of 200 streams went away before their response");
    assert!(
        interrupted >= 20,
        "only {interrupted} streams went away mid-join: the test proves nothing"
    );

    // Everything registered by those streams is gone again.
    eventually("no join pending and no connection open", || async {
        let pending = metric(&server, "switchboard_joins_pending").await;
        let connections = health(&server).await["connections"].as_u64().unwrap();
        if pending > 0.0 {
            eprintln!("{pending} joins pending, {connections} connections open");
        }
        pending == 0.0 && connections == 0
    })
    .await;
    // The reader's streams were all released: it may open as many as the limit allows.
    let mut streams = Vec::new();
    for _ in 0..100 {
        let resp = reqwest::Client::new()
            .get(&stream_url)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_of_a_huge_room_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(
        dir.path(),
        &[
            ("SWITCHBOARD_RATE_LIMIT_PER_SEC", "0"),
            ("SWITCHBOARD_STORE_SYNC", "normal"),
            ("SWITCHBOARD_OUTBOX_MAX_BYTES", "67108864"),
        ],
    )
    .await;
    // 48 MiB of history in one room.
    flood(
        &server.url(&token("writer")),
        "archive",
        48,
        &"a".repeat(1_000_000),
    )
    .await;
    let before = rss_bytes(server.pid());
    // Ten clients ask for all of it at once: more than one recovery may replay, so
    // none is read; they are told to page with history instead.
    let joiners: Vec<_> = (0..10)
        .map(|i| {
            let url = server.url(&token(&format!("j{i}")));
            tokio::spawn(async move {
                let mut c = Client::connect(&url).await;
                c.next_of("connected").await;
                c.request("join_room", json!({"roomId": "archive", "since": 0}))
                    .await;
                let joined = c.next_of("room_joined").await;
                assert_eq!(joined["data"]["recovered"], false);
                // Pages are bounded too: one message of the newest.
                c.request("history", json!({"roomId": "archive", "limit": 100}))
                    .await;
                let page = c.next_of("history").await;
                assert_eq!(page["data"]["messages"].as_array().unwrap().len(), 1);
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for j in joiners {
        clients.push(j.await.unwrap());
    }
    let growth = rss_bytes(server.pid()).saturating_sub(before);
    eprintln!("ten joiners of a 48 MiB room: RSS +{} KiB", growth / 1024);
    // Materialised replays would hold 10 x 48 MiB. What may remain is transient: ten
    // concurrent pages of a 1 MB message (row, payload and frame each), and the
    // allocator's arenas that keep them, more of them when the machine is busy.
    assert!(growth < 64 << 20, "RSS grew by {} KiB", growth / 1024);
}
